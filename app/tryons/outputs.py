"""The results store on the volume, one folder per owner, one subfolder per month:

    outputs/<owner key>/<YYYY-MM>/<YYYYMMDD>-<HHMMSSffffff>-<worker>-<random>.png   the image
                                  <same name>.json                                  its sidecar
                                  <same name>.flagged.json                          a result the safety
                                                                                    checker flagged: no image

The owner key is a keyed hash of the owner ("user:alice", "visitor:<id>", ...) under the volume's secret
(``.secrets/session.key``), so nobody can test a guessed name against an id; a page of one owner's
results costs a listing of their month folders plus the sidecars shown, however many results other
owners have. A result's id is its file name plus the owner key: ids sort by time, name the worker
that made them (several server processes share a volume without colliding), and say where the files
are without searching. Files are written under temporary names and renamed; the sidecar is written
last and is what makes a result visible, so a crash never leaves a half result in a gallery. A flagged
result's record has its own suffix: listings and ``get`` never see it, and cost nothing more for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from heapq import merge
from pathlib import Path

from PIL import Image

from app.files import write_atomically

log = logging.getLogger(__name__)

LEGACY_OWNER = "legacy"  # results made before results had owners (outputs/YYYY-MM-DD/)
STEM = re.compile(r"^(\d{4})(\d{2})\d{2}-\d{12}-[0-9a-f]{6}-[0-9a-f]{6}$")
RESULT_ID = re.compile(r"^(?P<stem>\d{8}-\d{12}-[0-9a-f]{6}-[0-9a-f]{6})-(?P<owner>[0-9a-f]{16})$")
OWNER_KEY = re.compile(r"^[0-9a-f]{16}$")
MONTH = re.compile(r"^\d{4}-\d{2}$")
LEGACY_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LEGACY_NAME = re.compile(r"^(\d{12})-([0-9a-f]{8})$")
TEMP_MAX_AGE_S = 3600.0
# zlib level of the PNGs on the volume: lossless either way; level 1 wrote a 6-megapixel photo in 0.8 s and
# 10.5 MB where PIL's default (6) took 4.2 s for 9.0 MB.
PNG_LEVEL = 1
FLAGGED_SIDECAR = ".flagged.json"


@dataclass(frozen=True)
class SavedResult:
    id: str
    image_path: Path  # of a flagged result: where its image would have been (nothing is there)
    metadata: dict

    @property
    def flagged(self) -> bool:
        """The safety checker flagged it: a record without an image, in no listing."""
        return bool(self.metadata.get("flagged"))

    @property
    def sidecar_path(self) -> Path:
        return self.image_path.with_suffix(FLAGGED_SIDECAR if self.flagged else ".json")


def public_metadata(metadata: dict) -> dict:
    """A sidecar as callers see it: without the owner (a visitor's id stays with its cookie)."""
    return {key: value for key, value in metadata.items() if key not in ("owner", "session")}


def owner_key(owner: str, secret: bytes | None = None) -> str:
    """The owner's folder name: HMAC-SHA-256 under the volume's secret; without one (tools and tests that
    have no volume secret), and in the layout before keys, a plain SHA-256 of the owner."""
    if secret is None:
        return hashlib.sha256(owner.encode()).hexdigest()[:16]
    return hmac.new(secret, owner.encode(), hashlib.sha256).hexdigest()[:16]


def image_digest(image: Image.Image) -> str:
    """A hash of the pixels (mode and size included), for the sidecar: which inputs made this result."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


class ResultStore:
    def __init__(self, outputs_dir: Path, volume_root: Path, save_inputs: bool = False, secret: bytes | None = None):
        self.outputs_dir = Path(outputs_dir)
        self.volume_root = Path(volume_root)
        self.save_inputs = save_inputs
        self.secret = secret
        self._adopted: set[str] = set()  # owners whose folder of the unkeyed layout was looked for
        self.worker = secrets.token_hex(3)  # this process; with the time and a random part, ids never collide
        self._clock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    # -- names ----------------------------------------------------------------------------------

    def path_for_new(self, owner: str, created: datetime, worker: str | None = None,
                     suffix: str | None = None) -> Path:
        stem = f"{created:%Y%m%d-%H%M%S%f}-{worker or self.worker}-{suffix or secrets.token_hex(3)}"
        return self.outputs_dir / self.key_of(owner) / f"{created:%Y-%m}" / f"{stem}.png"

    def key_of(self, owner: str) -> str:
        """The owner's folder; its results of the unkeyed layout are moved in on first use."""
        if self.secret is not None and owner not in self._adopted and not owner.startswith("anon:"):
            if len(self._adopted) > 100_000:
                self._adopted.clear()
            self._adopted.add(owner)
            self.adopt_unkeyed(owner)
        return owner_key(owner, self.secret)

    @staticmethod
    def id_of(image_path: Path) -> str:
        return f"{image_path.stem}-{image_path.parent.parent.name}"

    def path_of(self, result_id: str) -> Path | None:
        """The image path an id names, or None when it is not an id."""
        match = RESULT_ID.match(result_id or "")
        if not match:
            return None
        stem = match["stem"]
        return self.outputs_dir / match["owner"] / f"{stem[:4]}-{stem[4:6]}" / f"{stem}.png"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.volume_root).as_posix()

    def _now(self) -> datetime:
        """Strictly increasing within this process, so its ids sort in the order results were made."""
        with self._clock:
            now = max(datetime.now(timezone.utc), self._last + timedelta(microseconds=1))
            self._last = now
            return now

    # -- writing --------------------------------------------------------------------------------

    def save(self, image: Image.Image, metadata: dict, inputs: dict[str, Image.Image] | None = None,
             owner: str = "anon") -> SavedResult:
        now = self._now()
        image_path = self.path_for_new(owner, now)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        result_id = self.id_of(image_path)
        record = {
            **metadata,
            "id": result_id,
            "created": now.isoformat(timespec="seconds"),
            "image": self.relative(image_path),
            "size": [image.width, image.height],
            "owner": owner,
            "inputs": {role: image_digest(img) for role, img in (inputs or {}).items()},
        }
        written: list[Path] = []
        try:
            if self.save_inputs and inputs:
                record["input_files"] = {}
                for role, img in inputs.items():
                    path = image_path.with_name(f"{image_path.stem}.{role}.png")
                    write_atomically(path, lambda handle, img=img: img.save(handle, format="PNG",
                                                                           compress_level=PNG_LEVEL))
                    written.append(path)
                    record["input_files"][role] = self.relative(path)
            write_atomically(image_path, lambda handle: image.save(handle, format="PNG", compress_level=PNG_LEVEL))
            written.append(image_path)
            body = json.dumps(record, indent=2, sort_keys=True).encode()
            write_atomically(image_path.with_suffix(".json"), lambda handle: handle.write(body))
        except BaseException:
            for path in written:  # no orphans without a sidecar (disk full, volume gone)
                path.unlink(missing_ok=True)
            raise
        return SavedResult(result_id, image_path, record)

    def save_flagged(self, metadata: dict, size: tuple[int, int], inputs: dict[str, Image.Image] | None = None,
                     owner: str = "anon") -> SavedResult:
        """The record of a result the safety checker flagged: its sidecar only (``"flagged": true``, no image,
        no input files even with save_inputs), under a name no listing picks up."""
        now = self._now()
        image_path = self.path_for_new(owner, now)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        record = {**metadata, "id": self.id_of(image_path), "created": now.isoformat(timespec="seconds"),
                  "image": None, "flagged": True, "size": list(size), "owner": owner,
                  "inputs": {role: image_digest(img) for role, img in (inputs or {}).items()}}
        body = json.dumps(record, indent=2, sort_keys=True).encode()
        write_atomically(image_path.with_suffix(FLAGGED_SIDECAR), lambda handle: handle.write(body))
        return SavedResult(record["id"], image_path, record)

    # -- reading --------------------------------------------------------------------------------

    def list(self, owner: str | None, offset: int = 0, limit: int = 24) -> tuple[list[SavedResult], int]:
        """``owner``'s complete results (those with a sidecar), newest first, and how many there are;
        everyone's when ``owner`` is None. Costs one listing per month folder of the owner (of every
        owner when None) plus the sidecars of the page."""
        if owner is None:
            keys = sorted(p.name for p in scandir_dirs(self.outputs_dir) if OWNER_KEY.match(p.name))
        else:
            keys = [self.key_of(owner)]
        per_owner = [self._names(key) for key in keys]
        total = sum(len(names) for names in per_owner)
        newest_first = merge(*per_owner, key=lambda item: item[0], reverse=True)
        page = []
        for index, (_stem, sidecar) in enumerate(newest_first):
            if index >= offset + limit:
                break
            if index >= offset:
                result = self._load(sidecar)
                if result is not None:
                    page.append(result)
        return page, total

    def get(self, result_id: str, owner: str | None) -> SavedResult | None:
        """The result with this id if ``owner`` may see it (anyone's when ``owner`` is None), else None."""
        image_path = self.path_of(result_id)
        if image_path is None or (owner is not None and image_path.parent.parent.name != self.key_of(owner)):
            return None
        return self._load(image_path.with_suffix(".json"))

    def _names(self, key: str) -> list[tuple[str, Path]]:
        """(stem, sidecar) of one owner's complete-looking results, newest first."""
        names: list[tuple[str, Path]] = []
        folder = self.outputs_dir / key
        for month in sorted((p.name for p in scandir_dirs(folder) if MONTH.match(p.name)), reverse=True):
            month_dir = folder / month
            stems = sorted((name[:-5] for name in listdir(month_dir)
                            if name.endswith(".json") and STEM.match(name[:-5])), reverse=True)
            names.extend((stem, month_dir / f"{stem}.json") for stem in stems)
        return names

    def _load(self, sidecar: Path) -> SavedResult | None:
        image_path = sidecar.with_suffix(".png")
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        if not image_path.is_file():
            return None
        return SavedResult(self.id_of(image_path), image_path, metadata)

    # -- upkeep at start --------------------------------------------------------------------------

    def sweep_temp(self, max_age_s: float = TEMP_MAX_AGE_S) -> int:
        """Remove temporary files older than ``max_age_s`` (writes that died); returns how many."""
        cutoff = time.time() - max_age_s
        removed = 0
        for folder in self._all_month_dirs():
            for name in listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    path = folder / name
                    try:
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                    except FileNotFoundError:
                        pass  # another worker swept it
        if removed:
            log.info("removed %d temporary files older than %d s from %s", removed, max_age_s, self.outputs_dir)
        return removed

    def migrate_legacy(self) -> int:
        """Move results of the layout before owners (outputs/YYYY-MM-DD/<time>-<id>.png) to the owner
        "legacy", keeping their time. Safe to run from several workers at once; returns how many moved."""
        moved = 0
        for day in sorted(p for p in scandir_dirs(self.outputs_dir) if LEGACY_DAY.match(p.name)):
            for name in sorted(listdir(day)):
                match = LEGACY_NAME.match(name.removesuffix(".json"))
                if name.endswith(".json") and match and self._migrate_one(day, match):
                    moved += 1
            try:
                day.rmdir()  # only when empty: unknown files stay where they are
            except OSError:
                pass
        if moved:
            log.info("moved %d results of the old layout under the owner %r", moved, LEGACY_OWNER)
        return moved

    def _migrate_one(self, day: Path, match: re.Match) -> bool:
        old_json = day / f"{match[0]}.json"
        try:
            record = json.loads(old_json.read_text())
        except FileNotFoundError:
            return False  # another worker moved it
        except (OSError, ValueError):
            return False  # unreadable: left in place for a person to look at
        created = datetime.strptime(f"{day.name} {match[1]}", "%Y-%m-%d %H%M%S%f").replace(tzinfo=timezone.utc)
        image_path = self.path_for_new(LEGACY_OWNER, created, worker="000000", suffix=match[2][:6])
        image_path.parent.mkdir(parents=True, exist_ok=True)
        moves = [(day / f"{match[0]}.png", image_path)]
        moves += [(day / name, image_path.with_name(f"{image_path.stem}{name.removeprefix(match[0])}"))
                  for name in listdir(day) if name.startswith(f"{match[0]}.") and name.endswith(".png")
                  and name != f"{match[0]}.png"]
        for source, target in moves:
            try:
                os.replace(source, target)
            except FileNotFoundError:
                pass  # moved by another worker, or never written
        if not image_path.is_file():
            return False
        record.pop("session", None)
        record.update(id=self.id_of(image_path), owner=LEGACY_OWNER, image=self.relative(image_path))
        if "input_files" in record:
            record["input_files"] = {role: self.relative(image_path.with_name(f"{image_path.stem}.{role}.png"))
                                     for role in record["input_files"]}
        body = json.dumps(record, indent=2, sort_keys=True).encode()
        write_atomically(image_path.with_suffix(".json"), lambda handle: handle.write(body))
        old_json.unlink(missing_ok=True)
        return True

    def adopt_unkeyed(self, owner: str) -> int:
        """Move ``owner``'s results from the unkeyed folder (sha256 of the owner) into the keyed one, each
        image before its sidecar (rewritten with its new id and path): safe from several workers at once
        and after a crash, since a result shows only once its sidecar is in place. Returns how many moved."""
        old, new = owner_key(owner), owner_key(owner, self.secret)
        if self.secret is None or old == new or not (self.outputs_dir / old).is_dir():
            return 0
        moved = 0
        for month_dir in sorted(p for p in scandir_dirs(self.outputs_dir / old) if MONTH.match(p.name)):
            target_dir = self.outputs_dir / new / month_dir.name
            target_dir.mkdir(parents=True, exist_ok=True)
            names = listdir(month_dir)
            for sidecar in sorted(n for n in names if n.endswith(".json") and STEM.match(n[:-5])):
                stem = sidecar[:-5]
                for name in sorted(n for n in names if n.startswith(f"{stem}.") and n.endswith(".png")):
                    try:
                        os.replace(month_dir / name, target_dir / name)
                    except FileNotFoundError:
                        pass  # another worker moved it
                try:
                    record = json.loads((month_dir / sidecar).read_text())
                except FileNotFoundError:
                    continue
                except (OSError, ValueError):
                    continue  # unreadable: left for a person to look at
                image_path = target_dir / f"{stem}.png"
                record.update(id=self.id_of(image_path), image=self.relative(image_path))
                if "input_files" in record:
                    record["input_files"] = {role: self.relative(target_dir / f"{stem}.{role}.png")
                                             for role in record["input_files"]}
                body = json.dumps(record, indent=2, sort_keys=True).encode()
                write_atomically(target_dir / sidecar, lambda handle, body=body: handle.write(body))
                (month_dir / sidecar).unlink(missing_ok=True)
                moved += 1
            try:
                month_dir.rmdir()
            except OSError:
                pass
        try:
            (self.outputs_dir / old).rmdir()
        except OSError:
            pass
        if moved:
            log.info("moved %d results of %s into its keyed folder", moved, new)
        return moved

    def _all_month_dirs(self) -> Iterator[Path]:
        for owner_dir in scandir_dirs(self.outputs_dir):
            if OWNER_KEY.match(owner_dir.name):
                yield from (p for p in scandir_dirs(owner_dir) if MONTH.match(p.name))


def scandir_dirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
