"""Batch try-ons on the tiny models: the service's run_batch and the list forms of POST /v1/tryon."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from test_server import FAST, assert_error, b64, outputs

from app.errors import GenerationCancelled, TryOnInputError
from app.model.engine import Engine
from app.tryons.outputs import ResultStore
from app.tryons.service import BatchItem, BusyError, TryOnOptions, TryOnService
from app.web.server import create_app


def saved_pngs(volume) -> list[str]:
    return [p for p in outputs(volume) if p.endswith(".png")]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_difference(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture
def second_garment(images) -> Image.Image:
    return ImageOps.invert(images["garment"].convert("RGB"))


@pytest.fixture
def volume(volume_copy, images, second_garment):
    inputs = volume_copy / "inputs"
    inputs.mkdir()
    for role, image in images.items():
        image.save(inputs / f"{role}.png")
    second_garment.save(inputs / "garment-2.png")
    images["person"].resize((192, 256)).save(inputs / "person-small.png")
    return volume_copy


@pytest.fixture
def client(volume, make_settings):
    app = create_app(make_settings(volume, batch_max=4), ui=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def make_service(volume_copy, make_settings):
    engines = []

    def make(**overrides) -> TryOnService:
        settings = make_settings(volume_copy, **overrides)
        engines.append(Engine(settings))
        return TryOnService(settings, engines[-1], ResultStore(settings.layout.outputs, settings.layout.root))

    yield make
    for engine in engines:
        engine.close()


def fast_options(**overrides) -> TryOnOptions:
    return TryOnOptions(**{"steps": 2, "width": 64, "height": 96, "seed": 5, "keep_photo": False, **overrides})


# -- REST -----------------------------------------------------------------------------------------------

def test_rest_batch_of_two_garments_saves_both_with_batch_metadata(client, volume, second_garment):
    response = client.post("/v1/tryon", json={
        "person": "inputs/person.png", "garment": ["inputs/garment.png", {"base64": b64(second_garment)}],
        "mask": "inputs/mask.png", "seed": 7, "keep_photo": False, **FAST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"batch", "results"} and len(body["results"]) == 2
    sidecars = []
    for index, result in enumerate(body["results"]):
        assert set(result) == {"id", "output", "seed", "draft", "steps_run", "guidance_steps", "timings", "width",
                               "height", "generated_width", "generated_height", "device"}
        assert (result["draft"], result["steps_run"], result["guidance_steps"]) == (False, 2, None)
        assert result["seed"] == 7 and (result["width"], result["height"]) == (64, 96)
        assert (result["generated_width"], result["generated_height"]) == (64, 96)
        sidecar = json.loads((volume / result["output"]).with_suffix(".json").read_text())
        assert sidecar["batch"] == {"id": body["batch"], "index": index, "size": 2}
        assert sidecar["seed"] == 7 and sidecar["settings"]["steps"] == 2
        assert sidecar["owner"].startswith("anon:")  # no credentials: an owner of its own that nobody can list
        sidecars.append(sidecar)
    assert sorted(saved_pngs(volume)) == sorted(r["output"].removeprefix("outputs/") for r in body["results"])
    assert sidecars[0]["owner"] == sidecars[1]["owner"]
    assert sidecars[0]["inputs"]["person"] == sidecars[1]["inputs"]["person"]
    assert sidecars[0]["inputs"]["garment"] != sidecars[1]["inputs"]["garment"]
    first, second = (volume / r["output"] for r in body["results"])
    assert mean_difference(first, second) > 1.0  # a different garment, a different picture


def test_rest_seeds_make_variations_and_replay_as_single_runs(client, volume):
    request = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png",
               "keep_photo": False, **FAST}
    response = client.post("/v1/tryon", json={**request, "seeds": [3, 11]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["seed"] for r in results] == [3, 11]
    for result, seed in zip(results, (3, 11), strict=True):
        sidecar = json.loads((volume / result["output"]).with_suffix(".json").read_text())
        assert sidecar["settings"]["seed"] == seed and sidecar["batch"]["size"] == 2
    assert mean_difference(volume / results[0]["output"], volume / results[1]["output"]) > 1.0

    single = client.post("/v1/tryon", json={**request, "seed": 3})  # the single form keeps its answer
    assert single.status_code == 200 and "batch" not in single.json() and single.json()["seed"] == 3
    sidecar = json.loads((volume / single.json()["output"]).with_suffix(".json").read_text())
    assert "batch" not in sidecar
    assert mean_difference(volume / single.json()["output"], volume / results[0]["output"]) == 0.0


def test_rest_persons_with_one_mask_each_and_return_image(client, volume, images):
    response = client.post("/v1/tryon", json={
        "person": ["inputs/person.png", "inputs/person-small.png"], "garment": "inputs/garment.png",
        "mask": ["inputs/mask.png", "auto"], "garment_type": "overall", "return_image": True, **FAST})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["width"], r["height"]) for r in results] == [(384, 512), (192, 256)]  # pasted back into each photo
    assert all(r["image_base64"] for r in results)
    assert len(saved_pngs(volume)) == 2


def test_rest_batch_over_the_limit_is_refused_before_reading_any_image(client, volume):
    response = client.post("/v1/tryon", json={
        "person": ["inputs/nobody-1.png", "inputs/nobody-2.png"], "garment": "inputs/nothing.png",
        "mask": "inputs/mask.png", "seeds": [1, 2, 3], **FAST})
    assert_error(response, 400, "invalid_input", "6 try-ons", "2 person(s) x 1 garment(s) x 3 seed(s)",
                 "TRYON_BATCH_MAX")  # not a 404: no path was even looked up
    assert outputs(volume) == []


@pytest.mark.parametrize(("changes", "fragments"), [
    ({"person": ["inputs/person.png", "inputs/person-small.png"]}, ("item 2 of 2: mask size 384x512",)),
    ({"person": ["inputs/person.png", "inputs/person-small.png"], "mask": ["inputs/mask.png"]},
     ("mask has 1 entries for 2 person(s)",)),
    ({"garment": []}, ("garment is an empty list",)),
    ({"seeds": [1, -5]}, ("item 2 of 2: seed=-5",)),
    ({"seeds": [1, 2], "seed": 3}, ("either seed or seeds",)),
    ({"seeds": [1, 2], "garment_type": "hat"}, ("item 1 of 2: garment_type='hat'",)),
    ({"seeds": [1, 2], "steps": 0}, ("steps=0",)),
    ({"person": ["inputs/person.png", {"base64": "aGVsbG8="}]}, ("person 2 is not an image",)),
])
def test_rest_bad_batches_name_the_item_and_save_nothing(client, volume, changes, fragments):
    body = {"person": "inputs/person.png", "garment": ["inputs/garment.png"], "mask": "inputs/mask.png", **FAST,
            **changes}
    assert_error(client.post("/v1/tryon", json=body), 400, "invalid_input", *fragments)
    assert outputs(volume) == []
    assert client.get("/v1/status").json()["engine"]["state"] == "unloaded"  # refused before any model work


# -- the service ----------------------------------------------------------------------------------------

def test_batch_progress_counts_every_step_of_the_batch_once(make_service, images, second_garment):
    service = make_service()
    calls = []
    items = [BatchItem(images["person"], garment, images["mask"]) for garment in (images["garment"], second_garment)]
    saved = service.run_batch(items, fast_options(steps=3), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 6) for done in range(1, 7)]
    assert [s.metadata["batch"]["index"] for s in saved] == [0, 1]
    assert all(s.sidecar_path.is_file() and s.image_path.is_file() for s in saved)


def test_items_choose_their_garment_type_and_seed(make_service, images):
    service = make_service()
    items = [BatchItem(images["person"], images["garment"], images["mask"]),
             BatchItem(images["person"], images["garment"], images["mask"], garment_type="overall", seed=99),
             BatchItem(images["person"], images["garment"], images["mask"], seed=-1)]
    saved = service.run_batch(items, fast_options(seed=5))
    settings = [s.metadata["settings"] for s in saved]
    assert [(s["garment_type"], s["seed"]) for s in settings[:2]] == [("upper", 5), ("overall", 99)]
    assert settings[2]["seed"] not in (-1, 5) and 0 <= settings[2]["seed"] < 2**53
    assert len({s.metadata["batch"]["id"] for s in saved}) == 1


def test_auto_masks_run_the_parser_once_per_person(make_service, images, second_garment):
    service = make_service()
    real_auto_mask, calls = service.auto_mask, []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real_auto_mask(*args, **kwargs)

    service.auto_mask = counted
    items = [BatchItem(images["person"], garment, "auto") for garment in (images["garment"], second_garment)]
    saved = service.run_batch(items, fast_options(garment_type="overall"))
    assert calls == ["overall"] and len(saved) == 2


def test_cancel_after_the_first_item_keeps_it_and_frees_the_gpu(make_service, volume_copy, images, second_garment):
    service = make_service()

    def cancel_in_second_item(done: int, total: int) -> None:
        if done > 2:
            raise GenerationCancelled("stopped by the user")

    items = [BatchItem(images["person"], garment, images["mask"]) for garment in (images["garment"], second_garment)]
    with pytest.raises(GenerationCancelled) as stopped:
        service.run_batch(items, fast_options(), progress=cancel_in_second_item)
    kept = saved_pngs(volume_copy)
    assert len(kept) == 1
    [finished] = stopped.value.finished  # what the studio shows of a stopped batch: the saved item itself
    assert finished.image_path.read_bytes() == (volume_copy / "outputs" / kept[0]).read_bytes()
    sidecar = json.loads((volume_copy / "outputs" / kept[0]).with_suffix(".json").read_text())
    assert sidecar["batch"]["index"] == 0 and sidecar["batch"]["size"] == 2
    assert service.queue_state() == {"waiting": 0, "running": False, "max": service.settings.queue_max,
                                     "rest_in_progress": 0, "owners_waiting": 0, "owners_active": 0,
                                     "per_owner_max": service.settings.max_waiting_per_owner}
    service.run(images["person"], images["garment"], images["mask"], fast_options())  # the GPU is free again
    assert len(saved_pngs(volume_copy)) == 2


def test_a_batch_takes_one_queue_slot(make_service, volume_copy, images, second_garment):
    service = make_service(queue_max=1)
    items = [BatchItem(images["person"], garment, images["mask"]) for garment in (images["garment"], second_garment)]
    finished = []
    service._gpu.acquire()  # another try-on is running
    try:
        worker = threading.Thread(target=lambda: finished.append(service.run_batch(items, fast_options())))
        worker.start()
        deadline = time.monotonic() + 10
        while service.queue_state()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.queue_state() == {"waiting": 1, "running": True, "max": 1, "rest_in_progress": 0,
                                         "owners_waiting": 1, "owners_active": 1, "per_owner_max": 12}
        with pytest.raises(BusyError):
            service.run(images["person"], images["garment"], images["mask"], fast_options())
    finally:
        service._gpu.release()
    worker.join(timeout=120)
    assert len(finished[0]) == 2 and len(saved_pngs(volume_copy)) == 2
    assert service.queue_state()["waiting"] == 0


@pytest.mark.parametrize(("index", "field", "value", "message"), [
    (1, "garment_type", "hat", "item 2 of 3: garment_type='hat' is not known"),
    (2, "mask", Image.new("L", (10, 10), 255), "item 3 of 3: mask size 10x10 differs"),
    (1, "mask", None, "item 2 of 3: no mask"),
    (2, "mask", Image.new("L", (384, 512), 0), "item 3 of 3: the mask is empty"),
    (0, "seed", 2**63, "item 1 of 3: seed="),
])
def test_a_bad_item_fails_the_batch_before_any_model_work(make_service, volume_copy, images, index, field, value,
                                                          message):
    service = make_service()
    items = [BatchItem(images["person"], images["garment"], images["mask"]) for _ in range(3)]
    setattr(items[index], field, value)
    with pytest.raises(TryOnInputError, match=message):
        service.run_batch(items, fast_options())
    assert outputs(volume_copy) == []
    assert service.engine.status().state == "unloaded"


def test_empty_and_oversized_batches_are_refused(make_service, images):
    service = make_service(batch_max=2)
    with pytest.raises(TryOnInputError, match="the batch is empty"):
        service.run_batch([], fast_options())
    items = [BatchItem(images["person"], images["garment"], images["mask"]) for _ in range(3)]
    with pytest.raises(TryOnInputError, match="3 try-ons, over the limit of 2 \\(TRYON_BATCH_MAX\\)"):
        service.run_batch(items, fast_options())
    assert service.engine.status().state == "unloaded"
