"""Compare app.pipeline with the reference CatVTON implementation on shared tiny random weights.

Usage: python bench/compare_reference.py --reference PATH/TO/CatVTON-checkout [--steps 6]

Both pipelines load the same tiny model set (python -m app tiny-models), get the same inputs and
seed, and run on the CPU in fp32. The reference's VAE encode draws a posterior *sample* from the
global RNG; the design takes the posterior mode (the real VAE's spread is negligible), so for the
comparison the reference's sampling is pointed at the mode. Prints the max pixel difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.pipeline import CatVTONPipeline  # noqa: E402
from app.tiny_models import write_tiny_models  # noqa: E402


def inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    person = Image.fromarray(rng.integers(0, 255, (331, 250, 3), dtype=np.uint8))
    garment = Image.fromarray(rng.integers(0, 255, (170, 203, 3), dtype=np.uint8))
    mask = Image.new("L", person.size, 0)
    ImageDraw.Draw(mask).ellipse((40, 80, 210, 260), fill=255)
    return person, garment, mask


def reference_pipeline(reference: Path, paths):
    sys.path.insert(0, str(reference))
    from accelerate import load_checkpoint_in_model
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from model.attn_processor import SkipAttnProcessor
    from model.pipeline import CatVTONPipeline as Reference
    from model.utils import get_trainable_module, init_adapter

    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
    ref = Reference.__new__(Reference)
    ref.device, ref.weight_dtype, ref.skip_safety_check = "cpu", torch.float32, True
    ref.noise_scheduler = DDIMScheduler.from_pretrained(paths.base, subfolder="scheduler")
    ref.vae = AutoencoderKL.from_pretrained(paths.vae)
    ref.unet = UNet2DConditionModel.from_pretrained(paths.base, subfolder="unet", variant="fp16",
                                                    torch_dtype=torch.float32)
    init_adapter(ref.unet, cross_attn_cls=SkipAttnProcessor)
    ref.attn_modules = get_trainable_module(ref.unet, "attention")
    load_checkpoint_in_model(ref.attn_modules, str(paths.adapter))
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of the CatVTON repository")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    torch.set_num_threads(1)  # identical kernels for both runs

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_tiny_models(Path(tmp) / "models")
        ours = CatVTONPipeline.from_pretrained(paths.base, paths.vae, paths.adapter, device="cpu",
                                               dtype=torch.float32)
        ref = reference_pipeline(args.reference, paths)
        person, garment, mask = inputs()
        for guidance in (2.5, 1.0):
            for width, height in ((64, 96), (96, 128)):
                mine = ours(person, garment, mask, steps=args.steps, guidance=guidance, seed=args.seed,
                            width=width, height=height).image
                theirs = ref(person, garment, mask, num_inference_steps=args.steps, guidance_scale=guidance,
                             width=width, height=height,
                             generator=torch.Generator("cpu").manual_seed(args.seed))[0]
                diff = np.abs(np.asarray(mine, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
                other = ours(person, garment, mask, steps=args.steps, guidance=guidance, seed=args.seed + 1,
                             width=width, height=height).image
                control = np.abs(np.asarray(mine, dtype=np.int16) - np.asarray(other, dtype=np.int16))
                print(f"guidance={guidance} size={width}x{height} steps={args.steps}: "
                      f"max |diff| = {diff.max()} (uint8), pixels differing: {(diff > 0).mean():.4%}; "
                      f"image std {np.asarray(mine).std():.1f}; control (seed+1) max |diff| {control.max()}")


if __name__ == "__main__":
    main()
