"""torch.compile's cache on the volume: one file per runtime, GPU and compile profile.

Inductor keeps its own cache on local disk; what crosses workers is the portable bundle of
``torch.compiler.save_cache_artifacts()``, written under a temporary name and renamed into
``$TRYON_VOLUME/cache/torch/<runtime key>/<profile>.bin``. Concurrent writers each rename a complete
file (the last one wins, every version is whole); a damaged file is moved aside and recompiled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)


def runtime_key(settings: Settings) -> str:
    """The launcher's runtime key, else one derived from what compiled kernels depend on."""
    if settings.runtime_key:
        return _slug(settings.runtime_key)
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    material = f"python={sys.version.split()[0]} torch={torch.__version__} triton={triton_version} " \
               f"machine={platform.machine()}"
    return "dev-" + hashlib.sha256(material.encode()).hexdigest()[:12]


def cache_folder(settings: Settings) -> Path:
    return settings.layout.cache / "torch" / runtime_key(settings)


def device_label(device: str) -> str:
    """The compute target compiled kernels are made for: the GPU's name and capability, or the CPU."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{_slug(torch.cuda.get_device_name())}-sm{major}{minor}"
    return f"cpu-{platform.machine()}"


class CompileCache:
    """The volume file for one compile profile: ``load()`` before compiling, ``save()`` after."""

    def __init__(self, settings: Settings, profile: str):
        self.path = cache_folder(settings) / f"{_slug(profile)}.bin"

    def load(self) -> bool:
        """Feed the saved artifacts to torch's caches; False when there are none or they are unusable."""
        import torch

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("compile cache %s is unreadable (%s): compiling from scratch", self.path, exc)
            return False
        try:
            if not data or torch.compiler.load_cache_artifacts(data) is None:
                raise ValueError("no artifacts in it")
        except Exception as exc:  # a torch upgrade or a damaged file: set it aside, compile, write a new one
            log.warning("compile cache %s cannot be used (%s: %s): moved aside, compiling from scratch",
                        self.path, type(exc).__name__, exc)
            self._set_aside()
            return False
        log.info("compile cache loaded from %s (%.1f MB)", self.path, len(data) / 1e6)
        return True

    def save(self) -> int:
        """Write what this process compiled (and loaded) to the volume; returns the bytes written."""
        import torch

        artifacts = torch.compiler.save_cache_artifacts()
        if not artifacts or not artifacts[0]:
            return 0
        data = artifacts[0]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_temps(self.path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                os.fchmod(fd, 0o644)  # mkstemp makes 0600; every worker of the volume reads it
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a read-only or full volume: the next worker compiles again, nothing breaks
            log.warning("could not write the compile cache %s (%s); workers will compile on their own", self.path, exc)
            return 0
        log.info("compile cache written to %s (%.1f MB)", self.path, len(data) / 1e6)
        return len(data)

    def _set_aside(self) -> None:
        try:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.bad-{os.getpid()}"))
        except OSError:
            pass


def sweep_stale_temps(folder: Path, older_than_s: float = 3600.0) -> int:
    """Remove temporary files that workers killed mid-write left behind (a live write is seconds old)."""
    removed = 0
    for path in folder.glob(".*.tmp"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:  # another worker swept it first
            continue
    return removed


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:120] or "x"
