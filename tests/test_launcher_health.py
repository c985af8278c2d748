"""/ping while a worker builds or unpacks its runtime (launcher/lib/health.sh): what a load balancer
sees. Real bash, real socat, real sockets."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.launcher_kit import Worker, free_port

ROOT = Path(__file__).resolve().parents[1]
HEALTH = ROOT / "launcher" / "lib" / "health.sh"
pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs Debian's socat (CI installs it)")


def responder(port: int, health_port: int | None = None, then: str = "sleep 60") -> subprocess.Popen:
    """A shell that starts the responder, says so, then runs `then` (the launcher's work)."""
    env = {**os.environ, "PORT": str(port), "TRYON_HOST": "127.0.0.1"}
    if health_port:
        env["PORT_HEALTH"] = str(health_port)
    return subprocess.Popen(["bash", "-c", f"set -euo pipefail; source {HEALTH}; health_start building; "
                             f"echo started; {then}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.02)


def can_bind(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_ping_is_204_at_once_and_everything_else_503_in_the_error_shape():
    port, health_port = free_port(), free_port()
    proc = responder(port, health_port)
    try:
        assert proc.stdout.readline().strip() == "started"
        wait_listening(port)
        start = time.monotonic()
        ping = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5)
        assert ping.status_code == 204 and ping.content == b"" and time.monotonic() - start < 0.5
        assert httpx.get(f"http://127.0.0.1:{port}/ping?probe=1", timeout=5).status_code == 204
        assert httpx.head(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 204
        other = httpx.post(f"http://127.0.0.1:{port}/v1/tryon", json={"person": "x"}, timeout=5)
        assert other.status_code == 503 and other.headers["retry-after"] == "10"
        assert other.json() == {"error": {"code": "starting", "message":
                                          "the worker is building its runtime; retry in a few seconds"}}
        wait_listening(health_port)
        assert httpx.get(f"http://127.0.0.1:{health_port}/ping", timeout=5).status_code == 204
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda _: httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code,
                                  range(20)))
        assert codes == [204] * 20
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The launcher is gone (kill -9): its responders follow within a couple of seconds.
    deadline = time.monotonic() + 5
    while not (can_bind(port) and can_bind(health_port)):
        assert time.monotonic() < deadline, "a responder outlived the launcher"
        time.sleep(0.1)


def test_health_stop_frees_the_port_for_the_app_at_once():
    port = free_port()
    proc = responder(port, then="health_stop; echo stopped; sleep 30")
    try:
        assert proc.stdout.readline().strip() == "started"
        assert proc.stdout.readline().strip() == "stopped"
        assert can_bind(port)  # the app's bind right after exec succeeds
    finally:
        proc.kill()
        proc.wait()


def test_a_taken_port_is_a_warning_not_a_failure():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = responder(port, then="echo carried-on")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "carried-on" in out
    assert f"warning: port {port} is already in use" in err


def test_a_worker_that_builds_or_unpacks_answers_204_then_hands_the_port_to_the_app(volume, requirements,
                                                                                    tmp_path):
    port = free_port()
    builder = Worker(volume, tmp_path / "builder", requirements, "wait-for-signal",
                     TRYON_FAILPOINTS="installed=pause:4", PORT=str(port), TRYON_HOST="127.0.0.1")
    try:
        builder.wait_for("failpoint installed")
        assert httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 204
        builder.wait_for("starting the app")
        # The stand-in app does not listen: after the launcher's exec the port is free for it.
        deadline = time.monotonic() + 5
        while not can_bind(port):
            assert time.monotonic() < deadline, "the responder still holds the app's port"
            time.sleep(0.05)
    finally:
        builder.proc.terminate()
        builder.finish()

    unpacker = Worker(volume, tmp_path / "unpacker", requirements, TRYON_FAILPOINTS="unpacking=pause:3",
                      PORT=str(port), TRYON_HOST="127.0.0.1")
    unpacker.wait_for("failpoint unpacking")
    unpacking = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=5)
    assert unpacking.status_code == 503 and "unpacking" in json.loads(unpacking.text)["error"]["message"]
    assert unpacker.finish()[0] == 0
