"""The launcher image, built from the unchanged Dockerfile.volume and run for real (tests/image_kit.sh):
buildah on base images made here, the image's entrypoint inside the image's filesystem with a volume
folder bind-mounted at /runpod-volume, offline. The first worker builds and publishes the runtime while
/ping answers 204 from the host, then the app answers 200 and makes a REST try-on; a second worker
restores without building and does the same. The image's size per layer is measured and held to the
issue's goal: what the Dockerfile adds to the base, at most 25 MB compressed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "tests" / "image_kit.sh"
ADDED_GZIP_GOAL = 25e6  # bytes: the layers Dockerfile.volume adds, compressed as a registry stores them


def buildah_unavailable() -> str | None:
    if sys.platform != "linux":
        return "buildah runs on Linux only"
    if shutil.which("buildah") and shutil.which("mmdebstrap"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None  # the kit installs them, as .ci/run installs Chromium
    return "buildah and mmdebstrap are not installed and cannot be installed here (apt-get, as root)"


pytestmark = [pytest.mark.slow, pytest.mark.skipif(buildah_unavailable() is not None,
                                                   reason=buildah_unavailable() or "")]


@pytest.fixture(scope="module")
def kit() -> Path:
    """Runs every step once; returns the kit's output folder. Base images are kept between runs in
    IMAGE_WORK (default /tmp/catvton-image); the volume and the image are made afresh."""
    work = Path(os.environ.get("IMAGE_WORK", "/tmp/catvton-image"))
    done = subprocess.run(["bash", str(KIT)], env={**os.environ, "IMAGE_WORK": str(work)},
                          capture_output=True, text=True, timeout=2400)
    print(done.stderr)
    if done.returncode and "Operation not permitted" in done.stderr and "buildah from" in done.stderr:
        pytest.skip("buildah cannot run containers in this sandbox")
    assert done.returncode == 0, done.stderr[-6000:]
    return work / "out"


def pings(out: Path, worker: str) -> list[str]:
    return [line.split()[1] for line in (out / f"{worker}.pings").read_text().splitlines()]


def check_tryon(out: Path, worker: str) -> None:
    assert (out / f"{worker}.tryon.status").read_text().strip() == "200", (out / f"{worker}.tryon.json").read_text()
    answer = json.loads((out / f"{worker}.tryon.json").read_text())
    saved = out.parent / "volume" / answer["output"]
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (answer["width"], answer["height"]) == (96, 128)
    assert answer["steps_run"] == 2 and answer["seed"] == 1


def test_the_first_worker_builds_and_publishes_the_runtime_answering_204_then_serves(kit):
    log = (kit / "first.log").read_text()
    assert "installed from the volume's copy" in log and "no network used" in log, log
    assert "building runtime" in log and "runtime published as build" in log, log
    assert "starting the app from the image copy" in log, log  # no app/ on the volume: the image's own
    seen = pings(kit, "first")
    # The host sees the launcher's 204 while it builds, then the app's 200; never a connection reset.
    assert "204" in seen and seen[-1] == "200" and seen.index("204") < seen.index("200"), seen
    assert "reset" not in seen, seen
    check_tryon(kit, "first")


def test_a_second_worker_restores_without_building_and_serves(kit):
    log = (kit / "second.log").read_text()
    assert "runtime restored from build" in log and "building runtime" not in log, log
    seen = pings(kit, "second")
    assert seen[-1] == "200" and "reset" not in seen, seen
    check_tryon(kit, "second")


def test_the_image_adds_at_most_25_mb_compressed_to_its_base(kit):
    rows = [line.split("\t") for line in (kit / "sizes.tsv").read_text().splitlines()[1:]]
    gzip_sizes = [int(row[1]) for row in rows]
    unpacked = [int(row[2]) for row in rows]
    table = "\n".join(f"layer {row[0]}: {int(row[1]) / 1e6:.1f} MB gzip, {int(row[2]) / 1e6:.1f} MB unpacked, "
                      f"{row[3][:70]}" for row in rows)
    print(table)
    assert len(rows) >= 4, table  # the base, apt-get, uv, the launcher and app copies
    assert sum(gzip_sizes[1:]) <= ADDED_GZIP_GOAL, table
    # The launcher and the app's fallback copy (COPY of folders) stay small: no caches, no tests, no assets.
    copies = [size for size, row in zip(unpacked, rows, strict=True) if "COPY dir:" in row[3]]
    assert len(copies) == 2 and all(size < 5e6 for size in copies), table
