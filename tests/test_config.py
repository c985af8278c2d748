"""Settings: one table, env vars, clear errors, documented in the README."""

import re
from pathlib import Path

import pytest

from app import config
from app.config import SettingError, Settings, settings_table

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(tmp_path):
    s = Settings.from_env({}, volume=str(tmp_path))
    assert (s.steps, s.guidance, s.seed, s.width, s.height) == (50, 2.5, 42, 768, 1024)
    assert (s.device, s.dtype, s.adapter_version, s.preload, s.idle_release_s) == ("auto", "auto", "mix", False, 0.0)
    assert s.base_repo == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert s.models_dir == tmp_path / "models"
    assert s.adapter_folder == "mix-48k-1024"


def test_environment_values_are_parsed(tmp_path):
    env = {"TRYON_VOLUME": str(tmp_path), "TRYON_STEPS": "30", "TRYON_GUIDANCE": "3", "TRYON_PRELOAD": "yes",
           "TRYON_DTYPE": "FP16", "TRYON_ADAPTER_VERSION": "vitonhd", "TRYON_TINY_MODELS": "1"}
    s = Settings.from_env(env)
    assert (s.steps, s.guidance, s.preload, s.dtype) == (30, 3.0, True, "fp16")
    assert s.adapter_folder == "vitonhd-16k-512"
    assert s.models_dir == tmp_path / "tiny-models"


def test_overrides_win_over_environment(tmp_path):
    s = Settings.from_env({"TRYON_STEPS": "30", "TRYON_VOLUME": "/nowhere"}, steps="12", volume=str(tmp_path))
    assert s.steps == 12 and s.volume == tmp_path


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("TRYON_DEVICE", "gpu", "one of auto, cuda, cpu"),
        ("TRYON_DTYPE", "half", "one of auto, bf16, fp16, fp32"),
        ("TRYON_ADAPTER_VERSION", "v2", "one of mix, vitonhd, dresscode"),
        ("TRYON_STEPS", "many", "an integer"),
        ("TRYON_STEPS", "0", "a value from 1 to 100"),
        ("TRYON_WIDTH", "770", "a multiple of 8"),
        ("TRYON_GUIDANCE", "nan", "a finite number"),
        ("TRYON_PRELOAD", "maybe", "one of 1, 0, true"),
        ("TRYON_IDLE_RELEASE_S", "-5", "a value >= 0.0"),
        ("TRYON_BASE_REPO", " ", "a non-empty value"),
    ],
)
def test_invalid_values_name_variable_value_and_allowed(tmp_path, env, value, expected):
    with pytest.raises(SettingError) as info:
        Settings.from_env({env: value}, volume=str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{env}={value!r} is not valid")
    assert expected in message


def test_volume_resolution_order(tmp_path, monkeypatch):
    runpod, workspace = tmp_path / "runpod-volume", tmp_path / "workspace"
    monkeypatch.setattr(config, "VOLUME_CANDIDATES", (runpod, workspace))
    monkeypatch.chdir(tmp_path)
    assert config.resolve_volume(None) == tmp_path / "volume"
    workspace.mkdir()
    assert config.resolve_volume(None) == workspace
    runpod.mkdir()
    assert config.resolve_volume(None) == runpod
    assert config.resolve_volume(str(tmp_path / "mine")) == tmp_path / "mine"


def test_unknown_override_is_a_programming_error():
    with pytest.raises(TypeError, match="unknown settings: stepz"):
        Settings.from_env({}, stepz=3)


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(TRYON_[A-Z0-9_]+)`", readme))
    declared = {row["env"] for row in settings_table(launcher=True)}
    assert declared - documented == set(), "add these to the README (python -m app settings --markdown [--launcher])"
    assert documented - declared == set(), "the README names settings that app/config.py does not declare"


def test_the_launcher_reads_only_declared_settings():
    script = "".join(path.read_text() for path in sorted((ROOT / "launcher").rglob("*.sh")))
    used = set(re.findall(r"\b(TRYON_[A-Z0-9_]+)", script))
    declared = {row["env"] for row in settings_table(launcher=True)}
    assert used - declared == set(), "declare these in app/config.py LAUNCHER_SETTINGS"
