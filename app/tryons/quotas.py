"""Per-party limits counted across the workers of a volume: try-ons (TRYON_QUOTA) and failed sign-ins
(TRYON_LOGIN_LIMIT).

Windows are fixed and aligned to the clock (UTC): "30/h" allows 30 in each clock hour, "10/15m" 10 in
each quarter hour, "500/d" 500 per UTC day. So the studio can say "12 of 30 try-ons this hour" and a
refusal's Retry-After is exact: the seconds until the window ends. (At a window's edge a party can use
one window's units and then the next's: fine for a demo's fairness, and cheap on a network volume.)

Counting: each unit is a slot file, ``.secrets/quotas/<what>-<seconds>-<window start>/<name>/<slot>``,
claimed with ``O_CREAT | O_EXCL``; slots are numbered 0 .. limit-1, so however many workers charge at
once, each slot has one owner and no more than the limit can pass. No lock is taken (a frozen worker
holds nothing up), nothing is written into the files (a crash leaves whole slots or none), and
``<name>`` is an HMAC of the party with the volume's key: owners and addresses are not readable on
disk. A refund removes slot files. Ended windows are removed by the next worker to charge. A volume
that cannot be written (read-only, full, no permission: EROFS, ENOSPC, EACCES, EPERM) degrades to counting
in this process, with one warning; any other error (EIO, EMFILE, ESTALE...) refuses that one request
(CounterUnavailable, 503) and the next one uses the files again.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import math
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.config import SettingError, Settings
from app.errors import BusyError, CounterUnavailable, GenerationCancelled

log = logging.getLogger(__name__)

KINDS = ("visitor", "user", "key")
KIND_NAMES = {"visitor": "visitors", "user": "users", "key": "API keys"}
MAX_COUNT = 10_000  # slot files per party and window
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_RULE = re.compile(r"^(\d+)\s*/\s*(\d*)\s*([mhd])$")
_SETTLE_S = 60  # a window is removed this long after it ended: refunds and slow clocks still find it
_UNWRITABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})  # these degrade to memory
_COUNTED = {"tryons": "try-ons", "logins": "failed sign-ins"}


class QuotaExceeded(BusyError):
    """A party has used its try-ons (TRYON_QUOTA) or failed sign-ins (TRYON_LOGIN_LIMIT) for this window;
    ``retry_after``: seconds until the window ends."""


@dataclass(frozen=True)
class Rule:
    """``count`` per window of ``seconds``, as written in the setting (``text``)."""

    count: int
    seconds: int
    text: str

    def window(self, now: float) -> tuple[int, int]:
        start = int(now // self.seconds * self.seconds)
        return start, start + self.seconds

    def seconds_left(self, now: float) -> int:
        return max(1, math.ceil(self.window(now)[1] - now))

    @property
    def per(self) -> str:
        """"per hour", "per 15 minutes", "per day"."""
        return f"per {self._span(plural=False)}"

    @property
    def this(self) -> str:
        """"this hour", "this 15-minute period", "today (UTC)"."""
        if self.seconds == 86400:
            return "today (UTC)"
        if self.seconds in (60, 3600):
            return f"this {self._span(plural=False)}"
        return f"in this {self._span(plural=False, adjective=True)} period"

    def _span(self, plural: bool, adjective: bool = False) -> str:
        for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
            if self.seconds % unit == 0:
                number = self.seconds // unit
                if number == 1 and not adjective:
                    return name
                return f"{number}-{name}" if adjective else f"{number} {name}s"
        return f"{self.seconds} seconds"


def parse_rule(text: str, source: str, example: str) -> Rule:
    found = _RULE.match(text.strip().lower())
    if not found:
        raise SettingError(f"{source}: {text.strip()[:40]!r} is not a limit: write N/UNIT, N a whole number and UNIT "
                           f"m, h or d, optionally with a length (15m, 2h), e.g. {example}.")
    count, length, unit = int(found[1]), int(found[2] or 1), found[3]
    if not 1 <= count <= MAX_COUNT:
        raise SettingError(f"{source}: {text.strip()!r} allows {count}: use 1 to {MAX_COUNT} per period (leave a "
                           "limit out for no limit).")
    seconds = length * _UNITS[unit]
    if not 60 <= seconds <= 31 * 86400:
        raise SettingError(f"{source}: {text.strip()!r} has a period of {seconds} s: use one from 1m to 31d.")
    return Rule(count, seconds, f"{count}/{found[2]}{unit}")


def parse_quota(raw: str, source: str = "TRYON_QUOTA") -> dict[str, Rule]:
    """TRYON_QUOTA: "" or "off" (none), one rule for every kind ("30/h"), or rules per kind
    ("visitor=10/h,user=50/h,key=500/d"; a kind left out has no quota)."""
    raw = raw.strip()
    if raw.lower() in ("", "off", "none"):
        return {}
    example = "30/h or visitor=10/h,user=50/h,key=500/d"
    if "=" not in raw:
        rule = parse_rule(raw, source, example)
        return {kind: rule for kind in KINDS}
    rules: dict[str, Rule] = {}
    for item in raw.split(","):
        kind, sep, text = item.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in KINDS:
            raise SettingError(f"{source}: {item.strip()[:40]!r} does not name a kind: write KIND=N/UNIT with KIND "
                               f"one of {', '.join(KINDS)}, comma-separated, e.g. {example}.")
        if kind in rules:
            raise SettingError(f"{source}: {kind} is given twice.")
        rules[kind] = parse_rule(text, source, example)
    return rules


def parse_login_limit(raw: str, source: str = "TRYON_LOGIN_LIMIT") -> Rule | None:
    """TRYON_LOGIN_LIMIT: failed sign-ins per window ("10/15m"), or "" / "off" for none."""
    raw = raw.strip()
    if raw.lower() in ("", "off", "none"):
        return None
    return parse_rule(raw, source, "10/15m")


def kind_of(owner: str, via: str | None = None) -> str:
    """The kind a quota rule names: an API key, a login (browser, HTTP Basic), or a visitor (a browser
    without logins, an anonymous REST call)."""
    if not owner.startswith("user:"):
        return "visitor"
    return "key" if via == "api-key" else "user"


def wait_text(seconds: int) -> str:
    """ "40 s", "14 min", "3 h 10 min"."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


# -- the counter ------------------------------------------------------------------------------------

class Counter:
    """Units per (name, window), in slot files under ``folder`` shared by every worker of the volume (see the
    module's docstring); in this process only when ``folder`` is None or the volume cannot be written."""

    def __init__(self, folder: Path | None, secret: bytes, what: str):
        self.folder, self._secret, self.what = folder, secret, what
        self._memory: dict[tuple[str, str], set[int]] = {}
        self._lock = threading.Lock()
        self._cleaned: set[str] = set()

    def _key(self, name: str) -> str:
        return hmac.new(self._secret, f"{self.what}\0{name}".encode(), hashlib.sha256).hexdigest()[:32]

    def _window(self, rule: Rule, now: float) -> str:
        return f"{self.what}-{rule.seconds}-{rule.window(now)[0]}"

    def used(self, name: str, rule: Rule, now: float) -> int:
        window, key = self._window(rule, now), self._key(name)
        if self.folder is not None:
            try:
                return len(self._slots(self.folder / window / key))
            except OSError as exc:
                self._degrade(exc)
        with self._lock:
            return len(self._memory.get((window, key), ()))

    def take(self, name: str, rule: Rule, units: int, now: float) -> list | None:
        """Claim ``units`` slots of this window, all or none: a ticket for ``give_back``, or None when fewer
        than ``units`` are left."""
        window, key = self._window(rule, now), self._key(name)
        self._clean(rule, now)
        if self.folder is not None:
            try:
                taken = self._take_files(self.folder / window / key, rule.count, units)
                return None if taken is None else [("file", path) for path in taken]
            except OSError as exc:
                self._degrade(exc)
        with self._lock:
            slots = self._memory.setdefault((window, key), set())
            if len(slots) + units > rule.count:
                return None
            free = [slot for slot in range(rule.count) if slot not in slots][:units]
            slots.update(free)
            return [("memory", (window, key, slot)) for slot in free]

    def give_back(self, ticket: list) -> None:
        for where, slot in ticket:
            if where == "file":
                try:
                    os.unlink(slot)
                except OSError:  # gone with its window, or the volume turned read-only: nothing to give back
                    pass
            else:
                window, key, number = slot
                with self._lock:
                    self._memory.get((window, key), set()).discard(number)

    @staticmethod
    def _slots(folder: Path) -> set[int]:
        try:
            return {int(name) for name in os.listdir(folder) if name.isdigit()}
        except FileNotFoundError:
            return set()

    def _take_files(self, folder: Path, limit: int, units: int) -> list[Path] | None:
        for attempt in range(3):
            existing = self._slots(folder)
            if len(existing) + units > limit:
                return None
            taken: list[Path] = []
            try:
                for slot in range(limit):
                    if slot in existing:
                        continue
                    path = folder / str(slot)
                    if not self._claim(path):  # another worker took it since the listing
                        continue
                    taken.append(path)
                    if len(taken) == units:
                        return taken
            except BaseException:  # a claim failed part-way: the slots already made are not kept either
                try:
                    self._unclaim(taken)
                except OSError:
                    pass  # logged by _unclaim; the claim's own error is the one to raise
                raise
            # Others took the slots meanwhile; give ours back (a batch is all or nothing) and look again.
            self._unclaim(taken)
            time.sleep(random.uniform(0.005, 0.03 * (attempt + 1)))
        return None

    @staticmethod
    def _unclaim(paths: list[Path]) -> None:
        """Remove slot files this call made: every one, even when one fails; then the first failure is raised."""
        failed: OSError | None = None
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot give back quota slot %s (%s): it stays used until its window ends", path, exc)
                failed = failed or exc
        if failed is not None:
            raise failed

    @staticmethod
    def _claim(path: Path) -> bool:
        """Create the slot file if nobody has: True when this call made it."""
        for _ in range(3):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:  # the first unit of this party in this window (or a cleanup raced it)
                path.parent.mkdir(parents=True, exist_ok=True)
        return False

    def _clean(self, rule: Rule, now: float) -> None:
        """Remove ended windows of this counter, once per window per process, in the background."""
        current = self._window(rule, now)
        with self._lock:
            if current in self._cleaned:
                return
            if len(self._cleaned) > 64:
                self._cleaned.clear()
            self._cleaned.add(current)
        threading.Thread(target=self._remove_ended, args=(now,), name="quota-cleanup", daemon=True).start()

    def _ended(self, window: str, now: float) -> bool:
        what, _, rest = window.partition("-")
        seconds, _, start = rest.partition("-")
        return (what == self.what and seconds.isdigit() and start.isdigit()
                and int(start) + int(seconds) + _SETTLE_S < now)

    def _remove_ended(self, now: float) -> None:
        folder = self.folder
        try:
            names = os.listdir(folder) if folder is not None else []
        except OSError:
            names = []
        for name in names:
            if self._ended(name, now):
                shutil.rmtree(folder / name, ignore_errors=True)
        with self._lock:  # this process's own counts of ended windows
            for window, key in [entry for entry in self._memory if self._ended(entry[0], now)]:
                del self._memory[(window, key)]

    def _degrade(self, exc: OSError) -> None:
        """Count in this process from now on when the volume cannot be written (_UNWRITABLE); for any other
        error, CounterUnavailable for this request only (not counted from zero), the files stay in use."""
        reason = errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
        if exc.errno not in _UNWRITABLE:
            log.warning("cannot count %s in %s (%s: %s): this request is refused, the next one tries again",
                        self.what, self.folder, reason, exc.strerror or exc)
            raise CounterUnavailable(f"cannot count {_COUNTED.get(self.what, self.what)} on the volume just now "
                                     f"({reason}); try again in a moment.") from exc
        with self._lock:
            if self.folder is None:
                return
            where, self.folder = self.folder, None
        log.warning("cannot count %s in %s (%s: %s): counting in this process only from now on, so each worker "
                    "allows the full limit", self.what, where, reason, exc.strerror or exc)


def counter_folder(settings: Settings) -> Path:
    return settings.layout.root / ".secrets" / "quotas"


# -- try-ons ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    kind: str
    rule: Rule
    used: int
    resets_in: int  # seconds until the window ends

    @property
    def line(self) -> str:
        """"12 of 30 try-ons this hour"."""
        return f"{self.used} of {self.rule.count} try-on{'s' if self.rule.count != 1 else ''} {self.rule.this}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "limit": self.rule.count, "period": self.rule.text, "period_s": self.rule.seconds,
                "used": self.used, "left": max(0, self.rule.count - self.used), "resets_in_s": self.resets_in}


class Charge:
    """The try-ons charged for a ``TryOnQuota.charged`` body; the body calls ``ran()`` for each one that ran to
    the end (saved), so that a failure gives back only those that never ran."""

    def __init__(self, units: int):
        self.units, self.done = units, 0

    def ran(self, count: int = 1) -> None:
        self.done = min(self.units, self.done + count)


class TryOnQuota:
    """TRYON_QUOTA: try-ons per party and window, charged before the GPU work of a run or a whole batch."""

    def __init__(self, rules: dict[str, Rule], counter: Counter | None = None,
                 clock: Callable[[], float] = time.time):
        self.rules, self.clock = rules, clock
        self.counter = counter or Counter(None, b"", "tryons")

    @classmethod
    def from_settings(cls, settings: Settings, secret: bytes) -> TryOnQuota:
        return cls(parse_quota(settings.quota), Counter(counter_folder(settings), secret, "tryons"))

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def usage(self, party: str, kind: str) -> Usage | None:
        """This party's use of its window, or None when no quota applies to its kind."""
        rule = self.rules.get(kind)
        if rule is None:
            return None
        now = self.clock()
        return Usage(kind, rule, self.counter.used(f"{kind}\0{party}", rule, now), rule.seconds_left(now))

    def check(self, party: str, kind: str, units: int = 1) -> None:
        """QuotaExceeded when ``units`` more would not fit now (a look before any work; ``charged`` decides)."""
        rule = self.rules.get(kind)
        if rule is None:
            return
        now = self.clock()
        used = self.counter.used(f"{kind}\0{party}", rule, now)
        if used + units > rule.count:
            raise self._refusal(kind, rule, units, used, rule.seconds_left(now))

    @contextmanager
    def charged(self, party: str, kind: str, units: int) -> Iterator[Charge]:
        """``units`` try-ons charged to ``party`` for the body (QuotaExceeded, before any work, when they do not
        fit); the body gets a ``Charge`` and calls ``ran()`` as each try-on is saved. If the body fails or is
        refused, the try-ons that never ran (or failed on our side) are given back, those it marked ``ran``
        are kept; if it ends or is stopped (Stop, the caller leaving, TRYON_MAX_RUN_S) the try-ons that had
        the GPU count, a stopped batch's later items are given back."""
        charge = Charge(units)
        rule = self.rules.get(kind)
        if rule is None:
            yield charge
            return
        now = self.clock()
        name = f"{kind}\0{party}"
        ticket = self.counter.take(name, rule, units, now)
        if ticket is None:
            raise self._refusal(kind, rule, units, self.counter.used(name, rule, now), rule.seconds_left(now))
        try:
            yield charge
        except GenerationCancelled as exc:
            ran = min(units, max(charge.done, len(getattr(exc, "finished", []) or [])) + 1)
            self.counter.give_back(ticket[ran:])
            raise
        except BaseException:
            self.counter.give_back(ticket[charge.done:])
            raise

    def _refusal(self, kind: str, rule: Rule, units: int, used: int, retry: int) -> QuotaExceeded:
        whose = f" for {KIND_NAMES[kind]}" if len(set(self.rules.values())) > 1 or len(self.rules) < len(KINDS) else ""
        quota = f"{rule.count} try-on{'s' if rule.count != 1 else ''} {rule.per}{whose}"
        if units > rule.count:
            return QuotaExceeded(f"quota: a batch of {units} try-ons is over the quota of {quota}: split it into "
                                 f"batches of {rule.count} or fewer.", retry)
        left = max(0, rule.count - used)
        if units > 1 and left:
            return QuotaExceeded(f"quota: {quota}; {used} used {rule.this}, so this batch of {units} does not fit: "
                                 f"send {left} or fewer, or try again in {wait_text(retry)}.", retry)
        return QuotaExceeded(f"quota: {quota}; {used} used {rule.this}; try again in {wait_text(retry)}.", retry)


# -- sign-ins ---------------------------------------------------------------------------------------

class LoginLimit:
    """TRYON_LOGIN_LIMIT: failed sign-ins per address and per (account name, address) pair, in the same kind
    of window.

    ``attempt`` verifies the credentials and then either charges a failure (to the address first, then the
    pair) or, for right ones, checks that neither is over the limit; so once over it, a right password is
    refused too from that address until the window ends, and guessing from one address stays limited
    however many workers answer. Failures from elsewhere do not count against an account: nobody can lock
    alice out from another address. An unknown address (None) is not counted on its own and its pairs use
    the address "unknown", so they count per account. Account names are counted whether or not they exist,
    and the refusal is the same: it tells nothing about which names exist."""

    def __init__(self, rule: Rule | None, counter: Counter | None = None, clock: Callable[[], float] = time.time):
        self.rule, self.clock = rule, clock
        self.counter = counter or Counter(None, b"", "logins")

    @classmethod
    def from_settings(cls, settings: Settings, secret: bytes) -> LoginLimit:
        return cls(parse_login_limit(settings.login_limit), Counter(counter_folder(settings), secret, "logins"))

    @property
    def active(self) -> bool:
        return self.rule is not None

    def attempt(self, user: str, address: str | None, verify: Callable[[], object | None]):
        """``verify()``'s identity, or None for wrong credentials; QuotaExceeded when this address, or this
        account from this address, is over the limit (before or because of this attempt)."""
        identity = verify()
        rule = self.rule
        if rule is None:
            return identity
        now = self.clock()
        names = [f"pair\0{user[:128]}\0{address or 'unknown'}"]
        if address is not None:
            names.insert(0, f"address\0{address}")
        if identity is None:
            for name in names:
                if self.counter.take(name, rule, 1, now) is None:
                    raise self._refusal(rule, now)
            return None
        if any(self.counter.used(name, rule, now) >= rule.count for name in names):
            raise self._refusal(rule, now)
        return identity

    @staticmethod
    def _refusal(rule: Rule, now: float) -> QuotaExceeded:
        retry = rule.seconds_left(now)
        return QuotaExceeded(f"too many failed sign-ins for this user name or from this address ({rule.count} "
                             f"{rule.per}); try again in {wait_text(retry)}.", retry)
