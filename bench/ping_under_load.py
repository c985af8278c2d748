"""/ping while 100 try-ons wait: does the health check starve? (tiny models, CPU, loopback)

Usage: python bench/ping_under_load.py [--requests 100] [--steps 10]

Launches ``python -m app serve --tiny`` with TRYON_QUEUE_MAX=100, sends ``--requests`` concurrent REST
try-ons (64x96) while polling /ping every 100 ms, and prints the /ping p50/p99/max and how many
try-ons finished, were refused (429, with Retry-After) or failed (anything else; must be 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.studio.demo_images import example_garment, example_mask, example_person  # noqa: E402
from tests.test_e2e import launch_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "volume"
        (volume / "inputs").mkdir(parents=True)
        example_person().save(volume / "inputs" / "person.png")
        example_garment().save(volume / "inputs" / "garment.png")
        example_mask().save(volume / "inputs" / "mask.png")
        with launch_server(volume, TRYON_QUEUE_MAX="100") as server:
            url = server["url"]
            body = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png",
                    "steps": args.steps, "width": 64, "height": 96}
            httpx.post(f"{url}/v1/tryon", json=body, timeout=300)  # load the model first
            pings: list[float] = []
            done = threading.Event()

            def poll():
                while not done.is_set():
                    started = time.perf_counter()
                    httpx.get(f"{url}/ping", timeout=60)
                    pings.append(time.perf_counter() - started)
                    time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))

            def one(_):
                response = httpx.post(f"{url}/v1/tryon", json=body, timeout=600)
                if response.status_code == 429:
                    return "refused" if response.headers.get("retry-after") else "failed"
                return "finished" if response.status_code == 200 else "failed"

            poller = threading.Thread(target=poll)
            poller.start()
            began = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                outcomes = list(pool.map(one, range(args.requests)))
            elapsed = time.perf_counter() - began
            done.set()
            poller.join()
    ms = sorted(p * 1000 for p in pings)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{args.requests} concurrent try-ons ({args.steps} steps, 64x96) in {elapsed:.1f} s: "
          f"{outcomes.count('finished')} finished, {outcomes.count('refused')} refused (429 + Retry-After), "
          f"{outcomes.count('failed')} failed")
    print(f"/ping over {len(ms)} polls: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
