"""Who is calling, and whose results they may see; no web framework here (the doors are in app.web.guard).

Owners of results:
- ``user:<name>``: a login (browser, HTTP Basic) or an API key of that name;
- ``visitor:<id>``: a browser without auth, identified by a cookie the server issues and signs;
- ``anon:<id>``: a REST call without credentials, a fresh id per call, so nobody can list its results.

Passwords and keys are compared in constant time. The cookie key lives on the volume
(``.secrets/session.key``), so every worker of a volume accepts the same cookies across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.config import SettingError, Settings
from app.tryons.quotas import LoginLimit

log = logging.getLogger(__name__)

COOKIE = "tryon_session"
LOGIN_DAYS = 14
VISITOR_DAYS = 365
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


@dataclass(frozen=True)
class Identity:
    owner: str
    name: str  # what the page shows: the user or key name, "visitor" or "anonymous"
    via: str  # "login", "basic", "api-key", "visitor" or "anonymous"

    @property
    def signed_in(self) -> bool:
        return self.owner.startswith("user:")


def parse_pairs(raw: str, source: str, what: str) -> dict[str, str]:
    """``name:secret`` pairs, comma-separated or one per line in ``@FILE`` (blank lines and # comments skipped)."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        try:
            items = [line.strip() for line in path.read_text().splitlines()]
        except OSError as exc:
            raise SettingError(f"{source}: cannot read {path} ({exc.strerror or exc}); give a readable file of "
                               f"{what} pairs, one per line.") from None
        items = [item for item in items if item and not item.startswith("#")]
    else:
        items = [item.strip() for item in raw.split(",") if item.strip()]
    pairs: dict[str, str] = {}
    for number, item in enumerate(items, 1):
        name, sep, secret = item.partition(":")
        name = name.strip()
        if not sep or not name or not secret:
            raise SettingError(f"{source}: entry {number} is not {what} (NAME:SECRET, both non-empty); "
                               "a secret with a comma belongs in a file given as @FILE.")
        if not set(name) <= _NAME_CHARS or len(name) > 64:
            raise SettingError(f"{source}: the name {name[:64]!r} may use only letters, digits and . _ @ - "
                               "(64 at most).")
        if name in pairs:
            raise SettingError(f"{source}: {name!r} is given twice.")
        pairs[name] = secret
    return pairs


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Access:
    def __init__(self, users: dict[str, str], keys: dict[str, str], secret: bytes, gallery: str = "own",
                 sessions_dir: Path | None = None):
        self._users = {name: _digest(password) for name, password in users.items()}
        self._keys = [(_digest(key), name) for name, key in keys.items()]
        self._secret = secret
        self.gallery = gallery
        self.sessions = SessionGenerations(sessions_dir, secret)
        self.logins = LoginLimit(None)  # TRYON_LOGIN_LIMIT: from_settings counts on the volume (app.tryons.quotas)

    @classmethod
    def from_settings(cls, settings: Settings, secret: bytes | None = None) -> Access:
        users = parse_pairs(settings.auth, "TRYON_AUTH (--auth)", "a user:password login")
        keys = parse_pairs(settings.api_keys, "TRYON_API_KEYS", "a name:key API key")
        access = cls(users, keys, secret if secret is not None else load_secret(settings.layout.root),
                     settings.gallery, sessions_dir=settings.layout.root / ".secrets" / "sessions")
        access.logins = LoginLimit.from_settings(settings, access.secret)
        return access

    @property
    def secret(self) -> bytes:
        """The volume's key: signs cookies and keys owner folders (app.tryons.outputs)."""
        return self._secret

    def known_owners(self) -> list[str]:
        """The owners this server can name: every login and every API key's name."""
        return sorted({f"user:{name}" for name in self._users} | {f"user:{name}" for _digest, name in self._keys})

    @property
    def required(self) -> bool:
        """Logins are configured: nobody gets in without credentials."""
        return bool(self._users)

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def listing_owner(self, identity_or_owner: Identity | str) -> str | None:
        """Whose results this caller sees: their own, or everyone's (None) in a team studio."""
        if self.gallery == "all":
            return None
        return identity_or_owner.owner if isinstance(identity_or_owner, Identity) else identity_or_owner

    # -- credentials ----------------------------------------------------------------------------

    def login(self, user: str, password: str, via: str = "login") -> Identity | None:
        expected = self._users.get(user)
        # The same work for unknown users, so timing tells nothing about which names exist.
        matches = hmac.compare_digest(_digest(password), expected if expected is not None else _digest("\0" + user))
        return Identity(f"user:{user}", user, via) if matches and expected is not None else None

    def api_key(self, key: str) -> Identity | None:
        given = _digest(key)
        found = None
        for digest, name in self._keys:  # every key compared, no early exit
            if hmac.compare_digest(given, digest):
                found = name
        return None if found is None else Identity(f"user:{found}", found, "api-key")

    def basic(self, header: str) -> Identity | None:
        """The identity in an ``Authorization: Basic`` header value, or None when it does not hold."""
        credentials = basic_credentials(header)
        return self.login(*credentials, via="basic") if credentials else None

    # -- cookies --------------------------------------------------------------------------------

    def new_visitor(self) -> Identity:
        return Identity(f"visitor:{secrets.token_hex(12)}", "visitor", "visitor")

    @staticmethod
    def anonymous() -> Identity:
        return Identity(f"anon:{secrets.token_hex(12)}", "anonymous", "anonymous")

    def cookie_for(self, identity: Identity, now: float | None = None) -> str:
        kind = "u" if identity.signed_in else "v"
        value = identity.name if kind == "u" else identity.owner.removeprefix("visitor:")
        payload = f"{kind}.{_b64(value.encode())}.{int(now if now is not None else time.time())}"
        return f"{payload}.{self._sign(payload, kind, value)}"

    def from_cookie(self, cookie: str, now: float | None = None) -> Identity | None:
        """The identity a cookie carries if its signature holds, it has not expired and (for a login) the
        user still exists with the same password; logins are not accepted as visitors or the other way."""
        try:
            kind, value_b64, issued, signature = cookie.split(".")
            value = _unb64(value_b64).decode("utf-8")
            age = (now if now is not None else time.time()) - int(issued)
        except (ValueError, UnicodeDecodeError):
            return None
        payload = f"{kind}.{value_b64}.{issued}"
        if kind not in ("u", "v") or not hmac.compare_digest(signature, self._sign(payload, kind, value)):
            return None
        if kind == "u":
            if self.required and value in self._users and -60 < age < LOGIN_DAYS * 86400:
                return Identity(f"user:{value}", value, "login")
            return None
        if not self.required and -60 < age < VISITOR_DAYS * 86400 and len(value) == 24:
            return Identity(f"visitor:{value}", "visitor", "visitor")
        return None

    def sign_out(self, user: str) -> None:
        """End every browser session of ``user`` (all workers of the volume; see SessionGenerations)."""
        self.sessions.advance(user)

    def _sign(self, payload: str, kind: str, value: str) -> str:
        # A login's signature covers the password and the user's session generation: changing the password or
        # signing out ends that user's sessions.
        bound = (self._users.get(value, b"") + b"\0" + str(self.sessions.current(value)).encode()
                 if kind == "u" else b"")
        return _b64(hmac.new(self._secret, payload.encode() + b"\0" + bound, hashlib.sha256).digest()[:24])


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header value, or None when it holds none."""
    try:
        user, sep, password = _unb64(header.split(" ", 1)[1].strip()).decode("utf-8").partition(":")
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def party_of(owner: str, address: str | None) -> str:
    """Whom a try-on or a sign-in is counted against (fair share, the per-caller limit, quotas): a login or an
    API key by its name; a visitor or an anonymous call by the client's address, so that a visitor who drops
    the cookie, or a script that sends none, is still the same party. IPv6 addresses count by their /64 (one
    host commonly holds a whole one). Without a usable address (none, or loopback: ``--share``'s tunnel and a
    local proxy arrive from 127.0.0.1) the owner itself is the party: the visitor's cookie."""
    if owner.startswith("user:"):
        return owner
    usable = usable_address(address)
    return f"addr:{usable}" if usable else owner


def usable_address(address: str | None) -> str | None:
    """The address to count a caller by, or None when it tells callers apart from nothing (missing, loopback,
    not an IP address)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return usable_address(str(ip.ipv4_mapped))
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SessionGenerations:
    """A number per user that signing out advances, kept on the volume (``.secrets/sessions/<keyed name>``)
    so that every worker stops accepting that user's older cookies. Read at most every ``ttl`` seconds per
    user per process: another worker notices a sign-out within that time, this one at once. Without a
    folder (tests, a read-only volume) the numbers live in this process."""

    def __init__(self, folder: Path | None, secret: bytes, ttl: float = 2.0):
        self.folder, self._secret, self.ttl = folder, secret, ttl
        self._seen: dict[str, tuple[int, float]] = {}

    def _path(self, user: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / hmac.new(self._secret, user.encode(), hashlib.sha256).hexdigest()[:24]

    def _read(self, user: str) -> int:
        path = self._path(user)
        if path is None:
            return self._seen.get(user, (0, 0.0))[0]
        try:
            return int(path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return self._seen.get(user, (0, 0.0))[0]

    def current(self, user: str) -> int:
        value, read_at = self._seen.get(user, (0, -math.inf))
        if time.monotonic() - read_at > self.ttl:
            value = self._read(user)
            self._seen[user] = (value, time.monotonic())
        return value

    def advance(self, user: str) -> None:
        value = self._read(user) + 1
        self._seen[user] = (value, time.monotonic())
        path = self._path(user)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as handle:
                handle.write(str(value))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not record a sign-out in %s (%s): other workers accept that user's older cookies "
                        "until they expire", path.parent, exc.strerror or exc)


def load_secret(volume: Path) -> bytes:
    """The cookie key of this volume, made once by whichever worker comes first (O_EXCL)."""
    path = volume / ".secrets" / "session.key"
    for _ in range(50):
        try:
            text = path.read_text().strip()
            if len(text) == 64:
                return bytes.fromhex(text)
            if text:
                raise ValueError("not 64 hex digits")
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(path.parent, 0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another worker is writing it: read it on the next round
            except OSError as exc:
                return _memory_secret(f"cannot write {path} ({exc.strerror or exc})")
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            continue
        except (OSError, ValueError) as exc:
            return _memory_secret(f"{path} is unusable ({exc}); delete it to make a new one")
        time.sleep(0.02)  # the file exists and is being written
    return _memory_secret(f"{path} stayed empty")


def _memory_secret(reason: str) -> bytes:
    log.warning("%s: cookies are signed with a key of this process only, so logins and visitor galleries "
                "end when it restarts and other workers do not accept them", reason)
    return secrets.token_bytes(32)
