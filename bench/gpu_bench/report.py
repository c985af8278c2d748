"""The bench's report: the device described, ratios between variants, and the Markdown table for bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from bench.gpu_bench.harness import SPEEDUP_FLAGS, Bench, _dtype_label
from bench.gpu_bench.speed import _flop


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
