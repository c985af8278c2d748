"""The bench's other sections: fp32 parity with the reference, the safety checker, the first try-on after the
engine reports ready (and draft mode), and a cold process from start to first image."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

from bench.gpu_bench.harness import SCRIPT, SD_SAFETY_CHECKER, Bench, _rounded, inductor_counters, log
from bench.gpu_bench.speed import image_difference, time_runs


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
    done = subprocess.run([sys.executable, str(SCRIPT), "--cold-child", payload], env=env,
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
