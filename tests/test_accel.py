"""Speed-ups keep the output; guidance on early steps only; the engine warms up before it says ready."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from app.config import Settings
from app.errors import TryOnInputError
from app.model import accel
from app.model.engine import READY, Engine
from app.model.pipeline import CatVTONPipeline

SIZE = {"width": 96, "height": 128}


def load(paths) -> CatVTONPipeline:
    return CatVTONPipeline.from_pretrained(paths.base, paths.vae, paths.adapter, device="cpu", dtype=torch.float32)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


@pytest.fixture(scope="module")
def sped_up(tiny_paths):
    pipe = load(tiny_paths)
    accel.apply_eager(pipe, accel.SpeedPlan(compile=False, compile_mode="default", fuse_qkv=True,
                                            channels_last=True, cudnn_benchmark=False, warmup=False))
    return pipe


def test_fused_projections_and_channels_last_keep_the_image(pipe, sped_up, images):
    for guidance in (2.5, 1.0):
        plain = pixels(pipe(**images, steps=4, guidance=guidance, seed=7, **SIZE))
        fast = pixels(sped_up(**images, steps=4, guidance=guidance, seed=7, **SIZE))
        other_seed = pixels(pipe(**images, steps=4, guidance=guidance, seed=8, **SIZE))
        assert np.abs(plain - fast).max() <= 1  # float reassociation only
        assert np.abs(plain - other_seed).max() > 20  # the comparison can tell images apart


def test_fused_self_attention_holds_one_projection(sped_up):
    modules = [module for name, module in sped_up.unet.named_modules() if name.endswith("attn1")]
    assert modules and all(hasattr(m, "to_qkv") and not hasattr(m, "to_q") for m in modules)
    inner = modules[0].to_out[0].in_features
    assert modules[0].to_qkv.weight.shape[0] == 3 * inner
    assert sped_up.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_guidance_on_early_steps_only(pipe, images):
    run = lambda **kw: pixels(pipe(**images, steps=4, guidance=2.5, seed=3, **SIZE, **kw))  # noqa: E731
    full, none_guided = run(), pixels(pipe(**images, steps=4, guidance=1.0, seed=3, **SIZE))
    assert np.array_equal(run(guidance_steps=4), full)
    assert np.array_equal(run(guidance_steps=99), full)
    assert np.array_equal(run(guidance_steps=0), none_guided)
    half = run(guidance_steps=2)
    assert np.abs(half - full).max() > 0 and np.abs(half - none_guided).max() > 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(TryOnInputError, match="guidance_steps"):
            pipe(**images, steps=2, seed=3, **SIZE, guidance_steps=bad)


def test_plan_follows_the_settings_and_the_device(tmp_path):
    settings = Settings.from_env({}, volume=str(tmp_path))
    cpu = accel.plan(settings, "cpu")
    assert (cpu.compile, cpu.cudnn_benchmark, cpu.warmup, cpu.fuse_qkv, cpu.channels_last) == \
        (False, False, False, True, True)
    assert accel.plan(Settings.from_env({"TRYON_COMPILE": "on"}, volume=str(tmp_path)), "cpu").compile
    assert not accel.plan(Settings.from_env({}, volume=str(tmp_path), tiny_models=True), "cpu").warmup
    assert accel.plan(Settings.from_env({"TRYON_WARMUP": "on"}, volume=str(tmp_path)), "cpu").warmup
    assert accel.plan(settings, "cuda").warmup
    off = accel.plan(Settings.from_env({"TRYON_FUSE_QKV": "0", "TRYON_CHANNELS_LAST": "off",
                                        "TRYON_WARMUP": "off"}, volume=str(tmp_path)), "cuda")
    assert (off.fuse_qkv, off.channels_last, off.warmup, off.cudnn_benchmark) == (False, False, False, True)
    assert "sm90-bf16-default-qkv-cl-768x1024" in accel.plan(settings, "cuda").profile("h100-sm90", "bf16", 768, 1024)
    tuned = accel.plan(Settings.from_env({"TRYON_COMPILE_TUNING": "1"}, volume=str(tmp_path)), "cuda")
    assert tuned.profile("h100-sm90", "bf16", 768, 1024).endswith("-qkv-cl-tuned-768x1024")  # its own cache file


def test_engine_warms_up_before_it_reports_ready(tiny_volume, make_settings, images):
    seen = []
    engine = Engine(make_settings(tiny_volume, warmup="on", width=64, height=96, steps=3))
    original = CatVTONPipeline.__call__

    def record(self, *args, **kwargs):
        seen.append((engine.status().state, kwargs.get("width"), kwargs.get("height"), kwargs.get("steps")))
        return original(self, *args, **kwargs)

    CatVTONPipeline.__call__ = record
    try:
        pipe = engine.get()
    finally:
        CatVTONPipeline.__call__ = original
    status = engine.status()
    assert seen and seen[0][0] != READY and seen[0][1:3] == (64, 96)  # ran at the default size, before ready
    assert status.state == READY and status.load_timings["warmup"] > 0
    assert status.speed["fuse_qkv"] and status.compile == {"state": "off"}
    assert pipe(**images, steps=2, seed=1, width=64, height=96).image.size == (64, 96)


def test_preload_reads_the_weights_ahead_and_starts_once(tiny_volume, make_settings):
    from app.model.engine import read_ahead
    from app.model.weights import model_paths

    settings = make_settings(tiny_volume, preload=True)
    paths = model_paths(settings)
    weights = [p for folder in (paths.base / "unet", paths.vae, paths.adapter) for p in folder.glob("*.safetensors")]
    assert len(weights) == 3 and read_ahead(settings) == sum(p.stat().st_size for p in weights)
    engine = Engine(settings)
    engine.start()
    engine.start()  # the CLI starts it before the server does: still one load
    deadline = time.monotonic() + 60
    while engine.status().state != READY and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.status().state == READY and engine.status().loads == 1


def test_compile_needs_a_c_compiler_and_says_so(tmp_path, monkeypatch):
    from app.errors import ModelLoadError

    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ModelLoadError, match="no C\\+\\+ compiler .*apt-get install g\\+\\+"):
        accel.plan(Settings.from_env({"TRYON_COMPILE": "on"}, volume=str(tmp_path)), "cpu")
    assert accel.plan(Settings.from_env({"TRYON_COMPILE": "auto"}, volume=str(tmp_path)), "cpu").compile is False
