"""Who is still listening: the studio's page and the script endpoints stop a run whose caller has left.

Gradio's door (app.web.gradio_door) sees event streams open and close and tells :class:`Streams`; the
studio's events ask it between steps. ``TRYON`` is the one concurrency id of every try-on event (the
studio's Run, ``/tryon``, ``/tryon_batch``): they all wait in the service's fair gate, not in Gradio's queue.
"""

from __future__ import annotations

import threading
import time

TRYON = "tryon"  # the concurrency id of every try-on event (the studio's Run, /tryon, /tryon_batch)
GRACE_S = 2.0  # a stream closed for this long, and not reopened, means the client has left


class Streams:
    """Open event streams per session key. A session whose last stream closed over ``GRACE_S`` ago, after
    its latest event was joined, and was not reopened has left: nobody will read what its run makes. (A
    page closes its stream when nothing is pending and opens a new one after its next join.)"""

    def __init__(self, grace: float = GRACE_S):
        self.grace = grace
        self._open: dict[str, int] = {}
        self._closed_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def opened(self, key: str) -> None:
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1
            self._closed_at.pop(key, None)

    def joined(self, key: str) -> None:
        with self._lock:
            self._closed_at.pop(key, None)  # a stream that closed before this event is no sign of leaving

    def closed(self, key: str) -> None:
        with self._lock:
            left = self._open.get(key, 1) - 1
            if left > 0:
                self._open[key] = left
                return
            self._open.pop(key, None)
            self._closed_at[key] = time.monotonic()
            if len(self._closed_at) > 10_000:  # old sessions: keep the last ones
                for old in sorted(self._closed_at, key=self._closed_at.get)[:5_000]:
                    del self._closed_at[old]

    def gone(self, key: str | None) -> bool:
        if not key:
            return False
        with self._lock:
            closed = self._closed_at.get(key)
            return key not in self._open and closed is not None and time.monotonic() - closed > self.grace
