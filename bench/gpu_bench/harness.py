"""What every GPU-bench measurement shares: the device and settings, full-size or tiny models written in the
volume layout, the inputs, and a section that logs a failure and goes on."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"  # the bench's command: the cold process runs it again
STARTED = time.perf_counter()

# The real configs of stable-diffusion-inpainting's unet/ and of sd-vae-ft-mse (diffusers defaults elsewhere).
SD15_INPAINT_UNET = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}


SD_VAE_FT_MSE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "latent_channels": 4,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}


# The real config of stable-diffusion-inpainting's safety_checker/: a CLIP ViT-L/14 vision tower (the checker
# builds no text tower; CLIPConfig's text defaults stand in).
SD_SAFETY_CHECKER = {"projection_dim": 768,
                     "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14}}


# About the spread of trained attention weights; the tiny set's 0.3 would saturate full-size softmaxes.
FULL_ADAPTER_STD = 0.02


# Variant -> the speed-ups it turns on over eager; "all" is app.model.accel.plan's default for the device.
SINGLE_SPEEDUPS = {"eager": {}, "fuse_qkv": {"fuse_qkv": True}, "channels_last": {"channels_last": True},
                   "cudnn_benchmark": {"cudnn_benchmark": True}, "compile": {"compile": True},
                   "compile_tuned": {"compile": True, "compile_tuning": True}}


SPEEDUP_FLAGS = ("fuse_qkv", "channels_last", "cudnn_benchmark", "compile", "compile_tuning")


VARIANTS = ("eager", "fuse_qkv", "channels_last", "cudnn_benchmark", "all", "compile", "compile_tuned", "reference")


SECTIONS = ("flops", "parity", "first_request", "draft", "safety", "cold")


DEFAULTS = {  # per device: size, steps, repeats, parity size and steps
    "cuda": {"width": 768, "height": 1024, "steps": 50, "repeats": 2, "parity": (384, 512), "parity_steps": 10},
    "cpu": {"width": 96, "height": 128, "steps": 4, "repeats": 3, "parity": (64, 96), "parity_steps": 6},
}


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


class Bench:
    """What every measurement shares: settings, device, dtype, model folders, inputs, results."""

    def __init__(self, args: argparse.Namespace, volume: Path):
        import torch

        from app.config import Settings
        from app.model.engine import resolve_device, resolve_dtype
        from app.studio.demo_images import example_garment, example_mask, example_person

        self.args = args
        self.device = resolve_device(args.device)
        defaults = DEFAULTS[self.device]
        self.tiny = args.size == "tiny" or (args.size == "auto" and self.device == "cpu")
        self.width = args.width or defaults["width"]
        self.height = args.height or defaults["height"]
        self.steps = args.steps or defaults["steps"]
        self.repeats = args.repeats or defaults["repeats"]
        self.parity_size = _size(args.parity_size) if args.parity_size else defaults["parity"]
        self.parity_steps = args.parity_steps or defaults["parity_steps"]
        # Every setting the engine and the cold process read: nothing comes from this shell's TRYON_*.
        self.overrides = {
            "volume": str(volume), "tiny_models": self.tiny, "device": self.device, "dtype": args.dtype,
            "width": self.width, "height": self.height, "steps": self.steps, "guidance": args.guidance,
            "seed": args.seed, "compile": args.compile, "compile_mode": args.compile_mode, "auto_download": "0",
            "warmup": "on",  # the product warms up on GPUs; on the CPU the bench still runs that path
            # A fresh cache folder on the volume: the first compile is cold even when --volume is reused.
            "runtime_key": f"bench-{os.getpid()}-{int(time.time())}",
        }
        self.settings = Settings.from_env({}, **self.overrides)
        self.dtype = getattr(torch, resolve_dtype(self.settings.dtype, self.device))
        self.person, self.garment, self.mask = example_person(), example_garment(), example_mask()
        self.scratch = Path(tempfile.mkdtemp(prefix="catvton-bench-"))
        self.paths = None
        self.results: dict = {}

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        import torch

        if self.is_cuda:
            torch.cuda.synchronize()

    def free_memory(self) -> None:
        import torch

        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()

    def allocated_gb(self) -> float | None:
        import torch

        return round(torch.cuda.memory_allocated() / 1e9, 3) if self.is_cuda else None

    def reset_backend(self) -> None:
        """Global switches a variant may have set, back to the eager defaults."""
        import torch

        torch.backends.cudnn.benchmark = False
        if self.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True  # as app.model.engine sets it; bf16 ignores it

    def fresh_inductor_cache(self, name: str) -> Path:
        """Point Inductor (and Triton under it) at an empty folder and drop its in-memory caches."""
        folder = self.scratch / "inductor" / name
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        os.environ.pop("TRITON_CACHE_DIR", None)
        try:
            from torch._inductor.utils import clear_caches

            clear_caches()
        except ImportError:
            pass
        return folder

    def load(self, dtype=None):
        from app.model.pipeline import CatVTONPipeline

        paths = self.paths
        return CatVTONPipeline.from_pretrained(paths.base, paths.vae, paths.adapter, device=self.device,
                                               dtype=dtype or self.dtype)

    def try_on(self, pipe, seed: int | None = None, **overrides):
        kwargs = {"steps": self.steps, "guidance": self.args.guidance, "seed": self.args.seed if seed is None else seed,
                  "width": self.width, "height": self.height, **overrides}
        return pipe(self.person, self.garment, self.mask, **kwargs)

    def guided_shapes(self, pipe) -> list[tuple[int, ...]]:
        from app.model import accel

        shapes = accel.warm_shapes(pipe, self.settings)
        return shapes if self.args.compile_unguided else shapes[:1]


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--parity-size {text!r}: expected WIDTHxHEIGHT, e.g. 384x512") from None
    return width, height


@contextmanager
def section(bench: Bench, name: str):
    """One measurement: a failure is logged and recorded, and the run goes on to the next."""
    log(f"{name}: start")
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:  # one broken measurement must not lose the others on a rented GPU
        traceback.print_exc()
        bench.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED ({type(exc).__name__}: {exc})")
    finally:
        bench.free_memory()
        log(f"{name}: done in {time.perf_counter() - started:.1f} s")


def write_models(bench: Bench) -> dict:
    """Random-weight models in the volume layout (or those already there)."""
    import torch

    from app.model.tiny_models import write_tiny_models
    from app.model.weights import missing_files, model_paths

    settings = bench.settings
    bench.paths = model_paths(settings)
    if not missing_files(settings, with_parser=settings.tiny_models):
        log(f"models: reusing {settings.models_dir}")
        return {"models": "reused", "models_dir": str(settings.models_dir)}
    started = time.perf_counter()
    if bench.tiny:
        write_tiny_models(settings.models_dir, settings)
    else:
        # Initialised on the GPU where there is one: the CPU takes a minute for 860 M parameters.
        write_tiny_models(settings.models_dir, settings, unet_config=SD15_INPAINT_UNET, vae_config=SD_VAE_FT_MSE,
                          adapter_std=FULL_ADAPTER_STD, device=bench.device, with_parser=False, with_safety=False)
    bench.free_memory()
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in settings.models_dir.rglob("*") if p.is_file())
    log(f"models: wrote {'tiny' if bench.tiny else 'full-size'} random weights ({size / 1e9:.2f} GB) "
        f"in {seconds:.1f} s")
    return {"models": "tiny random" if bench.tiny else "full-size random", "models_dir": str(settings.models_dir),
            "write_s": round(seconds, 2), "bytes": size, "torch_threads": torch.get_num_threads()}


def _rounded(timings: dict) -> dict:
    return {name: round(value, 3) for name, value in timings.items()}


def _dtype_label(dtype) -> str:
    from app.model.pipeline import dtype_name

    return dtype_name(dtype)


def inductor_counters() -> dict:
    """Inductor's cache hits and misses so far in this process: did a warm cache serve the compile?"""
    from torch._dynamo.utils import counters

    return {name: counters["inductor"][name] for name in
            ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass") if counters["inductor"][name]} | \
        {f"aotautograd_{name}": counters["aot_autograd"][name] for name in
         ("autograd_cache_hit", "autograd_cache_miss") if counters["aot_autograd"][name]}
