"""Launcher benchmarks: warm-start overhead, unpack throughput, and the file operations of imports.

Usage: python bench/launcher_bench.py [warm] [unpack] [imports] [--venv .venv] [--runs 20]

warm     The launcher's own cost on a warm start, entrypoint to exec: a warm launch of a stand-in app
         minus the same interpreter starting the same app directly (median of --runs each).
unpack   Pack --venv (the real app stack) as one tar | zstd -3 stream (the launcher's first format;
         bench/restore_bench.py compares it with today's archive in parts), then compare a raw
         read of the archive with unpacking it to local disk, each after dropping the page cache
         where permitted (root; otherwise reported as warm-cache figures).
imports  strace counts of file-metadata system calls (open, stat, access, readlink, ...) made by
         `import torch, diffusers, gradio` from --venv, and what they would cost as network round
         trips at 1, 3 and 5 ms each, against one sequential read of the archive at 200-400 MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "launcher" / "entrypoint.sh"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
APP = "import time, sys; print(time.time())\n"


def drop_caches() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_warm(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume, local = tmp / "volume", tmp / "local"
        (volume / "app").mkdir(parents=True)
        (volume / "app" / "__main__.py").write_text(APP)
        requirements = tmp / "requirements.txt"
        requirements.write_text("# nothing: the stand-in app needs only the standard library\n")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "UV_"))},
               "TRYON_VOLUME": str(volume), "TRYON_LOCAL_DIR": str(local), "TRYON_REQUIREMENTS": str(requirements),
               "TRYON_PYTHON": BASE_PYTHON, "UV_OFFLINE": "1", "UV_NO_INDEX": "1",
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run(["bash", str(ENTRYPOINT)], env=env, check=True, capture_output=True)  # build once

        def timed(cmd, **kw) -> float:
            start = time.time()
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, **kw).stdout
            return float(out.split()[-1]) - start

        python = local / "runtime" / "venv" / "bin" / "python"
        # Paired: each launch is followed by a direct start, so a busy moment weighs on both alike.
        launched, direct = [], []
        for _ in range(runs):
            launched.append(timed(["bash", str(ENTRYPOINT)]))
            direct.append(timed([str(python), "-m", "app"], cwd=local / "src"))
        added = [a - b for a, b in zip(launched, direct, strict=True)]
        print(f"warm start: launcher to app's first line {statistics.median(launched) * 1000:.0f} ms, "
              f"python direct {statistics.median(direct) * 1000:.0f} ms, launcher overhead "
              f"{statistics.median(added) * 1000:.0f} ms (median of {runs} paired runs; quartiles "
              f"{statistics.quantiles(added, n=4)[0] * 1000:.0f}-{statistics.quantiles(added, n=4)[2] * 1000:.0f} ms; "
              f"TRYON_PYTHON={BASE_PYTHON})")


def bench_unpack(venv: Path) -> int:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        archive = tmp / "runtime.tar.zst"
        start = time.perf_counter()
        subprocess.run(f"tar -C {venv} -cf - . | zstd -q -T0 -3 -o {archive}", shell=True, check=True)
        pack_s = time.perf_counter() - start
        size = archive.stat().st_size
        raw = int(subprocess.run(["du", "-sb", str(venv)], capture_output=True, text=True).stdout.split()[0])
        files = sum(1 for _ in venv.rglob("*"))
        print(f"archive: {size / 2**20:.0f} MiB from {raw / 2**20:.0f} MiB in {files} files; packed in {pack_s:.1f} s")

        cold = drop_caches()
        start = time.perf_counter()
        with open(archive, "rb") as handle:
            while handle.read(8 << 20):
                pass
        read_s = time.perf_counter() - start

        cold = drop_caches() and cold
        target = tmp / "unpacked"
        target.mkdir()
        start = time.perf_counter()
        subprocess.run(f"zstd -q -d -T0 -c {archive} | tar -C {target} -xf -", shell=True, check=True)
        unpack_s = time.perf_counter() - start
        cache = "cold page cache" if cold else "warm page cache (dropping caches not permitted)"
        print(f"raw read {size / 2**20 / read_s:.0f} MiB/s ({read_s:.2f} s); unpack to local disk "
              f"{size / 2**20 / unpack_s:.0f} MiB/s of archive ({unpack_s:.2f} s, {raw / 2**20 / unpack_s:.0f} MiB/s "
              f"written); unpack/raw-read time ratio {unpack_s / read_s:.1f}; {cache}")
        return size


FILE_CALLS = ("open", "openat", "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
              "readlink", "readlinkat", "getdents64")


def bench_imports(venv: Path, archive_bytes: int | None) -> None:
    if not shutil.which("strace"):
        sys.exit("strace is not installed (Debian: apt-get install strace)")
    python = venv / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "trace"
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=" + ",".join(FILE_CALLS), "-o", str(log), str(python),
                        "-c", "import torch, diffusers, gradio"], check=True, capture_output=True)
        lines = log.read_text().splitlines()
    venv_real = str(venv.resolve())
    counts: dict[str, int] = {}
    for line in lines:
        match = re.search(r"\b(\w+)\((?:AT_FDCWD, |\d+, )?\"([^\"]*)\"", line)
        if not match:
            continue
        call, path = match.groups()
        if path.startswith((str(venv), venv_real)):
            counts[call] = counts.get(call, 0) + 1
    total = sum(counts.values())
    opens = sum(v for k, v in counts.items() if k.startswith("open"))
    print(f"import torch, diffusers, gradio: {total} file-metadata calls on the venv "
          f"({opens} opens, {total - opens} stats/access/readlink): {json.dumps(counts, sort_keys=True)}")
    size = archive_bytes or int(subprocess.run(["du", "-sb", str(venv)], capture_output=True,
                                               text=True).stdout.split()[0]) // 2
    for rtt_ms in (1, 3, 5):
        in_place = total * rtt_ms / 1000
        print(f"  at {rtt_ms} ms per round trip: venv in place {in_place:.1f} s of metadata waits per start; "
              f"archive: one {size / 2**20:.0f} MiB read, {size / 400e6:.1f}-{size / 200e6:.1f} s at 400-200 MB/s, "
              f"once per fresh worker, then local imports")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["warm", "unpack", "imports"])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--archive-bytes", type=int, help="archive size for the imports estimate (default: measured)")
    args = parser.parse_args()
    if "warm" in args.which:
        bench_warm(args.runs)
    archive_bytes = args.archive_bytes
    if "unpack" in args.which:
        archive_bytes = bench_unpack(args.venv)
    if "imports" in args.which:
        bench_imports(args.venv, archive_bytes)


if __name__ == "__main__":
    main()
