"""The REST contract under bad input, against a launched server: every bad request gets the right status and
code, a short message naming what is wrong, /ping keeps answering, and nothing lands on the volume."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import pytest
from PIL import Image

from tests.test_e2e import launch_server

GOOD = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "steps": 1,
        "width": 64, "height": 96}


def png(size=(64, 96), color="white", mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def body(**changes) -> dict:
    request = {**GOOD, **changes}
    return {k: v for k, v in request.items() if v is not DROP}


DROP = object()

# (name, method, path, json body or raw bytes, content type, status, code, fragment the message names)
CASES = [
    # paths
    ("parent path", "POST", "/v1/tryon", body(person="../x.png"), None, 400, "bad_path", "person"),
    ("absolute path", "POST", "/v1/tryon", body(person="/etc/passwd"), None, 400, "bad_path", "person"),
    ("dot-dot inside", "POST", "/v1/tryon", body(garment="inputs/../../x.png"), None, 400, "bad_path", "garment"),
    ("backslash", "POST", "/v1/tryon", body(person="inputs\\x.png"), None, 400, "bad_path", "person"),
    ("empty path", "POST", "/v1/tryon", body(person=""), None, 400, "bad_path", "person"),
    ("NUL in path", "POST", "/v1/tryon", body(person="inputs/a\x00b.png"), None, 400, "bad_path", "person"),
    ("name too long", "POST", "/v1/tryon", body(person="inputs/" + "a" * 300 + ".png"), None, 400, "bad_path",
     "person"),
    ("symlink loop", "POST", "/v1/tryon", body(person="inputs/loop.png"), None, 400, "bad_path", "person"),
    ("results folder", "POST", "/v1/tryon", body(person="outputs/x.png"), None, 400, "bad_path", "inputs/"),
    ("models folder", "POST", "/v1/tryon", body(garment="models/x.png"), None, 400, "bad_path", "garment"),
    ("envs folder", "POST", "/v1/tryon", body(mask="envs/x.png"), None, 400, "bad_path", "mask"),
    ("missing file", "POST", "/v1/tryon", body(person="inputs/nobody.png"), None, 404, "not_found", "person"),
    ("a folder", "POST", "/v1/tryon", body(person="inputs"), None, 404, "not_found", "person"),
    ("unknown result", "POST", "/v1/tryon", body(person={"result": "nope"}), None, 404, "not_found", "person"),
    # images
    ("bad base64", "POST", "/v1/tryon", body(person={"base64": "!!!"}), None, 400, "bad_base64", "person"),
    ("text as image", "POST", "/v1/tryon", body(garment={"base64": base64.b64encode(b"hello").decode()}), None, 400,
     "invalid_input", "garment"),
    ("data URL without comma", "POST", "/v1/tryon", body(person={"base64": "data:image/png;base64"}), None, 400,
     "invalid_input", "person"),
    ("truncated PNG", "POST", "/v1/tryon", body(person={"base64": png()[:60]}), None, 400, None, "person"),
    ("text file", "POST", "/v1/tryon", body(person="inputs/notes.png"), None, 400, "invalid_input", "person"),
    ("1x1 photo", "POST", "/v1/tryon", body(person={"base64": png((1, 1))}, mask=DROP, keep_photo=True), None, 400,
     "invalid_input", "32 pixels"),
    ("both path and base64", "POST", "/v1/tryon", body(person={"path": "inputs/person.png", "base64": png()}), None,
     400, "invalid_request", "person"),
    ("empty image object", "POST", "/v1/tryon", body(person={}), None, 400, "invalid_request", "person"),
    ("unknown image key", "POST", "/v1/tryon", body(person={"url": "http://x"}), None, 400, "invalid_request",
     "person"),
    ("mask of another size", "POST", "/v1/tryon", body(mask={"base64": png((10, 10), mode="L")}), None, 400,
     "invalid_input", "mask size"),
    ("empty mask", "POST", "/v1/tryon", body(mask={"base64": png((384, 512), "black", "L")}), None, 400,
     "invalid_input", "mask is empty"),
    ("mask word", "POST", "/v1/tryon", body(mask="bogus"), None, 400, "bad_path", "mask"),
    ("image over the limit", "POST", "/v1/tryon", body(person={"base64": "A" * 1_500_000}), None, 413, "too_large",
     "person"),
    # numbers and types
    ("zero steps", "POST", "/v1/tryon", body(steps=0), None, 400, "invalid_input", "steps"),
    ("too many steps", "POST", "/v1/tryon", body(steps=101), None, 400, "invalid_input", "steps"),
    ("huge steps", "POST", "/v1/tryon", body(steps=10**400), None, 400, "invalid_input", "steps"),
    ("steps as text", "POST", "/v1/tryon", body(steps="4"), None, 400, "invalid_request", "steps"),
    ("steps as bool", "POST", "/v1/tryon", body(steps=True), None, 400, "invalid_request", "steps"),
    ("steps fractional", "POST", "/v1/tryon", body(steps=2.5), None, 400, "invalid_request", "steps"),
    ("negative guidance", "POST", "/v1/tryon", body(guidance=-1), None, 400, "invalid_input", "guidance"),
    ("huge guidance", "POST", "/v1/tryon", body(guidance=1e6), None, 400, "invalid_input", "guidance"),
    ("guidance as text", "POST", "/v1/tryon", body(guidance="x"), None, 400, "invalid_request", "guidance"),
    ("odd width", "POST", "/v1/tryon", body(width=100), None, 400, "invalid_input", "width"),
    ("wide", "POST", "/v1/tryon", body(width=4096), None, 400, "invalid_input", "width"),
    ("zero height", "POST", "/v1/tryon", body(height=0), None, 400, "invalid_input", "height"),
    ("seed below -1", "POST", "/v1/tryon", body(seed=-2), None, 400, "invalid_input", "-1 for a random"),
    ("seed too big", "POST", "/v1/tryon", body(seed=2**63), None, 400, "invalid_input", "seed"),
    ("seed as text", "POST", "/v1/tryon", body(seed="1"), None, 400, "invalid_request", "seed"),
    ("blur too big", "POST", "/v1/tryon", body(mask_blur=51), None, 400, "invalid_input", "mask_blur"),
    ("grow too big", "POST", "/v1/tryon", body(mask_grow=101), None, 400, "invalid_input", "mask_grow"),
    ("longer too long", "POST", "/v1/tryon", body(longer=2), None, 400, "invalid_input", "longer"),
    ("keep_photo as text", "POST", "/v1/tryon", body(keep_photo="yes"), None, 400, "invalid_request", "keep_photo"),
    ("return_image as 1", "POST", "/v1/tryon", body(return_image=1), None, 400, "invalid_request", "return_image"),
    ("draft as text", "POST", "/v1/tryon", body(draft="yes"), None, 400, "invalid_request", "draft"),
    ("draft as 1", "POST", "/v1/tryon", body(draft=1), None, 400, "invalid_request", "draft"),
    ("unknown garment type", "POST", "/v1/tryon", body(garment_type="hat"), None, 400, "invalid_input",
     "garment_type"),
    ("garment type of 1 MB", "POST", "/v1/tryon", body(garment_type="x" * 1_000_000), None, 400, "invalid_input",
     "garment_type"),
    ("garment type of 100 kB", "POST", "/v1/tryon", body(garment_type="x" * 100_000), None, 400, "invalid_input",
     "garment_type"),
    ("garment type as number", "POST", "/v1/tryon", body(garment_type=5), None, 400, "invalid_request",
     "garment_type"),
    # structure
    ("no person", "POST", "/v1/tryon", body(person=DROP), None, 400, "invalid_request", "person"),
    ("no garment", "POST", "/v1/tryon", body(garment=DROP), None, 400, "invalid_request", "garment"),
    ("unknown field", "POST", "/v1/tryon", body(colour="red"), None, 400, "invalid_request", "colour"),
    ("a list body", "POST", "/v1/tryon", [GOOD], None, 400, "invalid_request", "body"),
    ("a string body", "POST", "/v1/tryon", "hello", None, 400, "invalid_request", "body"),
    ("broken JSON", "POST", "/v1/tryon", b'{"person": ', "application/json", 400, "invalid_request", "not valid JSON"),
    ("empty body", "POST", "/v1/tryon", b"", "application/json", 400, "invalid_request", "body"),
    ("text/plain", "POST", "/v1/tryon", json.dumps(GOOD).encode(), "text/plain", 400, "invalid_request",
     "application/json"),
    ("no content type", "POST", "/v1/tryon", json.dumps(GOOD).encode(), "", 400, "invalid_request",
     "application/json"),
    ("form encoded", "POST", "/v1/tryon", b"person=inputs/person.png", "application/x-www-form-urlencoded", 400,
     "invalid_request", "application/json"),
    # batches
    ("empty seeds", "POST", "/v1/tryon", body(seeds=[]), None, 400, "invalid_input", "seeds"),
    ("seed and seeds", "POST", "/v1/tryon", body(seed=1, seeds=[1, 2]), None, 400, "invalid_input", "seeds"),
    ("batch too big", "POST", "/v1/tryon", body(person=["inputs/person.png"] * 13), None, 400, "invalid_input",
     "TRYON_BATCH_MAX"),
    ("masks for persons", "POST", "/v1/tryon", body(person=["inputs/person.png"] * 2, mask=["inputs/mask.png"]),
     None, 400, "invalid_input", "mask"),
    ("no persons", "POST", "/v1/tryon", body(person=[]), None, 400, "invalid_input", "person"),
    ("bad item", "POST", "/v1/tryon", body(garment=["inputs/garment.png", "inputs/nobody.png"]), None, 404,
     "not_found", "garment 2"),
    # routes and methods
    ("GET the try-on", "GET", "/v1/tryon", None, None, 405, "method_not_allowed", "/v1/tryon"),
    ("POST the status", "POST", "/v1/status", None, None, 405, "method_not_allowed", "/v1/status"),
    ("DELETE results", "DELETE", "/v1/results", None, None, 405, "method_not_allowed", "/v1/results"),
    ("unknown route", "GET", "/v1/nothing", None, None, 404, "not_found", "/v1/nothing"),
    ("unknown result id", "GET", "/v1/results/zzz", None, None, 404, "not_found", "zzz"),
    ("page size zero", "GET", "/v1/results?per_page=0", None, None, 400, "invalid_request", "per_page"),
    ("garment a line across", "POST", "/v1/tryon", body(garment={"base64": png((10000, 10))}), None, 400,
     "invalid_input", "garment image is 10000x10"),
    ("garment a line down", "POST", "/v1/tryon", body(garment={"base64": png((10, 10000))}), None, 400,
     "invalid_input", "garment image is 10x10000"),
    ("deep nesting", "POST", "/v1/tryon", b'{"person": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json",
     400, "invalid_request", "nested too deeply"),
    ("5000-digit number", "POST", "/v1/tryon", b'{"person": "inputs/person.png", "garment": "inputs/garment.png", '
     b'"seed": ' + b"9" * 5000 + b"}", "application/json", 400, "invalid_request", "cannot be read"),
    ("invalid UTF-8", "POST", "/v1/tryon", b'{"person": "inputs/\xff.png"}', "application/json", 400,
     "invalid_request", "not UTF-8"),
    ("byte-order mark", "POST", "/v1/tryon", b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "application/json", 400,
     "invalid_request", "byte-order mark"),
    ("UTF-16", "POST", "/v1/tryon", json.dumps(GOOD).encode("utf-16"), "application/json", 400, "invalid_request",
     "not UTF-8"),
    ("JSON:API type", "POST", "/v1/tryon", json.dumps(GOOD).encode(), "application/vnd.api+json", 400,
     "invalid_request", "application/json"),
    ("latin-1 charset", "POST", "/v1/tryon", json.dumps(GOOD).encode(), "application/json; charset=latin-1", 400,
     "invalid_request", "UTF-8"),
    # limits before work
    ("body over the limit", "POST", "/v1/tryon", b"{" + b" " * 2_500_000 + b"}", "application/json", 413,
     "too_large", "MB"),
]


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory, images):
    volume = tmp_path_factory.mktemp("contract-volume")
    inputs = volume / "inputs"
    inputs.mkdir()
    for role, image in images.items():
        image.save(inputs / f"{role}.png")
    (inputs / "notes.png").write_text("not a picture")
    (inputs / "loop.png").symlink_to(inputs / "loop2.png")
    (inputs / "loop2.png").symlink_to(inputs / "loop.png")
    with launch_server(volume, TRYON_MAX_BODY_MB="2", TRYON_MAX_UPLOAD_MB="1") as server:
        yield server


def volume_files(volume) -> set[str]:
    """Everything on the volume but results and the tiny models made on first use."""
    return {p.relative_to(volume).as_posix() for p in volume.rglob("*")
            if not p.relative_to(volume).as_posix().startswith(("outputs", "tiny-models"))}


def test_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_request(contract_server, case):
    name, method, path, payload, content_type, status, code, fragment = case
    before = volume_files(contract_server["volume"])
    kwargs: dict = {}
    if isinstance(payload, bytes):
        kwargs["content"] = payload
        kwargs["headers"] = {"content-type": content_type} if content_type else {}
    elif payload is not None:
        kwargs["json"] = payload
    if isinstance(payload, bytes) and content_type == "":
        # httpx adds no content type for raw bytes: the request really has none
        kwargs["headers"] = {}
    response = httpx.request(method, contract_server["url"] + path, timeout=120, **kwargs)
    assert response.status_code == status, (name, response.status_code, response.text[:300])
    answer = response.json()
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}, answer
    if code:
        assert answer["error"]["code"] == code, (name, answer)
    message = answer["error"]["message"]
    assert len(response.content) < 500, (name, len(response.content), message[:200])
    assert fragment in message, (name, message)
    assert "object at 0x" not in message and "Traceback" not in message
    if status == 405:
        assert "Allow" in response.headers and response.headers["Allow"]
    # The server keeps serving (a generous bound: a liveness check, not a speed target).
    started = time.monotonic()
    assert httpx.get(contract_server["url"] + "/ping", timeout=5).status_code == 200
    assert time.monotonic() - started < 5.0
    assert volume_files(contract_server["volume"]) == before, name


@pytest.mark.slow
def test_null_takes_the_default_for_every_field(contract_server):
    response = httpx.post(contract_server["url"] + "/v1/tryon", timeout=120,
                          json={**GOOD, "garment_type": None, "return_image": None, "seed": None, "keep_photo": None})
    assert response.status_code == 200, response.text
    assert "image_base64" not in response.json()
    saved = json.loads((contract_server["volume"] / response.json()["output"]).with_suffix(".json").read_text())
    assert saved["settings"]["garment_type"] == "upper"
    charset = httpx.post(contract_server["url"] + "/v1/tryon", timeout=120, content=json.dumps(GOOD).encode(),
                         headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text


def test_retry_after_follows_the_generation_not_the_first_load(tmp_path, make_settings, tiny_volume, images):
    import shutil

    from fastapi.testclient import TestClient

    from app.web.server import create_app

    volume = tmp_path / "volume"
    shutil.copytree(tiny_volume, volume)
    app = create_app(make_settings(volume), ui=False)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post("/v1/tryon", json={"person": {"base64": png((384, 512))},
                                                  "garment": {"base64": png((384, 512))},
                                                  "mask": {"base64": png((384, 512), mode="L", color="white")},
                                                  "steps": 1, "width": 64, "height": 96})
        assert response.status_code == 200, response.text
        took = time.monotonic() - started
        generate = response.json()["timings"]["generate"]
        assert generate < took  # the first request also loaded the model
        # The pace Retry-After is estimated from: the generation alone, not the load before it.
        assert abs(app.state.service._seconds_per_tryon - generate) < 1e-3


def test_chunked_body_over_the_limit_is_refused_while_streaming(contract_server):
    def chunks():
        yield b'{"person": "'
        for _ in range(40):
            yield b"A" * 100_000

    response = httpx.post(contract_server["url"] + "/v1/tryon", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def test_an_unexpected_error_is_one_500_in_the_error_shape_logged_once(tmp_path, make_settings, caplog):
    from fastapi.testclient import TestClient

    from app.web.server import create_app

    app = create_app(make_settings(tmp_path), ui=False)

    @app.get("/v1/broken")  # a fault on purpose: what any bug in a route looks like to a caller
    def broken():
        raise RuntimeError("a bug")

    app.router.routes.insert(0, app.router.routes.pop())  # ahead of the /v1 fallback
    with TestClient(app, raise_server_exceptions=True) as client:
        response = client.get("/v1/broken")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal",
                                         "message": "unexpected server error (RuntimeError); see the server log"}}
    assert [r.message for r in caplog.records if "unexpected error" in r.message] == [
        "unexpected error on GET /v1/broken"]


def test_a_run_past_the_time_limit_is_stopped_and_answered_504(tmp_path, make_settings, tiny_volume, images):
    import shutil

    from fastapi.testclient import TestClient

    from app.web.server import create_app

    volume = tmp_path / "volume"
    shutil.copytree(tiny_volume, volume)
    app = create_app(make_settings(volume, max_run_s=0.001), ui=False)
    with TestClient(app) as client:
        response = client.post("/v1/tryon", json={"person": {"base64": png((384, 512))},
                                                  "garment": {"base64": png((384, 512))},
                                                  "mask": {"base64": png((384, 512), mode="L")}, "steps": 20,
                                                  "width": 64, "height": 96})
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert "TRYON_MAX_RUN_S" in response.json()["error"]["message"]
        state = app.state.service.queue_state()  # nothing left waiting, running or held
        assert (state["waiting"], state["running"], state["rest_in_progress"], state["owners_active"]) == \
            (0, False, 0, 0)
    assert not list((volume / "outputs").rglob("*.png")) if (volume / "outputs").exists() else True


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_run(contract_server):
    results = lambda: len(list((contract_server["volume"] / "outputs").rglob("*.png")))  # noqa: E731
    warm = httpx.post(contract_server["url"] + "/v1/tryon", json=GOOD, timeout=120)  # the model loaded
    assert warm.status_code == 200, warm.text
    before = results()
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(contract_server["url"] + "/v1/tryon", timeout=httpx.Timeout(30, read=2.0),
                   json={**GOOD, "steps": 100, "width": 384, "height": 512})
    gone = time.monotonic()
    while httpx.get(contract_server["url"] + "/v1/status", timeout=5).json()["queue"]["running"]:
        # Generous for a loaded machine: that the run stopped rather than finished is the check below.
        assert time.monotonic() - gone < 15, "the run went on after its client left"
        time.sleep(0.1)
    print(f"\nstopped {time.monotonic() - gone:.2f} s after the client left ({gone - started:.1f} s in)")
    assert results() == before  # stopped, not finished and saved
