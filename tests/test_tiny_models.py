"""The tiny kit writes the real volume layout: exactly the files production reads."""

import json

from safetensors import safe_open

from app.config import ADAPTER_FOLDERS, Settings
from app.model.weights import check_weights, missing_files, required_files


def test_layout_has_every_required_file(tiny_volume):
    settings = Settings.from_env({}, volume=str(tiny_volume))
    assert missing_files(settings) == []
    for version in ADAPTER_FOLDERS:
        assert missing_files(Settings.from_env({}, volume=str(tiny_volume), adapter_version=version)) == []
    paths = check_weights(settings)
    assert paths.adapter == tiny_volume / "models/zhengchong/CatVTON/mix-48k-1024/attention"
    for item in required_files(settings):
        assert item.local(settings.models_dir).is_file(), item


def test_configs_are_real_diffusers_configs(tiny_volume):
    unet = json.loads((tiny_volume / "models/stable-diffusion-v1-5/stable-diffusion-inpainting/unet/config.json")
                      .read_text())
    assert unet["_class_name"] == "UNet2DConditionModel" and unet["in_channels"] == 9
    vae = json.loads((tiny_volume / "models/stabilityai/sd-vae-ft-mse/config.json").read_text())
    assert vae["_class_name"] == "AutoencoderKL" and len(vae["block_out_channels"]) == 4  # 8x, as the real VAE
    scheduler = json.loads((tiny_volume / "models/stable-diffusion-v1-5/stable-diffusion-inpainting/scheduler/"
                            "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["steps_offset"] == 1


def test_adapter_uses_the_reference_positional_keys(tiny_volume):
    path = tiny_volume / "models/zhengchong/CatVTON/mix-48k-1024/attention/model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    modules = {int(key.split(".")[0]) for key in keys}
    assert modules == {8 * i for i in range(len(modules))}
    assert {key.split(".", 1)[1] for key in keys} == {"to_q.weight", "to_k.weight", "to_v.weight",
                                                       "to_out.0.weight", "to_out.0.bias"}


def test_missing_weights_message_says_what_and_how(tmp_path):
    settings = Settings.from_env({}, volume=str(tmp_path))
    files = missing_files(settings)
    assert len(files) == 6
    from app.model.weights import missing_weights_message

    message = missing_weights_message(settings, files)
    assert "6 model file(s) missing" in message
    assert "hf download zhengchong/CatVTON mix-48k-1024/attention/model.safetensors" in message
    assert "--tiny" in message
