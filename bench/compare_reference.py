"""Compare app.model.pipeline with the reference CatVTON implementation on shared tiny random weights.

Usage: python bench/compare_reference.py --reference PATH/TO/CatVTON-checkout [--steps 6]

Both pipelines load the same tiny model set (python -m app tiny-models), get the same inputs and
seed, and run on the CPU in fp32. The reference's VAE encode draws a posterior *sample* from the
global RNG; the design takes the posterior mode (the real VAE's spread is negligible), so for the
comparison the reference's sampling is pointed at the mode (bench/reference.py). Prints the max
pixel difference.
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

from app.model.pipeline import CatVTONPipeline  # noqa: E402
from app.model.tiny_models import write_tiny_models  # noqa: E402
from bench.reference import load_reference  # noqa: E402


def inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    person = Image.fromarray(rng.integers(0, 255, (331, 250, 3), dtype=np.uint8))
    garment = Image.fromarray(rng.integers(0, 255, (170, 203, 3), dtype=np.uint8))
    mask = Image.new("L", person.size, 0)
    ImageDraw.Draw(mask).ellipse((40, 80, 210, 260), fill=255)
    return person, garment, mask


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
        ref = load_reference(args.reference, paths)
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
