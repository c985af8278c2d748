"""Speed-ups of the held pipeline that keep its output, and the warm-up that makes the first request fast.

Eager changes (fused self-attention QKV, channels_last, cuDNN autotuning) are applied at load.
``torch.compile`` is applied per UNet input shape: the default size, guided and unguided. With its
graphs in the volume's cache (app.model.compile_cache) the compile happens before the engine reports
ready; without, the engine serves eager and compiles in the background, then switches over.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass

from app.config import Settings
from app.errors import ModelLoadError
from app.model import c_compiler

log = logging.getLogger(__name__)

OFF, COMPILING, READY, FAILED = "off", "compiling", "ready", "failed"


@dataclass(frozen=True)
class SpeedPlan:
    compile: bool
    compile_mode: str
    fuse_qkv: bool
    channels_last: bool
    cudnn_benchmark: bool
    warmup: bool
    compile_tuning: bool = False  # Inductor's tuning for convolution-heavy GPU graphs (COMPILE_TUNING)

    def as_dict(self) -> dict:
        return asdict(self)

    def profile(self, device_label: str, dtype: str, width: int, height: int) -> str:
        """Names the compiled graphs: what they were made for and with."""
        flags = "-".join(name for name, on in (("qkv", self.fuse_qkv), ("cl", self.channels_last),
                                               ("tuned", self.compile_tuning)) if on) or "plain"
        return f"{device_label}-{dtype}-{self.compile_mode}-{flags}-{width}x{height}"


def plan(settings: Settings, device: str) -> SpeedPlan:
    """What to apply on ``device`` ("cuda" or "cpu") under ``settings``."""
    missing = compile_blocker(device) if settings.compile != "off" else None
    if settings.compile == "on" and missing:
        raise ModelLoadError(f"TRYON_COMPILE=on, but {missing}; or set TRYON_COMPILE=auto to serve eager.")
    if settings.compile == "auto" and device == "cuda" and missing:
        log.warning("torch.compile is off: %s (TRYON_COMPILE=auto serves eager)", missing)
    compile_on = settings.compile == "on" or (settings.compile == "auto" and device == "cuda" and not missing)
    warmup = settings.warmup == "on" or (settings.warmup == "auto" and device == "cuda")
    return SpeedPlan(compile=compile_on, compile_mode=settings.compile_mode, compile_tuning=settings.compile_tuning,
                     fuse_qkv=settings.fuse_qkv,
                     channels_last=settings.channels_last, cudnn_benchmark=device == "cuda", warmup=warmup)


def compile_blocker(device: str) -> str | None:
    """Why torch.compile cannot run on ``device`` here, or None: Triton and a C compiler on the GPU
    (Triton builds its CUDA helper module with one; app.model.c_compiler provides it), a C++ compiler with
    OpenMP on the CPU (Inductor's CPU kernels)."""
    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (torch's CUDA build brings it)"
        if c_compiler.provide() is None:
            if os.environ.get("CC"):
                return f"CC={os.environ['CC']} is not an executable compiler (unset it to use the runtime's)"
            return "no C compiler for Triton (CC, gcc, clang, or the runtime's ziglang package: " \
                   "reinstall the runtime from launcher/requirements.txt, or apt-get install gcc libc6-dev)"
        return None
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    if not any(shutil.which(name) for name in names):
        return f"no C++ compiler is installed ({' or '.join(names)}: apt-get install g++, which Inductor's " \
               "CPU kernels need)"
    return None


def apply_eager(pipe, speed: SpeedPlan) -> None:
    """The speed-ups that need no compile, in place."""
    import torch

    if speed.fuse_qkv:
        fuse_self_attention(pipe.unet)
    if speed.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def fuse_self_attention(unet) -> int:
    """One matmul for each self-attention's q, k and v (same weights, concatenated); returns how many."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from app.model.pipeline import self_attention_modules

    modules = self_attention_modules(unet)
    for _, module in modules:
        if not getattr(module, "fused_projections", False):
            module.fuse_projections()
            # The separate projections are no longer read: free their memory.
            del module.to_q, module.to_k, module.to_v
            module.fused_projections = True
        module.set_processor(FusedAttnProcessor2_0())
    return len(modules)


# What PyTorch's guide to compiling diffusion UNets turns on: 1x1 convolutions as matmuls, Triton kernels
# refined by coordinate descent, no epilogue fusion (it fights max-autotune's GEMM templates). Longer
# compiles; bench/gpu.py's compile_tuned row measures whether they pay (TRYON_COMPILE_TUNING).
COMPILE_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                  "coordinate_descent_check_all_directions": True}


def warm_shapes(pipe, settings: Settings) -> list[tuple[int, ...]]:
    """The UNet inputs worth compiling: the default size guided (the usual request) and unguided
    (guidance <= 1 and a draft's later steps)."""
    shapes = [pipe.unet_input_shape(settings.width, settings.height, guided=True),
              pipe.unet_input_shape(settings.width, settings.height, guided=False)]
    return shapes if settings.guidance > 1.0 else shapes[1:]


def compile_unet(pipe, speed: SpeedPlan, shapes: list[tuple[int, ...]]) -> float:
    """Compile the UNet for each shape (the graphs come from the caches when they hold them) and
    switch the pipeline over shape by shape; returns the seconds spent."""
    import torch

    started = time.perf_counter()
    if pipe.compiled_unet is None:
        pipe.compiled_unet = torch.compile(pipe.unet, mode=speed.compile_mode, dynamic=False)
    timestep = torch.tensor(500, device=pipe.device)
    import torch._inductor.config as inductor_config

    tuning = inductor_config.patch(COMPILE_TUNING if speed.compile_tuning else {})
    with torch.no_grad(), tuning:
        for shape in shapes:
            sample = torch.zeros(shape, device=pipe.device, dtype=pipe.dtype)
            shape_started = time.perf_counter()
            pipe.compiled_unet(sample, timestep, encoder_hidden_states=None, return_dict=False)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize(pipe.device)
            pipe.compiled_shapes = pipe.compiled_shapes | {tuple(shape)}
            log.info("UNet compiled for input %s in %.1f s", "x".join(map(str, shape)),
                     time.perf_counter() - shape_started)
    return time.perf_counter() - started


def warm_up(pipe, settings: Settings, steps: int = 2) -> float:
    """A short try-on at the default size: kernel selection, allocator and caches, before real users."""
    from PIL import Image

    started = time.perf_counter()
    person = Image.new("RGB", (settings.width, settings.height), (128, 128, 128))
    garment = Image.new("RGB", (settings.width, settings.height), (200, 60, 60))
    mask = Image.new("L", person.size, 0)
    mask.paste(255, (settings.width // 4, settings.height // 4, 3 * settings.width // 4, 3 * settings.height // 4))
    pipe(person, garment, mask, steps=steps, guidance=settings.guidance, seed=0, width=settings.width,
         height=settings.height, guidance_steps=1 if settings.guidance > 1.0 else None)
    return time.perf_counter() - started


class Compiler:
    """The compile of one loaded pipeline: its state for the status, the volume cache, the background run."""

    def __init__(self, settings: Settings, pipe, speed: SpeedPlan):
        from app.model.compile_cache import CompileCache, device_label
        from app.model.pipeline import dtype_name

        self.settings, self.pipe, self.speed = settings, pipe, speed
        self.profile = speed.profile(device_label(pipe.device.type), dtype_name(pipe.dtype), settings.width,
                                     settings.height)
        self.cache = CompileCache(settings, self.profile)
        self.shapes = warm_shapes(pipe, settings)
        self.state = OFF
        self.cache_hit: bool | None = None
        self.seconds: float | None = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def status(self) -> dict:
        return {"state": self.state, "mode": self.speed.compile_mode, "cache": str(self.cache.path),
                "cache_hit": self.cache_hit, "seconds": None if self.seconds is None else round(self.seconds, 2),
                "error": self.error, "shapes": ["x".join(map(str, s)) for s in sorted(self.pipe.compiled_shapes)]}

    def load_cache(self) -> bool:
        """Feed the volume's compiled graphs for this profile to torch; True when there were some."""
        self.cache_hit = self.cache.load()
        return self.cache_hit

    def run(self) -> None:
        """Compile every shape now (seconds with a warm cache), then write new graphs to the volume."""
        from torch._dynamo.utils import counters

        self.state = COMPILING
        misses = counters["inductor"]["fxgraph_cache_miss"]
        try:
            self.seconds = compile_unet(self.pipe, self.speed, self.shapes)
        except Exception as exc:  # a compiler failure must not take the model down: eager keeps serving
            log.exception("torch.compile failed; serving eager (set TRYON_COMPILE=off to skip it)")
            self.pipe.compiled_shapes = frozenset()
            self.state, self.error = FAILED, f"{type(exc).__name__}: {exc}"
            return
        self.state = READY
        if counters["inductor"]["fxgraph_cache_miss"] > misses or not self.cache_hit:
            self.cache.save()

    def start_background(self) -> None:
        """Compile in a thread while the pipeline serves eager; it switches over shape by shape."""
        self.state = COMPILING
        log.info("no compiled UNet in %s yet: serving eager while it compiles in the background (about a minute "
                 "on a GPU; python -m app warm fills the cache ahead)", self.cache.path)
        self._thread = threading.Thread(target=self.run, name="engine-compile", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state
