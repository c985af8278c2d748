"""Seconds per image: this project eager and with each speed-up, the reference implementation, and the FLOP
floor (one UNet call counted, over a measured matmul throughput)."""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace

from bench.gpu_bench.harness import SINGLE_SPEEDUPS, Bench, _dtype_label, inductor_counters, log


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
