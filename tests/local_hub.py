"""A small HTTP server speaking the part of the Hugging Face Hub protocol that file downloads use.

HEAD/GET /{org}/{repo}/resolve/{revision}/{path} with the Hub's headers (X-Repo-Commit, ETag and
X-Linked-Etag/-Size for large files), Range requests for resuming, and two faults to inject: a
connection cut after N bytes, and a body that does not match the advertised hash.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 1024  # larger files are served as LFS (sha256 etag), smaller ones as git blobs (sha1)


class LocalHub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes to send before dropping the connection (every time)
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", unquote(self.path.split("?")[0]))
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if not match or (match[1], match[3]) not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo, path = match[1], match[3]
                data = hub.files[(repo, path)]
                etag = hub.etag(data)
                served = data[:-1] + bytes([data[-1] ^ 0xFF]) if path in hub.corrupt else data
                start = 0
                ranged = self.headers.get("Range")
                if ranged and body:
                    start = int(re.match(r"bytes=(\d+)-", ranged)[1])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                if len(data) > LFS_THRESHOLD:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                chunk = served[start:]
                cut = hub.cut_after.get(path)
                if cut is not None:
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def etag(data: bytes) -> str:
        if len(data) > LFS_THRESHOLD:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()

    def add(self, repo: str, path: str, data: bytes) -> None:
        self.files[(repo, path)] = data

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
