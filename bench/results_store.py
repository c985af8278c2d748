"""Cost of one gallery page with many results on the volume: time and file operations.

Usage: python bench/results_store.py [--results 20000] [--owners 50] [--days 60] [--keep DIR]

Fills a temporary volume with synthetic results (tiny PNGs and real sidecars, in the store's layout,
spread over ``--days`` days and ``--owners`` owners), then serves page 1 and page 50 of one owner's
gallery (12 per page, as the studio shows) in a fresh process traced by strace: every open, stat and
directory read on the volume is counted. Times are the median of 5 warm in-process calls; the
"at 5 ms" column projects the file operations onto a network volume that answers one in 5 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.tryons.outputs import ResultStore  # noqa: E402

PAGE = 12
TRACED = "openat,open,stat,lstat,newfstatat,statx,getdents64,readlink"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def owner_name(number: int) -> str:
    """Half of all results belong to one busy owner, the rest spread evenly over the others."""
    return f"user:owner-{number:02d}"


def owner_of(n: int, owners: int) -> str:
    return owner_name(0) if n % 2 == 0 else owner_name(1 + (n // 2) % (owners - 1))


def fill(volume: Path, results: int, owners: int, days: int) -> None:
    """``results`` results over the owners, evenly spaced over the last days."""
    store = ResultStore(volume / "outputs", volume)
    start = datetime.now(timezone.utc) - timedelta(days=days)
    step = timedelta(days=days) / results
    for n in range(results):
        owner = owner_of(n, owners)
        created = start + step * n
        image_path = store.path_for_new(owner, created, worker="bec000", suffix=f"{n % 16**6:06x}")
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.write_bytes(PNG)
        record = {"id": store.id_of(image_path), "owner": owner, "created": created.isoformat(timespec="seconds"),
                  "image": store.relative(image_path), "size": [1, 1], "seed": n,
                  "settings": {"garment_type": "upper", "steps": 50, "guidance": 2.5}}
        image_path.with_suffix(".json").write_text(json.dumps(record))


def query(volume: Path, owner: str, page: int) -> tuple[int, int]:
    store = ResultStore(volume / "outputs", volume)
    results, total = store.list(owner or None, offset=(page - 1) * PAGE, limit=PAGE)
    return len(results), total


def traced_operations(volume: Path, owner: str, page: int) -> dict[str, int]:
    """File operations on the volume of one page query, in a fresh process."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        subprocess.run(["strace", "-f", "-y", "-e", f"trace={TRACED}", "-o", trace.name, sys.executable, __file__,
                        "--query", str(volume), owner, str(page)], check=True, stdout=subprocess.DEVNULL)
        counts: dict[str, int] = {}
        marker = str(volume)
        for line in trace:
            if marker not in line:
                continue
            call = line.split("(", 1)[0].split()[-1]
            counts[call] = counts.get(call, 0) + 1
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--keep", type=Path, help="fill (or reuse) this folder instead of a temporary one")
    parser.add_argument("--query", nargs=3, metavar=("VOLUME", "OWNER", "PAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.query:
        query(Path(args.query[0]), args.query[1], int(args.query[2]))
        return
    volume = Path(args.keep or tempfile.mkdtemp(prefix="results-bench-")).resolve()
    try:
        if not (volume / "outputs").exists():
            began = time.perf_counter()
            fill(volume, args.results, args.owners, args.days)
            print(f"filled {args.results} results, {args.owners} owners, {args.days} days in "
                  f"{time.perf_counter() - began:.1f} s")
        print(f"{'owner':<14}  {'page':>4}  {'shown':>5}  {'total':>5}  {'time':>8}  {'opens':>5}  "
              f"{'stats':>5}  {'dir reads':>9}  {'at 5 ms':>8}")
        for owner, page in ((owner_name(0), 1), (owner_name(0), 50), (owner_name(7), 1), ("", 1), ("", 50)):
            times = []
            for _ in range(5):
                began = time.perf_counter()
                shown, total = query(volume, owner, page)
                times.append(time.perf_counter() - began)
            ops = traced_operations(volume, owner, page) if shutil.which("strace") else {}
            opens = ops.get("openat", 0) + ops.get("open", 0)
            stats = sum(ops.get(k, 0) for k in ("stat", "lstat", "newfstatat", "statx", "readlink"))
            reads = ops.get("getdents64", 0)
            took = statistics.median(times) * 1000
            print(f"{owner or '(everyone)':<14}  {page:>4}  {shown:>5}  {total:>5}  {took:>6.1f} ms  {opens:>5}  "
                  f"{stats:>5}  {reads:>9}  {(opens + stats + reads) * 0.005:>6.2f} s")
    finally:
        if not args.keep:
            shutil.rmtree(volume, ignore_errors=True)


if __name__ == "__main__":
    main()
