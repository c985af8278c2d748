"""The results store on the volume: outputs/YYYY-MM-DD/<time>-<id>.png plus a .json sidecar.

Files are written under temporary names and renamed; the sidecar is written last and is what
makes a result visible, so a crash never leaves a half result in the gallery.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

# The time part carries microseconds, so names sort in creation order without a stat per file.
RESULT_ID = re.compile(r"^\d{4}-\d{2}-\d{2}/\d{12}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class SavedResult:
    id: str  # "YYYY-MM-DD/HHMMSSffffff-xxxxxxxx"
    image_path: Path
    metadata: dict

    @property
    def sidecar_path(self) -> Path:
        return self.image_path.with_suffix(".json")


def image_digest(image: Image.Image) -> str:
    """A hash of the pixels (mode and size included), for the sidecar: which inputs made this result."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


class ResultStore:
    def __init__(self, outputs_dir: Path, volume_root: Path, save_inputs: bool = False):
        self.outputs_dir = Path(outputs_dir)
        self.volume_root = Path(volume_root)
        self.save_inputs = save_inputs

    def save(self, image: Image.Image, metadata: dict, inputs: dict[str, Image.Image] | None = None,
             session: str | None = None) -> SavedResult:
        now = datetime.now(timezone.utc)
        result_id = f"{now:%Y-%m-%d}/{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        folder = self.outputs_dir / result_id.split("/")[0]
        folder.mkdir(parents=True, exist_ok=True)
        image_path = self.outputs_dir / f"{result_id}.png"
        record = {
            **metadata,
            "id": result_id,
            "created": now.isoformat(timespec="seconds"),
            "image": self.relative(image_path),
            "size": [image.width, image.height],
            "session": session,
            "inputs": {role: image_digest(img) for role, img in (inputs or {}).items()},
        }
        written: list[Path] = []
        try:
            if self.save_inputs and inputs:
                record["input_files"] = {}
                for role, img in inputs.items():
                    path = image_path.with_name(f"{image_path.stem}.{role}.png")
                    write_atomically(path, lambda handle, img=img: img.save(handle, format="PNG"))
                    written.append(path)
                    record["input_files"][role] = self.relative(path)
            write_atomically(image_path, lambda handle: image.save(handle, format="PNG"))
            written.append(image_path)
            body = json.dumps(record, indent=2, sort_keys=True).encode()
            write_atomically(image_path.with_suffix(".json"), lambda handle: handle.write(body))
        except BaseException:
            for path in written:  # no orphans without a sidecar (disk full, volume gone)
                path.unlink(missing_ok=True)
            raise
        return SavedResult(result_id, image_path, record)

    def list(self, session: str | None = None, offset: int = 0, limit: int = 24,
             only_session: bool = False) -> tuple[list[SavedResult], int]:
        """Complete results (those with a sidecar), newest first, and how many there are.

        Without ``only_session`` only the requested page's sidecars are read: a gallery page costs
        one directory listing plus ``limit`` reads on the volume, however many results it holds.
        """
        sidecars = sorted((p for p in self.outputs_dir.glob("????-??-??/*.json") if not p.name.startswith(".")),
                          key=lambda p: (p.parent.name, p.name), reverse=True)
        if not only_session:
            page = [r for r in (self._load(p) for p in sidecars[offset:offset + limit]) if r is not None]
            return page, len(sidecars)
        found = [r for r in map(self._load, sidecars) if r is not None and r.metadata.get("session") == session]
        return found[offset:offset + limit], len(found)

    def get(self, result_id: str) -> SavedResult | None:
        if not RESULT_ID.match(result_id):
            return None
        return self._load(self.outputs_dir / f"{result_id}.json")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.volume_root).as_posix()

    def _load(self, sidecar: Path) -> SavedResult | None:
        image_path = sidecar.with_suffix(".png")
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        if not image_path.is_file():
            return None
        return SavedResult(metadata.get("id", ""), image_path, metadata)


def write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

