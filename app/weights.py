"""Which model files the pipeline needs, where they live on the volume, and a clear error when absent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.config import Settings

UNET_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")
ADAPTER_FILE = "model.safetensors"


class MissingWeightsError(FileNotFoundError):
    """Model files are not on the volume; the message lists them and how to fetch them."""


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


def required_files(settings: Settings) -> list[ModelFile]:
    """Exactly the files the pipeline reads (DESIGN §5), not whole snapshots."""
    adapter_dir = f"{settings.adapter_folder}/attention"
    return [
        ModelFile(settings.base_repo, "unet/config.json"),
        ModelFile(settings.base_repo, f"unet/{UNET_WEIGHTS[0]}"),
        ModelFile(settings.base_repo, "scheduler/scheduler_config.json"),
        ModelFile(settings.vae_repo, "config.json"),
        ModelFile(settings.vae_repo, "diffusion_pytorch_model.safetensors"),
        ModelFile(settings.adapter_repo, f"{adapter_dir}/{ADAPTER_FILE}"),
    ]


def model_paths(settings: Settings, models_dir: Path | None = None) -> ModelPaths:
    root = settings.models_dir if models_dir is None else models_dir
    return ModelPaths(
        base=root / settings.base_repo,
        vae=root / settings.vae_repo,
        adapter=root / settings.adapter_repo / settings.adapter_folder / "attention",
    )


def missing_files(settings: Settings) -> list[ModelFile]:
    root = settings.models_dir
    missing = []
    for item in required_files(settings):
        if item.path.startswith("unet/diffusion_pytorch_model"):
            # Either precision of the UNet will do; the selection fetches the smaller fp16 file.
            if not any((root / item.repo / "unet" / name).is_file() for name in UNET_WEIGHTS):
                missing.append(item)
        elif not item.local(root).is_file():
            missing.append(item)
    return missing


def check_weights(settings: Settings) -> ModelPaths:
    """The model folders, or :class:`MissingWeightsError` saying what is missing and what to run."""
    missing = missing_files(settings)
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
    lines.append("Or run offline on tiny random-weight models: --tiny (or TRYON_TINY_MODELS=1).")
    return "\n".join(lines)
