"""The runtime's uv-managed Python with no network at all (launcher/lib/python.sh).

CI reaches PyPI, not python-build-standalone's downloads, so the tests build an archive in that
project's `install_only` layout (a top-level `python/` with `bin/python3.X` and `lib/python3.X/`) from
the interpreter running them, and hand uv a downloads list with its sha256 wherever the "internet" is
needed: uv's mirror setting would check the archive against uv's own list of digests, which a home-made
archive cannot match.

"No network" is: UV_OFFLINE=1 for uv (uv 0.13 reads no UV_NO_INDEX; --no-index is a flag only), and every
proxy variable pointing at a closed local port with NO_PROXY unset, so anything that still tried to
connect would fail at once. The test with no copy on the volume drops UV_OFFLINE and checks that uv's
download really is refused.

The interpreter must be relocatable (its prefix follows the executable). A pyenv build is, though its
libpython may still be loaded from the original prefix through the binary's RUNPATH; the standard
library and everything uv installs come from the copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.launcher_kit import BASE_PYTHON, launch, make_wheel, started

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "launcher" / "lib" / "python.sh"
BASE = Path(sys.base_prefix)
VERSION = platform.python_version()
MINOR = ".".join(VERSION.split(".")[:2])
ARCH = platform.machine()
ARCHIVE_NAME = f"cpython-{VERSION}+20990101-{ARCH}-unknown-linux-gnu-install_only_stripped.tar.gz"
INSTALLED = f"cpython-{VERSION}-linux-{ARCH}-gnu"
CLOSED = "http://127.0.0.1:9"
SKIP_IN_LIB = {"site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "__pycache__"}
UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="python-build-standalone archives for Linux only")


def copy_interpreter(target: Path) -> None:
    """The running interpreter as python-build-standalone lays it out, without site-packages and tests."""
    (target / "bin").mkdir(parents=True)
    shutil.copy2(BASE / "bin" / f"python{MINOR}", target / "bin" / f"python{MINOR}")
    for alias in ("python3", "python"):
        (target / "bin" / alias).symlink_to(f"python{MINOR}")
    (target / "lib").mkdir()
    for library in (BASE / "lib").glob("libpython*"):
        shutil.copy2(library, target / "lib" / library.name, follow_symlinks=False)
    shutil.copytree(BASE / "lib" / f"python{MINOR}", target / "lib" / f"python{MINOR}", symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in SKIP_IN_LIB or n.endswith(".a")])
    (target / "lib" / f"python{MINOR}" / "site-packages").mkdir()


def where_it_runs_from(python: Path) -> list[str]:
    probe = subprocess.run([python, "-c", "import os, platform, ssl, sys; "
                            "print(sys.prefix); print(os.__file__); print(platform.python_version())"],
                           capture_output=True, text=True)
    return probe.stdout.split() if probe.returncode == 0 else [probe.stderr.strip()]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Path:
    """An install_only archive of this interpreter, checked to run from wherever it is unpacked."""
    if not (BASE / "bin" / f"python{MINOR}").is_file() or not (BASE / "lib" / f"python{MINOR}" / "os.py").is_file():
        pytest.skip(f"{BASE} is not laid out as bin/python{MINOR} and lib/python{MINOR}/")
    root = tmp_path_factory.mktemp("standalone")
    copy_interpreter(root / "python")
    shutil.copytree(root / "python", root / "moved", symlinks=True)
    moved = root / "moved"
    found = where_it_runs_from(moved / "bin" / "python3")
    if found != [str(moved), str(moved / "lib" / f"python{MINOR}" / "os.py"), VERSION]:
        pytest.skip(f"{BASE} is not relocatable: a copy at {moved} runs as {found}")
    shutil.rmtree(moved)
    archive = root / ARCHIVE_NAME
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(root / "python", arcname="python")
    return archive


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UV_", "TRYON_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy",
                                                                          "no_proxy")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update({
        "PATH": f"{Path(UV).parent}:{env.get('PATH', '/usr/bin:/bin')}", "TMPDIR": str(tmp_path / "tmp"),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_OFFLINE": "1", "UV_HTTP_RETRIES": "0",
        "HTTPS_PROXY": CLOSED, "HTTP_PROXY": CLOSED, "ALL_PROXY": CLOSED,
        "https_proxy": CLOSED, "http_proxy": CLOSED, "all_proxy": CLOSED,
    })
    env.update(extra)
    return env


def internet_env(tmp_path: Path, archive: Path) -> dict[str, str]:
    """Online, as far as uv can tell: no UV_OFFLINE, and a downloads list naming ARCHIVE at a URL (a
    file:// one, standing in for python-build-standalone's) with its sha256."""
    listing = tmp_path / "internet.json"
    listing.write_text(json.dumps({INSTALLED: {
        "name": "cpython", "arch": {"family": ARCH, "variant": None}, "os": "linux", "libc": "gnu",
        "major": sys.version_info.major, "minor": sys.version_info.minor, "patch": sys.version_info.micro,
        "prerelease": "", "build": "20990101", "variant": None,
        "url": archive.as_uri().replace("+", "%2B"), "sha256": sha256(archive)}}))
    env = offline_env(tmp_path, UV_PYTHON_DOWNLOADS_JSON_URL=str(listing))
    del env["UV_OFFLINE"]
    return env


def lib(function: str, *args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One function of launcher/lib/python.sh, sourced into a strict bash as the launcher does."""
    return subprocess.run(["bash", "-c", f'set -euo pipefail; . "{LIB}"; "$@"', "python.sh", function, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)


def put_on_volume(volume: Path, archive: Path, name: str | None = None, sha: str | None = "record") -> Path:
    """ARCHIVE in $VOLUME/python-downloads as python_fetch leaves it: with its .sha256 (sha=None: without)."""
    folder = volume / "python-downloads"
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / (name or archive.name)
    shutil.copy2(archive, kept)
    if sha is not None:
        Path(f"{kept}.sha256").write_text(f"{sha256(archive) if sha == 'record' else sha}  {kept.name}\n")
    return kept


def check_runs(install_dir: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """The installed Python runs, is this version, and a venv from it takes a wheel from the volume."""
    python = install_dir / INSTALLED / "bin" / "python3"
    assert where_it_runs_from(python)[1:] == [str(install_dir / INSTALLED / "lib" / f"python{MINOR}" / "os.py"),
                                              VERSION]
    env = {**env, "UV_PYTHON_INSTALL_DIR": str(install_dir)}
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "--quiet", "--managed-python", "--python", MINOR, venv], env=env, check=True,
                   timeout=60)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "1.0")
    subprocess.run([UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "--find-links", wheels,
                    "tryon-probe==1.0"], env=env, check=True, timeout=60)
    ran = subprocess.run([venv / "bin" / "python", "-c", "import platform, sys, tryon_probe; "
                          "print(tryon_probe.VERSION, platform.python_version(), sys.base_prefix)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert ran[:2] == ["1.0", VERSION]
    # uv points a venv at its minor-version link (cpython-3.11-linux-...), which names the install.
    assert Path(ran[2]).parent == install_dir and Path(ran[2]).resolve() == install_dir / INSTALLED


def test_with_no_network_python_install_takes_the_volumes_copy(tmp_path, standalone):
    volume = tmp_path / "volume"
    kept = put_on_volume(volume, standalone)
    env = offline_env(tmp_path)
    plan = lib("python_plan", volume, MINOR, env=env)
    assert plan.stdout == f"managed Python {MINOR} from the volume: {kept} (no internet needed)\n"
    done = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=env)
    assert done.returncode == 0, done.stderr
    assert (f"[launcher] managed Python {MINOR} ({INSTALLED}) installed from the volume's copy in "
            f"{volume / 'python-downloads'}: no network used") in done.stderr
    assert "note:" not in done.stderr and "warning" not in done.stderr
    check_runs(tmp_path / "python", tmp_path, env)
    assert sorted(p.name for p in (volume / "python-downloads").iterdir()) == [kept.name, f"{kept.name}.sha256"]
    assert not any((tmp_path / "tmp").iterdir())  # its downloads list is removed


def test_an_archive_saved_by_hand_without_its_sha256_is_taken_too(tmp_path, standalone):
    # As `curl -O <url>` saves it: the name keeps the URL's %2B; no .sha256 beside it.
    volume = tmp_path / "volume"
    put_on_volume(volume, standalone, name=standalone.name.replace("+", "%2B"), sha=None)
    done = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=offline_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"note: no {standalone.name.replace('+', '%2B')}.sha256 beside the archive" in done.stderr
    assert (tmp_path / "python" / INSTALLED / "bin" / "python3").exists()


def test_with_no_copy_and_no_network_python_install_fails_with_one_line_naming_the_remedies(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    folder = f"{volume}/python-downloads"
    no_internet = offline_env(tmp_path)
    del no_internet["UV_OFFLINE"]  # uv tries to download, and every connection is refused
    plan = lib("python_plan", volume, MINOR, env=no_internet)
    assert plan.stdout.startswith(f"managed Python {MINOR} from the internet: {folder} holds no copy")
    done = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=no_internet)
    assert done.returncode == 1
    assert "Connection refused" in done.stderr  # uv's own message: the network really was unreachable
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"[launcher] error: no managed Python {MINOR}: {folder} holds no copy and the download "
                           "failed (no internet?). Either run 'just build-runtime' on a machine with internet"), last
    assert last.endswith(" or set TRYON_PYTHON to the path of an installed python3")
    # The archive uv itself would download, named as it is to be saved there.
    assert f"or put cpython-{MINOR}." in last and "-unknown-linux-gnu-install_only" in last
    assert "(from https://" in last and f" into {folder}," in last
    assert not (volume / "python-downloads").exists() and not (tmp_path / "python" / INSTALLED).exists()
    assert not any((tmp_path / "tmp").iterdir())
    # With UV_OFFLINE set it does not try, and says so.
    offline = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=offline_env(tmp_path))
    assert offline.returncode == 1 and "Connection refused" not in offline.stderr
    assert offline.stderr.strip().splitlines()[-1].startswith(
        f"[launcher] error: no managed Python {MINOR}: {folder} holds no copy and UV_OFFLINE is set, so uv downloads "
        "nothing. Either run 'just build-runtime'")


def test_a_damaged_copy_is_refused(tmp_path, standalone):
    volume = tmp_path / "volume"
    put_on_volume(volume, standalone, sha="0" * 64)
    done = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=offline_env(tmp_path))
    assert done.returncode == 1
    assert "Hash mismatch" in done.stderr
    assert "warning: the copy of Python" in done.stderr and "did not install" in done.stderr
    assert f"{volume}/python-downloads holds no usable copy and UV_OFFLINE is set" in done.stderr
    assert not (tmp_path / "python" / INSTALLED).exists()


def test_an_online_install_keeps_its_archive_for_the_next_build_with_no_network(tmp_path, standalone):
    internet = tmp_path / "internet"
    internet.mkdir()
    served = internet / standalone.name
    shutil.copy2(standalone, served)
    volume = tmp_path / "volume"
    volume.mkdir()
    online = lib("python_install", UV, volume, MINOR, tmp_path / "online", env=internet_env(tmp_path, served))
    assert online.returncode == 0, online.stderr
    kept = volume / "python-downloads" / standalone.name
    assert f"kept the managed Python's archive as {kept}" in online.stderr
    assert kept.read_bytes() == standalone.read_bytes()
    assert Path(f"{kept}.sha256").read_text() == f"{sha256(standalone)}  {kept.name}\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o644
    assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name, f"{kept.name}.sha256"]  # no temp files
    assert not any((tmp_path / "tmp").iterdir())
    # The internet goes away: a build takes the kept copy.
    shutil.rmtree(internet)
    offline = lib("python_install", UV, volume, MINOR, tmp_path / "offline", env=offline_env(tmp_path))
    assert offline.returncode == 0, offline.stderr
    assert "installed from the volume's copy" in offline.stderr
    check_runs(tmp_path / "offline", tmp_path, offline_env(tmp_path))


def test_keeping_the_archive_is_best_effort(tmp_path, standalone):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "python-downloads").write_text("not a folder")  # unwritable, even for root
    done = lib("python_install", UV, volume, MINOR, tmp_path / "python", env=internet_env(tmp_path, standalone))
    assert done.returncode == 0, done.stderr
    assert f"warning: cannot write to {volume}/python-downloads: the managed Python's archive is not kept there" \
        in done.stderr
    assert (tmp_path / "python" / INSTALLED / "bin" / "python3").exists()


def test_python_fetch_fills_the_folder_ahead_of_time(tmp_path, standalone):
    volume = tmp_path / "volume"
    volume.mkdir()
    env = internet_env(tmp_path, standalone)
    fetched = lib("python_fetch", UV, volume, MINOR, env=env)
    assert fetched.returncode == 0, fetched.stderr
    kept = volume / "python-downloads" / standalone.name
    assert kept.read_bytes() == standalone.read_bytes() and Path(f"{kept}.sha256").exists()
    again = lib("python_fetch", UV, volume, MINOR, env=env)
    assert again.returncode == 0 and f"the volume already keeps {kept.name}" in again.stderr
    assert not any((tmp_path / "tmp").iterdir())
    failed = lib("python_fetch", UV, tmp_path / "other", MINOR, env=offline_env(tmp_path))
    assert failed.returncode == 1 and "this needs the internet" in failed.stderr


def test_the_launcher_builds_its_first_runtime_with_no_network_from_the_volumes_copy(volume, requirements,
                                                                                    tmp_path, standalone):
    put_on_volume(volume, standalone)
    no_network = {"TRYON_PYTHON": MINOR, "HTTPS_PROXY": CLOSED, "HTTP_PROXY": CLOSED, "ALL_PROXY": CLOSED,
                  "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    plan = launch(volume, tmp_path / "w1", requirements, "--plan", **no_network)
    assert f"managed Python {MINOR} from the volume: {volume}/python-downloads/{standalone.name}" in plan.stdout
    first = launch(volume, tmp_path / "w1", requirements, "one", **no_network)
    assert first.returncode == 0, first.stderr
    assert "installed from the volume's copy" in first.stderr
    runs = {run["args"][0]: run for run in started(volume)}
    assert runs["one"]["probe"] == "1.0" and runs["one"]["exe"] != BASE_PYTHON
    base = subprocess.run([runs["one"]["exe"], "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert base.startswith(str(tmp_path / "w1" / "runtime" / "python" / "cpython-"))
    # A second worker unpacks the same runtime at another path: its venv is re-pointed at its own copy
    # of the managed Python, and nothing of the first worker's is needed.
    second = launch(volume, tmp_path / "w2", requirements, "two", **no_network)
    assert second.returncode == 0 and "restored from build" in second.stderr, second.stderr
    shutil.rmtree(tmp_path / "w1")
    two = {run["args"][0]: run for run in started(volume)}["two"]
    assert two["probe"] == "1.0" and two["exe"] == str(tmp_path / "w2" / "runtime" / "venv" / "bin" / "python")
    base = subprocess.run([two["exe"], "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert base.startswith(str(tmp_path / "w2" / "runtime" / "python" / "cpython-"))
    manifest = next((volume / "envs").glob("*/manifest")).read_text()
    assert f"input.python=managed:{MINOR}" in manifest and str(tmp_path) not in manifest
