"""The CatVTON pipeline run for real on the tiny model set (CPU, fp32, a few steps)."""

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from app.model.pipeline import (
    CatVTONPipeline,
    GenerationCancelled,
    SkipCrossAttention,
    TryOnInputError,
    adapter_state_keys,
    self_attention_modules,
)

FAST = {"steps": 3, "width": 64, "height": 96}


def run(pipe, images, **kwargs):
    return pipe(person=images["person"], garment=images["garment"], mask=images["mask"], **{**FAST, **kwargs})


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def test_result_is_an_rgb_image_of_the_requested_size(pipe, images):
    result = run(pipe, images, seed=7, width=72, height=104)
    assert isinstance(result.image, Image.Image)
    assert result.image.mode == "RGB" and result.image.size == (72, 104)
    assert (result.seed, result.steps, result.width, result.height) == (7, 3, 72, 104)
    assert (result.device, result.dtype) == ("cpu", "fp32")
    assert set(result.timings) == {"preprocess", "encode", "denoise", "decode", "total"}
    assert result.timings["total"] >= result.timings["denoise"] > 0
    assert pixels(result).std() > 1  # a picture, not a flat fill


def test_same_seed_same_image_other_seed_other_image(pipe, images):
    first, again, other = run(pipe, images, seed=11), run(pipe, images, seed=11), run(pipe, images, seed=12)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).max() > 20


def test_no_seed_picks_one_and_reports_it(pipe, images):
    result = run(pipe, images, seed=None)
    assert 0 <= result.seed < 2**63
    assert np.array_equal(pixels(result), pixels(run(pipe, images, seed=result.seed)))


def test_guidance_at_or_below_one_runs_without_guidance(pipe, images):
    off = run(pipe, images, seed=5, guidance=1.0)
    assert np.array_equal(pixels(off), pixels(run(pipe, images, seed=5, guidance=0.0)))
    assert not np.array_equal(pixels(off), pixels(run(pipe, images, seed=5, guidance=5.0)))


def test_callback_sees_every_step_and_can_cancel(pipe, images):
    seen = []
    run(pipe, images, steps=4, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def cancel(step, total):
        if step == 2:
            raise GenerationCancelled

    with pytest.raises(GenerationCancelled):
        run(pipe, images, steps=4, callback=cancel)


def test_any_mask_mode_and_rgba_garment_are_accepted(pipe, images):
    garment = images["garment"].convert("RGBA")
    rgb_mask = images["mask"].convert("RGB")
    base = run(pipe, images, seed=3)
    same = pipe(person=images["person"], garment=garment, mask=rgb_mask, seed=3, **FAST)
    assert np.array_equal(pixels(base), pixels(same))


def test_bf16_runs_on_cpu(tiny_paths, images):
    pipe = CatVTONPipeline.from_pretrained(tiny_paths.base, tiny_paths.vae, tiny_paths.adapter, device="cpu",
                                           dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    result = run(pipe, images, seed=1, steps=2)
    assert result.dtype == "bf16" and result.image.size == (64, 96)


@pytest.mark.parametrize(
    ("change", "quoted"),
    [
        ({"width": 100}, "width=100"),
        ({"height": 0}, "height=0"),
        ({"width": 4096}, "width=4096"),
        ({"steps": 0}, "steps=0"),
        ({"steps": 101}, "steps=101"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"guidance": -1.0}, "guidance=-1.0"),
        ({"guidance": math.nan}, "guidance=nan"),
        ({"seed": -3}, "seed=-3"),
    ],
)
def test_bad_arguments_are_rejected_quoting_the_value(pipe, images, change, quoted):
    with pytest.raises(TryOnInputError, match=quoted.replace(".", r"\.")):
        run(pipe, images, **change)


def test_mask_must_match_the_person_photo(pipe, images):
    with pytest.raises(TryOnInputError, match=r"mask size 10x10 differs .* 384x512"):
        pipe(person=images["person"], garment=images["garment"], mask=Image.new("L", (10, 10)), **FAST)


def test_empty_and_non_images_are_rejected(pipe, images):
    with pytest.raises(TryOnInputError, match="garment image is empty"):
        pipe(person=images["person"], garment=Image.new("RGB", (0, 0)), mask=images["mask"], **FAST)
    with pytest.raises(TryOnInputError, match="person must be a PIL image, got str"):
        pipe(person="person.png", garment=images["garment"], mask=images["mask"], **FAST)


def test_self_attention_runs_and_cross_attention_is_skipped(pipe):
    processors = pipe.unet.attn_processors
    assert processors, "the UNet has attention layers"
    for name, processor in processors.items():
        expected = AttnProcessor2_0 if name.endswith("attn1.processor") else SkipCrossAttention
        assert isinstance(processor, expected), name


def test_adapter_weights_are_the_ones_in_the_file(pipe, tiny_paths):
    from safetensors.torch import load_file

    state = load_file(str(tiny_paths.adapter / "model.safetensors"))
    params = dict(pipe.unet.named_parameters())
    mapping = adapter_state_keys(pipe.unet)
    assert set(mapping) == set(state)
    for key, name in mapping.items():
        assert torch.equal(params[name], state[key]), key


def test_adapter_keys_for_the_real_sd15_unet_follow_the_reference_layout():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # the real architecture, no memory
        unet = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, sample_size=64)
    modules = self_attention_modules(unet)
    keys = adapter_state_keys(unet)
    assert len(modules) == 16 and len(keys) == 80
    assert keys["0.to_q.weight"] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert keys["120.to_out.0.bias"] == "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.bias"
    assert keys["48.to_k.weight"].startswith("up_blocks.1.attentions.0.")  # down blocks, up blocks, then mid
