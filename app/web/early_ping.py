"""/ping from the first moment of ``serve``, before torch and Gradio are imported.

The launcher answers /ping with 204 while it readies the runtime, then stops its responder and starts
the app; importing the app's stack takes seconds (6-9 s measured in the launcher image on 2 cores), and
a port that refuses connections meanwhile looks like a dead worker to a load balancer. So ``serve``
binds its ports first thing, standard library only, answers /ping 204 (other paths 503 "starting")
from a thread, and hands the very same listening sockets to uvicorn: connections that arrive during
the hand-over wait in the socket's backlog, never refused.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading

from app.errors import error_body  # no torch: importable at once

STARTING = json.dumps(error_body("starting", "the worker is starting the app; retry in a few seconds")).encode()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket as uvicorn makes one (SO_REUSEADDR, the IPv6 form for an IPv6 host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class EarlyPing:
    """Answers on the given listening sockets until :meth:`hand_over`, which returns them unclosed."""

    def __init__(self, sockets: list[socket.socket]):
        self.sockets = sockets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="early-ping", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    if self._stop.is_set():
                        return  # leave the rest in the backlog for the real server
                    try:
                        connection, _ = key.fileobj.accept()
                    except (BlockingIOError, OSError):
                        continue
                    with connection:
                        answer(connection)

    def hand_over(self) -> list[socket.socket]:
        self._stop.set()
        self._thread.join()
        return self.sockets


def answer(connection: socket.socket) -> None:
    connection.settimeout(1)  # one slow client holds the answers up at most this long
    try:
        request = connection.recv(4096).split(b"\r\n", 1)[0].split()
        method, path = (request[0], request[1].split(b"?", 1)[0]) if len(request) >= 2 else (b"", b"")
        if method in (b"GET", b"HEAD") and path == b"/ping":
            connection.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        else:
            body = b"" if method == b"HEAD" else STARTING
            connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
                               + str(len(STARTING)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass


def hold(host: str, ports: list[int]) -> EarlyPing | None:
    """Binds every port and answers on them; None (and nothing held) when a port cannot be bound, so
    the server binds as it always did and reports that error itself."""
    held: list[socket.socket] = []
    try:
        for port in dict.fromkeys(ports):
            held.append(bind(host, port))
    except OSError:
        for sock in held:
            sock.close()
        return None
    return EarlyPing(held)
