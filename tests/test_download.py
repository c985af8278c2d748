"""Selective download through huggingface_hub against a local Hub server started by the test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from local_hub import LocalHub

from app.config import Settings
from app.model.weights import DownloadError, download, required_files


def hub_with_model_files(tiny_volume: Path, settings: Settings, extra: bool = True) -> LocalHub:
    """A hub holding the tiny set's files under the real repo paths, plus files the selection must skip."""
    hub = LocalHub()
    for item in required_files(settings, with_parser=False):
        local = item.local(tiny_volume / "models")
        hub.add(item.repo, item.path, local.read_bytes())
    for item in required_files(settings, with_parser=True)[:3]:
        body = b'{"model_type": "segformer"}' if item.path.endswith(".json") else os.urandom(4096)
        hub.add(item.repo, item.path, body)
    if extra:  # what a full snapshot would also bring
        hub.add(settings.base_repo, "unet/diffusion_pytorch_model.safetensors", os.urandom(50_000))
        hub.add(settings.base_repo, "text_encoder/model.safetensors", os.urandom(50_000))
        hub.add(settings.adapter_repo, "vitonhd-16k-512/attention/model.safetensors", os.urandom(5000))
    return hub


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({}, volume=str(tmp_path / "volume"))


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_only_the_selected_files_arrive_verified_with_a_manifest(tiny_volume, settings):
    with hub_with_model_files(tiny_volume, settings) as hub:
        manifest = download(settings, endpoint=hub.url, show_progress=False)
    models = settings.models_dir
    expected = sorted([f"{i.repo}/{i.path}" for i in required_files(settings)] + ["manifest.json"])
    assert [f for f in files_under(models) if not f.startswith(".staging/")] == expected
    assert not [f for f in files_under(models) if f.endswith(".partial")]
    for item in required_files(settings):
        assert item.local(models).read_bytes() == item.local(tiny_volume / "models").read_bytes()
    written = json.loads((models / "manifest.json").read_text())
    assert written == manifest and len(written["files"]) == 6
    assert written["total_bytes"] == sum((tiny_volume / "models" / f"{e['repo']}/{e['path']}").stat().st_size
                                         for e in written["files"])
    assert all(e["revision"] == "0123456789abcdef0123456789abcdef01234567" for e in written["files"])


def test_parser_files_come_only_with_the_option(tiny_volume, settings):
    with hub_with_model_files(tiny_volume, settings) as hub:
        download(settings, with_parser=True, endpoint=hub.url, show_progress=False)
    assert (settings.models_dir / settings.parser_repo / "model.safetensors").is_file()


def test_an_interrupted_download_resumes(tiny_volume, settings):
    unet = "unet/diffusion_pytorch_model.fp16.safetensors"
    with hub_with_model_files(tiny_volume, settings) as hub:
        size = len(hub.files[(settings.base_repo, unet)])
        hub.cut_after[unet] = size // 2  # the network keeps failing half way...
        with pytest.raises(DownloadError, match="run the command again to resume"):
            download(settings, endpoint=hub.url, show_progress=False)
        assert not (settings.models_dir / settings.base_repo / unet).exists()
        partials = list((settings.models_dir / ".staging" / settings.base_repo).rglob("*.partial"))
        assert len(partials) == 1 and partials[0].name.startswith("diffusion_pytorch_model.fp16.safetensors.")
        kept = partials[0].stat().st_size
        assert 0 < kept <= size // 2
        del hub.cut_after[unet]  # ...until it recovers: the next run asks only for the rest
        hub.requests.clear()
        download(settings, endpoint=hub.url, show_progress=False)
        ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith(unet)]
    assert ranges == [f"bytes={kept}-"], ranges
    assert (settings.models_dir / settings.base_repo / unet).stat().st_size == size


def test_a_wrong_hash_fails_and_leaves_no_file(tiny_volume, settings):
    vae = "diffusion_pytorch_model.safetensors"
    with hub_with_model_files(tiny_volume, settings) as hub:
        hub.corrupt.add(vae)
        with pytest.raises(DownloadError, match="does not match the Hub's size .* and hash"):
            download(settings, endpoint=hub.url, show_progress=False)
    models = settings.models_dir
    assert not (models / settings.vae_repo / vae).exists()
    assert not [p for p in files_under(models) if p.endswith(vae)], files_under(models)
    assert not (models / "manifest.json").exists()


def test_files_already_present_and_verified_are_kept(tiny_volume, settings):
    with hub_with_model_files(tiny_volume, settings) as hub:
        download(settings, endpoint=hub.url, show_progress=False)
        first_gets = sum(1 for method, *_ in hub.requests if method == "GET")
        manifest = download(settings, endpoint=hub.url, show_progress=False)
        second_gets = sum(1 for method, *_ in hub.requests if method == "GET") - first_gets
    assert first_gets == 6 and second_gets == 0 and manifest["fetched_bytes"] == 0


def test_unreachable_hub_fails_clearly(settings):
    with pytest.raises(DownloadError, match="cannot reach the Hub .* check the network"):
        download(settings, endpoint="http://127.0.0.1:9", show_progress=False)
