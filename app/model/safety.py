"""Stable Diffusion's safety checker over each try-on (TRYON_SAFETY): loaded with the engine, run on the
model's output, answering flagged or not.

It reads the base repo's ``safety_checker/`` and ``feature_extractor/`` folders, as the reference CatVTON
app does. Importing this module imports no torch (the server's answers use its sentences).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


def flagged_message(seed: int) -> str:
    """What the person is told about a flagged result, with what to do next."""
    return (f"The safety checker flagged this result (seed {seed}), so it was not saved or shown. "
            "Try another seed, or other photos.")


@dataclass(frozen=True)
class SafetyVerdict:
    flagged: bool
    seconds: float  # the check alone: preprocessing and the CLIP vision tower


class SafetyChecker:
    """The loaded checker; ``check()`` runs it on one image (hold the GPU lock: it runs on the device)."""

    def __init__(self, model, processor, device: str, dtype):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype

    @classmethod
    def from_pretrained(cls, base: Path, device: str, dtype) -> SafetyChecker:
        """The checker of the base repo folder ``base`` (``safety_checker/``, ``feature_extractor/``)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        model = StableDiffusionSafetyChecker.from_pretrained(Path(base) / "safety_checker", torch_dtype=dtype)
        processor = CLIPImageProcessor.from_pretrained(Path(base) / "feature_extractor")
        return cls(model.to(device).eval(), processor, device, dtype)

    def check(self, image: Image.Image) -> SafetyVerdict:
        import numpy as np
        import torch

        started = time.perf_counter()
        clip_input = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        # The checker blacks out flagged images in the array it is given: a throwaway copy, never our result.
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[None] / 255.0
        with torch.inference_mode():
            _, flags = self.model(clip_input=clip_input.to(self.device, self.dtype), images=pixels)
        return SafetyVerdict(flagged=bool(flags[0]), seconds=time.perf_counter() - started)
