"""A tiny random-weight model set in the volume's exact layout, for tests, demos and smoke checks.

Same classes, config files, safetensors names and adapter key format as the real weights, so it
loads through the production code path; only the sizes are small (runs in well under a second).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from app.config import ADAPTER_FOLDERS, Settings
from app.weights import ADAPTER_FILE, UNET_WEIGHTS, ModelPaths, model_paths

# The SD-1.5 inpainting repo ships a PNDM config; CatVTON reads it with DDIMScheduler, as we do.
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 9,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    # Attention at half resolution only: the stacked person+garment latent makes full-resolution
    # attention the slowest part on a CPU, and the kit should run in seconds.
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

# Four blocks keep the real VAE's 8x downsampling.
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}


def write_tiny_models(models_dir: Path | str, settings: Settings | None = None, seed: int = 0, *,
                      unet_config: dict | None = None, vae_config: dict | None = None, adapter_std: float = 0.3,
                      device: str = "cpu", with_parser: bool = True) -> ModelPaths:
    """Write the tiny set under ``models_dir/<org>/<repo>/`` and return the folders the pipeline takes.

    Each repo folder is built under a temporary name and renamed into place, so a crash never
    leaves a half-written model behind. ``unet_config`` and ``vae_config`` replace the tiny sizes
    (bench/gpu.py writes the full SD-1.5 sizes this way), ``adapter_std`` is the spread of the random
    adapter weights, and ``device`` is where the weights are initialised (a GPU makes full-size ones
    in seconds). The tiny human parser comes along unless ``with_parser`` is False.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from app.pipeline import adapter_state_keys

    models_dir = Path(models_dir)
    settings = settings or Settings.from_env({})
    paths = model_paths(settings, models_dir)
    torch.manual_seed(seed)

    with torch.device(device):
        unet = UNet2DConditionModel(**(unet_config or UNET_CONFIG))
        vae = AutoencoderKL(**(vae_config or VAE_CONFIG))
    with _staged(models_dir / settings.base_repo) as base:
        # The fp16 variant, as the volume's selective download keeps it.
        unet.save_config(base / "unet")
        save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in unet.state_dict().items()},
                  str(base / "unet" / UNET_WEIGHTS[0]), metadata={"format": "pt"})
        (base / "scheduler").mkdir()
        (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))

    with _staged(models_dir / settings.vae_repo) as vae_dir:
        vae.to("cpu").save_pretrained(vae_dir, safe_serialization=True)

    params = dict(unet.named_parameters())
    with _staged(models_dir / settings.adapter_repo) as adapter_root:
        for offset, folder in enumerate(ADAPTER_FOLDERS.values()):
            generator = torch.Generator().manual_seed(seed + 1 + offset)
            state = {key: torch.randn(params[name].shape, generator=generator) * adapter_std
                     for key, name in adapter_state_keys(unet).items()}
            (adapter_root / folder / "attention").mkdir(parents=True)
            save_file(state, str(adapter_root / folder / "attention" / ADAPTER_FILE), metadata={"format": "pt"})
    if with_parser:
        write_tiny_parser(models_dir / settings.parser_repo, seed=seed)
    return paths


# A SegFormer with the ATR label set, small enough to run in milliseconds.
PARSER_CONFIG = {"num_channels": 3, "num_encoder_blocks": 4, "depths": [1, 1, 1, 1], "sr_ratios": [8, 4, 2, 1],
                 "hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 32}


def write_tiny_parser(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from app.masking import ATR_LABELS

    torch.manual_seed(seed)
    config = SegformerConfig(**PARSER_CONFIG, id2label=dict(enumerate(ATR_LABELS)),
                             label2id={name: i for i, name in enumerate(ATR_LABELS)})
    with _staged(folder) as staged:
        SegformerForSemanticSegmentation(config).save_pretrained(staged, safe_serialization=True)
        (staged / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "SegformerImageProcessor", "do_resize": True, "size": {"height": 64, "width": 64},
            "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_reduce_labels": False}, indent=2))


def ensure_tiny_models(settings: Settings) -> ModelPaths:
    """The tiny set for ``settings`` (``settings.models_dir``), written first if it is not there yet."""
    from app.weights import missing_files

    if missing_files(settings, with_parser=True):
        write_tiny_models(settings.models_dir, settings)
    return model_paths(settings)


class _staged:
    """Build a folder under a temporary sibling name; on success replace ``target`` with it."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.rename(self.target, old)
            os.rename(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.target)
        os.chmod(self.target, 0o755)
        return False
