"""/ping answers from the first moment of ``serve``: between the launcher's responder and the app, the
port never refuses a connection (app.web.early_ping holds the sockets the server then takes over)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.web import early_ping
from tests.launcher_kit import free_port

ROOT = Path(__file__).resolve().parents[1]


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_held_port_answers_ping_and_starting_then_hands_over_its_sockets():
    port, health = free_port(), free_port()
    held = early_ping.hold("127.0.0.1", [port, health, port])
    assert held is not None and len(held.sockets) == 2
    for each in (port, health):
        assert raw_request(each, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 204 ")
    assert raw_request(port, b"HEAD /ping?probe=1 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 204 ")
    other = raw_request(port, b"POST /v1/tryon HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    head, _, body = other.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in head
    assert json.loads(body)["error"]["code"] == "starting"
    sockets = held.hand_over()
    try:
        # Handed over still listening: a client connecting now waits in the backlog for the real server.
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection, _ = sockets[0].accept()
        connection.close()
        client.close()
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_taken_by_another_process_holds_nothing():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free = free_port()
        assert early_ping.hold("127.0.0.1", [free, taken.getsockname()[1]]) is None
        with socket.socket() as again:  # the first port was let go again
            again.bind(("127.0.0.1", free))


@pytest.mark.slow
def test_a_starting_server_never_refuses_a_ping_after_its_first_answer(tmp_path):
    port, health = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), TRYON_DEVICE="cpu", TRYON_LOG_LEVEL="warning", PORT_HEALTH=str(health))
    log = tmp_path / "server.log"
    with open(log, "w") as output:
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--tiny", "--volume", str(tmp_path / "volume"),
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=output,
                                stderr=subprocess.STDOUT)
    seen: list[str] = []
    health_seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=2) as client:
            while not seen or seen[-1] != "200":
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                for url, answers in ((f"http://127.0.0.1:{port}/ping", seen),
                                     (f"http://127.0.0.1:{health}/ping", health_seen)):
                    try:
                        answer = str(client.get(url).status_code)
                    except httpx.ConnectError:
                        answer = "refused"
                    except httpx.TransportError as exc:
                        answer = type(exc).__name__
                    if not answers or answers[-1] != answer:
                        answers.append(answer)
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Refused only before the process bound its ports (Python's own start); then 204, then the app's 200.
    answered = seen[seen.index("204"):] if "204" in seen else seen
    assert "204" in seen and answered[-1] == "200" and set(answered) <= {"204", "200"}, seen
    assert "204" in health_seen and set(health_seen[health_seen.index("204"):]) <= {"204", "200"}, health_seen
