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
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app, and this folder as bench

from bench.gpu_bench.harness import SECTIONS, STARTED, VARIANTS, Bench, log, section, write_models  # noqa: E402
from bench.gpu_bench.report import add_ratios, describe_device, markdown  # noqa: E402
from bench.gpu_bench.sections import cold_child, run_cold, run_first_request, run_parity, run_safety  # noqa: E402
from bench.gpu_bench.speed import image_difference, run_reference, run_variant  # noqa: E402


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
