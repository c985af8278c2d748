"""CPU cost of one try-on on the tiny model set, through the engine as the app runs it.

Usage: python bench/tiny_generation.py [--steps 50] [--width 192] [--height 256] [--runs 5]

Reports load time and, per generation, wall and CPU (process) time; the first generation is
kept apart as warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings  # noqa: E402
from app.model.engine import Engine  # noqa: E402
from app.studio.demo_images import example_garment, example_mask, example_person  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as volume:
        engine = Engine(Settings.from_env({}, volume=volume, tiny_models=True, device="cpu"))
        started = time.perf_counter()
        pipe = engine.get()
        print(f"load (incl. writing the tiny set): {time.perf_counter() - started:.2f} s; "
              f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
        person, garment, mask = example_person(), example_garment(), example_mask()
        walls, cpus = [], []
        for run in range(args.runs + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            pipe(person=person, garment=garment, mask=mask, steps=args.steps, guidance=2.5, seed=run,
                 width=args.width, height=args.height)
            if run:  # run 0 is warm-up
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        print(f"{args.width}x{args.height}, {args.steps} steps, guidance 2.5, median of {args.runs}: "
              f"wall {statistics.median(walls):.2f} s, CPU {statistics.median(cpus):.2f} s")


if __name__ == "__main__":
    main()
