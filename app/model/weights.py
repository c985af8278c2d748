"""Which model files the pipeline needs, fetching exactly those into the volume layout, and verifying them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)
PARSER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# Stable Diffusion's safety checker and its image processor, from the base repo (optional: TRYON_SAFETY).
SAFETY_FILES = ("safety_checker/config.json", "safety_checker/model.safetensors",
                "feature_extractor/preprocessor_config.json")
MANIFEST = "manifest.json"

UNET_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")
ADAPTER_FILE = "model.safetensors"


class MissingWeightsError(FileNotFoundError):
    """Model files are not on the volume; the message lists them and how to fetch them."""


class DownloadError(RuntimeError):
    """A file could not be fetched or did not match what the Hub reports; nothing half-written is kept."""


@dataclass(frozen=True)
class ModelFile:
    repo: str  # Hub repo id, e.g. "stabilityai/sd-vae-ft-mse"
    path: str  # the Hub's path inside the repo

    def local(self, models_dir: Path) -> Path:
        return models_dir / self.repo / self.path


@dataclass(frozen=True)
class ModelPaths:
    """The three local folders ``CatVTONPipeline.from_pretrained`` takes."""

    base: Path
    vae: Path
    adapter: Path


def required_files(settings: Settings, with_parser: bool = False, with_safety: bool = False) -> list[ModelFile]:
    """Exactly the files the pipeline reads (DESIGN §5), not whole snapshots; the parser's and the safety
    checker's when asked."""
    adapter_dir = f"{settings.adapter_folder}/attention"
    parser = [ModelFile(settings.parser_repo, name) for name in PARSER_FILES] if with_parser else []
    parser += safety_files(settings) if with_safety else []
    return parser + [
        ModelFile(settings.base_repo, "unet/config.json"),
        ModelFile(settings.base_repo, f"unet/{UNET_WEIGHTS[0]}"),
        ModelFile(settings.base_repo, "scheduler/scheduler_config.json"),
        ModelFile(settings.vae_repo, "config.json"),
        ModelFile(settings.vae_repo, "diffusion_pytorch_model.safetensors"),
        ModelFile(settings.adapter_repo, f"{adapter_dir}/{ADAPTER_FILE}"),
    ]


def safety_files(settings: Settings) -> list[ModelFile]:
    return [ModelFile(settings.base_repo, path) for path in SAFETY_FILES]


def model_paths(settings: Settings, models_dir: Path | None = None) -> ModelPaths:
    root = settings.models_dir if models_dir is None else models_dir
    return ModelPaths(
        base=root / settings.base_repo,
        vae=root / settings.vae_repo,
        adapter=root / settings.adapter_repo / settings.adapter_folder / "attention",
    )


def missing_files(settings: Settings, with_parser: bool = False, with_safety: bool = False) -> list[ModelFile]:
    root = settings.models_dir
    missing = []
    for item in required_files(settings, with_parser=with_parser, with_safety=with_safety):
        if item.path.startswith("unet/diffusion_pytorch_model"):
            # Either precision of the UNet will do; the selection fetches the smaller fp16 file.
            if not any((root / item.repo / "unet" / name).is_file() for name in UNET_WEIGHTS):
                missing.append(item)
        elif not item.local(root).is_file():
            missing.append(item)
    return missing


def check_weights(settings: Settings) -> ModelPaths:
    """The model folders, or :class:`MissingWeightsError` saying what is missing and what to run (the safety
    checker's files too when TRYON_SAFETY is on)."""
    missing = missing_files(settings, with_safety=settings.safety)
    if missing:
        raise MissingWeightsError(missing_weights_message(settings, missing))
    return model_paths(settings)


def missing_weights_message(settings: Settings, missing: list[ModelFile]) -> str:
    root = settings.models_dir
    lines = [f"{len(missing)} model file(s) missing from {root}:"]
    lines += [f"  - {item.repo}/{item.path}" for item in missing]
    if settings.tiny_models:
        lines.append("Make the tiny set with: python -m app tiny-models " + str(settings.layout.root))
        return "\n".join(lines)
    lines.append("Fetch only these files from the Hugging Face Hub (about 2.2 GB) with:")
    by_repo: dict[str, list[str]] = {}
    for item in missing:
        by_repo.setdefault(item.repo, []).append(item.path)
    for repo, paths in by_repo.items():
        lines.append(f"  hf download {repo} {' '.join(paths)} --local-dir {root / repo}")
    if any(item.path in SAFETY_FILES for item in missing):
        lines.append("Or: python -m app download --with-safety (TRYON_SAFETY is on; the checker's files are "
                     "optional with it off).")
    lines.append("Or run offline on tiny random-weight models: --tiny (or TRYON_TINY_MODELS=1).")
    return "\n".join(lines)


# -- download ---------------------------------------------------------------------------------------

def download(settings: Settings, models_dir: Path | None = None, with_parser: bool = False,
             endpoint: str | None = None, show_progress: bool = True, with_safety: bool = False) -> dict:
    """Fetch the selected files into ``models_dir/<org>/<repo>/<path>``, verified, and write the manifest.

    huggingface_hub resolves each file (revision, size, hash, CDN location, auth headers); the bytes
    go to ``models/.staging/...partial``, which a later run resumes with an HTTP Range request. A
    file is checked against the size and hash the Hub reports and only then renamed into place.
    Files already present with the right size and hash are kept. Returns the manifest.
    """
    from huggingface_hub import constants

    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False  # an explicit download may use the Hub
    try:
        return _download(settings, models_dir, with_parser, endpoint, show_progress, with_safety)
    finally:
        constants.HF_HUB_OFFLINE = offline


def _download(settings: Settings, models_dir: Path | None, with_parser: bool, endpoint: str | None,
              show_progress: bool, with_safety: bool = False) -> dict:
    import socket

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers

    models_dir = Path(models_dir or settings.models_dir)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    staging = models_dir / ".staging"
    headers = build_hf_headers(library_name="catvton-volume")
    entries, fetched = [], 0
    for item in required_files(settings, with_parser=with_parser, with_safety=with_safety):
        final = item.local(models_dir)
        try:
            meta = get_hf_file_metadata(hf_hub_url(item.repo, item.path, endpoint=endpoint), headers=headers)
        except HfHubHTTPError as exc:
            raise DownloadError(f"the Hub refused {item.repo}/{item.path} ({exc}); check the repo id setting, and "
                                "HF_TOKEN for gated or private repos") from exc
        except Exception as exc:
            raise DownloadError(f"cannot reach the Hub for {item.repo}/{item.path} ({type(exc).__name__}: {exc}); "
                                "check the network, HF_ENDPOINT and HF_TOKEN") from exc
        entry = {"repo": item.repo, "path": item.path, "revision": meta.commit_hash, "size": meta.size,
                 "etag": meta.etag}
        entries.append(entry)
        if final.is_file() and _matches(final, meta.size, meta.etag):
            log.info("present and verified: %s/%s", item.repo, item.path)
            continue
        # Per host: workers sharing the volume never write the same partial file; a rerun here resumes it.
        partial = staging / item.repo / f"{item.path}.{socket.gethostname()}.partial"
        fetched += _fetch(meta.location, partial, meta.size, headers, f"{item.repo}/{item.path}", show_progress)
        if not _matches(partial, meta.size, meta.etag):
            actual = partial.stat().st_size
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{item.repo}/{item.path}: the downloaded file ({actual} bytes) does not match the "
                                f"Hub's size {meta.size} and hash {meta.etag}; it was deleted. Run again.")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
    manifest = {"files": entries, "total_bytes": sum(e["size"] or 0 for e in entries), "fetched_bytes": fetched}
    from app.files import write_atomically

    models_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps(manifest, indent=2).encode()
    write_atomically(models_dir / MANIFEST, lambda handle: handle.write(body))
    return manifest


def _fetch(url: str, partial: Path, size: int | None, headers: dict, label: str, show_progress: bool) -> int:
    """Stream ``url`` into ``partial``, continuing from what an earlier run left there; returns bytes fetched."""
    import httpx
    from tqdm.auto import tqdm

    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        have = 0
    if size is not None and have == size:
        return 0
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if have:
        request_headers["Range"] = f"bytes={have}-"
        log.info("resuming %s at %d bytes", label, have)
    fetched = 0
    try:
        with httpx.stream("GET", url, headers=request_headers, follow_redirects=True, timeout=60) as response:
            if response.status_code == 200 and have:  # the server ignored the range: start over
                have = 0
            elif response.status_code not in (200, 206):
                raise DownloadError(f"downloading {label} failed: HTTP {response.status_code}")
            with open(partial, "ab" if have else "wb") as handle, \
                    tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=label, disable=not show_progress,
                         leave=False) as bar:
                for chunk in response.iter_raw(64 << 10):
                    handle.write(chunk)
                    fetched += len(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as exc:
        raise DownloadError(f"downloading {label} was interrupted ({type(exc).__name__}: {exc}); run the command "
                            "again to resume where it stopped") from exc
    return fetched


def file_digest(path: Path, etag: str) -> str:
    """The hash the Hub's etag speaks of: sha256 for LFS files (64 hex), git's blob sha1 otherwise (40 hex)."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1()
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, size: int | None, etag: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    if etag and len(etag) in (40, 64) and all(c in "0123456789abcdef" for c in etag):
        return file_digest(path, etag) == etag
    return True
