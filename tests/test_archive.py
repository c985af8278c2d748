"""launcher/lib/archive.sh: a tree packed into parts and unpacked in parallel comes back identical,
each part's sha256 recorded as it is written; damage fails the unpack (zstd's own checksum), never
unpacks silently."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "launcher" / "lib" / "archive.sh"


def bash(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {ARCHIVE}; {script}", "bash", *args],
                          capture_output=True, text=True, timeout=120)


def make_tree(root: Path) -> None:
    (root / "venv" / "lib" / "site").mkdir(parents=True)
    (root / "venv" / "empty" / "nested").mkdir(parents=True)
    (root / "venv" / "lib" / "site" / "module.py").write_text("VALUE = 1\n")
    (root / "venv" / "lib" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    for i in range(40):
        (root / "venv" / "lib" / "site" / f"m{i}.py").write_text(f"N = {i}\n" * (i + 1))
    tool = root / "venv" / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (root / "venv" / "bin" / "python").symlink_to("../lib/site/module.py")
    (root / "venv" / "site-link").symlink_to("lib/site", target_is_directory=True)
    (root / "venv" / "odd name\nwith newline").write_text("odd\n")
    (root / "venv" / " leading space ").write_text("spaces\n")


def snapshot(root: Path) -> dict[str, tuple]:
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[key] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            found[key] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def pack(src: Path, out: Path, parts: int) -> tuple[list[tuple[str, int, str]], str]:
    out.mkdir(parents=True, exist_ok=True)
    done = bash('archive_pack "$1" "$2" "$3"', str(src), str(out), str(parts))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    listed = [(name, int(size), sha) for name, size, sha in (line.split() for line in lines[:-1])]
    return listed, lines[-1]


def unpack(dest: Path, jobs: int, parts: list[Path]) -> subprocess.CompletedProcess:
    dest.mkdir(parents=True, exist_ok=True)
    return bash('archive_unpack "$@"', str(dest), str(jobs), *map(str, parts))


def test_a_tree_round_trips_through_parts_unpacked_in_parallel(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    listed, totals = pack(src, tmp_path / "out", 3)
    # part-00 holds the directories (unpacked first), parts 01-03 the files.
    assert [name for name, _, _ in listed] == [f"part-0{i}.tar.zst" for i in range(4)]
    for name, size, sha in listed:
        data = (tmp_path / "out" / name).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
    files = [p for p in src.rglob("*") if not p.is_dir() or p.is_symlink()]
    regular_bytes = sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
    assert totals == f"files {len(files)} bytes {regular_bytes}"
    # Balanced by bytes: the 3 MB file sits alone in its part, the small files share the other two.
    sizes = sorted(size for _, size, _ in listed[1:])
    assert sizes[-1] > 3_000_000 and sizes[0] < 100_000 and sizes[1] < 100_000

    done = unpack(tmp_path / "dest", 2, [tmp_path / "out" / name for name, _, _ in listed])
    assert done.returncode == 0, done.stderr
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_parallel_unpacks_never_race_on_parent_folders(tmp_path):
    """Many small files in shared folders, 8 parts unpacked 8 at once, 10 times over."""
    src = tmp_path / "src"
    for package in range(12):
        for depth in range(3):
            folder = src / "site" / f"pkg{package}" / "/".join(f"sub{d}" for d in range(depth + 1))
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(8):
                (folder / f"m{i}.py").write_text(f"{package} {depth} {i}\n")
    listed, _ = pack(src, tmp_path / "out", 8)
    for attempt in range(10):
        dest = tmp_path / f"dest{attempt}"
        done = unpack(dest, 8, [tmp_path / "out" / name for name, _, _ in listed])
        assert done.returncode == 0, done.stderr
        assert snapshot(dest) == snapshot(src)


def test_more_parts_than_files_and_one_part_work(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.txt").write_text("1")
    (src / "empty").mkdir()
    for parts in (1, 8):
        listed, _ = pack(src, tmp_path / f"out{parts}", parts)
        assert len(listed) == parts + 1
        done = unpack(tmp_path / f"dest{parts}", 4, [tmp_path / f"out{parts}" / name for name, _, _ in listed])
        assert done.returncode == 0, done.stderr
        assert snapshot(tmp_path / f"dest{parts}") == snapshot(src)


@pytest.mark.parametrize("damage", ["flip", "truncate", "flip near the start"])
def test_a_damaged_part_fails_the_unpack_naming_it(tmp_path, damage):
    """No sha256 is computed while unpacking: every part carries zstd's checksum of its content, so any
    byte changed in the data (or the frame cut short) fails the unpack, naming the part."""
    src = tmp_path / "src"
    make_tree(src)
    listed, _ = pack(src, tmp_path / "out", 2)
    name, size, sha = max(listed[1:], key=lambda item: item[1])
    path = tmp_path / "out" / name
    if damage == "truncate":
        os.truncate(path, size // 2)
    else:
        data = bytearray(path.read_bytes())
        data[size // 2 if damage == "flip" else 200] ^= 0x01
        path.write_bytes(bytes(data))
    assert hashlib.sha256(path.read_bytes()).hexdigest() != sha
    done = unpack(tmp_path / "dest", 2, [tmp_path / "out" / n for n, _, _ in listed])
    assert done.returncode != 0
    assert f"{name} failed to read, decompress or extract" in done.stderr


def test_every_part_carries_a_content_checksum_that_unpacking_verifies(tmp_path):
    """The check rests on zstd's frame checksum: a part without one (packed elsewhere with
    --no-check) would unpack unchecked, so packing always writes it."""
    src = tmp_path / "src"
    make_tree(src)
    listed, _ = pack(src, tmp_path / "out", 2)
    for name, _, _ in listed:
        info = subprocess.run(["zstd", "-lv", str(tmp_path / "out" / name)], capture_output=True, text=True)
        assert "Check: XXH64" in info.stdout + info.stderr, info.stdout + info.stderr
