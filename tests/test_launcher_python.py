"""A uv-managed Python for the runtime with no network at all (launcher/lib/python.sh).

CI reaches PyPI, not python-build-standalone's downloads, so the test builds an archive in that
project's `install_only` layout from the local interpreter (a relocatable build: its prefix follows
the executable), puts it on the volume as the launcher keeps one, and builds with every network path
closed: uv offline, no index, and proxies pointing at a closed port.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher_kit import launch, started

BASE = Path(sys.base_prefix)
VERSION = platform.python_version()
MINOR = ".".join(VERSION.split(".")[:2])
NO_NETWORK = {"UV_OFFLINE": "1", "UV_NO_INDEX": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9", "TRYON_PYTHON": MINOR}
SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__"}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Path:
    """cpython-<version>+tests-<arch>-unknown-linux-gnu-install_only.tar.zst, built from this interpreter."""
    if shutil.which("zstd") is None:
        pytest.skip("needs zstd")
    root = tmp_path_factory.mktemp("standalone")
    python = root / "python"
    (python / "bin").mkdir(parents=True)
    shutil.copy2(BASE / "bin" / f"python{MINOR}", python / "bin" / f"python{MINOR}")
    (python / "bin" / "python3").symlink_to(f"python{MINOR}")
    (python / "lib").mkdir()
    for library in (BASE / "lib").glob("libpython*"):
        shutil.copy2(library, python / "lib" / library.name, follow_symlinks=False)
    shutil.copytree(BASE / "lib" / f"python{MINOR}", python / "lib" / f"python{MINOR}", symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in SKIP])
    probe = subprocess.run([python / "bin" / "python3", "-c", "import sys, ssl, json; print(sys.prefix)"],
                           capture_output=True, text=True)
    if probe.returncode or probe.stdout.strip() != str(python):
        pytest.skip(f"this interpreter is not relocatable ({probe.stdout.strip() or probe.stderr.strip()})")
    archive = root / f"cpython-{VERSION}+tests-{platform.machine()}-unknown-linux-gnu-install_only.tar.zst"
    subprocess.run(f"tar -C {root} -cf - python | zstd -q -T0 -1 -o {archive}", shell=True, check=True)
    return archive


def keep_on_volume(volume: Path, archive: Path) -> None:
    folder = volume / "python-downloads"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(archive, folder / archive.name)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / "index").write_text(f"{archive.name} {sha} {VERSION} tests\n")


def base_prefix(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_first_build_with_no_network_takes_the_managed_python_from_the_volume(volume, requirements, tmp_path,
                                                                               standalone):
    keep_on_volume(volume, standalone)
    plan = launch(volume, tmp_path / "w1", requirements, "--plan", **NO_NETWORK)
    assert f"python:       managed Python {MINOR} from {volume}/python-downloads (no internet needed)" in plan.stdout
    first = launch(volume, tmp_path / "w1", requirements, "one", **NO_NETWORK)
    assert first.returncode == 0, first.stderr
    assert f"managed Python {MINOR} from {volume}/python-downloads (no network needed)" in first.stderr
    # A second worker unpacks the same runtime at another path: its venv is re-pointed at its own copy.
    second = launch(volume, tmp_path / "w2", requirements, "two", **NO_NETWORK)
    assert second.returncode == 0 and "restored from build" in second.stderr, second.stderr
    shutil.rmtree(tmp_path / "w1")  # nothing of the first worker's is needed by the second
    runs = {run["args"][0]: run for run in started(volume)}
    assert runs["one"]["probe"] == runs["two"]["probe"] == "1.0"
    assert runs["two"]["exe"] == str(tmp_path / "w2" / "runtime" / "venv" / "bin" / "python")
    assert base_prefix(runs["two"]["exe"]).startswith(str(tmp_path / "w2" / "runtime" / "python" / "cpython-"))
    manifest = next((volume / "envs").glob("*/manifest")).read_text()
    assert f"input.python=managed:{MINOR}" in manifest and str(tmp_path) not in manifest


def test_with_no_copy_and_no_network_the_build_names_the_remedies(volume, requirements, tmp_path):
    done = launch(volume, tmp_path / "w", requirements, **NO_NETWORK)
    assert done.returncode != 0
    assert f"no managed Python {MINOR}: {volume}/python-downloads holds no copy and the download failed" in done.stderr
    assert "just build-runtime" in done.stderr and "TRYON_PYTHON" in done.stderr


def test_an_online_install_keeps_its_archive_for_the_next_offline_build(volume, requirements, tmp_path,
                                                                       standalone):
    # "The internet": a downloads list naming the archive at a URL outside the volume.
    internet = tmp_path / "internet"
    internet.mkdir()
    shutil.copy2(standalone, internet / standalone.name)
    listing = tmp_path / "downloads.json"
    listing.write_text(json.dumps({f"cpython-{VERSION}-linux-{platform.machine()}-gnu": {
        "name": "cpython", "arch": {"family": platform.machine(), "variant": None}, "os": "linux", "libc": "gnu",
        "major": sys.version_info.major, "minor": sys.version_info.minor, "patch": sys.version_info.micro,
        "prerelease": "", "url": (internet / standalone.name).as_uri(), "variant": None, "build": "tests",
        "sha256": hashlib.sha256(standalone.read_bytes()).hexdigest()}}))
    online = launch(volume, tmp_path / "w1", requirements, TRYON_PYTHON=MINOR, UV_NO_INDEX="1",
                    UV_PYTHON_DOWNLOADS_JSON_URL=str(listing))
    assert online.returncode == 0, online.stderr
    kept = volume / "python-downloads" / standalone.name
    assert "kept the managed Python's archive" in online.stderr
    assert kept.read_bytes() == standalone.read_bytes()
    assert (volume / "python-downloads" / "index").read_text().split()[:3] == [
        standalone.name, hashlib.sha256(standalone.read_bytes()).hexdigest(), VERSION]
    # A new key (other requirements), no network: built from the kept copy.
    (internet / standalone.name).unlink()
    requirements.write_text("tryon-probe==1.0\n# another key\n")
    offline = launch(volume, tmp_path / "w2", requirements, **NO_NETWORK)
    assert offline.returncode == 0, offline.stderr
    assert "building runtime" in offline.stderr and "(no network needed)" in offline.stderr
