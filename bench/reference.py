"""The upstream CatVTON pipeline, driven from a checkout on the same local weights as ours (for the benches).

The reference is built the way its own constructor builds it (scheduler, VAE and UNet moved to the
device in the weight dtype, cross-attention skipped, the attention checkpoint loaded into every
``attn1``) but from our volume folders, without downloads or the safety checker. Its VAE encode
draws a posterior sample from the global RNG; the design takes the mode (the real VAE's spread is
negligible), so the sampling is pointed at the mode, which makes the two comparable pixel for pixel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from app.model.weights import UNET_WEIGHTS, ModelPaths


def check_checkout(reference: Path) -> None:
    if not (Path(reference) / "model" / "pipeline.py").is_file():
        raise SystemExit(f"{reference} is not a CatVTON checkout (no model/pipeline.py in it): pass the folder "
                         "of a clone or archive of the Zheng-Chong/CatVTON repository.")


def load_reference(reference: Path, paths: ModelPaths, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The reference ``CatVTONPipeline`` on ``paths``; call it as upstream does (PIL images, generator=...)."""
    check_checkout(reference)
    # First on the path: the checkout's top-level "model" and "utils" must win. Our own "app" package is
    # imported already, so the checkout's app.py cannot shadow it.
    sys.path.insert(0, str(Path(reference).resolve()))
    from accelerate import load_checkpoint_in_model
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from model.attn_processor import SkipAttnProcessor
    from model.pipeline import CatVTONPipeline as Reference
    from model.utils import get_trainable_module, init_adapter

    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
    variant = "fp16" if not (paths.base / "unet" / UNET_WEIGHTS[1]).is_file() else None
    ref = Reference.__new__(Reference)
    ref.device, ref.weight_dtype, ref.skip_safety_check = device, dtype, True
    ref.noise_scheduler = DDIMScheduler.from_pretrained(paths.base, subfolder="scheduler")
    ref.vae = AutoencoderKL.from_pretrained(paths.vae).to(device, dtype=dtype)
    ref.unet = UNet2DConditionModel.from_pretrained(paths.base, subfolder="unet", variant=variant,
                                                    torch_dtype=dtype).to(device, dtype=dtype)
    init_adapter(ref.unet, cross_attn_cls=SkipAttnProcessor)
    ref.attn_modules = get_trainable_module(ref.unet, "attention")
    load_checkpoint_in_model(ref.attn_modules, str(paths.adapter))
    return ref
