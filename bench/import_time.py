"""Import cost of the serving path without the ML stack, in fresh interpreters.

Usage: python bench/import_time.py [--runs 7]

Each case runs in a new interpreter (median of --runs); it also reports whether torch got imported.
"serving deps" is what app.web.server will import before the model loads: fastapi, gradio and the
torch-free app modules.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "app.config + app.model.engine": "import app.config, app.model.engine",
    "serving deps (fastapi, gradio, app.model.engine, app.model.weights)":
        "import fastapi, gradio, app.model.engine, app.model.weights",
    "app.model.pipeline (torch + diffusers), for scale": "import app.model.pipeline",
}
PROBE = ("import sys, time; t = time.perf_counter(); {code}; "
         "print(time.perf_counter() - t, 'torch' in sys.modules)")


def measure(code: str, runs: int) -> tuple[float, bool]:
    times, torch_loaded = [], False
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        times.append(float(out[0]))
        torch_loaded = out[1] == "True"
    return statistics.median(times), torch_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for name, code in CASES.items():
        seconds, torch_loaded = measure(code, args.runs)
        print(f"{name:<58} {seconds * 1000:8.0f} ms  torch imported: {torch_loaded}")


if __name__ == "__main__":
    main()
