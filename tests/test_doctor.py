"""python -m app doctor on good and broken volumes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNET = "models/stable-diffusion-v1-5/stable-diffusion-inpainting/unet/diffusion_pytorch_model.fp16.safetensors"


def doctor(volume: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), PORT="0")
    return subprocess.run([sys.executable, "-m", "app", "doctor", "--volume", str(volume)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_good_volume_passes(volume_copy):
    done = doctor(volume_copy)
    assert done.returncode == 0, done.stdout
    assert "ok    volume is writable" in done.stdout
    assert "ok    zhengchong/CatVTON/mix-48k-1024/attention/model.safetensors" in done.stdout
    assert "ok    adapter keys valid" in done.stdout
    assert "all checks passed" in done.stdout
    assert "FAIL" not in done.stdout


def test_missing_file_fails_with_its_name(volume_copy):
    (volume_copy / "models/stabilityai/sd-vae-ft-mse/config.json").unlink()
    done = doctor(volume_copy)
    assert done.returncode == 1
    assert "FAIL  missing stabilityai/sd-vae-ft-mse/config.json -> run: python -m app download" in done.stdout


def test_truncated_file_fails(volume_copy):
    unet = volume_copy / UNET
    data = unet.read_bytes()
    unet.write_bytes(data[: len(data) - 1000])
    done = doctor(volume_copy)
    assert done.returncode == 1
    assert "diffusion_pytorch_model.fp16.safetensors: truncated" in done.stdout


def test_size_differing_from_the_manifest_fails(volume_copy):
    import json

    config = volume_copy / "models/stabilityai/sd-vae-ft-mse/config.json"
    (volume_copy / "models/manifest.json").write_text(json.dumps({"files": [
        {"repo": "stabilityai/sd-vae-ft-mse", "path": "config.json", "size": config.stat().st_size + 10}]}))
    done = doctor(volume_copy)
    assert done.returncode == 1 and "the manifest says" in done.stdout


def test_read_only_folder_fails(volume_copy):
    outputs = volume_copy / "outputs"
    outputs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(outputs)], capture_output=True).returncode:
        pytest.skip("mounting a read-only filesystem needs root")
    try:
        done = doctor(volume_copy)
    finally:
        subprocess.run(["umount", str(outputs)], check=True)
    assert done.returncode == 1
    assert f"FAIL  {outputs} is not writable" in done.stdout


def test_missing_volume_fails(tmp_path):
    done = doctor(tmp_path / "not-mounted")
    assert done.returncode == 1 and "does not exist -> attach the network volume" in done.stdout


def test_compile_cache_is_reported(volume_copy):
    done = doctor(volume_copy)
    assert f"warn  no compiled graphs in {volume_copy / 'cache' / 'torch'} yet -> the first GPU worker compiles" \
        in done.stdout
    cached = volume_copy / "cache" / "torch" / "abc123" / "nvidia-h100-sm90-bf16-default-qkv-cl-768x1024.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x" * 3_000_000)
    done = doctor(volume_copy)
    assert "ok    compile cache: 1 file(s)" in done.stdout and "abc123/" + cached.name + " (3 MB)" in done.stdout
    assert done.returncode == 0
