"""Against a launched server (python -m app serve, tiny models): REST, gradio_client, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launch_server(volume: Path, **env_overrides: str):
    """``python -m app serve --tiny`` on free loopback ports; yields its URLs once /ping answers 200."""
    with launch_servers(volume, 1, **env_overrides) as servers:
        yield servers[0]


@contextmanager
def launch_servers(volume: Path, count: int, **env_overrides: str):
    """``count`` servers on one volume (as GPU workers behind a load balancer), started together."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), TRYON_DEVICE="cpu", TRYON_STEPS="10", TRYON_WIDTH="384", TRYON_HEIGHT="512",
               TRYON_LOG_LEVEL="warning")
    env.update(env_overrides)
    started = time.monotonic()
    launched, logs = [], []
    try:
        for index in range(count):
            port, health_port = free_port(), free_port()
            # The server's output goes to a file: a pipe nobody reads fills up and blocks the server mid-test.
            log_path = volume.parent / f"{volume.name}-server{'' if count == 1 else f'-{index}'}.log"
            logs.append(open(log_path, "w"))  # noqa: SIM115 - closed in finally
            proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--tiny", "--volume", str(volume),
                                     "--host", "127.0.0.1", "--port", str(port)],
                                    env={**env, "PORT_HEALTH": str(health_port)}, stdout=logs[-1],
                                    stderr=subprocess.STDOUT, text=True)
            launched.append((proc, {"url": f"http://127.0.0.1:{port}", "volume": volume, "log": log_path,
                                    "health_url": f"http://127.0.0.1:{health_port}"}))
        deadline = time.monotonic() + 120 + 30 * (count - 1)
        for proc, server in launched:
            while True:
                assert proc.poll() is None, server["log"].read_text()
                assert time.monotonic() < deadline, "the server did not answer /ping in time"
                try:
                    if httpx.get(f"{server['url']}/ping", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        print(f"\nserve x{count} -> first 200 from /ping: {time.monotonic() - started:.2f} s")
        yield [server for _proc, server in launched]
    finally:
        for proc, _server in launched:
            proc.terminate()
        for proc, _server in launched:
            try:  # the tests are over: no need to wait out uvicorn's graceful shutdown of idle streams (5 s)
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch_server(tmp_path_factory.mktemp("served-volume")) as launched:
        yield launched


def test_ping_also_answers_on_port_health(server):
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(f"{server['health_url']}/ping", timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "nothing listens on PORT_HEALTH"
            time.sleep(0.1)
    assert response.status_code == 200
    assert httpx.get(f"{server['health_url']}/v1/status", timeout=2).status_code == 404  # /ping only


def results(volume: Path) -> list[Path]:
    return sorted((volume / "outputs").rglob("*.png")) if (volume / "outputs").exists() else []


def test_rest_against_the_launched_server(server, images):
    inputs = server["volume"] / "inputs"
    inputs.mkdir(exist_ok=True)
    for role, image in images.items():
        image.save(inputs / f"{role}.png")
    before = len(results(server["volume"]))
    response = httpx.post(f"{server['url']}/v1/tryon", timeout=120, json={
        "person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "steps": 2,
        "width": 64, "height": 96})
    assert response.status_code == 200, response.text
    assert (server["volume"] / response.json()["output"]).with_suffix(".json").is_file()
    assert len(results(server["volume"])) == before + 1
    bad = httpx.post(f"{server['url']}/v1/tryon", json={"person": "../../etc/passwd", "garment": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_path"


def test_gradio_client_readme_script_runs_verbatim(server):
    readme = (ROOT / "README.md").read_text()
    script = next(block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                  if "gradio_client" in block)
    script = script.replace("http://localhost:7860/", server["url"] + "/")
    before = {p.name for p in results(server["volume"])}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    image_path, seed, saved = done.stdout.strip().splitlines()[-1].split()  # after the client's own banner
    assert Path(image_path).is_file() and int(seed) >= 0
    assert (server["volume"] / saved).is_file() and Path(saved).name not in before


def test_api_is_self_describing(server):
    from gradio_client import Client

    api = Client(server["url"] + "/", verbose=False).view_api(return_format="dict", print_info=False)
    tryon = {p["parameter_name"]: p for p in api["named_endpoints"]["/tryon"]["parameters"]}
    assert list(tryon)[:3] == ["person", "garment", "mask"]
    assert tryon["mask"]["parameter_has_default"] and not tryon["person"]["parameter_has_default"]
    for name in ("steps", "seed", "width", "height", "mask_grow"):
        assert tryon[name]["python_type"]["type"] == "int", (name, tryon[name]["python_type"])
    assert "Literal['upper', 'lower', 'overall']" in tryon["garment_type"]["python_type"]["type"]
    assert {"mask_grow", "longer", "keep_photo"} <= set(tryon)
    returns = [r["label"] for r in api["named_endpoints"]["/tryon"]["returns"]]
    assert returns == ["result", "metadata"]
    assert "/tryon_batch" in api["named_endpoints"] and "/auto_mask" in api["named_endpoints"]


def test_api_errors_reach_the_client_and_result_files_are_not_served(server):
    from gradio_client import Client, handle_file

    client = Client(server["url"] + "/", verbose=False)
    examples = ROOT / "assets" / "examples"
    with pytest.raises(Exception, match="steps=0 is not usable"):
        client.predict(handle_file(str(examples / "person-1.png")), handle_file(str(examples / "garment-1.png")),
                       handle_file(str(examples / "mask-1.png")), "upper", 0, 2.5, 1, 64, 96, 9, 0, 0.0, True,
                       api_name="/tryon")
    # No mask: the parser's automatic one (the tiny set includes a tiny parser).
    made = client.predict(person=handle_file(str(examples / "person-1.png")),
                          garment=handle_file(str(examples / "garment-1.png")), garment_type="overall", steps=1,
                          guidance=1.0, seed=1, width=64, height=96, mask_blur=0, mask_grow=4, api_name="/tryon")
    assert made[1]["size"] == [384, 512]  # pasted back into the photo
    assert made[1]["settings"]["mask_grow"] == 4 and made[1]["seed"] == 1
    auto = client.predict(handle_file(str(examples / "person-1.png")), "upper", 0, 0.0, api_name="/auto_mask")
    grown = client.predict(handle_file(str(examples / "person-1.png")), "upper", 6, 0.0, api_name="/auto_mask")
    with Image.open(auto) as plain, Image.open(grown) as bigger:
        assert plain.size == (384, 512)
        assert (np.asarray(bigger) > 127).sum() > (np.asarray(plain) > 127).sum()  # mask_grow reached the parser mask
    batch = client.predict([handle_file(str(examples / "person-1.png"))],
                           [handle_file(str(examples / "garment-1.png")), handle_file(str(examples / "garment-3.png"))],
                           None, "upper", 1, 1.0, 5, 2, 64, 96, 0, 0, 0.0, False, api_name="/tryon_batch")
    gallery, metadata = batch
    assert [m["seed"] for m in metadata] == [5, 6, 5, 6] and len(gallery) == 4
    assert all(m["size"] == [64, 96] for m in metadata)
    saved = server["volume"] / made[1]["image"]
    assert saved.is_file()
    # Gradio's file routes serve its own cache only: nothing from the volume, the code or the system.
    (server["volume"] / "inputs").mkdir(exist_ok=True)
    shutil.copyfile(examples / "person-1.png", server["volume"] / "inputs" / "person.png")
    volume_files = [saved, server["volume"] / ".secrets" / "session.key", server["volume"] / "inputs" / "person.png",
                    next((server["volume"] / "tiny-models").rglob("*.safetensors")), ROOT / "app" / "config.py",
                    Path("/etc/passwd")]
    for path in volume_files:
        assert path.is_file(), path
        for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
            response = httpx.get(f"{server['url']}{route}{path}", timeout=10)
            assert response.status_code in (403, 404), (route, path, response.status_code)


def test_gradio_api_takes_a_draft_last_and_marks_its_results(server):
    from gradio_client import Client, handle_file

    client = Client(server["url"] + "/", verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    for endpoint in ("/tryon", "/tryon_batch"):  # appended with a default: older positional calls still work
        last = api["named_endpoints"][endpoint]["parameters"][-1]
        assert (last["parameter_name"], last["parameter_default"]) == ("draft", False), endpoint
    examples = ROOT / "assets" / "examples"
    person, garment = handle_file(str(examples / "person-1.png")), handle_file(str(examples / "garment-1.png"))
    mask = handle_file(str(examples / "mask-1.png"))
    _image, full = client.predict(person, garment, mask, "upper", 30, 2.5, 4, 64, 96, 9, 0, 0.0, False,
                                  api_name="/tryon")
    _image, draft = client.predict(person, garment, mask, "upper", 30, 2.5, 4, 64, 96, 9, 0, 0.0, False, True,
                                   api_name="/tryon")
    assert full["draft"] is False and full["settings"]["steps_run"] == 30
    assert draft["draft"] is True and (draft["settings"]["steps_run"], draft["settings"]["guidance_steps"]) == (20, 10)
    gallery, metadata = client.predict([person], [garment], None, "upper", 30, 2.5, 5, 2, 64, 96, 0, 0, 0.0, False,
                                       True, api_name="/tryon_batch")
    assert [m["draft"] for m in metadata] == [True, True]
    assert [item["caption"] for item in gallery] == ["Draft · seed 5", "Draft · seed 6"]
    shown, _page = client.predict(1, 4, api_name="/gallery")
    assert [item["caption"].startswith("Draft · ") for item in shown] == [True, True, True, False]
    with pytest.raises(Exception, match=r'draft: give true or false \(got "yes"\)'):
        client.predict(person, garment, mask, "upper", 2, 2.5, 4, 64, 96, 9, 0, 0.0, False, "yes", api_name="/tryon")


def gallery_as(client: httpx.Client, session_hash: str) -> dict:
    """The /gallery endpoint called raw (queue/join + the event stream) under a chosen session hash."""
    config = client.get("/config").json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "gallery")
    joined = client.post("/gradio_api/queue/join", json={"data": [1, 100], "fn_index": fn_index,
                                                         "session_hash": session_hash, "event_data": None,
                                                         "trigger_id": None})
    assert joined.status_code == 200, joined.text
    with client.stream("GET", f"/gradio_api/queue/data?session_hash={session_hash}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message["success"], message
                    return message["output"]["data"][1]
    raise AssertionError("the gallery call never completed")


def test_a_forged_session_hash_reveals_nothing(server):
    from gradio_client import Client, handle_file

    examples = ROOT / "assets" / "examples"
    owner = Client(server["url"] + "/", verbose=False)
    _image, made = owner.predict(person=handle_file(str(examples / "person-1.png")),
                                 garment=handle_file(str(examples / "garment-1.png")), steps=1, seed=3, width=64,
                                 height=96, api_name="/tryon")
    _items, mine = owner.predict(1, 100, api_name="/gallery")
    assert made["id"] in [r["id"] for r in mine["results"]] and "owner" not in made
    with httpx.Client(base_url=server["url"], timeout=30) as other:
        assert "tryon_session" in other.get("/", headers={"accept": "text/html"}).cookies  # a visitor of its own
        for session_hash in (owner.session_hash, "api"):
            page = gallery_as(other, session_hash)
            assert page["total"] == 0 and page["results"] == [], session_hash
    with httpx.Client(base_url=server["url"], timeout=30) as rest:
        assert rest.get("/v1/results").json()["total"] == 0
        assert rest.get(f"/v1/results/{made['id']}").status_code == 404


def test_three_workers_on_one_volume_keep_every_owners_results_apart(tmp_path_factory, images):
    from concurrent.futures import ThreadPoolExecutor

    volume = tmp_path_factory.mktemp("shared-volume")
    (volume / "inputs").mkdir()
    for role, image in images.items():
        image.save(volume / "inputs" / f"{role}.png")
    keys = {"ann": "key-ann-1", "ben": "key-ben-2"}
    with launch_servers(volume, 3, TRYON_API_KEYS=",".join(f"{n}:{k}" for n, k in keys.items()), TRYON_STEPS="1",
                        TRYON_WIDTH="64", TRYON_HEIGHT="96") as servers:
        def one(number: int) -> tuple[str, str]:
            owner = "ann" if number % 2 else "ben"
            response = httpx.post(f"{servers[number % 3]['url']}/v1/tryon", headers={"X-API-Key": keys[owner]},
                                  timeout=300, json={"person": "inputs/person.png", "garment": "inputs/garment.png",
                                                     "mask": "inputs/mask.png", "seed": number})
            assert response.status_code == 200, response.text
            return owner, response.json()["id"]

        with ThreadPoolExecutor(6) as pool:
            made = list(pool.map(one, range(60)))
        ids = [result_id for _owner, result_id in made]
        assert len(set(ids)) == 60
        assert len({result_id.split("-")[2] for result_id in ids}) == 3  # each worker named in its ids
        assert len(list((volume / "outputs").rglob("*.png"))) == 60
        assert not [p for p in (volume / "outputs").rglob(".*") if p.is_file()]  # no temporary file left
        for server in servers:
            for owner, key in keys.items():
                listed = httpx.get(f"{server['url']}/v1/results?per_page=100", headers={"X-API-Key": key},
                                   timeout=30).json()
                expected = {result_id for who, result_id in made if who == owner}
                assert listed["total"] == 30 and {r["id"] for r in listed["results"]} == expected
                assert [r["id"] for r in listed["results"]] == sorted(expected, reverse=True)  # newest first
