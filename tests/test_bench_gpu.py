"""bench/gpu.py runs end to end on the CPU (tiny models, no compile) and reports what it measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

VARIANTS = ("eager", "fuse_qkv", "channels_last", "all")


@pytest.mark.slow
def test_bench_runs_on_the_cpu_and_reports_every_measure(tmp_path):
    out, table_file = tmp_path / "results.json", tmp_path / "results.md"
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu",
               "--variants", ",".join([*VARIANTS, "reference"]), "--width", "64", "--height", "96",
               "--steps", "2", "--repeats", "1", "--volume", str(tmp_path / "vol"), "--no-drop-caches",
               "--cold-timeout", "120", "--out", str(out), "--table", str(table_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "errors" not in results, results["errors"]

    variants = results["variants"]
    assert list(variants) == [*VARIANTS, "reference"]
    for name in VARIANTS:
        assert variants[name]["seconds_per_image"] > 0
        assert variants[name]["speedup_vs_eager"] > 0
    for name in VARIANTS[1:]:
        diff = variants[name]["vs_eager"]
        assert diff["identical"] or (math.isfinite(diff["psnr_db"]) and diff["psnr_db"] > 30), (name, diff)
    control = variants["eager"]["control_seed_plus_1"]  # the measure can tell two images apart
    assert control["psnr_db"] < 30 and control["max_abs_diff"] > 20

    flops = variants["eager"]["flops"]
    assert flops["flops_per_call"] > 0 and flops["flops_per_call"] == flops["flops_per_call_meta"]
    assert flops["unet_input"] == [2, 9, 24, 8] and flops["floor_s"] > 0 and flops["matmul_tflops"] > 0

    first = results["first_request"]
    assert first["first_s"] > 0 and first["steady_s"] > 0 and "warmup" in first["load_timings"]
    draft = results["draft"]
    assert draft["steps"] == 2 and draft["guided_steps"] == 1 and draft["seconds"] > 0
    assert draft["vs_full"]["max_abs_diff"] > 0  # guidance on the first step only changes the image
    cold = results["cold"]
    assert cold["page_cache_dropped"] is False
    for phase in ("import_torch_s", "import_diffusers_s", "load_s", "warmup_s", "first_image_s"):
        assert cold[phase] > 0, phase
    assert results["parity"]["note"].startswith("skipped")
    safety = results["safety"]  # the tiny kit's checker on the CPU
    assert safety["size"] == "tiny" and safety["seconds_per_image"] > 0 and safety["flagged"] is False

    table = table_file.read_text()
    assert table.strip() == done.stdout.strip() and table == results["table"]
    for name in VARIANTS:
        assert f"| {name} " in table
    assert "| reference | skipped: no --reference checkout given |" in table
    assert "FLOP floor" in table and "Cold process" in table and "Draft" in table and "Safety checker" in table
    assert results["command"].startswith("python ") and "--variants" in results["command"]
