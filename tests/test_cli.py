"""The command line, run as a user runs it: a real interpreter, real files, tiny models."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    return subprocess.run([sys.executable, "-m", "app", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, env={**base, "PYTHONPATH": str(ROOT), "TRYON_DEVICE": "cpu", **(env or {})},
                          timeout=300)


@pytest.fixture
def input_files(tmp_path, images):
    paths = {}
    for role, image in images.items():
        paths[role] = tmp_path / f"{role}.png"
        image.save(paths[role])
    return paths


@pytest.mark.slow
def test_generate_writes_the_result_and_reports_timings(tiny_volume, input_files, tmp_path):
    out = tmp_path / "results" / "out.png"
    done = cli("generate", "--volume", tiny_volume, "--person", input_files["person"], "--garment",
               input_files["garment"], "--mask", input_files["mask"], "--out", out, "--steps", 2, "--width", 64,
               "--height", 96, "--seed", 9)
    assert done.returncode == 0, done.stderr
    assert f"saved {out} (64x96, seed 9, 2 steps" in done.stdout
    assert "timings: preprocess" in done.stdout and "denoise" in done.stdout
    assert "denoising 2/2" in done.stderr
    with Image.open(out) as image:
        assert image.size == (64, 96)
    assert [p.name for p in out.parent.iterdir()] == ["out.png"]  # no temporary file left behind


def test_generate_rejects_unreadable_inputs_clearly(tiny_volume, input_files, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    done = cli("generate", "--volume", tiny_volume, "--person", text, "--garment", input_files["garment"],
               "--mask", input_files["mask"], "--out", tmp_path / "o.png")
    assert done.returncode == 2
    assert f"person image {text} could not be read as an image" in done.stderr
    missing = cli("generate", "--volume", tiny_volume, "--person", tmp_path / "nope.png", "--garment",
                  input_files["garment"], "--mask", input_files["mask"], "--out", tmp_path / "o.png")
    assert missing.returncode == 2 and "person image not found" in missing.stderr


@pytest.mark.slow
def test_generate_rejects_bad_settings_and_arguments(tiny_volume, input_files, tmp_path):
    args = ["generate", "--volume", tiny_volume, "--person", input_files["person"], "--garment",
            input_files["garment"], "--mask", input_files["mask"]]
    bad_steps = cli(*args, "--out", tmp_path / "o.png", "--steps", 0)
    assert bad_steps.returncode == 2 and "--steps='0' is not valid: expected a value from 1 to 100" in bad_steps.stderr
    bad_env = cli(*args, "--out", tmp_path / "o.png", env={"TRYON_DTYPE": "half"})
    assert bad_env.returncode == 2 and "TRYON_DTYPE='half' is not valid" in bad_env.stderr
    bad_out = cli(*args, "--out", tmp_path / "o.txt")
    assert bad_out.returncode == 2 and "unknown image type .txt" in bad_out.stderr
    small = tmp_path / "small-mask.png"
    Image.new("L", (10, 10)).save(small)
    bad_mask = cli(*args[:-2], "--mask", small, "--out", tmp_path / "o.png", "--steps", 1)
    assert bad_mask.returncode == 2 and "mask size 10x10 differs" in bad_mask.stderr
    assert not (tmp_path / "o.png").exists()


def test_generate_without_weights_says_what_is_missing(tmp_path, input_files):
    done = cli("generate", "--volume", tmp_path / "empty", "--person", input_files["person"], "--garment",
               input_files["garment"], "--mask", input_files["mask"], "--out", tmp_path / "o.png")
    assert done.returncode == 3
    assert "6 model file(s) missing" in done.stderr and "hf download" in done.stderr


@pytest.mark.slow
def test_demo_without_weights_explains_and_runs_offline(tmp_path):
    done = cli("demo", "--volume", tmp_path, "--steps", 2)
    assert done.returncode == 0, done.stderr
    assert "model file(s) missing" in done.stderr and "tiny random-weight models instead" in done.stderr
    assert (tmp_path / "outputs" / "demo.png").is_file()
    assert (tmp_path / "tiny-models" / "zhengchong" / "CatVTON").is_dir()


@pytest.mark.slow
def test_tiny_models_command_writes_a_usable_volume(tmp_path):
    done = cli("tiny-models", tmp_path / "vol")
    assert done.returncode == 0, done.stderr
    assert "TRYON_VOLUME=" in done.stdout
    demo = cli("demo", "--steps", 1, "--width", 64, "--height", 96, env={"TRYON_VOLUME": str(tmp_path / "vol")})
    assert demo.returncode == 0, demo.stderr
    assert "missing" not in demo.stderr  # the written set is the real layout: no fallback needed


def test_settings_markdown_lists_every_variable():
    from app.config import settings_table

    done = cli("settings", "--markdown")
    assert done.returncode == 0
    for row in settings_table():
        assert f"`{row['env']}`" in done.stdout
