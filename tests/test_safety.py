"""Stable Diffusion's safety checker (TRYON_SAFETY) on the tiny kit: a passing result is saved and says so;
a flagged one is recorded without an image at every door; off, the checker is neither loaded nor run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from local_hub import LocalHub
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.errors import ModelLoadError
from app.model.engine import Engine
from app.model.tiny_models import SAFETY_ALWAYS_FLAGS, set_safety_thresholds
from app.model.weights import SAFETY_FILES, required_files
from app.studio.runs import flagged_note
from app.tryons.outputs import ResultStore
from app.web.server import create_app
from tests.test_e2e import CHROMIUM, launch_server

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 2, "width": 64, "height": 96}
BASE = "stable-diffusion-v1-5/stable-diffusion-inpainting"


def make_flagging(models: Path) -> None:
    """The tiny checker in ``models`` (a copy) rewritten to flag every image, through the production loader's
    own file (model.safetensors)."""
    set_safety_thresholds(models / BASE / "safety_checker", SAFETY_ALWAYS_FLAGS)


def with_inputs(volume: Path, images: dict) -> Path:
    (volume / "inputs").mkdir(exist_ok=True)
    for role, image in images.items():
        image.save(volume / "inputs" / f"{role}.png")
    return volume


def files(volume: Path) -> list[str]:
    folder = volume / "outputs"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


REQUEST = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", "seed": 7,
           **FAST}


def test_a_result_that_passes_is_saved_and_says_so(volume_copy, images, make_settings):
    volume = with_inputs(volume_copy, images)
    with TestClient(create_app(make_settings(volume, safety=True), ui=False)) as client:
        answer = client.post("/v1/tryon", json=REQUEST)
        status = client.get("/v1/status").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["safety"] == "passed" and "flagged" not in body and body["output"].endswith(".png")
    assert body["timings"]["safety_check"] > 0
    sidecar = json.loads((volume / body["output"]).with_suffix(".json").read_text())
    assert sidecar["safety"] == "passed" and "flagged" not in sidecar
    assert sidecar["timings"]["safety_check"] > 0 and sidecar["load_timings"]["safety_checker"] > 0
    assert status["engine"]["load_timings"]["safety_checker"] > 0


def test_a_flagged_result_is_recorded_without_an_image(volume_copy, images, make_settings):
    volume = with_inputs(volume_copy, images)
    make_flagging(volume / "models")
    with TestClient(create_app(make_settings(volume, safety=True), ui=False)) as client:
        answer = client.post("/v1/tryon", json={**REQUEST, "return_image": True})
        listing = client.get("/v1/results").json()
        body = answer.json()
        alone = client.get(f"/v1/results/{body['id']}")
        batch = client.post("/v1/tryon", json={**REQUEST, "seed": None, "seeds": [1, 2]})
        scraped = client.get("/metrics").text
    assert answer.status_code == 200, answer.text
    outcomes = {sample.labels["outcome"]: sample.value for family in text_string_to_metric_families(scraped)
                if family.name == "tryons" for sample in family.samples if sample.name == "tryons_total"}
    assert outcomes["flagged"] == 3 and outcomes["done"] == 0, outcomes  # the operator sees them
    assert body["flagged"] is True and body["safety"] == "flagged" and body["seed"] == 7
    assert "Try another seed" in body["message"] and "seed 7" in body["message"]
    assert not {"output", "image_base64", "width", "height"} & set(body)
    assert body["timings"]["safety_check"] > 0
    # Nothing on the volume is an image; the record says what ran.
    saved = files(volume)
    assert saved and not [name for name in saved if name.endswith(".png")], saved
    assert all(name.endswith(".flagged.json") for name in saved) and len(saved) == 3, saved  # 1 + a batch of 2
    records = {r["id"]: r for r in (json.loads((volume / "outputs" / name).read_text()) for name in saved)}
    record = records[body["id"]]
    assert record["flagged"] is True and record["safety"] == "flagged" and record["image"] is None
    assert record["seed"] == 7 and record["settings"]["steps"] == 2 and record["timings"]["safety_check"] > 0
    assert record["size"] == [384, 512] and set(record["inputs"]) == {"person", "garment", "mask"}
    # Listings offer no flagged record, and its id reads as no result.
    assert listing["total"] == 0 and listing["results"] == []
    assert alone.status_code == 404
    # A batch answers each item flagged, with no image for any.
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["seed"] for r in results] == [1, 2] and all(r["flagged"] and "output" not in r for r in results)


def test_with_the_setting_off_the_checker_is_neither_loaded_nor_run(volume_copy, images, make_settings):
    volume = with_inputs(volume_copy, images)
    make_flagging(volume / "models")  # it would flag everything, were it run
    with TestClient(create_app(make_settings(volume), ui=False)) as client:
        answer = client.post("/v1/tryon", json=REQUEST)
        status = client.get("/v1/status").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "safety" not in body and "flagged" not in body and (volume / body["output"]).is_file()
    assert "safety_check" not in body["timings"]
    assert "safety_checker" not in status["engine"]["load_timings"]
    sidecar = json.loads((volume / body["output"]).with_suffix(".json").read_text())
    assert "safety" not in sidecar and "safety_checker" not in sidecar["load_timings"]


def test_on_without_its_files_the_load_says_what_to_run(volume_copy, make_settings):
    shutil.rmtree(volume_copy / "models" / BASE / "safety_checker")
    settings = make_settings(volume_copy, safety=True, auto_download="0")
    with pytest.raises(ModelLoadError, match="python -m app download --with-safety") as raised:
        Engine(settings).get()
    assert f"{BASE}/safety_checker/config.json" in str(raised.value)
    Engine(make_settings(volume_copy, auto_download="0")).get()  # off: not needed


def test_listings_skip_flagged_records(tmp_path):
    store = ResultStore(tmp_path / "outputs", tmp_path)
    kept = store.save(Image.new("RGB", (8, 8)), {"seed": 1}, owner="user:a")
    flagged = store.save_flagged({"seed": 2}, (8, 8), owner="user:a")
    assert flagged.flagged and flagged.sidecar_path.name.endswith(".flagged.json")
    assert flagged.sidecar_path.is_file() and not flagged.image_path.exists()
    page, total = store.list("user:a")
    assert [r.id for r in page] == [kept.id] and total == 1
    assert store.list(None)[1] == 1
    assert store.get(flagged.id, "user:a") is None and store.get(kept.id, "user:a") is not None


@pytest.mark.slow
def test_download_with_safety_fetches_the_checker(tiny_volume, tmp_path):
    target = tmp_path / "fresh"
    settings = Settings.from_env({}, volume=str(target))
    hub = LocalHub()
    for item in required_files(settings, with_safety=True):
        hub.add(item.repo, item.path, item.local(tiny_volume / "models").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    with hub:
        plain = subprocess.run([sys.executable, "-m", "app", "download", "--to", str(tmp_path / "plain")],
                               env={**env, "HF_ENDPOINT": hub.url}, capture_output=True, text=True, timeout=120)
        done = subprocess.run([sys.executable, "-m", "app", "download", "--with-safety", "--to", str(target)],
                              env={**env, "HF_ENDPOINT": hub.url}, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert not (tmp_path / "plain" / "models" / BASE / "safety_checker").exists()
    assert done.returncode == 0, done.stderr
    for path in SAFETY_FILES:
        fetched = target / "models" / BASE / path
        assert fetched.read_bytes() == (tiny_volume / "models" / BASE / path).read_bytes(), path
        assert f"{BASE}/{path}" in done.stdout
    manifest = json.loads((target / "models" / "manifest.json").read_text())
    assert {f"{BASE}/{path}" for path in SAFETY_FILES} <= {f"{e['repo']}/{e['path']}" for e in manifest["files"]}


def doctor(volume: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), PORT="0", **env_overrides)
    return subprocess.run([sys.executable, "-m", "app", "doctor", "--volume", str(volume)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_doctor_reports_the_checker_and_the_setting(volume_copy):
    on = doctor(volume_copy, TRYON_SAFETY="on")
    assert on.returncode == 0, on.stdout
    assert "ok    safety checker on (TRYON_SAFETY)" in on.stdout
    assert f"ok    {BASE}/safety_checker/model.safetensors" in on.stdout
    off = doctor(volume_copy)
    assert off.returncode == 0 and "safety checker off (TRYON_SAFETY); its files are on the volume" in off.stdout
    shutil.rmtree(volume_copy / "models" / BASE / "safety_checker")
    missing = doctor(volume_copy, TRYON_SAFETY="on")
    assert missing.returncode == 1
    assert (f"FAIL  missing {BASE}/safety_checker/model.safetensors -> run: python -m app download --with-safety"
            in missing.stdout)
    quiet = doctor(volume_copy)
    assert quiet.returncode == 0, quiet.stdout
    assert "safety checker off (TRYON_SAFETY) and not on the volume" in quiet.stdout
    assert "download --with-safety" in quiet.stdout


@pytest.mark.slow
def test_gradio_client_gets_no_image_and_the_flag(tiny_volume, tmp_path):
    from gradio_client import Client, handle_file

    volume = tmp_path / "served"
    shutil.copytree(tiny_volume / "models", volume / "tiny-models")  # what --tiny reads, made to flag
    make_flagging(volume / "tiny-models")
    examples = ROOT / "assets" / "examples"
    person, garment = handle_file(str(examples / "person-1.png")), handle_file(str(examples / "garment-1.png"))
    mask = handle_file(str(examples / "mask-1.png"))
    with launch_server(volume, TRYON_SAFETY="on", TRYON_STEPS="1", TRYON_WIDTH="64", TRYON_HEIGHT="96") as server:
        client = Client(server["url"] + "/", verbose=False)
        image, metadata = client.predict(person=person, garment=garment, mask=mask, seed=3, api_name="/tryon")
        gallery, items = client.predict([person], [garment], [mask], "upper", 1, 1.0, 5, 2, 64, 96, 0, 0, 0.0, False,
                                        api_name="/tryon_batch")
    assert image is None
    assert metadata["flagged"] is True and metadata["seed"] == 3 and metadata["image"] is None
    assert "Try another seed" in metadata["message"] and "owner" not in metadata
    assert gallery == [] and [m["seed"] for m in items] == [5, 6]
    assert all(m["flagged"] and "Try another seed" in m["message"] for m in items)
    assert not list((volume / "outputs").rglob("*.png"))


def test_the_studio_line_says_which_were_flagged_and_what_to_do(tmp_path):
    store = ResultStore(tmp_path / "outputs", tmp_path)
    passed = store.save(Image.new("RGB", (8, 8)), {"seed": 1})
    flagged = [store.save_flagged({"seed": seed}, (8, 8)) for seed in (2, 3)]
    single = flagged_note(flagged[:1], "Done: 1 try-on in 2.0 s.")
    assert "flagged this result (seed 2)" in single and "not saved or shown" in single and "another seed" in single
    every = flagged_note(flagged, "Done: 2 try-ons in 2.0 s.")
    assert "flagged all 2 results (seeds 2, 3)" in every and "none was saved" in every
    some = flagged_note([passed, flagged[0]], "Done: 2 try-ons in 2.0 s.")
    assert some.startswith("Done: 2 try-ons in 2.0 s.") and "flagged 1 of them (seed 2)" in some
    assert "try another seed for it" in some


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
@pytest.mark.slow
def test_the_studio_says_flagged_and_shows_no_result(tiny_volume, tmp_path, browser):
    from tests.studio_kit import GARMENT, PERSON, load_inputs, stroke

    volume = tmp_path / "studio"
    shutil.copytree(tiny_volume / "models", volume / "tiny-models")
    make_flagging(volume / "tiny-models")
    with launch_server(volume, TRYON_SAFETY="on", TRYON_STEPS="2") as server:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(server["url"] + "/")
        page.wait_for_selector("#run")
        load_inputs(page, PERSON, GARMENT)
        stroke(page)
        page.locator("#run").click()
        page.wait_for_function("() => /flagged|Not run|failed/.test(document.querySelector('#progress')?.innerText)",
                               timeout=240_000)
        line = page.locator("#progress").inner_text()
        shown = page.locator("#result img").count()
        flagged_line = page.locator("#progress .tryon-progress.flagged").count()
        context.close()
    assert "The safety checker flagged this result" in line and "Try another seed" in line, line
    assert flagged_line == 1 and shown == 0
    assert not list((volume / "outputs").rglob("*.png")) and list((volume / "outputs").rglob("*.flagged.json"))
