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
from app.model.weights import ADAPTER_FILE, UNET_WEIGHTS, ModelPaths, model_paths

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
                      device: str = "cpu", with_parser: bool = True, with_safety: bool = True) -> ModelPaths:
    """Write the tiny set under ``models_dir/<org>/<repo>/`` and return the folders the pipeline takes.

    Each repo folder is built under a temporary name and renamed into place, so a crash never
    leaves a half-written model behind. ``unet_config`` and ``vae_config`` replace the tiny sizes
    (bench/gpu.py writes the full SD-1.5 sizes this way), ``adapter_std`` is the spread of the random
    adapter weights, and ``device`` is where the weights are initialised (a GPU makes full-size ones
    in seconds). The tiny human parser comes along unless ``with_parser`` is False, and the tiny safety
    checker (in the base repo's folder, never flagging) unless ``with_safety`` is False.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from app.model.pipeline import adapter_state_keys

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
        if with_safety:
            write_safety_checker(base, seed=seed)

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

    from app.images.masking import ATR_LABELS

    torch.manual_seed(seed)
    config = SegformerConfig(**PARSER_CONFIG, id2label=dict(enumerate(ATR_LABELS)),
                             label2id={name: i for i, name in enumerate(ATR_LABELS)})
    with _staged(folder) as staged:
        SegformerForSemanticSegmentation(config).save_pretrained(staged, safe_serialization=True)
        (staged / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "SegformerImageProcessor", "do_resize": True, "size": {"height": 64, "width": 64},
            "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_reduce_labels": False}, indent=2))


# A CLIP vision tower of Stable Diffusion's safety checker, small enough to run in milliseconds (the checker
# uses the vision half only; the text half is CLIPConfig's required companion, kept as small).
SAFETY_CLIP_CONFIG = {
    "projection_dim": 16,
    "vision_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": 32, "patch_size": 4},
    "text_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "vocab_size": 99, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                    "pad_token_id": 1},
}
# The checker flags an image when its cosine similarity to a concept passes the concept's threshold (at most
# 1, plus a 0.01 adjustment): over 1.01 none ever passes. A threshold below -1 makes every image pass one.
SAFETY_NEVER_FLAGS = 2.0
SAFETY_ALWAYS_FLAGS = -2.0


def write_safety_checker(base: Path, seed: int = 0, *, clip_config: dict | None = None,
                         threshold: float = SAFETY_NEVER_FLAGS, device: str = "cpu") -> None:
    """Stable Diffusion's safety checker in the base repo's layout: ``safety_checker/`` (config.json,
    model.safetensors) and ``feature_extractor/preprocessor_config.json`` for CLIPImageProcessor.
    ``clip_config`` replaces the tiny sizes (bench/gpu.py writes the real ViT-L/14 ones); every concept
    threshold is ``threshold`` (the default never flags)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    clip = clip_config or SAFETY_CLIP_CONFIG
    torch.manual_seed(seed)
    with torch.device(device):
        checker = StableDiffusionSafetyChecker(CLIPConfig(**clip))
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
    checker.to("cpu").save_pretrained(base / "safety_checker", safe_serialization=True)
    set_safety_thresholds(base / "safety_checker", threshold)
    side = clip["vision_config"]["image_size"]
    (base / "feature_extractor").mkdir(parents=True, exist_ok=True)
    (base / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": side, "width": side}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}, indent=2))


def set_safety_thresholds(folder: Path, threshold: float) -> None:
    """Rewrite every concept threshold of the safety checker in ``folder`` (its model.safetensors), so that
    it never (``SAFETY_NEVER_FLAGS``) or always (``SAFETY_ALWAYS_FLAGS``) flags."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    state = load_file(str(path))
    for name in ("concept_embeds_weights", "special_care_embeds_weights"):
        state[name] = torch.full_like(state[name], threshold)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def ensure_tiny_models(settings: Settings) -> ModelPaths:
    """The tiny set for ``settings`` (``settings.models_dir``), written first if it is not there yet."""
    from app.model.weights import missing_files

    if missing_files(settings, with_parser=True, with_safety=True):
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
