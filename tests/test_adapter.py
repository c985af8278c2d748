"""The CatVTON attention file loads strictly and fails clearly."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.model.pipeline import AdapterError, CatVTONPipeline


def load(paths, adapter=None):
    return CatVTONPipeline.from_pretrained(paths.base, paths.vae, adapter or paths.adapter, device="cpu",
                                           dtype=torch.float32)


def adapter_copy(tiny_paths, tmp_path, edit):
    state = load_file(str(tiny_paths.adapter / "model.safetensors"))
    edit(state)
    folder = tmp_path / "attention"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_missing_key_is_named(tiny_paths, tmp_path):
    folder = adapter_copy(tiny_paths, tmp_path, lambda s: s.pop("8.to_v.weight"))
    with pytest.raises(AdapterError, match=r"missing key\(s\) '8\.to_v\.weight'"):
        load(tiny_paths, folder)


def test_unexpected_key_is_named(tiny_paths, tmp_path):
    folder = adapter_copy(tiny_paths, tmp_path, lambda s: s.update({"9.to_q.weight": torch.zeros(1)}))
    with pytest.raises(AdapterError, match=r"unexpected key\(s\) '9\.to_q\.weight'"):
        load(tiny_paths, folder)


def test_wrong_shape_is_named(tiny_paths, tmp_path):
    folder = adapter_copy(tiny_paths, tmp_path, lambda s: s.update({"0.to_q.weight": torch.zeros(3, 3)}))
    with pytest.raises(AdapterError, match=r"'0\.to_q\.weight' has shape \(3, 3\)"):
        load(tiny_paths, folder)


def test_damaged_file_fails_clearly(tiny_paths, tmp_path):
    folder = tmp_path / "attention"
    folder.mkdir()
    data = (tiny_paths.adapter / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="is not a readable safetensors file.*download it again"):
        load(tiny_paths, folder)


def test_absent_file_names_the_path(tiny_paths, tmp_path):
    with pytest.raises(AdapterError, match=r"adapter file not found: .*attention/model\.safetensors"):
        load(tiny_paths, tmp_path / "attention")


def test_non_inpainting_unet_is_refused(tiny_paths, tmp_path):
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_paths.base, base)
    config = json.loads((base / "unet" / "config.json").read_text())
    config["in_channels"] = 4
    (base / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="9-channel inpainting UNet"):
        CatVTONPipeline.from_pretrained(base, tiny_paths.vae, tiny_paths.adapter, device="cpu", dtype=torch.float32)
