"""The CatVTON try-on algorithm over diffusers parts (UNet, VAE, DDIM), as in DESIGN §4.

Person and garment latents are stacked along the height; the inpainting UNet denoises the pair
with self-attention only (cross-attention is skipped) and the top half is decoded. No text encoder.
Nothing here does I/O beyond reading weights from local folders.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from safetensors.torch import load_file

from app.errors import AdapterError, GenerationCancelled, TryOnInputError
from app.images.imaging import flatten, resize_and_crop, resize_and_pad
from app.model.weights import ADAPTER_FILE, UNET_WEIGHTS
from app.validation import check_generation_args

# The reference saved its adapter from a ModuleList of every module whose name contains "attn1":
# each attn1 brings itself plus to_q, to_k, to_v, to_out, to_out.0, to_out.1 and its processor,
# so the i-th attn1's parameters are stored under the positional prefix 8*i.
ADAPTER_KEY_STRIDE = 8
CONCAT_DIM = -2  # person on top, garment below

StepCallback = Callable[[int, int], None]
__all__ = ["AdapterError", "CatVTONPipeline", "GenerationCancelled", "TryOnInputError", "TryOnResult"]


class SkipCrossAttention:
    """CatVTON has no text: cross-attention returns its input, so the block still adds norm2(h)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        return hidden_states


@dataclass
class TryOnResult:
    image: Image.Image
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    device: str
    dtype: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, and "total"


def self_attention_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's ``attn1`` modules in ``named_modules()`` order: the adapter's positional order."""
    return [(name, module) for name, module in unet.named_modules() if name.endswith("attn1")]


def adapter_state_keys(unet: torch.nn.Module) -> dict[str, str]:
    """Adapter key ("{8i}.to_q.weight") -> UNet parameter name, for every attn1 parameter."""
    mapping = {}
    for index, (module_name, module) in enumerate(self_attention_modules(unet)):
        for param_name, _ in module.named_parameters():
            mapping[f"{ADAPTER_KEY_STRIDE * index}.{param_name}"] = f"{module_name}.{param_name}"
    return mapping


def load_adapter(unet: torch.nn.Module, adapter_dir: Path | str) -> int:
    """Load CatVTON's attention weights strictly into ``unet``; returns the number of tensors."""
    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file():
        raise AdapterError(f"CatVTON adapter file not found: {path}. Download it or check TRYON_ADAPTER_VERSION.")
    device = next(unet.parameters()).device
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error type for damaged headers and data
        raise AdapterError(f"{path} is not a readable safetensors file ({exc}); delete it and download it again.") \
            from exc
    mapping = adapter_state_keys(unet)
    missing = sorted(set(mapping) - set(state), key=_natural_key)
    unexpected = sorted(set(state) - set(mapping), key=_natural_key)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing key(s) {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected key(s) {_preview(unexpected)}")
        raise AdapterError(
            f"{path} does not fit this UNet ({len(mapping)} attention tensors expected): {'; '.join(problems)}. "
            "Use CatVTON's attention/model.safetensors for an SD-1.5 inpainting UNet.")
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for key, param_name in mapping.items():
            target, tensor = params[param_name], state[key]
            if tuple(tensor.shape) != tuple(target.shape):
                raise AdapterError(f"{path}: key {key!r} has shape {tuple(tensor.shape)}, "
                                   f"but {param_name} needs {tuple(target.shape)}.")
            target.copy_(tensor.to(target.dtype))
    return len(mapping)


class CatVTONPipeline:
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler,
                 device: torch.device | str, dtype: torch.dtype, load_timings: dict[str, float] | None = None):
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.load_timings = load_timings or {}
        # app.model.accel may hand over a compiled UNet for some input shapes; every other shape runs eager,
        # so a request at an unusual size never waits for a compile.
        self.compiled_unet: Callable | None = None
        self.compiled_shapes: frozenset[tuple[int, ...]] = frozenset()

    @classmethod
    def from_pretrained(cls, base: Path | str, vae: Path | str, adapter: Path | str,
                        device: torch.device | str = "cuda", dtype: torch.dtype = torch.bfloat16) -> CatVTONPipeline:
        """Load from local folders: ``base`` (unet/, scheduler/), ``vae`` and ``adapter`` (model.safetensors).

        Weights go straight to ``device`` in ``dtype`` (no full CPU copy on the way).
        """
        base, vae_dir = Path(base), Path(vae)
        device = torch.device(device)
        device_map = {"": device}
        timings: dict[str, float] = {}

        start = time.perf_counter()
        scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
        timings["scheduler"] = time.perf_counter() - start

        start = time.perf_counter()
        in_channels = UNet2DConditionModel.load_config(base, subfolder="unet").get("in_channels")
        if in_channels != 9:
            raise AdapterError(f"{base / 'unet'} has {in_channels} input channels; CatVTON needs the "
                               "9-channel inpainting UNet (stable-diffusion-inpainting).")
        variant = "fp16" if not (base / "unet" / UNET_WEIGHTS[1]).is_file() else None
        unet = UNet2DConditionModel.from_pretrained(
            base, subfolder="unet", variant=variant, torch_dtype=dtype, device_map=device_map)
        processors = {name: (AttnProcessor2_0() if name.endswith("attn1.processor") else SkipCrossAttention())
                      for name in unet.attn_processors}
        unet.set_attn_processor(processors)
        timings["unet"] = time.perf_counter() - start

        start = time.perf_counter()
        load_adapter(unet, adapter)
        timings["adapter"] = time.perf_counter() - start

        start = time.perf_counter()
        vae_model = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, device_map=device_map)
        timings["vae"] = time.perf_counter() - start

        unet.eval()
        vae_model.eval()
        return cls(unet, vae_model, scheduler, device, dtype, timings)

    # -- inputs ---------------------------------------------------------------------------------

    def check_inputs(self, person, garment, mask, steps, guidance, seed, width, height) -> None:
        for name, image in (("person", person), ("garment", garment), ("mask", mask)):
            if not isinstance(image, Image.Image):
                raise TryOnInputError(f"{name} must be a PIL image, got {type(image).__name__}.")
            if image.width < 1 or image.height < 1:
                raise TryOnInputError(f"{name} image is empty ({image.width}x{image.height}); upload a real image.")
        if mask.size != person.size:
            raise TryOnInputError(
                f"mask size {mask.width}x{mask.height} differs from the person photo's {person.width}x{person.height}; "
                "draw or generate the mask on this photo.")
        check_generation_args(steps, guidance, seed, width, height)

    def preprocess(self, person: Image.Image, garment: Image.Image, mask: Image.Image,
                   width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> tensors on the device: person and garment in [-1, 1], the mask binarised at 0.5."""
        size = (width, height)
        person_t = _to_tensor(resize_and_crop(person, size).convert("RGB"))
        garment_t = _to_tensor(resize_and_pad(flatten(garment), size).convert("RGB"))
        mask_np = np.asarray(resize_and_crop(mask, size).convert("L"), dtype=np.float32) / 255.0
        mask_t = torch.from_numpy((mask_np >= 0.5).astype(np.float32))[None, None]
        return (person_t.to(self.device, self.dtype), garment_t.to(self.device, self.dtype),
                mask_t.to(self.device, self.dtype))

    # -- model steps ----------------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (posterior mode) of images in [-1, 1]."""
        pixels = pixels.to(memory_format=torch.contiguous_format).to(self.vae.device, self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> Image.Image:
        latents = (1 / self.vae.config.scaling_factor) * latents
        pixels = self.vae.decode(latents.to(self.device, self.dtype)).sample
        pixels = (pixels / 2 + 0.5).clamp(0, 1)
        array = pixels.cpu().permute(0, 2, 3, 1).float().numpy()[0]
        return Image.fromarray((array * 255).round().astype(np.uint8))

    def denoise(self, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One UNet call: the compiled one where it was compiled for this shape, else eager."""
        unet = self.compiled_unet if tuple(model_input.shape) in self.compiled_shapes else self.unet
        return unet(model_input, t.to(self.device), encoder_hidden_states=None, return_dict=False)[0]

    def unet_input_shape(self, width: int, height: int, guided: bool) -> tuple[int, ...]:
        """The UNet's input shape for one try-on at ``width`` x ``height``: what a compile is made for."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        channels = self.unet.config.in_channels
        return (2 if guided else 1, channels, 2 * (height // factor), width // factor)

    def make_scheduler(self, steps: int) -> DDIMScheduler:
        # A scheduler per call: set_timesteps mutates it, and the held one stays a clean template.
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def __call__(self, person: Image.Image, garment: Image.Image, mask: Image.Image, steps: int = 50,
                 guidance: float = 2.5, seed: int | None = 42, width: int = 768, height: int = 1024,
                 callback: StepCallback | None = None, guidance_steps: int | None = None) -> TryOnResult:
        """One try-on: ``mask`` marks (white) the area of ``person`` to dress in ``garment``.

        ``callback(step, total)`` runs after every denoising step; raise :class:`GenerationCancelled`
        from it to stop. ``guidance_steps`` limits classifier-free guidance to the first steps (the
        rest run the conditional half alone, at half the cost); None guides every step.
        """
        self.check_inputs(person, garment, mask, steps, guidance, seed, width, height)
        if guidance_steps is not None and (isinstance(guidance_steps, bool) or not isinstance(guidance_steps, int)
                                           or guidance_steps < 0):
            raise TryOnInputError(f"guidance_steps={guidance_steps!r} is not usable: use a whole number of steps "
                                  "from 0, or None to guide every step.")
        if seed is None:
            seed = random.randrange(2**53)  # exact in JavaScript numbers, so a shown seed replays
        timings: dict[str, float] = {}
        started = clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timings[name] = now - clock
            clock = now

        person_t, garment_t, mask_t = self.preprocess(person, garment, mask, width, height)
        lap("preprocess")

        person_latent = self.encode(person_t * (mask_t < 0.5))
        garment_latent = self.encode(garment_t)
        mask_latent = F.interpolate(mask_t, size=person_latent.shape[-2:], mode="nearest")
        condition = torch.cat([person_latent, garment_latent], dim=CONCAT_DIM)
        mask_cond = torch.cat([mask_latent, torch.zeros_like(mask_latent)], dim=CONCAT_DIM)
        lap("encode")

        generator = torch.Generator(device=self.device).manual_seed(seed)
        latents = torch.randn(condition.shape, generator=generator, device=self.device, dtype=self.dtype)
        scheduler = self.make_scheduler(steps)
        latents = latents * scheduler.init_noise_sigma

        timesteps = scheduler.timesteps
        guided_steps = 0 if guidance <= 1.0 else len(timesteps) if guidance_steps is None else guidance_steps
        if guided_steps:
            unconditional = torch.cat([person_latent, torch.zeros_like(garment_latent)], dim=CONCAT_DIM)
            guided_condition = torch.cat([unconditional, condition])
            guided_mask = torch.cat([mask_cond, mask_cond])

        for index, t in enumerate(timesteps):
            guided = index < guided_steps
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input, guided_mask if guided else mask_cond,
                                     guided_condition if guided else condition], dim=1)
            noise = self.denoise(model_input, t)
            if guided:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, eta=1.0, generator=generator).prev_sample
            if callback is not None:
                callback(index + 1, len(timesteps))
        lap("denoise")

        person_half = latents.split(latents.shape[CONCAT_DIM] // 2, dim=CONCAT_DIM)[0]
        image = self.decode(person_half)
        lap("decode")
        timings["total"] = time.perf_counter() - started
        return TryOnResult(image=image, seed=seed, steps=steps, guidance=float(guidance), width=width,
                           height=height, device=str(self.device), dtype=dtype_name(self.dtype), timings=timings)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)[None]
    return torch.from_numpy(array.copy()).to(torch.float32) / 127.5 - 1.0


def _natural_key(key: str):
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
