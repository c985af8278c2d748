"""The Gradio door as an attacker tries it: raw queue calls and gradio_client against a launched server with two
logins and an API key. Every event with a file input is found in the app's own config, so one added later is
covered without editing this file."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_e2e import ROOT, launch_server

ALICE, BOB, ROBOT = ("alice", "pw-a"), ("bob", "pw-b"), {"X-API-Key": "key-r"}
FILE_TYPES = {"image", "imageeditor", "file", "gallery"}
EXAMPLES = ROOT / "assets" / "examples"


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    volume = tmp_path_factory.mktemp("door-volume")
    cache = tmp_path_factory.mktemp("gradio-cache")
    (volume / "inputs").mkdir()
    os.mkfifo(volume / "inputs" / "pipe.png")
    with launch_server(volume, TRYON_AUTH="alice:pw-a,bob:pw-b", TRYON_API_KEYS="robot:key-r",
                       GRADIO_TEMP_DIR=str(cache), TRYON_STEPS="2", TRYON_WIDTH="64", TRYON_HEIGHT="96") as server:
        server["cache"] = cache
        yield server


def cached_files(cache: Path) -> set[Path]:
    return {p for p in cache.rglob("*") if p.is_file()}


def upload(server, who, path: Path) -> str:
    """Gradio's upload route, as a login (user, password) or an API key's headers."""
    credentials = {"headers": who} if isinstance(who, dict) else {"auth": who}
    with open(path, "rb") as handle:
        answer = httpx.post(f"{server['url']}/gradio_api/upload", files={"files": (path.name, handle)},
                            timeout=30, **credentials)
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def shaped(component: dict, file: dict):
    """``file`` in the shape the component takes."""
    kind, props = component["type"], component.get("props", {})
    if kind == "imageeditor":
        return {"background": file, "layers": [], "composite": None}
    if kind == "gallery":
        return [{"image": file, "caption": None}]
    if kind == "file" and props.get("file_count") != "single":
        return [file]
    return file


def file_events(config: dict) -> list[tuple[dict, int, dict]]:
    """(dependency, input position, component) for every file-typed input of every event."""
    components = {c["id"]: c for c in config["components"]}
    found = []
    for dependency in config["dependencies"]:
        for position, component_id in enumerate(dependency["inputs"]):
            if components[component_id]["type"] in FILE_TYPES:
                found.append((dependency, position, components[component_id]))
    return found


def join(client: httpx.Client, fn_index: int, data: list, session_hash: str, event_data=None) -> httpx.Response:
    return client.post("/gradio_api/queue/join", json={"fn_index": fn_index, "data": data,
                                                       "session_hash": session_hash, "event_data": event_data,
                                                       "trigger_id": None})


def defaults_for(config: dict, dependency: dict) -> list:
    components = {c["id"]: c for c in config["components"]}
    return [components[i].get("props", {}).get("value") for i in dependency["inputs"]]


def messages(client: httpx.Client, session_hash: str, until: set[str], timeout: float = 60) -> list[dict]:
    """The event stream of ``session_hash`` until every event id in ``until`` completed (or the stream ends)."""
    seen = []
    with client.stream("GET", f"/gradio_api/queue/data?session_hash={session_hash}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                seen.append(message)
                if message.get("msg") == "process_completed":
                    until.discard(message.get("event_id"))
                if not until or message.get("msg") == "close_stream":
                    break
    return seen


class PingWatch:
    """/ping polled throughout a block: answers that never came (5 s each) and the slowest one."""

    def __init__(self, url: str):
        self.url, self.slowest, self.failures = url, 0.0, 0
        self._stop = threading.Event()

    def __enter__(self):
        def poll():
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    httpx.get(f"{self.url}/ping", timeout=5)
                except httpx.TransportError:
                    self.failures += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                time.sleep(0.05)
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_the_checks_alone_refuse_what_no_event_may_take(tmp_path):
    import gradio as gr

    from app.web.gradio_checks import FileLedger, Limits, Refused, check_file, check_value

    ledger, limits = FileLedger(), Limits(max_upload_bytes=1000, max_pixels=100)
    small, big, text = tmp_path / "small.png", tmp_path / "big.png", tmp_path / "text.png"
    Image.new("RGB", (8, 8)).save(small)
    Image.new("L", (20, 20)).save(big)
    text.write_text("hello")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "link.png").symlink_to(small)
    for path in (small, big, text, tmp_path / "fifo.png", tmp_path / "link.png", tmp_path):
        ledger.add("user:a", str(path))
    check_file({"path": str(small)}, "person", "user:a", ledger, limits, image=True)
    refusals = {
        "not yours": ({"path": str(small)}, "user:b"), "no path": ({"url": "http://x/y.png"}, "user:a"),
        "a FIFO": ({"path": str(tmp_path / "fifo.png")}, "user:a"), "a folder": ({"path": str(tmp_path)}, "user:a"),
        "a link": ({"path": str(tmp_path / "link.png")}, "user:a"), "too many pixels": ({"path": str(big)}, "user:a"),
        "not an image": ({"path": str(text)}, "user:a")}
    for what, (file, owner) in refusals.items():
        with pytest.raises(Refused) as refused:
            check_file(file, "person", owner, ledger, limits, image=True)
        assert refused.value.field == "person" and str(tmp_path) not in refused.value.message, what
    whole, number = gr.Number(precision=0, label="steps"), gr.Number(label="guidance", minimum=0, maximum=20)
    for component, value in ((whole, 2.5), (whole, True), (whole, "4"), (whole, None), (number, float("nan")),
                             (number, 21), (gr.Checkbox(), "yes"), (gr.Checkbox(), 1),
                             (gr.Radio(["upper", "lower"]), "hat"), (gr.Textbox(), 5)):
        with pytest.raises(Refused):
            check_value(type(component).__name__, component, value, "field")
    for component, value in ((whole, 4), (number, 2.5), (gr.Checkbox(), False), (gr.Radio(["upper"]), "upper")):
        check_value(type(component).__name__, component, value, "field")


@pytest.mark.slow
def test_every_file_input_of_every_event_takes_only_the_callers_own_files(door, tmp_path):
    config = httpx.get(f"{door['url']}/config", auth=BOB, timeout=30).json()
    events = file_events(config)
    assert {d.get("api_name") for d, _, _ in events} >= {"tryon", "tryon_batch", "auto_mask"}
    assert any(d.get("api_name") in (None, "") or str(d.get("api_name")).startswith("on_") or d.get("api_visibility")
               == "private" for d, _, _ in events)  # the studio's own events are among them
    # Something of Alice's: an upload (not one of the page's examples, which are everyone's), and a result.
    private = tmp_path / "alice.png"
    Image.new("RGB", (48, 64), (12, 34, 56)).save(private)
    alice_upload = upload(door, ALICE, private)
    made = httpx.post(f"{door['url']}/v1/tryon", auth=ALICE, timeout=120, json={
        "person": {"base64": _b64(EXAMPLES / "person-1.png")}, "garment": {"base64": _b64(EXAMPLES / "garment-1.png")},
        "mask": {"base64": _b64(EXAMPLES / "mask-1.png")}})
    assert made.status_code == 200, made.text
    secret = door["volume"] / ".secrets" / "session.key"
    attacks = {"a file outside the uploads": str(secret), "the process environment": "/proc/self/environ",
               "another owner's upload": alice_upload,
               "another owner's result": str(door["volume"] / made.json()["output"]),
               "a device": "/dev/zero", "a FIFO": str(door["volume"] / "inputs" / "pipe.png"),
               "a directory": str(door["cache"])}
    before = cached_files(door["cache"])
    refused = []
    with httpx.Client(base_url=door["url"], auth=BOB, timeout=30) as bob, PingWatch(door["url"]) as ping:
        for dependency, position, component in events:
            for what, path in attacks.items():
                data = defaults_for(config, dependency)
                data[position] = shaped(component, file_data(path))
                answer = join(bob, dependency["id"], data, "bob-session")
                refused.append((dependency["id"], what, answer.status_code))
                assert answer.status_code == 422, (dependency.get("api_name"), what, answer.text)
                body = answer.json()
                assert "not uploaded to this server by you" in body["error"]["message"], body
                assert path not in answer.text and str(door["cache"]) not in answer.text
    # A read of /dev/zero or a FIFO blocks for ever: every /ping would time out. The bound is liveness only.
    assert ping.failures == 0 and ping.slowest < 5.0, ping.slowest
    assert cached_files(door["cache"]) == before  # nothing was copied
    assert len(refused) == len(events) * len(attacks)
    print(f"\n{len(events)} file inputs x {len(attacks)} attacks refused; slowest /ping {ping.slowest * 1000:.0f} ms")


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_cached_files_are_served_only_to_their_owner(door, tmp_path):
    private = tmp_path / "alice-garment.png"
    Image.new("RGB", (48, 64), (200, 10, 10)).save(private)
    mine = upload(door, ALICE, private)
    assert httpx.get(f"{door['url']}/gradio_api/file={mine}", auth=ALICE, timeout=10).status_code == 200
    for auth in (BOB,):
        answer = httpx.get(f"{door['url']}/gradio_api/file={mine}", auth=auth, timeout=10)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{door['url']}/gradio_api/file={mine}", headers=ROBOT, timeout=10).status_code == 404
    # The page's own files (example thumbnails) are everyone's.
    config = httpx.get(f"{door['url']}/config", auth=BOB, timeout=30).json()
    public = next(v for c in config["components"] if c["type"] == "gallery"
                  for v in (c.get("props", {}).get("value") or []) if isinstance(v, dict) and v.get("image"))
    assert httpx.get(f"{door['url']}/gradio_api/file={public['image']['path']}", auth=BOB,
                     timeout=10).status_code == 200


@pytest.mark.slow
def test_a_borrowed_session_hash_reaches_nothing_of_the_owners(door):
    config = httpx.get(f"{door['url']}/config", auth=ALICE, timeout=30).json()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    select = next(d for d in config["dependencies"] if [ids["examples-person"], "select"] in d["targets"])
    # Auto mask: the first step after the button's own that takes inputs (the one that reads the editor and
    # the held photo; between them the page waits for a camera photo's original).
    auto = next(d for d in config["dependencies"] if [ids["auto-mask"], "click"] in d["targets"])
    while not auto["inputs"]:
        auto = next(d for d in config["dependencies"] if d.get("trigger_after") == auto["id"])
    shared_hash = "alice-session-0001"
    with httpx.Client(base_url=door["url"], auth=ALICE, timeout=60) as alice, \
            httpx.Client(base_url=door["url"], auth=BOB, timeout=60) as bob:
        picked = join(alice, select["id"], [None], shared_hash, {"index": 0, "value": None})
        assert picked.status_code == 200, picked.text
        seen = messages(alice, shared_hash, {picked.json()["event_id"]})
        photo = next(m for m in seen if m.get("msg") == "process_completed")["output"]["data"][0]
        assert photo and photo["path"]
        # Bob sends Alice's hash: his own (empty) studio session, his own stream.
        data = defaults_for(config, auto)
        data[1] = None  # the editor: nothing painted, so the held photo is what Auto mask uses
        his = join(bob, auto["id"], data, shared_hash)
        assert his.status_code == 200, his.text
        his_messages = messages(bob, shared_hash, {his.json()["event_id"]})
        done = next(m for m in his_messages if m.get("msg") == "process_completed")
        assert done["output"]["data"][:2] == [None, None]  # no photo in his session: nothing to mask
        assert all(m.get("event_id") in (None, his.json()["event_id"]) for m in his_messages)
        # Alice's held photo is still hers, and so is her answer.
        hers = join(alice, auto["id"], data, shared_hash)
        her_messages = messages(alice, shared_hash, {hers.json()["event_id"]})
        mask = next(m for m in her_messages if m.get("msg") == "process_completed")["output"]["data"]
        assert mask[0] is None and mask[1] is not None  # her mask layer (the editor keeps its photo)
        # Her files and her events are not Bob's, even with the ids in hand.
        assert bob.get(f"/gradio_api/file={photo['path']}").status_code == 404
        assert alice.get(f"/gradio_api/file={photo['path']}").status_code == 200
        started = alice.post("/gradio_api/call/gallery", json={"data": [1, 4]})
        assert started.status_code == 200, started.text
        event_id = started.json()["event_id"]
        assert bob.get(f"/gradio_api/call/gallery/{event_id}").status_code == 404
        assert bob.post("/gradio_api/cancel", json={"session_hash": shared_hash, "event_id": event_id,
                                                    "fn_index": 0}).status_code == 404
        streamed = alice.get(f"/gradio_api/call/gallery/{event_id}")
        assert streamed.status_code == 200 and "event: complete" in streamed.text


def test_values_are_checked_as_strictly_as_rest_with_the_apps_sentences(door, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    client = Client(door["url"] + "/", headers=ROBOT, verbose=False)
    person, garment = handle_file(str(EXAMPLES / "person-1.png")), handle_file(str(EXAMPLES / "garment-1.png"))
    cases = [({"steps": 2.5}, "steps: give a whole number (got 2.5)"),
             ({"seed": 1.5}, "seed: give a whole number (got 1.5)"),
             ({"keep_photo": "yes"}, "keep_photo: give true or false (got \"yes\")"),
             ({"keep_photo": 5}, "keep_photo: give true or false (got 5)"),
             ({"garment_type": "hat"}, "garment_type: give one of")]
    for change, expected in cases:
        with pytest.raises(ValidationError) as raised:
            client.predict(person=person, garment=garment, api_name="/tryon", **change)
        assert expected in str(raised.value), (change, str(raised.value))
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 9000)).save(huge)
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    started = time.monotonic()
    with pytest.raises(ValidationError, match="person: the image is 9000x9000, over 50 megapixels"):
        client.predict(person=handle_file(str(huge)), garment=garment, api_name="/tryon")
    with pytest.raises(ValidationError, match="person: the image is 9000x9000"):
        client.predict(handle_file(str(huge)), "upper", 0, 0.0, api_name="/auto_mask")
    assert time.monotonic() - started < 30  # refused from the header: nothing decodes 81 megapixels
    with pytest.raises(ValidationError, match="garment: the file is not an image that can be read"):
        client.predict(person=person, garment=handle_file(str(text)), api_name="/tryon")
    # Raw calls: an unknown event, a body that is not JSON, one far over the body limit.
    with httpx.Client(base_url=door["url"], headers=ROBOT, timeout=60) as raw:
        unknown = join(raw, 9999, [], "s")
        assert unknown.status_code == 404 and "fn_index 9999" in unknown.json()["error"]["message"]
        bad = raw.post("/gradio_api/queue/join", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
        big = raw.post("/gradio_api/queue/join", content=b"[" + b"1," * 20_000_000 + b"1]",
                       headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
        tryon = next(d for d in raw.get("/config").json()["dependencies"] if d.get("api_name") == "tryon")
        shape = join(raw, tryon["id"], [{"path": 5}] + [None] * (len(tryon["inputs"]) - 1), "s")
        assert shape.status_code == 422 and "not the kind of value" in shape.json()["error"]["message"]
        assert raw.post("/gradio_api/run", json={"data": []}).status_code == 404
        for closed in ("/gradio_api/stream/x", "/gradio_api/proxy=http://127.0.0.1/", "/monitoring",
                       "/gradio_api/call/v2/tryon"):
            assert raw.get(closed).status_code == 404, closed


@pytest.mark.slow
def test_a_client_that_leaves_stops_its_run_and_nothing_is_saved(door):
    config = httpx.get(f"{door['url']}/config", headers=ROBOT, timeout=30).json()
    tryon = next(d for d in config["dependencies"] if d.get("api_name") == "tryon")
    with httpx.Client(base_url=door["url"], headers=ROBOT, timeout=60) as raw:
        paths = [upload(door, ROBOT, EXAMPLES / name) for name in ("person-1.png", "garment-1.png", "mask-1.png")]
        before = sorted((door["volume"] / "outputs").rglob("*.png"))
        data = [file_data(p) for p in paths] + ["upper", 100, 2.5, 7, 384, 512, 9.0, 0, 0.0, False, False]
        joined = join(raw, tryon["id"], data, "leaving-session")
        assert joined.status_code == 200, joined.text
        step = None
        with raw.stream("GET", "/gradio_api/queue/data?session_hash=leaving-session") as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                assert message.get("msg") != "process_completed", message  # it must still be running
                step = next((unit.get("index") for unit in message.get("progress_data") or []
                             if unit.get("index")), None)
                if step:
                    break  # the run is denoising: hang up
        left = time.monotonic()
        assert step and httpx.get(f"{door['url']}/v1/status", headers=ROBOT, timeout=10).json()["queue"]["running"]
        while httpx.get(f"{door['url']}/v1/status", headers=ROBOT, timeout=10).json()["queue"]["running"]:
            assert time.monotonic() - left < 60, "the run went on after its client left"
            time.sleep(0.2)
        print(f"\nthe run stopped {time.monotonic() - left:.2f} s after its client left (grace 2 s)")
    assert sorted((door["volume"] / "outputs").rglob("*.png")) == before


@pytest.mark.slow
def test_one_callers_flood_gets_429_and_a_full_queue_says_when_to_come_back(tmp_path_factory):
    """One try-on each may wait or run (TRYON_MAX_WAITING_PER_OWNER=1): the robot's second is refused with
    429 at the door while other callers still get in; the queue of one (TRYON_QUEUE_MAX=1) then fills."""
    volume = tmp_path_factory.mktemp("full-volume")
    keys = {name: {"X-API-Key": f"key-{name}"} for name in ("robot", "ana", "ben", "cleo")}
    with launch_server(volume, TRYON_QUEUE_MAX="1", TRYON_MAX_WAITING_PER_OWNER="1",
                       TRYON_API_KEYS=",".join(f"{name}:key-{name}" for name in keys)) as server, \
            httpx.Client(base_url=server["url"], timeout=60) as raw:
        config = raw.get("/config", headers=keys["robot"]).json()
        tryon = next(d for d in config["dependencies"] if d.get("api_name") == "tryon")
        joined = []

        def join_as(name: str, number: int) -> httpx.Response:
            paths = [upload(server, keys[name], EXAMPLES / file) for file in ("person-1.png", "garment-1.png",
                                                                             "mask-1.png")]
            data = [file_data(p) for p in paths] + ["upper", 100, 2.5, 7, 384, 512, 9.0, 0, 0.0, False, False]
            raw.headers.update(keys[name])
            answer = join(raw, tryon["id"], data, f"queue-{name}-{number}")
            if answer.status_code == 200:
                joined.append((name, number, answer.json()["event_id"]))
            return answer

        def queue() -> dict:
            return raw.get("/v1/status", headers=keys["robot"]).json()["queue"]

        assert join_as("robot", 1).status_code == 200
        deadline = time.monotonic() + 120
        while queue()["owners_active"] < 1 and time.monotonic() < deadline:  # the robot's try-on is in
            time.sleep(0.05)
        flood = join_as("robot", 2)
        assert flood.status_code == 429 and int(flood.headers["Retry-After"]) >= 1, flood.text
        assert flood.json()["error"]["code"] == "busy"
        assert "you already have 1 try-on waiting or running (at most 1 per caller)" in flood.json()["detail"]
        assert join_as("ana", 1).status_code == 200  # another caller is not affected
        assert join_as("ben", 1).status_code == 200  # in Gradio's queue of one
        full = join_as("cleo", 1)
        assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1, full.text
        assert full.json()["error"]["code"] == "busy" and "try again in about" in full.json()["detail"]
        from prometheus_client.parser import text_string_to_metric_families

        scraped = raw.get("/metrics", headers=keys["robot"]).text
        refusals = {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(scraped)
                    if family.name == "tryon_refusals" for sample in family.samples if sample.name.endswith("_total")}
        assert refusals["owner_limit"] == 1 and refusals["busy"] == 1, refusals
        for name, number, event_id in joined:
            raw.headers.update(keys[name])
            raw.post("/gradio_api/cancel", json={"session_hash": f"queue-{name}-{number}", "event_id": event_id,
                                                 "fn_index": tryon["id"]})


@pytest.mark.slow
def test_a_cut_out_garment_keeps_its_transparency_until_it_is_put_on_white(door, tmp_path):
    from gradio_client import Client, handle_file

    from app.images.imaging import flatten
    from app.tryons.outputs import image_digest
    from tests.test_server import cut_out

    garment = tmp_path / "cut-out.png"
    cut_out((96, 128)).save(garment)
    client = Client(door["url"] + "/", headers=ROBOT, verbose=False)
    _image, meta = client.predict(person=handle_file(str(EXAMPLES / "person-1.png")), garment=handle_file(str(garment)),
                                  mask=handle_file(str(EXAMPLES / "mask-1.png")), steps=1, api_name="/tryon")
    with Image.open(garment) as original:
        assert meta["inputs"]["garment"] == image_digest(flatten(original))  # white, not black, behind it
