"""The HTTP surface in process: /ping, REST /v1/tryon with the one error shape, results on the volume."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.model.engine import Engine
from app.web.server import create_app

FAST = {"steps": 2, "width": 64, "height": 96}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def volume(volume_copy, images):
    inputs = volume_copy / "inputs"
    inputs.mkdir()
    for role, image in images.items():
        image.save(inputs / f"{role}.png")
    return volume_copy


@pytest.fixture
def client(volume, make_settings):
    app = create_app(make_settings(volume), ui=False)
    with TestClient(app) as client:
        yield client


def outputs(volume) -> list[str]:
    folder = volume / "outputs"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_error(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for fragment in fragments:
        assert fragment in body["error"]["message"]


def test_tryon_with_volume_paths_writes_png_and_sidecar(client, volume):
    response = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                              "mask": "inputs/mask.png", "seed": 5, **FAST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 5 and body["output"].startswith("outputs/") and body["output"].endswith(".png")
    timings = body["timings"]
    phases = ("read", "prepare", "queue_wait", "generate", "paste_back", "save")
    assert {"preprocess", "denoise", "total", *phases} <= set(timings)
    assert timings["total"] >= sum(timings[p] for p in phases) * 0.99  # wall clock: every phase waited for
    assert timings["generate"] >= timings["denoise"] > 0
    assert (body["generated_width"], body["generated_height"]) == (64, 96)
    image_path = volume / body["output"]
    with Image.open(image_path) as image:
        assert image.size == (384, 512)  # "keep my photo": the result is pasted back into the original
    assert (body["width"], body["height"]) == (384, 512)
    sidecar = json.loads(image_path.with_suffix(".json").read_text())
    assert sidecar["seed"] == 5 and sidecar["settings"]["steps"] == 2
    assert sidecar["models"]["adapter_version"] == "mix" and sidecar["device"] == "cpu"
    assert set(sidecar["inputs"]) == {"person", "garment", "mask"}
    assert not any(name.startswith(".") or "/." in name for name in outputs(volume))
    assert not (image_path.parent / f"{image_path.stem}.person.png").exists()  # inputs kept only if asked


def test_tryon_with_base64_and_random_seed_returns_the_image(client, images):
    response = client.post("/v1/tryon", json={"person": {"base64": b64(images["person"])},
                                              "garment": {"base64": "data:image/png;base64," + b64(images["garment"])},
                                              "mask": {"base64": b64(images["mask"])}, "seed": -1,
                                              "return_image": True, "keep_photo": False, **FAST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 <= body["seed"] < 2**63
    with Image.open(io.BytesIO(base64.b64decode(body["image_base64"]))) as image:
        assert image.size == (64, 96)


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "inputs/../../outside.png", "inputs\\..\\x.png",
                                  "", "link/outside.png"])
def test_path_escapes_are_rejected_and_nothing_is_written(client, volume, path):
    outside = volume.parent / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    (volume / "link").symlink_to(volume.parent, target_is_directory=True)
    response = client.post("/v1/tryon", json={"person": path, "garment": "inputs/garment.png",
                                              "mask": "inputs/mask.png", **FAST})
    assert_error(response, 400, "bad_path", "person path")
    assert outputs(volume) == []


def test_missing_file_is_a_404(client, volume):
    response = client.post("/v1/tryon", json={"person": "inputs/nobody.png", "garment": "inputs/garment.png",
                                              "mask": "inputs/mask.png"})
    assert_error(response, 404, "not_found", "inputs/nobody.png")


@pytest.mark.parametrize(("body", "status", "code", "fragment"), [
    ({"person": {"base64": "%%%not base64%%%"}, "garment": "inputs/garment.png", "mask": "inputs/mask.png"},
     400, "bad_base64", "person"),
    ({"person": {"base64": base64.b64encode(b"plain text, not a picture").decode()}, "garment": "inputs/garment.png",
      "mask": "inputs/mask.png"}, 400, "invalid_input", "person is not an image"),
    ({"person": {"base64": "data:image/png;base64"}, "garment": "inputs/garment.png", "mask": "inputs/mask.png"},
     400, "invalid_input", "person image is empty"),
    ({"person": 12, "garment": "inputs/garment.png"}, 400, "invalid_request", "person"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "steps": "many"},
     400, "invalid_request", "steps"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "colour": "red"},
     400, "invalid_request", "colour"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "steps": 0},
     400, "invalid_input", "steps=0"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "width": 100},
     400, "invalid_input", "width=100"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png",
      "garment_type": "hat"}, 400, "invalid_input", "garment_type='hat'"),
    ({"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "auto", "mask_grow": 500},
     400, "invalid_input", "mask_grow=500"),
    ({"person": {"path": "inputs/person.png", "base64": "AAAA"}, "garment": "inputs/garment.png"},
     400, "invalid_request", "exactly one"),
])
def test_bad_requests_get_the_error_shape(client, volume, body, status, code, fragment):
    assert_error(client.post("/v1/tryon", json=body), status, code, fragment)
    assert outputs(volume) == []


def test_non_json_and_unknown_routes_get_the_error_shape(client):
    assert_error(client.post("/v1/tryon", content=b"person=me", headers={"content-type": "text/plain"}),
                 400, "invalid_request")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found", "/v1/nothing-here")
    wrong = client.get("/v1/tryon")
    assert_error(wrong, 405, "method_not_allowed", "use POST")
    assert wrong.headers["allow"] == "POST"


def test_an_omitted_mask_is_the_automatic_one(client, volume):
    left_out = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                              "seed": 3, "keep_photo": False, **FAST})
    auto = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                          "mask": "auto", "seed": 3, "keep_photo": False, **FAST})
    assert left_out.status_code == 200 and auto.status_code == 200, (left_out.text, auto.text)
    sidecars = [json.loads((volume / r.json()["output"]).with_suffix(".json").read_text()) for r in (left_out, auto)]
    assert sidecars[0]["inputs"]["mask"] == sidecars[1]["inputs"]["mask"]
    assert (volume / left_out.json()["output"]).read_bytes() == (volume / auto.json()["output"]).read_bytes()


def test_empty_mask_is_refused(client, volume):
    Image.new("L", (384, 512), 0).save(volume / "inputs" / "blank.png")
    response = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                              "mask": "inputs/blank.png", **FAST})
    assert_error(response, 400, "invalid_input", "mask is empty")


def test_missing_weights_answer_503_and_the_server_keeps_serving(tmp_path, make_settings, images):
    app = create_app(make_settings(tmp_path / "empty-volume"), ui=False)
    with TestClient(app) as client:
        body = {"person": {"base64": b64(images["person"])}, "garment": {"base64": b64(images["garment"])},
                "mask": {"base64": b64(images["mask"])}, **FAST}
        assert_error(client.post("/v1/tryon", json=body), 503, "model_unavailable", "model file(s) missing")
        assert client.get("/v1/status").json()["engine"]["state"] == "failed"
        assert_error(client.get("/ping"), 503, "model_unavailable")


def test_full_queue_answers_429(volume, make_settings, images):
    settings = make_settings(volume, queue_max=1)
    app = create_app(settings, ui=False)
    service = app.state.service
    with TestClient(app, client=("203.0.113.5", 50000)) as client:  # one caller: anonymous calls count by address
        service._gpu.acquire()  # a try-on is running
        try:
            waiting = threading.Thread(target=lambda: client.post("/v1/tryon", json={
                "person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", **FAST}))
            waiting.start()
            deadline = time.monotonic() + 10
            while service.queue_state()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            response = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                                      "mask": "inputs/mask.png", **FAST})
            # Nothing measured yet: 30 s a try-on, for the one waiting and this one.
            assert_error(response, 429, "busy", "try again in about 60 s")
            assert response.headers["retry-after"] == "60"
        finally:
            service._gpu.release()
        waiting.join(timeout=60)
        measured = service._seconds_per_tryon
        assert measured is not None and measured < 30  # the tiny run was timed: later estimates use it
        assert service.retry_after() == max(1, int(measured + 0.999))
    assert len([p for p in outputs(volume) if p.endswith(".png")]) == 1


def test_ping_is_204_while_a_preload_is_pending_then_200(volume, make_settings):
    settings = make_settings(volume, preload=True)
    engine = Engine(settings)
    app = create_app(settings, engine, ui=False)
    with TestClient(app) as client:
        assert client.get("/ping").status_code == 204  # not loaded yet, and a preload is due
        engine.start()
        deadline = time.monotonic() + 60
        while engine.status().state != "ready" and time.monotonic() < deadline:
            assert client.get("/ping").status_code in (200, 204)
            time.sleep(0.02)
        response = client.get("/ping")
        assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_ping_is_200_without_preload_before_any_load(volume, make_settings):
    with TestClient(create_app(make_settings(volume), ui=False)) as client:
        assert client.get("/ping").status_code == 200
        assert client.get("/v1/status").json()["engine"]["state"] == "unloaded"


def test_inputs_are_kept_only_when_asked(volume, make_settings):
    with TestClient(create_app(make_settings(volume, save_inputs=True), ui=False)) as client:
        body = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                              "mask": "inputs/mask.png", **FAST}).json()
    image_path = volume / body["output"]
    for role in ("person", "garment", "mask"):
        assert image_path.with_name(f"{image_path.stem}.{role}.png").is_file()


def cut_out(size=(64, 96)) -> Image.Image:
    """A garment on a transparent background whose hidden colour is black, as editors save cut-outs."""
    garment = Image.new("RGBA", size, (0, 0, 0, 0))
    garment.paste((200, 30, 30, 255), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    return garment


def test_a_cut_out_garment_reaches_the_model_on_white(volume, make_settings):
    with TestClient(create_app(make_settings(volume, save_inputs=True), ui=False)) as client:
        body = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": {"base64": b64(cut_out())},
                                              "mask": "inputs/mask.png", **FAST}).json()
    image_path = volume / body["output"]
    with Image.open(image_path.with_name(f"{image_path.stem}.garment.png")) as sent:
        assert sent.mode == "RGB"
        assert sent.getpixel((0, 0)) == (255, 255, 255) and sent.getpixel((32, 48)) == (200, 30, 30)
    from app.tryons.outputs import image_digest

    recorded = json.loads(image_path.with_suffix(".json").read_text())["inputs"]["garment"]
    with Image.open(image_path.with_name(f"{image_path.stem}.garment.png")) as sent:
        assert recorded == image_digest(sent.convert("RGB"))  # the record names the pixels that ran


@pytest.mark.slow
def test_serving_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from app.config import Settings; from app.web.server import create_app; "
            "from fastapi.testclient import TestClient; "
            "c = TestClient(create_app(Settings.from_env({}, volume=sys.argv[1]))); "
            "print(c.get('/ping').status_code, c.get('/').status_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["200", "200", "False"]


def test_oversized_upload_is_413(volume, make_settings):
    big = base64.b64encode(os.urandom(1_600_000)).decode()
    with TestClient(create_app(make_settings(volume, max_upload_mb=1), ui=False)) as client:
        response = client.post("/v1/tryon", json={"person": {"base64": big}, "garment": "inputs/garment.png",
                                                  "mask": "inputs/mask.png"})
    assert_error(response, 413, "too_large", "over 1 MB")


def test_auto_mask_through_rest(client, volume):
    response = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                              "mask": "auto", "garment_type": "overall", "mask_grow": 2, **FAST})
    assert response.status_code == 200, response.text
    sidecar = json.loads((volume / response.json()["output"]).with_suffix(".json").read_text())
    assert sidecar["settings"]["garment_type"] == "overall" and sidecar["settings"]["mask_grow"] == 2


def test_auto_mask_without_the_parser_is_a_400_that_says_what_to_do(client, volume):
    import shutil

    shutil.rmtree(volume / "models" / "mattmdjaga")
    for mask in ({"mask": "auto"}, {}):
        response = client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                                  **mask, **FAST})
        assert_error(response, 400, "invalid_input", '"mask": "auto"', "--with-parser", "send a mask image")


def test_ping_stays_ready_after_an_idle_release(volume, make_settings):
    settings = make_settings(volume, preload=True, idle_release_s=0.2)
    engine = Engine(settings)
    with TestClient(create_app(settings, engine, ui=False)) as client:
        engine.start()
        deadline = time.monotonic() + 60
        while engine.status().releases == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.status().state == "unloaded" and engine.status().releases == 1
        assert client.get("/ping").status_code == 200  # released, not initialising: the next request reloads
    engine.close()


@pytest.mark.parametrize("size, strip", [((900, 600), (0, 100, 90, 500)),  # landscape: the left edge
                                         ((600, 900), (100, 0, 500, 40)),  # portrait: the top rows
                                         ((1200, 600), (40, 60, 1160, 560))])  # wider than any 3:4 crop
def test_every_masked_pixel_reaches_the_model(volume, make_settings, size, strip):
    """The model's region follows the mask: no masked pixel comes back untouched (the centre crop left a
    landscape photo's edges and a portrait's top and bottom rows out)."""
    rng = np.random.default_rng(1)
    person = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = Image.new("L", size, 0)
    mask.paste(255, strip)
    with TestClient(create_app(make_settings(volume), ui=False)) as client:
        body = client.post("/v1/tryon", json={"person": {"base64": b64(person)}, "garment": "inputs/garment.png",
                                              "mask": {"base64": b64(mask)}, "mask_blur": 0, **FAST}).json()
    image_path = volume / body["output"]
    with Image.open(image_path) as saved:
        after = np.asarray(saved.convert("RGB")).astype(int)
    before = np.asarray(person).astype(int)
    changed = np.abs(after - before).sum(axis=2) > 0
    masked = np.asarray(mask) > 0
    assert changed[masked].mean() > 0.97, f"{changed[masked].mean():.1%} of the masked pixels changed"
    far = np.ones_like(masked)
    far[max(0, strip[1] - 40):strip[3] + 40, max(0, strip[0] - 40):strip[2] + 40] = False
    assert not changed[far].any()  # and nothing beyond the mask's feather
    region = json.loads(image_path.with_suffix(".json").read_text())["region"]
    left, top, right, bottom = region
    assert left <= strip[0] and top <= strip[1] and right >= strip[2] and bottom >= strip[3]
    assert (right - left) * 96 == (bottom - top) * 64  # the model's aspect
