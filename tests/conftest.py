"""Shared fixtures: one tiny model set per session, written through the production kit, and example images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from app.config import Settings
from app.studio.demo_images import example_garment, example_mask, example_person

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.launcher_kit",  # the launcher tests' fixtures (volume, requirements)
                  "tests.studio_kit",  # the studio's browser tests' fixtures (studio, page, auto_reference)
                  "tests.cpu_report"]  # TEST_CPU_REPORT=FILE: CPU seconds per test

# The quick loop (`./dev test --fast`, i.e. `-m "not slow"`) leaves out whatever starts a browser, builds a
# launcher runtime or an image, or launches servers: whole modules here, single tests by @pytest.mark.slow.
SLOW_MODULES = {"test_studio", "test_studio_runs", "test_studio_photos", "test_studio_access", "test_launcher",
                "test_launcher_faults", "test_launcher_health", "test_launcher_python", "test_image_build", "test_e2e"}


# The modules that take longest (wall seconds alone on 2 cores, slowest first): ./dev test hands them out
# first, so that the two workers finish together instead of one waiting out a long module at the end
# (pytest-xdist's own order, by number of tests, left the image build for last). The rest follow in file order.
LONGEST_FIRST = ["test_studio", "test_studio_photos", "test_studio_runs", "test_launcher_faults", "test_image_build",
                 "test_compile_cache", "test_e2e", "test_safety", "test_cli", "test_gradio_door", "test_bench_gpu"]


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    module_of = {id(item): item.module.__name__.rsplit(".", 1)[-1] if item.module else "" for item in items}
    for item in items:
        if module_of[id(item)] in SLOW_MODULES or "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(slow)
    rank = {name: number for number, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(module_of[id(item)], len(LONGEST_FIRST)))  # stable: a module keeps its order


@pytest.fixture(scope="session")
def tiny_volume(tmp_path_factory) -> Path:
    """A volume whose models/ holds the tiny set in the real layout (read-only use: copy to modify)."""
    from app.model.tiny_models import write_tiny_models

    volume = tmp_path_factory.mktemp("volume")
    write_tiny_models(volume / "models")
    return volume


@pytest.fixture
def volume_copy(tiny_volume, tmp_path) -> Path:
    """A private copy of the tiny volume, for tests that damage or remove files."""
    target = tmp_path / "volume"
    shutil.copytree(tiny_volume, target)
    return target


@pytest.fixture(scope="session")
def tiny_paths(tiny_volume):
    from app.model.weights import model_paths

    return model_paths(Settings.from_env({}, volume=str(tiny_volume)))


@pytest.fixture(scope="session")
def pipe(tiny_paths):
    import torch

    from app.model.pipeline import CatVTONPipeline

    return CatVTONPipeline.from_pretrained(tiny_paths.base, tiny_paths.vae, tiny_paths.adapter, device="cpu",
                                           dtype=torch.float32)


@pytest.fixture(scope="session")
def images() -> dict[str, Image.Image]:
    return {"person": example_person(), "garment": example_garment(), "mask": example_mask()}


@pytest.fixture
def make_settings():
    """Settings as the app reads them, isolated from the developer's environment."""
    def make(volume: Path, **overrides) -> Settings:
        return Settings.from_env({}, volume=str(volume), device="cpu", **overrides)
    return make


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium through Playwright (it cannot download its own browser here): one per pytest worker,
    each test in a context (and page) of its own."""
    from tests.test_e2e import CHROMIUM, CHROMIUM_FLAGS

    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()
