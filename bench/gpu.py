"""Speed of the try-on on one device: this project eager, each speed-up alone and together, and the reference.

Usage:
    python bench/gpu.py [--reference PATH/TO/CatVTON] [--out results.json] [--table results.md]
    python bench/gpu.py --variants eager,fuse_qkv,all --skip cold     # a subset

On a GPU it writes full-size random-weight models (the SD-1.5 inpainting UNet, sd-vae-ft-mse and
CatVTON adapter shapes; speed does not depend on the values) into a volume layout and runs at
768x1024, 50 steps, guidance 2.5, bf16; on a CPU it takes the tiny model set at 96x128, 4 steps.
In one run it measures:
- seconds per image (median of --repeats after a warm run) and peak GPU memory of each variant,
  with ratios against this project's eager run and the reference's;
- each variant's output against this project's eager image (PSNR, same seed and dtype);
- fp32 parity with the reference (max and mean |diff| in uint8);
- the FLOP floor: one CFG-batched UNet call counted by FlopCounterMode, times the steps, over a
  measured matmul throughput;
- the first try-on after an Engine reports ready against its third (steady) one, and draft mode;
- a fresh process (page cache dropped where allowed): imports, load, compile and warm-up, first image;
- the safety checker (TRYON_SAFETY) per result: Stable Diffusion's full-size checker (CLIP ViT-L/14) on CUDA,
  the tiny kit's on the CPU (--safety-size full measures the real size there too).
It writes JSON (--out) and prints a Markdown table for bench/RESULTS.md; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


# -- arguments ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--reference", type=Path, help="a checkout of the upstream CatVTON repository "
                        "(Zheng-Chong/CatVTON); without it the reference rows are skipped")
    parser.add_argument("--volume", type=Path, help="volume folder for the models and the compile cache; reused "
                        "when it holds them (default: a temporary folder, removed at the end)")
    parser.add_argument("--size", choices=("auto", "tiny", "full"), default="auto",
                        help="model sizes: auto is full on CUDA, tiny on the CPU")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on GPUs that have it, fp32 on the CPU (the app's rule)")
    parser.add_argument("--width", type=int, help="default: 768 on CUDA, 96 on the CPU")
    parser.add_argument("--height", type=int, help="default: 1024 on CUDA, 128 on the CPU")
    parser.add_argument("--steps", type=int, help="default: 50 on CUDA, 4 on the CPU")
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, help="timed runs per variant after one warm run (default: 2 on "
                        "CUDA, 3 on the CPU); the median is reported")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)} (eager always runs: it is the baseline)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="TRYON_COMPILE for the 'all' variant, the engine and the cold process (auto: on CUDA)")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"))
    parser.add_argument("--compile-unguided", action="store_true",
                        help="also compile the unguided UNet shape, as the engine does (a second cold compile); "
                             "by default only the guided shape is compiled, to fit the time budget")
    parser.add_argument("--parity-size", help="WxH of the fp32 parity run (default 384x512 on CUDA, 64x96 on CPU)")
    parser.add_argument("--parity-steps", type=int)
    parser.add_argument("--safety-size", choices=("auto", "tiny", "full"), default="auto",
                        help="the safety checker's size: auto follows the models (full on CUDA, tiny on the CPU)")
    parser.add_argument("--no-drop-caches", action="store_true",
                        help="keep the page cache before the cold process (by default it is dropped when writable)")
    parser.add_argument("--cold-timeout", type=float, default=420.0, help="seconds the cold process may take")
    parser.add_argument("--budget-s", type=float, help="start no further measurement after this many seconds "
                        "(the results so far are written after every measurement either way)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "catvton-bench-gpu.json",
                        help="JSON results file")
    parser.add_argument("--table", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--cold-child", help=argparse.SUPPRESS)  # internal: run as the cold process
    args = parser.parse_args(argv)
    args.variants = _names(args.variants, VARIANTS, "--variants")
    if "eager" not in args.variants:
        args.variants.insert(0, "eager")
    args.skip = set(_names(args.skip, SECTIONS, "--skip"))
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _names(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown name(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [name for name in known if name in names]


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


# -- setup -------------------------------------------------------------------------------------------

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


# -- measurements ------------------------------------------------------------------------------------

def image_difference(image, baseline) -> dict:
    """PSNR (dB, None when identical) and |diff| statistics of two uint8 images."""
    import numpy as np

    a, b = np.asarray(image, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    diff = np.abs(a - b)
    mse = float((diff ** 2).mean())
    return {"psnr_db": None if mse == 0 else round(10 * math.log10(255.0 ** 2 / mse), 2), "identical": mse == 0,
            "max_abs_diff": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 4),
            "pixels_differing": round(float((diff > 0).mean()), 6)}


def time_runs(bench: Bench, run) -> tuple[dict, object]:
    """One warm run, then --repeats timed runs of ``run()`` (which returns a PIL image): their times and peak
    memory, and the last image."""
    import torch

    bench.sync()
    started = time.perf_counter()
    run()
    bench.sync()
    first = time.perf_counter() - started
    if bench.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, image = [], None
    for _ in range(bench.repeats):
        started = time.perf_counter()
        image = run()
        bench.sync()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 1e9 if bench.is_cuda else None
    return {"seconds_per_image": round(statistics.median(seconds), 4), "runs_s": [round(s, 4) for s in seconds],
            "first_run_s": round(first, 4), "peak_allocated_gb": None if peak is None else round(peak, 3)}, image


def run_variant(bench: Bench, name: str) -> tuple[dict, object]:
    """Load a fresh pipeline, apply the variant's speed-ups (and compile), time it; returns its image too."""
    import torch

    from app.model import accel

    bench.reset_backend()
    base = accel.SpeedPlan(compile=False, compile_mode=bench.settings.compile_mode, fuse_qkv=False,
                           channels_last=False, cudnn_benchmark=False, warmup=False)
    plan = replace(accel.plan(bench.settings, bench.device), warmup=False) if name == "all" \
        else replace(base, **SINGLE_SPEEDUPS[name])
    result = {"plan": plan.as_dict(), "allocated_before_load_gb": bench.allocated_gb()}  # > 0: an earlier leak
    pipe = bench.load()
    accel.apply_eager(pipe, plan)
    if plan.compile:
        result["inductor_cache"] = str(bench.fresh_inductor_cache(name))
        shapes = bench.guided_shapes(pipe)
        result["compiled_shapes"] = ["x".join(map(str, s)) for s in shapes]
        if name == "all":
            # The product's compile path: it also writes the volume cache the engine and cold process read.
            compiler = accel.Compiler(bench.settings, pipe, plan)
            compiler.shapes = shapes
            result["volume_cache_hit"] = compiler.load_cache()
            compiler.run()
            if compiler.state != accel.READY:
                raise RuntimeError(f"compile failed: {compiler.error}")
            result["compile_s"] = round(compiler.seconds, 2)
            result["volume_cache"] = str(compiler.cache.path)
            result["volume_cache_bytes"] = compiler.cache.path.stat().st_size if compiler.cache.path.exists() else 0
        else:
            result["compile_s"] = round(accel.compile_unet(pipe, plan, shapes), 2)
        result["inductor_counters"] = inductor_counters()  # cumulative over the process
        log(f"{name}: compiled {', '.join(result['compiled_shapes'])} in {result['compile_s']:.1f} s")
    timing, image = time_runs(bench, lambda: bench.try_on(pipe).image)
    result.update(timing)
    if name == "eager":
        control = bench.try_on(pipe, seed=bench.args.seed + 1).image
        result["control_seed_plus_1"] = image_difference(control, image)
        result["flops"] = count_flops(bench, pipe) if "flops" not in bench.args.skip else None
    pipe = None
    if plan.compile:
        torch.compiler.reset()
    return result, image


def run_reference(bench: Bench) -> tuple[dict, object]:
    import torch

    from bench.reference import load_reference

    bench.reset_backend()
    allocated = bench.allocated_gb()
    ref = load_reference(bench.args.reference, bench.paths, device=bench.device, dtype=bench.dtype)

    def run():
        generator = torch.Generator(bench.device).manual_seed(bench.args.seed)
        return ref(bench.person, bench.garment, bench.mask, num_inference_steps=bench.steps,
                   guidance_scale=bench.args.guidance, width=bench.width, height=bench.height,
                   generator=generator)[0]

    result, image = time_runs(bench, run)
    ref = None
    return {"allocated_before_load_gb": allocated, **result}, image


def count_flops(bench: Bench, pipe) -> dict:
    """FLOPs of one UNet call at the guided shape, on the real UNet and (as a check) on a meta copy."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from app.model.pipeline import SkipCrossAttention

    shape = pipe.unet_input_shape(bench.width, bench.height, guided=bench.args.guidance > 1.0)

    def count(unet, device, dtype) -> int:
        sample = torch.zeros(shape, device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        # The CPU's fused attention kernel is not in the counter's table: count it as plain matmuls there.
        backends = sdpa_kernel([SDPBackend.MATH]) if device == "cpu" else nullcontext()
        with torch.no_grad(), backends, counter:
            unet(sample, torch.tensor(500, device=device), encoder_hidden_states=None, return_dict=False)
        return counter.get_total_flops()

    flops = count(pipe.unet, bench.device, bench.dtype)
    with torch.device("meta"):
        meta_unet = UNet2DConditionModel.from_config(pipe.unet.config)
    meta_unet.set_attn_processor({name: AttnProcessor2_0() if name.endswith("attn1.processor") else SkipCrossAttention()
                                  for name in meta_unet.attn_processors})
    check = count(meta_unet, "meta", torch.float32)  # no data on meta: the count does not depend on the dtype
    tflops = matmul_tflops(bench)
    floor = flops * bench.steps / (tflops * 1e12)
    log(f"flops: {_flop(flops)} per UNet call {'x'.join(map(str, shape))} (meta count {_flop(check)}); "
        f"matmul {tflops:.2f} TFLOP/s; floor {floor:.3f} s for {bench.steps} steps")
    return {"unet_input": list(shape), "flops_per_call": flops, "flops_per_call_meta": check,
            "tflop_per_call": round(flops / 1e12, 4), "matmul_tflops": round(tflops, 2), "steps": bench.steps,
            "floor_s": round(floor, 4), "matmul": f"{_gemm_n(bench)}^3 {_dtype_label(bench.dtype)}"}


def _flop(count: float) -> str:
    return f"{count / 1e12:.2f} TFLOP" if count >= 1e11 else f"{count / 1e9:.3f} GFLOP"


def _gemm_n(bench: Bench) -> int:
    return 8192 if bench.is_cuda else 1024


def matmul_tflops(bench: Bench) -> float:
    """Measured throughput of a large square matmul in the bench dtype, TFLOP/s."""
    import torch

    n = _gemm_n(bench)
    a = torch.randn(n, n, device=bench.device, dtype=bench.dtype)
    b = torch.randn(n, n, device=bench.device, dtype=bench.dtype)
    for _ in range(3):
        a @ b
    bench.sync()
    repeats = 20 if bench.is_cuda else 5
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    bench.sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - started) / 1e12


def run_parity(bench: Bench) -> dict:
    """fp32, no TF32: this project's image against the reference's, same weights, inputs and seed."""
    import torch

    from bench.reference import load_reference

    width, height = bench.parity_size
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        kwargs = {"steps": bench.parity_steps, "width": width, "height": height}
        ours = bench.load(dtype=torch.float32)
        mine = bench.try_on(ours, **kwargs).image
        control = bench.try_on(ours, seed=bench.args.seed + 1, **kwargs).image
        ours = None
        bench.free_memory()
        ref = load_reference(bench.args.reference, bench.paths, device=bench.device, dtype=torch.float32)
        generator = torch.Generator(bench.device).manual_seed(bench.args.seed)
        theirs = ref(bench.person, bench.garment, bench.mask, num_inference_steps=bench.parity_steps,
                     guidance_scale=bench.args.guidance, width=width, height=height, generator=generator)[0]
        ref = None
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
    result = {"size": f"{width}x{height}", "steps": bench.parity_steps, "dtype": "fp32", "tf32": False,
              **image_difference(mine, theirs), "control_seed_plus_1": image_difference(control, mine)}
    log(f"parity: max |diff| {result['max_abs_diff']}, mean {result['mean_abs_diff']} (control max "
        f"{result['control_seed_plus_1']['max_abs_diff']})")
    return result


def run_safety(bench: Bench) -> dict:
    """The safety checker's cost per result (app.model.safety, as the engine loads it with TRYON_SAFETY): random
    weights at the checker's real size or the tiny kit's, checking an image of the try-on's size."""
    from app.model.safety import SafetyChecker
    from app.model.tiny_models import write_safety_checker

    full = bench.args.safety_size == "full" or (bench.args.safety_size == "auto" and not bench.tiny)
    folder = bench.scratch / "safety"
    started = time.perf_counter()
    write_safety_checker(folder, clip_config=SD_SAFETY_CHECKER if full else None,
                         device=bench.device if full else "cpu")
    written = time.perf_counter() - started
    bench.free_memory()
    started = time.perf_counter()
    checker = SafetyChecker.from_pretrained(folder, bench.device, bench.dtype)
    bench.sync()
    load = time.perf_counter() - started
    # The model's output the service checks: 768x1024 at full size (the checker resizes it to 224 px).
    size = (768, 1024) if full else (bench.width, bench.height)
    image = bench.person.convert("RGB").resize(size)
    verdict = checker.check(image)
    timing, _ = time_runs(bench, lambda: checker.check(image))
    parameters = sum(p.numel() for p in checker.model.parameters())
    checker = None
    return {"size": "full (CLIP ViT-L/14)" if full else "tiny", "parameters": parameters,
            "image": f"{size[0]}x{size[1]}", "write_s": round(written, 2), "load_s": round(load, 3),
            "flagged": verdict.flagged, **timing}


def limit_compile_shapes() -> None:
    """Make the engine compile the guided shape only, as the variants do (a bench budget, see --compile-unguided)."""
    from app.model import accel

    every_shape = accel.warm_shapes
    accel.warm_shapes = lambda pipe, settings: every_shape(pipe, settings)[:1]


def run_first_request(bench: Bench) -> tuple[dict, dict | None]:
    """An Engine loaded as the app loads it (speed-ups, compile from the volume cache, warm-up), then the
    first three try-ons; and draft mode on the same pipeline."""
    import torch

    from app.model.engine import Engine

    bench.reset_backend()
    if not bench.args.compile_unguided:
        limit_compile_shapes()
    bench.fresh_inductor_cache("engine")  # its compile comes from the volume cache alone, as in a new worker
    engine = Engine(bench.settings, background_compile=False)
    before = inductor_counters()
    started = time.perf_counter()
    pipe = engine.get()
    ready_s = time.perf_counter() - started
    status = engine.status()
    counters = {name: count - before.get(name, 0) for name, count in inductor_counters().items()}
    times, images = [], []
    for _ in range(3):
        bench.sync()
        started = time.perf_counter()
        images.append(bench.try_on(pipe).image)
        bench.sync()
        times.append(time.perf_counter() - started)
    first = {"load_to_ready_s": round(ready_s, 3), "load_timings": _rounded(status.load_timings),
             "speed": status.speed, "compile": status.compile, "inductor_counters": counters,
             "runs_s": [round(t, 4) for t in times],
             "first_s": round(times[0], 4), "steady_s": round(times[2], 4),
             "first_over_steady": round(times[0] / times[2], 3), "bar": 1.2}
    log(f"first request: {times[0]:.3f} s, steady {times[2]:.3f} s (x{times[0] / times[2]:.2f}); "
        f"ready after {ready_s:.1f} s")
    draft = None
    if "draft" not in bench.args.skip:
        draft_steps = min(bench.steps, bench.settings.draft_steps)
        guided = math.ceil(draft_steps / 2) if bench.args.guidance > 1.0 else None
        draft_times, image = [], None
        for _ in range(2):  # the first may pick kernels for the unguided shape
            bench.sync()
            started = time.perf_counter()
            image = bench.try_on(pipe, steps=draft_steps, guidance_steps=guided).image
            bench.sync()
            draft_times.append(time.perf_counter() - started)
        draft = {"steps": draft_steps, "guided_steps": guided, "runs_s": [round(t, 4) for t in draft_times],
                 "seconds": round(draft_times[-1], 4), "full_s": round(times[2], 4),
                 "speedup": round(times[2] / draft_times[-1], 3), "vs_full": image_difference(image, images[2])}
        log(f"draft: {draft_times[-1]:.3f} s vs full {times[2]:.3f} s, PSNR {draft['vs_full']['psnr_db']} dB")
    engine.release()
    engine.close()
    pipe = None
    torch.compiler.reset()  # drop the compiled graphs with the model: later variants start clean
    return first, draft


def drop_page_cache() -> tuple[bool, str]:
    path = "/proc/sys/vm/drop_caches"
    try:
        os.sync()
        with open(path, "w") as handle:
            handle.write("3\n")
        return True, "dropped (sync; echo 3 > /proc/sys/vm/drop_caches)"
    except OSError as exc:
        return False, f"not dropped: {path} is not writable here ({exc.strerror})"


def run_cold(bench: Bench) -> dict:
    """A fresh process from start to first image, with an empty local Inductor cache (the volume's kept)."""
    if bench.args.no_drop_caches:
        dropped, how = False, "not dropped (--no-drop-caches)"
    else:
        dropped, how = drop_page_cache()
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(bench.scratch / "inductor" / "cold"),
               PYTHONUNBUFFERED="1")
    env.pop("TRITON_CACHE_DIR", None)
    payload = json.dumps({"overrides": bench.overrides, "limit_shapes": not bench.args.compile_unguided})
    spawned = time.time()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cold-child", payload], env=env,
                          stdout=subprocess.PIPE, text=True, timeout=bench.args.cold_timeout, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the cold process exited with {done.returncode}; its stderr is above")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    child["python_start_s"] = round(child.pop("started_at") - spawned, 3)
    result = {"page_cache": how, "page_cache_dropped": dropped, "process_wall_s": round(wall, 3), **child}
    log(f"cold process: {wall:.1f} s to exit ({how})")
    return result


def cold_child(payload: str) -> None:
    """The cold process itself: imports, Engine load (speed-ups, compile, warm-up), first image; JSON on stdout."""
    started_at, clock = time.time(), time.perf_counter()
    phases = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    import torch  # noqa: F401

    lap("import_torch_s")
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (diffusers imports lazily)

    lap("import_diffusers_s")
    from app.config import Settings
    from app.model.engine import Engine
    from app.studio.demo_images import example_garment, example_mask, example_person

    lap("import_app_s")
    request = json.loads(payload)
    if request["limit_shapes"]:
        limit_compile_shapes()
    settings = Settings.from_env({}, **request["overrides"])
    engine = Engine(settings, background_compile=False)
    pipe = engine.get()
    lap("ready_s")
    status = engine.status()
    timings = status.load_timings
    load = sum(timings.get(k, 0.0) for k in ("scheduler", "unet", "adapter", "vae"))
    result = pipe(example_person(), example_garment(), example_mask(), steps=settings.steps,
                  guidance=settings.guidance, seed=settings.seed, width=settings.width, height=settings.height)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    lap("first_image_s")
    print(json.dumps({"started_at": started_at, **phases, "load_s": round(load, 3),
                      "speed_ups_s": round(timings.get("speed_ups", 0.0), 3),
                      "compile_s": round(timings["compile"], 3) if "compile" in timings else None,
                      "warmup_s": round(timings["warmup"], 3) if "warmup" in timings else None,
                      "load_timings": _rounded(timings), "compile": status.compile,
                      "inductor_counters": inductor_counters(),
                      "first_image_timings": _rounded(result.timings), "diffusers": diffusers.__version__}))


def inductor_counters() -> dict:
    """Inductor's cache hits and misses so far in this process: did a warm cache serve the compile?"""
    from torch._dynamo.utils import counters

    return {name: counters["inductor"][name] for name in
            ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass") if counters["inductor"][name]} | \
        {f"aotautograd_{name}": counters["aot_autograd"][name] for name in
         ("autograd_cache_hit", "autograd_cache_miss") if counters["aot_autograd"][name]}


def _rounded(timings: dict) -> dict:
    return {name: round(value, 3) for name, value in timings.items()}


def _dtype_label(dtype) -> str:
    from app.model.pipeline import dtype_name

    return dtype_name(dtype)


# -- report ------------------------------------------------------------------------------------------

def describe_device(bench: Bench) -> dict:
    import diffusers
    import torch

    info = {"device": bench.device, "dtype": _dtype_label(bench.dtype), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version()}
    if bench.is_cuda:
        info["name"] = torch.cuda.get_device_name()
        info["capability"] = "sm{}{}".format(*torch.cuda.get_device_capability())
        info["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    else:
        model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("model name")), platform.processor() or platform.machine())
        info["name"] = f"{model}, {os.cpu_count()} cores"
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def add_ratios(variants: dict) -> None:
    eager = variants.get("eager", {}).get("seconds_per_image")
    reference = variants.get("reference", {}).get("seconds_per_image")
    for result in variants.values():
        seconds = result.get("seconds_per_image")
        if seconds:
            result["speedup_vs_eager"] = round(eager / seconds, 3) if eager else None
            result["speedup_vs_reference"] = round(reference / seconds, 3) if reference else None


def _num(value, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _phase(cold: dict, name: str) -> str:
    seconds = cold.get(name.replace("-", "") + "_s")
    return f"no {name}" if seconds is None else f"{name} {seconds:.2f} s"


def _psnr(diff: dict | None) -> str:
    if not diff:
        return "(baseline)"
    return "identical" if diff["identical"] else f"{diff['psnr_db']:.1f} dB (max {diff['max_abs_diff']})"


def markdown(results: dict) -> str:
    dev, cfg = results["device"], results["config"]
    lines = [f"### bench/gpu.py on {dev['name']}", "",
             f"`{results['command']}`", "",
             f"{cfg['width']}x{cfg['height']}, {cfg['steps']} steps, guidance {cfg['guidance']}, seed {cfg['seed']}, "
             f"{dev['dtype']}, {cfg['models']} weights; median of {cfg['repeats']} "
             f"run{'s' if cfg['repeats'] != 1 else ''} after a warm run. "
             f"torch {dev['torch']}, diffusers {dev['diffusers']}, Python {dev['python']}. "
             f"Run took {results['wall_s']:.0f} s.", "",
             "| variant | s/image | vs eager | vs reference | peak GB | output vs eager | compile s | warm run s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        if "seconds_per_image" not in r:
            lines.append(f"| {name} | {r.get('note') or r.get('error', 'n/a')} | | | | | | |")
            continue
        ratio = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
        label = name
        if name == "all":  # what app.model.accel.plan turns on for this device
            label += " (" + (", ".join(k for k in SPEEDUP_FLAGS if r["plan"][k]) or "none") + ")"
        lines.append(f"| {label} | {r['seconds_per_image']:.3f} | {ratio(r.get('speedup_vs_eager'))} | "
                     f"{ratio(r.get('speedup_vs_reference'))} | {_num(r.get('peak_allocated_gb'))} | "
                     f"{_psnr(r.get('vs_eager'))} | {_num(r.get('compile_s'), 1) if 'compile_s' in r else ''} | "
                     f"{r['first_run_s']:.3f} |")
    lines.append("")
    eager = results["variants"].get("eager", {})
    if eager.get("control_seed_plus_1"):
        lines.append(f"- Scale of the output measure: eager at seed+1 against eager is "
                     f"{_psnr(eager['control_seed_plus_1'])}; the bar for a speed-up is 35 dB.")
    flops = eager.get("flops")
    if flops:
        timed = [(r["seconds_per_image"], n) for n, r in results["variants"].items()
                 if "seconds_per_image" in r and n != "reference"]
        best_s, best = min(timed)
        lines.append(f"- FLOP floor: {_flop(flops['flops_per_call'])} per CFG-batched UNet call "
                     f"({'x'.join(map(str, flops['unet_input']))}; meta-device count "
                     f"{_flop(flops['flops_per_call_meta'])}) x {flops['steps']} steps at "
                     f"{flops['matmul_tflops']:.2f} TFLOP/s measured ({flops['matmul']} matmul) = "
                     f"{flops['floor_s']:.3f} s; the best variant ({best}, {best_s:.3f} s) is at "
                     f"{100 * flops['floor_s'] / best_s:.0f} % of the floor.")
    parity = results.get("parity")
    if parity and "max_abs_diff" in parity:
        lines.append(f"- fp32 parity with the reference ({parity['size']}, {parity['steps']} steps, no TF32): "
                     f"max |diff| {parity['max_abs_diff']}/255, mean {parity['mean_abs_diff']}, "
                     f"{100 * parity['pixels_differing']:.3f} % of pixels differ; control (seed+1) max "
                     f"{parity['control_seed_plus_1']['max_abs_diff']}.")
    elif parity:
        lines.append(f"- fp32 parity with the reference: {parity.get('note', 'n/a')}")
    first = results.get("first_request")
    if first:
        t = first["load_timings"]
        compiled = f"compile {t['compile']:.1f} s (volume cache, empty local Inductor cache)" if "compile" in t \
            else "no compile"
        warmed = f"warm-up {t['warmup']:.1f} s" if "warmup" in t else "no warm-up"
        lines.append(f"- First request after ready: {first['first_s']:.3f} s against {first['steady_s']:.3f} s "
                     f"steady (the third), x{first['first_over_steady']:.2f} (bar x1.2). Engine ready in "
                     f"{first['load_to_ready_s']:.1f} s: {compiled}, {warmed}.")
    draft = results.get("draft")
    if draft:
        lines.append(f"- Draft ({draft['steps']} steps, guided on {draft['guided_steps']}): {draft['seconds']:.3f} s "
                     f"against {draft['full_s']:.3f} s full (speed-up x{draft['speedup']:.2f}), "
                     f"{_psnr(draft['vs_full'])} against the full result.")
    cold = results.get("cold")
    if cold and "ready_s" in cold:
        lines.append(f"- Cold process (page cache {'dropped' if cold['page_cache_dropped'] else 'not dropped'}): "
                     f"python start {cold['python_start_s']:.2f} s, import torch {cold['import_torch_s']:.2f} s, "
                     f"diffusers {cold['import_diffusers_s']:.2f} s, app {cold['import_app_s']:.2f} s, load "
                     f"{cold['load_s']:.2f} s, {_phase(cold, 'compile')}, {_phase(cold, 'warm-up')}, "
                     f"first image {cold['first_image_s']:.2f} s; {cold['process_wall_s']:.1f} s to exit.")
    safety = results.get("safety")
    if safety and "seconds_per_image" in safety:
        lines.append(f"- Safety checker ({safety['size']}, {safety['parameters'] / 1e6:.1f} M parameters, random "
                     f"weights) on a {safety['image']} result: {safety['seconds_per_image']:.4f} s per image "
                     f"(first {safety['first_run_s']:.4f} s), load {safety['load_s']:.2f} s, peak "
                     f"{_num(safety.get('peak_allocated_gb'))} GB: added to every try-on with TRYON_SAFETY on.")
    for name, error in results.get("errors", {}).items():
        lines.append(f"- {name} FAILED: {error}")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.cold_child:
        cold_child(args.cold_child)
        return {}
    temporary = args.volume is None
    volume = Path(tempfile.mkdtemp(prefix="catvton-bench-volume-")) if temporary else args.volume.resolve()
    bench = Bench(args, volume)
    try:
        return measure(bench)
    finally:
        shutil.rmtree(bench.scratch, ignore_errors=True)
        shutil.rmtree(bench.settings.layout.cache / "torch" / bench.settings.runtime_key, ignore_errors=True)
        if temporary:
            shutil.rmtree(volume, ignore_errors=True)


def measure(bench: Bench) -> dict:
    args = bench.args
    results = bench.results
    results.update({"command": command_line(), "device": describe_device(bench), "notes": []})
    log(f"device {results['device']['name']} ({bench.device}, {results['device']['dtype']}); "
        f"{bench.width}x{bench.height}, {bench.steps} steps, {bench.repeats} repeats; "
        f"variants {', '.join(args.variants)}")
    results["config"] = {"width": bench.width, "height": bench.height, "steps": bench.steps,
                         "guidance": args.guidance, "seed": args.seed, "repeats": bench.repeats,
                         "compile": args.compile, "compile_mode": args.compile_mode,
                         "compile_unguided": args.compile_unguided, "reference": str(args.reference or ""),
                         "budget_s": args.budget_s, **write_models(bench)}
    if not args.compile_unguided:
        results["notes"].append("Compiled variants, the engine and the cold process compile the guided UNet shape "
                                "only (--compile-unguided adds the unguided one, as the engine does in service).")
    results["variants"] = {name: {"note": "not run"} for name in args.variants}  # shown in this order
    images: dict[str, object] = {}
    for step in run_order(args):
        if args.budget_s and time.perf_counter() - STARTED > args.budget_s:
            log(f"{step}: skipped, the run is past --budget-s {args.budget_s:.0f}")
            results["notes"].append(f"{step} skipped: the run was past --budget-s {args.budget_s:.0f} s.")
            continue
        run_step(bench, step, images)
        save(bench, images)
    table = save(bench, images)
    print(table)
    log(f"results: {args.out}" + (f", table: {args.table}" if args.table else ""))
    return results


def run_order(args: argparse.Namespace) -> list[str]:
    """What the closing note needs first (eager, the product's default, the reference, first request, cold
    process), then the single speed-ups: a run cut short by its budget still answers the issue."""
    first = [name for name in ("eager", "all", "reference") if name in args.variants]
    later = [name for name in args.variants if name not in first]
    sections = [name for name in ("parity", "first_request", "safety", "cold") if name not in args.skip]
    if "first_request" not in sections and "draft" not in args.skip:
        sections.insert(1, "first_request")  # draft runs on the engine that section loads
    return first + sections + later


def run_step(bench: Bench, step: str, images: dict) -> None:
    args, results = bench.args, bench.results
    variants = results["variants"]
    if step == "cudnn_benchmark" and not bench.is_cuda:
        variants[step] = {"note": "skipped: cuDNN is CUDA only"}
    elif step == "compile_tuned" and not bench.is_cuda:
        variants[step] = {"note": "skipped: the tuning flags are for Triton's GPU kernels"}
    elif step in ("reference", "parity") and args.reference is None:
        (variants if step == "reference" else results)[step] = {"note": "skipped: no --reference checkout given"}
    elif step in VARIANTS:
        with section(bench, f"variant {step}"):
            variants[step] = {"error": "failed, see errors"}
            variants[step], images[step] = run_reference(bench) if step == "reference" else run_variant(bench, step)
            log(f"variant {step}: {variants[step]['seconds_per_image']:.3f} s/image "
                f"(warm run {variants[step]['first_run_s']:.3f} s, peak {variants[step]['peak_allocated_gb']} GB)")
    elif step == "parity":
        with section(bench, "parity"):
            results["parity"] = run_parity(bench)
    elif step == "first_request":
        with section(bench, "first request and draft"):
            first, draft = run_first_request(bench)
            if "first_request" not in args.skip:
                results["first_request"] = first
            if draft is not None:
                results["draft"] = draft
    elif step == "safety":
        with section(bench, "safety checker"):
            results["safety"] = run_safety(bench)
    elif step == "cold":
        with section(bench, "cold process"):
            results["cold"] = run_cold(bench)


def save(bench: Bench, images: dict) -> str:
    """Write what is measured so far (JSON and table): a run stopped by a time limit keeps its results."""
    results, args = bench.results, bench.args
    variants = results["variants"]
    baseline = images.get("eager")
    for name, image in images.items():
        if name != "eager" and baseline is not None:
            variants[name]["vs_eager"] = image_difference(image, baseline)
    add_ratios(variants)
    results["wall_s"] = round(time.perf_counter() - STARTED, 1)
    table = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "table": table}, indent=2, default=str))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    return table


if __name__ == "__main__":
    main()
