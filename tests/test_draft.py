"""Draft try-ons, the labelled fast preview, on the tiny models: what REST answers and saves, the pixels
against the pipeline called directly, progress, and the gallery's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_server import assert_error, b64, outputs

from app.errors import TryOnInputError
from app.model.engine import Engine
from app.studio.gallery import caption, form_values, seed_caption, summary
from app.tryons.service import BatchItem, TryOnOptions
from app.web.server import create_app

SEED = 7
DRAFT_STEPS = 20  # TRYON_DRAFT_STEPS' default


@pytest.fixture
def client(volume_copy, make_settings):
    with TestClient(create_app(make_settings(volume_copy), ui=False)) as client:
        yield client


@pytest.fixture
def request_body(images) -> dict:
    """64x96 straight from the model (no blur, no paste-back): the pixels the pipeline makes."""
    return {"person": {"base64": b64(images["person"])}, "garment": {"base64": b64(images["garment"])},
            "mask": {"base64": b64(images["mask"])}, "steps": 50, "seed": SEED, "width": 64, "height": 96,
            "mask_blur": 0.0, "keep_photo": False}


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def sidecar(volume, answer: dict) -> dict:
    return json.loads((volume / answer["output"]).with_suffix(".json").read_text())


@pytest.mark.slow
def test_a_rest_draft_is_the_pipeline_with_fewer_guided_steps_and_says_so(client, volume_copy, make_settings,
                                                                          images, request_body):
    draft = client.post("/v1/tryon", json={**request_body, "draft": True})
    full = client.post("/v1/tryon", json=request_body)
    assert draft.status_code == 200, draft.text
    assert full.status_code == 200, full.text
    answer = draft.json()
    assert (answer["draft"], answer["steps_run"], answer["guidance_steps"], answer["seed"]) == (True, 20, 10, SEED)
    assert (full.json()["draft"], full.json()["steps_run"], full.json()["guidance_steps"]) == (False, 50, None)

    # The same call made directly, on a pipeline loaded as the engine loads it, on the region the model saw.
    from app.images.imaging import crop_padded
    from app.tryons.service import mask_region

    region = mask_region(images["person"].size, images["mask"], (64, 96))
    assert sidecar(volume_copy, answer)["region"] == list(region)
    person, mask = crop_padded(images["person"], region), crop_padded(images["mask"], region, fill="black")
    engine = Engine(make_settings(volume_copy))
    try:
        inputs = {"person": person, "garment": images["garment"], "mask": mask, "guidance": 2.5,
                  "seed": SEED, "width": 64, "height": 96, "steps": DRAFT_STEPS}
        direct = engine.get()(**inputs, guidance_steps=DRAFT_STEPS // 2)
        all_guided = engine.get()(**inputs)
    finally:
        engine.close()
    drafted = pixels(volume_copy / answer["output"])
    assert np.array_equal(drafted, np.asarray(direct.image.convert("RGB")))
    assert not np.array_equal(drafted, np.asarray(all_guided.image.convert("RGB")))  # guidance stopped halfway
    assert np.abs(drafted.astype(int) - pixels(volume_copy / full.json()["output"])).mean() > 1

    saved = sidecar(volume_copy, answer)
    assert saved["draft"] is True and saved["seed"] == SEED
    assert {key: saved["settings"][key] for key in ("draft", "steps", "steps_run", "guidance_steps")} == {
        "draft": True, "steps": 50, "steps_run": 20, "guidance_steps": 10}
    full_saved = sidecar(volume_copy, full.json())
    assert full_saved["draft"] is False and full_saved["settings"]["steps_run"] == 50


def test_the_draft_steps_setting_bounds_a_draft_and_fewer_requested_steps_stay(volume_copy, make_settings,
                                                                                request_body):
    with TestClient(create_app(make_settings(volume_copy, draft_steps=6), ui=False)) as client:
        capped = client.post("/v1/tryon", json={**request_body, "steps": 9, "draft": True}).json()
        fewer = client.post("/v1/tryon", json={**request_body, "steps": 3, "draft": True}).json()
    assert (capped["steps_run"], capped["guidance_steps"]) == (6, 3)
    assert (fewer["steps_run"], fewer["guidance_steps"]) == (3, 2)  # the first half, rounded up


def test_a_rest_batch_of_drafts_marks_every_result(client, volume_copy, request_body):
    response = client.post("/v1/tryon", json={**request_body, "steps": 4, "seed": None, "seeds": [1, 2],
                                              "draft": True})
    assert response.status_code == 200, response.text
    assert [(r["draft"], r["steps_run"]) for r in response.json()["results"]] == [(True, 4), (True, 4)]


@pytest.mark.parametrize("value", ["yes", 1, "true", [True]])
def test_a_draft_that_is_not_true_or_false_is_refused_naming_it(client, volume_copy, request_body, value):
    assert_error(client.post("/v1/tryon", json={**request_body, "draft": value}), 400, "invalid_request", "draft")
    assert outputs(volume_copy) == []


def test_draft_progress_counts_the_steps_run(client, images):
    service = client.app.state.service
    options = TryOnOptions(steps=50, seed=SEED, width=64, height=96, keep_photo=False, draft=True)
    calls = []
    service.run(images["person"], images["garment"], images["mask"], options,
                progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 20) for done in range(1, 21)]
    calls.clear()
    items = [BatchItem(images["person"], images["garment"], images["mask"], seed=seed) for seed in (1, 2)]
    service.run_batch(items, options, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 40) for done in range(1, 41)]


def test_a_service_draft_must_be_a_bool(client, images):
    options = TryOnOptions(steps=2, width=64, height=96, draft="no")
    with pytest.raises(TryOnInputError, match=r"draft='no' is not usable"):
        client.app.state.service.run(images["person"], images["garment"], images["mask"], options)


def test_the_gallery_labels_a_draft_and_reuse_keeps_it(client, volume_copy, request_body):
    answer = client.post("/v1/tryon", json={**request_body, "draft": True}).json()
    metadata = sidecar(volume_copy, answer)
    assert caption(metadata).startswith("Draft · Upper · seed 7")
    assert seed_caption(metadata) == "Draft · seed 7"
    assert "draft: 20 of 50 steps, guided on the first 10" in summary(metadata)
    assert form_values(metadata, {})["draft"] is True and form_values(metadata, {})["steps"] == 50
    full = sidecar(volume_copy, client.post("/v1/tryon", json={**request_body, "steps": 2}).json())
    assert caption(full).startswith("Upper · seed 7") and "Draft" not in summary(full)
    assert seed_caption(full) == "seed 7" and form_values(full, {})["draft"] is False
