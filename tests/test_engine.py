"""The held pipeline: one load for many callers, idle release, failures reported and retried."""

import threading
import time

import pytest

from app.errors import ModelLoadError
from app.model.engine import FAILED, READY, UNLOADED, Engine


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_nothing_loads_until_first_use(tiny_volume, make_settings):
    engine = Engine(make_settings(tiny_volume))
    status = engine.status()
    assert (status.state, status.loads, status.device) == (UNLOADED, 0, None)


def test_eight_concurrent_callers_cause_exactly_one_load(tiny_volume, make_settings):
    engine = Engine(make_settings(tiny_volume))
    barrier = threading.Barrier(8)
    got, errors = [], []

    def call():
        barrier.wait()
        try:
            got.append(engine.get())
        except Exception as exc:  # collected so the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(got) == 8 and len({id(pipe) for pipe in got}) == 1
    status = engine.status()
    assert (status.state, status.loads, status.device, status.dtype) == (READY, 1, "cpu", "fp32")
    assert {"unet", "vae", "adapter", "scheduler", "total"} <= set(status.load_timings)
    assert engine.get() is got[0] and engine.status().loads == 1


def test_idle_release_frees_the_pipeline_and_next_use_reloads(tiny_volume, make_settings):
    engine = Engine(make_settings(tiny_volume, idle_release_s=0.3))
    first = engine.get()
    assert wait_for(lambda: engine.status().state == UNLOADED), "not released after 0.3 s idle"
    assert engine.status().releases == 1
    second = engine.get()
    assert second is not first
    assert engine.status().loads == 2 and engine.status().state == READY
    engine.close()


def test_pipeline_in_use_is_not_released(tiny_volume, make_settings):
    engine = Engine(make_settings(tiny_volume, idle_release_s=0.2))
    with engine.use():
        time.sleep(0.8)
        assert engine.status().state == READY
    assert wait_for(lambda: engine.status().state == UNLOADED)
    engine.close()


def test_failed_load_shows_in_status_and_succeeds_once_fixed(volume_copy, make_settings):
    adapter = volume_copy / "models/zhengchong/CatVTON/mix-48k-1024/attention/model.safetensors"
    hidden = adapter.with_name("moved-away")
    adapter.rename(hidden)
    engine = Engine(make_settings(volume_copy))
    with pytest.raises(ModelLoadError, match="mix-48k-1024/attention/model.safetensors"):
        engine.get()
    status = engine.status()
    assert status.state == FAILED and "model file(s) missing" in status.error and "hf download" in status.error
    hidden.rename(adapter)
    assert engine.get() is not None
    status = engine.status()
    assert (status.state, status.error, status.loads) == (READY, None, 1)


def test_every_concurrent_caller_gets_the_load_error(volume_copy, make_settings):
    (volume_copy / "models/stabilityai/sd-vae-ft-mse/config.json").unlink()
    engine = Engine(make_settings(volume_copy))
    barrier = threading.Barrier(4)
    errors = []

    def call():
        barrier.wait()
        try:
            engine.get()
        except ModelLoadError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and all("sd-vae-ft-mse/config.json" in e for e in errors)
    assert engine.status().state == FAILED


def test_preload_loads_in_the_background(tiny_volume, make_settings):
    engine = Engine(make_settings(tiny_volume, preload=True))
    engine.start()
    assert wait_for(lambda: engine.status().state == READY)
    assert engine.status().loads == 1


def test_cuda_requested_without_a_gpu_fails_clearly(tiny_volume):
    from app.config import Settings

    engine = Engine(Settings.from_env({}, volume=str(tiny_volume), device="cuda"))
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="TRYON_DEVICE=cuda.*no CUDA device"):
        engine.get()
    assert "TRYON_DEVICE=auto" in engine.status().error


def test_tiny_mode_makes_its_models_on_first_use(tmp_path, make_settings):
    engine = Engine(make_settings(tmp_path, tiny_models=True))
    engine.get()
    assert (tmp_path / "tiny-models/zhengchong/CatVTON/mix-48k-1024/attention/model.safetensors").is_file()
    assert engine.status().tiny_models is True
