"""launcher/lib/health.sh: what a load balancer sees while a worker builds or unpacks its runtime.

A bash that sourced health.sh (as the entrypoint does, under set -euo pipefail) runs health_start and
health_stop on command; the tests speak HTTP to the real socat responders on free ports. The last test
runs the entrypoint itself through a build and an unpack.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from app.errors import error_body
from tests.launcher_kit import ROOT, Worker, free_port

needs_socat = pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed (apt-get install socat): health.sh's responder")

# The entrypoint's side: reads commands ("start WHAT", "stop") and says "done STATUS" after each.
DRIVER = """
set -euo pipefail
source launcher/lib/health.sh
while read -r command what; do
  case $command in
    start) health_start "$what" ;;
    stop) health_stop ;;
  esac
  echo "done $?"
done
"""


class Launcher:
    def __init__(self, **env: str):
        dropped = ("PORT", "PORT_HEALTH", "TRYON_HOST", *(name for name, value in env.items() if value is None))
        env = {name: value for name, value in env.items() if value is not None}
        clean = {k: v for k, v in os.environ.items() if k not in dropped}
        self.process = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", DRIVER], cwd=ROOT,
                                        env={**clean, "TRYON_HOST": "127.0.0.1", **env}, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def do(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done 0\n", self.close()

    def close(self) -> str:
        """Ends the launcher (its EOF) and returns what it logged."""
        if self.process.poll() is None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.process.stderr.read()


@pytest.fixture
def launcher():
    started = []

    def start(**env: str) -> Launcher:
        started.append(Launcher(**env))
        return started[-1]

    yield start
    for each in started:
        if each.process.poll() is None:
            each.do("stop")
        each.close()


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float


def ask(port: int, method: str = "GET", path: str = "/ping", body: bytes | None = None) -> Answer:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body)  # sends the whole body before reading, like requests
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read(), time.monotonic() - started)
    finally:
        connection.close()


def starting(what: str) -> dict:
    return error_body("starting", f"the worker is {what} its runtime; retry in a few seconds")


def responders(port: int) -> list[int]:
    """Pids of the socat processes listening on this port."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and argv[0].endswith(b"socat") and any(f"LISTEN:{port},".encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


def bind_as_the_app(port: int) -> None:
    """Binds and listens as uvicorn does (SO_REUSEADDR: the responders' closed connections sit in
    TIME_WAIT on this port, which only a plain bind would trip over)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


@needs_socat
def test_ping_answers_204_at_once(launcher):
    port = free_port()
    launcher(PORT=str(port)).do("start building")
    for method, path in [("GET", "/ping"), ("HEAD", "/ping"), ("GET", "/ping?probe=1")]:
        answer = ask(port, method, path)
        assert (answer.status, answer.body) == (204, b""), (method, path, answer)
        assert answer.seconds < 3, (method, path, answer.seconds)  # liveness: the build is held, never done
        assert answer.headers["Connection"] == "close"
        # A 204 carries no Content-Length (RFC 9110 8.6), like the app's own /ping.
        assert answer.headers.get("Content-Length", "0") == "0"


@needs_socat
def test_ping_answers_204_in_a_container_that_sets_no_shlvl(launcher):
    """docker and buildah start the entrypoint with no SHLVL. A bash whose stdin is a socket and whose
    SHLVL is below 2 then takes itself for one started by sshd and skips BASH_ENV: without --norc every
    /ping was reset unanswered, seen only once the image ran (tests/test_image_build.py)."""
    port = free_port()
    launcher(PORT=str(port), SHLVL=None).do("start unpacking")
    for _ in range(3):
        answer = ask(port)
        assert (answer.status, answer.body) == (204, b""), answer


@needs_socat
def test_twenty_concurrent_pings_are_all_answered_without_waiting(launcher):
    port = free_port()
    launcher(PORT=str(port)).do("start building")
    at_once = threading.Barrier(20)

    def ping(_) -> Answer:
        at_once.wait()
        return ask(port)

    dropped = listen_drops()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ping, range(20)))
    assert [a.status for a in answers] == [204] * 20
    # A connection the listen backlog had no room for is dropped and retried a second later (SYN retransmit):
    # the kernel counts each such drop. The seconds only show liveness (two busy cores are slow, not full).
    assert listen_drops() == dropped
    assert max(a.seconds for a in answers) < 5, sorted(a.seconds for a in answers)


def listen_drops() -> int:
    """Connections this network namespace's listen queues had no room for (TcpExt ListenOverflows + ListenDrops)."""
    header, values = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
                      if line.startswith("TcpExt:")][:2]
    counts = dict(zip(header[1:], map(int, values[1:]), strict=True))
    return counts["ListenOverflows"] + counts["ListenDrops"]


@needs_socat
def test_other_requests_get_503_in_the_apps_error_shape(launcher):
    port = free_port()
    launcher(PORT=str(port)).do("start building")
    big = os.urandom(5 * 1024 * 1024)  # read away before closing, or this client would see a reset
    for method, path, body in [("GET", "/", None), ("GET", "/v1/status", None), ("POST", "/ping", b"{}"),
                               ("GET", "/pingx", None), ("POST", "/v1/tryon", big)]:
        answer = ask(port, method, path, body)
        assert answer.status == 503, (method, path, answer)
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.headers["Retry-After"] == "10"
        assert answer.headers["Connection"] == "close"
        assert int(answer.headers["Content-Length"]) == len(answer.body)
        assert json.loads(answer.body) == starting("building")
    head = ask(port, "HEAD", "/v1/status")
    assert (head.status, head.body) == (503, b"")
    assert int(head.headers["Content-Length"]) > 0  # the length a GET would get


@needs_socat
def test_port_health_answers_too_and_a_new_phase_replaces_the_old(launcher):
    port, health_port = free_port(), free_port()
    worker = launcher(PORT=str(port), PORT_HEALTH=str(health_port))
    worker.do("start building")
    assert ask(health_port).status == 204
    assert json.loads(ask(health_port, path="/v1/status").body) == starting("building")
    worker.do("start unpacking")
    for each in (port, health_port):
        assert ask(each).status == 204
        assert json.loads(ask(each, path="/").body) == starting("unpacking")
    assert len(responders(port)) == len(responders(health_port)) == 1


@needs_socat
def test_after_health_stop_the_app_can_bind_the_ports_at_once(launcher):
    port, health_port = free_port(), free_port()
    worker = launcher(PORT=str(port), PORT_HEALTH=str(health_port))
    worker.do("stop")  # before any start: nothing to do
    worker.do("start building")
    for each in (port, health_port):
        assert ask(each).status == 204
    worker.do("stop")
    for each in (port, health_port):
        bind_as_the_app(each)
        assert responders(each) == []
    worker.do("stop")  # again
    assert worker.close() == ""


@needs_socat
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_responders_end_when_the_launcher_is_killed(launcher):
    port, health_port = free_port(), free_port()
    worker = launcher(PORT=str(port), PORT_HEALTH=str(health_port))
    worker.do("start building")
    pids = responders(port) + responders(health_port)
    assert len(pids) == 2
    for pid in pids:  # none holds the launcher's stdin, stdout or stderr
        assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=5)
    deadline = time.monotonic() + 2
    while responders(port) + responders(health_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert responders(port) + responders(health_port) == []
    for each in (port, health_port):
        bind_as_the_app(each)


@needs_socat
def test_a_taken_port_is_a_warning_and_the_launcher_goes_on(launcher):
    port, health_port = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        worker = launcher(PORT=str(port), PORT_HEALTH=str(health_port))
        worker.do("start building")  # "done 0": health_start returned 0 under set -e
        assert ask(health_port).status == 204
        assert responders(port) == []
        worker.do("stop")
        log = worker.close()
    assert f"[launcher] warning: port {port} is already in use" in log, log
    assert log.count("\n") == 1, log


def test_without_socat_the_launcher_only_warns(launcher, tmp_path):
    worker = launcher(PORT=str(free_port()), PATH=str(tmp_path))  # the driver needs bash's builtins only
    worker.do("start unpacking")
    worker.do("stop")
    log = worker.close()
    assert log.startswith("[launcher] warning: socat is not installed") and "apt-get install socat" in log, log
    assert log.count("\n") == 1, log


def wait_until_the_app_can_bind(port: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bind_as_the_app(port)
        except OSError:
            assert time.monotonic() < deadline, "the responder still holds the app's port"
            time.sleep(0.05)


@needs_socat
def test_a_worker_that_builds_or_unpacks_answers_204_then_hands_the_port_to_the_app(volume, requirements,
                                                                                    tmp_path):
    port = free_port()
    builder = Worker(volume, tmp_path / "builder", requirements, "wait-for-signal",
                     TRYON_FAILPOINTS="installed=pause:4", PORT=str(port), TRYON_HOST="127.0.0.1")
    try:
        builder.wait_for("failpoint installed")
        assert ask(port).status == 204
        assert json.loads(ask(port, path="/v1/status").body) == starting("building")
        builder.wait_for("starting the app")
        wait_until_the_app_can_bind(port)  # the stand-in app does not listen: the port is free for it
    finally:
        builder.proc.terminate()
        builder.finish()

    unpacker = Worker(volume, tmp_path / "unpacker", requirements, TRYON_FAILPOINTS="unpacking=pause:3",
                      PORT=str(port), TRYON_HOST="127.0.0.1")
    unpacker.wait_for("failpoint unpacking")
    assert ask(port).status == 204
    assert json.loads(ask(port, path="/v1/status").body) == starting("unpacking")
    assert unpacker.finish()[0] == 0
    wait_until_the_app_can_bind(port)
