"""Example persons and garments for the studio: the built-ins in assets/examples, then the user's own.

Built-ins are listed by ``assets/examples/catalogue.json`` (written by ``python -m app.studio.demo_images``). The
user's catalogue is plain folders on the volume, no index file to keep in step::

    examples/person/*.png|jpg|jpeg|webp
    examples/garment/*             garment type unknown
    examples/garment/upper/*       (and lower/, overall/): the folder names the type

Listing never raises: a missing folder is empty, an unreadable entry is skipped with a warning. Only
names are listed, not decoded, so a page load costs one directory read per folder plus one stat per shown
file (each is a round trip on a network volume).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from app.config import VolumeLayout

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
GARMENT_TYPES = ("upper", "lower", "overall")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_EXAMPLES = 48  # per list, built-ins included: a huge folder must not flood the page


@dataclass(frozen=True)
class ExampleImage:
    path: Path
    label: str  # short caption for the studio
    garment_type: str | None  # garments: "upper" | "lower" | "overall"; persons or unknown: None


def example_people(volume_root: Path | None) -> list[ExampleImage]:
    """Built-in persons in catalogue order, then ``<volume>/examples/person/*`` by name; at most MAX_EXAMPLES."""
    found = _builtins("people")
    if volume_root is not None:
        folder = VolumeLayout(Path(volume_root)).examples / "person"
        found += _user_images([(folder, None)], MAX_EXAMPLES - len(found))
    return found[:MAX_EXAMPLES]


def example_garments(volume_root: Path | None) -> list[ExampleImage]:
    """Built-in garments, then ``<volume>/examples/garment/`` and its type folders, all sorted by file name."""
    found = _builtins("garments")
    if volume_root is not None:
        folder = VolumeLayout(Path(volume_root)).examples / "garment"
        sources = [(folder, None)] + [(folder / kind, kind) for kind in GARMENT_TYPES]
        found += _user_images(sources, MAX_EXAMPLES - len(found))
    return found[:MAX_EXAMPLES]


def _builtins(section: str) -> list[ExampleImage]:
    catalogue = BUILTIN_DIR / "catalogue.json"
    try:
        entries = json.loads(catalogue.read_text(encoding="utf-8"))[section]
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("No built-in examples: cannot read %s (%s); regenerate it with "
                    "`python -m app.studio.demo_images assets/examples`", catalogue, error)
        return []
    found = []
    for entry in entries:
        try:
            path, label, kind = BUILTIN_DIR / entry["file"], str(entry["label"]), entry.get("type")
        except (KeyError, TypeError):
            log.warning("Skipped a malformed entry in %s: %r", catalogue, entry)
            continue
        if kind is not None and kind not in GARMENT_TYPES:
            log.warning("%s: %s has garment type %r, not one of %s; listed without a type",
                        catalogue, entry["file"], kind, ", ".join(GARMENT_TYPES))
            kind = None
        if not path.is_file():
            log.warning("Skipped built-in example %s: listed in %s but missing", path, catalogue)
            continue
        found.append(ExampleImage(path, label, kind))
    return found


def _user_images(sources: list[tuple[Path, str | None]], room: int) -> list[ExampleImage]:
    """Image files directly in each (folder, garment type), merged and sorted by file name, at most ``room``."""
    candidates = []
    for folder, kind in sources:
        for name in _image_names(folder):
            candidates.append((name.casefold(), name, folder / name, kind))
    candidates.sort(key=lambda c: (c[0], c[1], str(c[2])))
    found = []
    for index, (_, name, path, kind) in enumerate(candidates):
        if len(found) >= room:
            log.warning("Listing only %d examples; up to %d more under %s are not shown",
                        MAX_EXAMPLES, len(candidates) - index, sources[0][0])
            break
        try:
            info = path.stat()
        except OSError as error:
            log.warning("Skipped example %s: %s", path, error)
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            continue  # a folder named like an image, or a file still being written
        found.append(ExampleImage(path, _label(name), kind))
    return found


def _image_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return []
    except OSError as error:
        log.warning("Skipped examples folder %s: %s", folder, error)
        return []
    return [name for name in names if _is_image_name(name)]


def _is_image_name(name: str) -> bool:
    """Image suffix, and not hidden or a temporary file (``.x.png.tmp``, ``x.png~``, ``~$x.png``)."""
    if name.startswith((".", "~")) or name.endswith("~"):
        return False
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _label(name: str) -> str:
    stem = Path(name).stem
    return " ".join(stem.replace("-", " ").replace("_", " ").split()) or stem
