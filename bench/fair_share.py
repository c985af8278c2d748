"""Waits of a few designers behind one script's flood, with the fair queue and first come, first served.

Usage: python bench/fair_share.py [--script 20] [--others 3] [--steps 4] [--width 128] [--height 192]

Real try-ons on the tiny model set through the service as the app runs it. The script submits its
try-ons at once; when its first one is on the GPU, each of the others submits one. Reports every
other's wait for the GPU in seconds and in try-ons (the mean generation time), for both gates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings  # noqa: E402
from app.model.engine import Engine  # noqa: E402
from app.studio.demo_images import example_garment, example_mask, example_person  # noqa: E402
from app.tryons.fair_queue import FairGate  # noqa: E402
from app.tryons.outputs import ResultStore  # noqa: E402
from app.tryons.service import TryOnOptions, TryOnService  # noqa: E402


def scenario(service: TryOnService, script: int, others: int, options: TryOnOptions) -> dict:
    person, garment, mask = example_person(), example_garment(), example_mask()
    results: dict[str, list] = {}
    lock = threading.Lock()

    def run(owner: str) -> None:
        saved = service.run(person, garment, mask, options, owner=owner)
        with lock:
            results.setdefault(owner, []).append(saved.metadata["timings"])

    threads = [threading.Thread(target=run, args=("user:script",)) for _ in range(script)]
    for thread in threads:
        thread.start()
    while not service.queue_state()["running"]:
        time.sleep(0.001)
    for number in range(others):
        threads.append(threading.Thread(target=run, args=(f"user:designer-{number + 1}",)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    generate = statistics.mean(t["generate"] for timings in results.values() for t in timings)
    waits = {owner: timings[0]["queue_wait"] for owner, timings in results.items() if owner != "user:script"}
    return {"generate": generate, "waits": waits,
            "script_last": max(t["queue_wait"] for t in results["user:script"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=int, default=20)
    parser.add_argument("--others", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=192)
    args = parser.parse_args()
    options = TryOnOptions(steps=args.steps, width=args.width, height=args.height, seed=1, keep_photo=False)
    with tempfile.TemporaryDirectory() as volume:
        settings = Settings.from_env({}, volume=volume, tiny_models=True, device="cpu",
                                     max_waiting_per_owner=max(args.script, 1), queue_max=args.script + args.others)
        engine = Engine(settings)
        engine.get()
        for fair in (True, False):
            service = TryOnService(settings, engine, ResultStore(settings.layout.outputs, settings.layout.root))
            service._gpu = FairGate(fair=fair)
            service.run(example_person(), example_garment(), example_mask(), options)  # warm
            found = scenario(service, args.script, args.others, options)
            each = found["generate"]
            waits = ", ".join(f"{wait:.2f} s ({wait / each:.1f})" for wait in sorted(found["waits"].values()))
            print(f"{'fair share' if fair else 'first come'}: one try-on {each:.2f} s; the others waited "
                  f"{waits} try-ons; the script's last waited {found['script_last']:.2f} s")


if __name__ == "__main__":
    main()
