"""The launcher under faults: what the next workers do, and how long they take, when a builder is
frozen or killed at each phase; and how long a newcomer needs after a crashed build with the defaults.

Usage: python bench/launcher_faults.py [matrix] [defaults] [--json PATH]

matrix    runs tests/test_launcher_faults.py's failpoint matrix (TRYON_LOCK_STALE_S=2, three workers
          arriving while the builder is frozen or dead) and prints one row per phase x action.
defaults  with the default settings (TRYON_LOCK_STALE_S=120): a builder killed after publishing its
          archive but before naming it, then one newcomer (timed); and a builder killed while packing
          (no complete archive exists), then one newcomer, which must wait out the stale limit.

Real uv and processes on a temp volume with a 2 MB stand-in payload (see tests/test_launcher.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.launcher_kit import FAKE_APP, Worker, launch, make_wheel  # noqa: E402


def matrix() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_launcher_faults.py"),
                        "-k", "at_any_phase"], cwd=ROOT, check=True, env={**os.environ,
                                                                         "LAUNCHER_FAULT_REPORT": str(report)})
        rows = [json.loads(line) for line in report.read_text().splitlines()]
    print("\n| failpoint | builder | the 3 workers arriving | builds started (builder's included) | "
          "workers ready after (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        action = "killed" if row["action"] == "kill" else "frozen 6 s"
        print(f"| {row['phase']} | {action} | {'; '.join(row['workers'])} | {row['builds']} | "
              f"{', '.join(str(s) for s in row['seconds'])} |")
    return rows


def newcomer_after(phase: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = tmp / "volume"
        make_wheel(volume / "wheels", "1.0", payload_mb=2)
        (volume / "app").mkdir(parents=True)
        (volume / "app" / "__main__.py").write_text(FAKE_APP)
        requirements = tmp / "requirements.txt"
        requirements.write_text("tryon-probe==1.0\n")
        builder = Worker(volume, tmp / "builder", requirements, TRYON_FAILPOINTS=f"{phase}=kill")
        builder.wait_for(f"failpoint {phase}")
        builder.finish()
        start = time.monotonic()
        done = launch(volume, tmp / "newcomer", requirements, timeout=900)
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        what = "took over and built" if "took over" in done.stderr else \
            "used the complete archive" if "restored" in done.stderr else "built"
        row = {"killed_at": phase, "stale_s": 120, "newcomer": what, "seconds": round(took, 1)}
        print(f"| builder killed at {phase} | {what} | {took:.1f} s |")
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", metavar="matrix|defaults", help="what to run (default: both)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.what = args.what or ["matrix", "defaults"]
    if set(args.what) - {"matrix", "defaults"}:
        parser.error(f"unknown: {' '.join(sorted(set(args.what) - {'matrix', 'defaults'}))} (use matrix, defaults)")
    figures: dict = {}
    if "matrix" in args.what:
        figures["matrix"] = matrix()
    if "defaults" in args.what:
        print("\n| default settings (TRYON_LOCK_STALE_S=120) | newcomer | ready after |\n|---|---|---|")
        figures["defaults"] = [newcomer_after(phase) for phase in ("archive-published", "manifest-published",
                                                                   "packed")]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
