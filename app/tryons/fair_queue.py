"""The GPU handed to parties in turn: the fair share of a public demo.

One try-on runs at a time. Those waiting are grouped by party (``app.identity.access.party_of``: a login or an API
key by its name, visitors and anonymous calls by their address). When the GPU frees, the party served least
recently takes it, for its oldest waiting try-on (ties go to the oldest request). A script holding twenty
try-ons and a designer sending one therefore alternate, and the designer waits about one try-on. A batch
takes the GPU item by item, so its try-ons are counted one by one.

Each party may hold at most ``limit`` try-ons reserved, waiting or running (TRYON_MAX_WAITING_PER_OWNER):
``reserve`` refuses more before any work is done. With ``fair=False`` the gate is first come, first served
(the benchmark's comparison). Nothing here measures time: the service does.

A party the gate has not seen (or has forgotten) joins as if served just before the try-on running now:
after every party waiting since an earlier turn, before those served since. So a flood of new parties (a
caller changing addresses) cannot jump ahead of callers already waiting, and a designer arriving behind a
script still goes next.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

FORGET_AFTER = 10_000  # parties remembered as served; the least recently served are forgotten first


class FairGate:
    """A lock with a fair queue in front of it. ``acquire(party)`` / ``release()`` like a lock; the waiting
    try-ons and the reservations per party are readable for the queue's state and its refusals."""

    def __init__(self, fair: bool = True):
        self.fair = fair
        self._cond = threading.Condition()
        self._running: str | None = None
        self._waiting: dict[str, deque[int]] = {}  # party -> arrival numbers of its waiting try-ons, oldest first
        self._served: dict[str, float] = {}  # party -> the turn it last took the GPU (see the docstring)
        self._turns = 0
        self._arrivals = itertools.count()
        self._reserved: dict[str, int] = {}  # party -> try-ons accepted and not yet finished

    # -- the lock ---------------------------------------------------------------------------------

    def acquire(self, party: str = "anon") -> None:
        """Wait for this party's turn and take the GPU. An exception while waiting (the caller stopped)
        leaves the queue as if this try-on had never come."""
        with self._cond:
            ticket = next(self._arrivals)
            if party not in self._served:  # new (or long gone): in line after those already waiting since
                self._served[party] = self._turns - 0.5  # an earlier turn, before those served since
            self._waiting.setdefault(party, deque()).append(ticket)
            try:
                while self._running is not None or self._next() != (party, ticket):
                    self._cond.wait()
            except BaseException:
                self._leave(party, ticket)
                self._cond.notify_all()  # this try-on may have been the next: whoever is now wakes
                raise
            self._leave(party, ticket)
            self._running = party
            self._turns += 1
            self._served[party] = self._turns
            if len(self._served) > FORGET_AFTER:
                self._forget()

    def _leave(self, party: str, ticket: int) -> None:
        queue = self._waiting[party]
        queue.remove(ticket)
        if not queue:
            del self._waiting[party]

    def release(self) -> None:
        with self._cond:
            if self._running is None:
                raise RuntimeError("release() of a GPU gate that is not held")
            self._running = None
            self._cond.notify_all()

    def locked(self) -> bool:
        with self._cond:
            return self._running is not None

    def _next(self) -> tuple[str, int] | None:
        """(party, ticket) that takes the GPU next, or None when nobody waits."""
        if not self._waiting:
            return None
        if self.fair:
            party = min(self._waiting, key=lambda p: (self._served.get(p, 0), self._waiting[p][0]))
        else:
            party = min(self._waiting, key=lambda p: self._waiting[p][0])
        return party, self._waiting[party][0]

    def _forget(self) -> None:
        idle = sorted((turn, party) for party, turn in self._served.items()
                      if party not in self._waiting and party != self._running)
        for _turn, party in idle[:len(self._served) - FORGET_AFTER // 2]:
            del self._served[party]

    def ahead(self, party: str) -> int | None:
        """Try-ons that take the GPU before this party's next waiting one if nobody else comes (the one
        running included); None when it has none waiting."""
        with self._cond:
            if party not in self._waiting:
                return None
            if self.fair:
                def key(p):
                    return self._served.get(p, 0), self._waiting[p][0]
                before = sum(1 for p in self._waiting if p != party and key(p) < key(party))
            else:
                first = self._waiting[party][0]
                before = sum(1 for queue in self._waiting.values() for ticket in queue if ticket < first)
            return before + (self._running is not None)

    # -- reservations -----------------------------------------------------------------------------

    def reserve(self, party: str, count: int, limit: int) -> int | None:
        """Hold ``count`` try-ons for ``party`` if that keeps it within ``limit``: None when held, else the
        number it already holds (the caller refuses)."""
        with self._cond:
            held = self._reserved.get(party, 0)
            if held + count > limit:
                return held
            self._reserved[party] = held + count
            return None

    def unreserve(self, party: str, count: int = 1) -> None:
        with self._cond:
            left = self._reserved.get(party, 0) - count
            if left > 0:
                self._reserved[party] = left
            else:
                self._reserved.pop(party, None)

    def held(self, party: str) -> int:
        with self._cond:
            return self._reserved.get(party, 0)

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> dict:
        """Try-ons waiting, parties waiting (or holding reservations), and whether one runs."""
        with self._cond:
            return {"waiting": sum(len(queue) for queue in self._waiting.values()),
                    "owners_waiting": len(self._waiting), "running": self._running is not None,
                    "owners_active": len(self._reserved)}
