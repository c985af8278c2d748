"""Against a launched server (python -m app serve, tiny models): REST, gradio_client, and a real browser."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    volume = tmp_path_factory.mktemp("served-volume")
    port, health_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    env.update(PYTHONPATH=str(ROOT), PORT_HEALTH=str(health_port), TRYON_DEVICE="cpu", TRYON_STEPS="10",
               TRYON_WIDTH="384", TRYON_HEIGHT="512",
               TRYON_LOG_LEVEL="warning")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--tiny", "--volume", str(volume), "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the server did not answer /ping within 120 s"
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    print(f"\nserve -> first 200 from /ping: {time.monotonic() - started:.2f} s")
    yield {"url": url, "volume": volume, "health_url": f"http://127.0.0.1:{health_port}"}
    proc.terminate()
    proc.wait(timeout=20)


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


def test_api_errors_reach_the_client_and_result_files_are_not_served(server):
    from gradio_client import Client, handle_file

    client = Client(server["url"] + "/", verbose=False)
    examples = ROOT / "assets" / "examples"
    with pytest.raises(Exception, match="steps=0 is not usable"):
        client.predict(handle_file(str(examples / "person-1.png")), handle_file(str(examples / "garment-1.png")),
                       handle_file(str(examples / "mask-1.png")), "upper", 0, 2.5, 1, 64, 96, 9, True,
                       api_name="/tryon")
    # No mask: the parser's automatic one (the tiny set includes a tiny parser).
    made = client.predict(handle_file(str(examples / "person-1.png")), handle_file(str(examples / "garment-1.png")),
                          None, "overall", 1, 1.0, 1, 64, 96, 0, True, api_name="/tryon")
    assert made[1]["size"] == [384, 512]  # pasted back into the photo
    auto = client.predict(handle_file(str(examples / "person-1.png")), "upper", 0, 0.0, api_name="/auto_mask")
    assert Path(auto).is_file()
    saved = [server["volume"] / made[1]["image"]]
    assert saved[0].is_file()
    for route in ("/gradio_api/file=", "/file="):
        response = httpx.get(f"{server['url']}{route}{saved[0]}", timeout=10)
        assert response.status_code in (403, 404), (route, response.status_code)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_browser_upload_paint_run_and_see_the_gallery(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    person = ROOT / "assets" / "examples" / "person-1.png"
    garment = ROOT / "assets" / "examples" / "garment-1.png"
    before = len(results(server["volume"]))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server["url"] + "/")
        page.wait_for_selector("#run")
        page.locator("#person input[type=file]").first.set_input_files(str(person))
        page.locator("#garment input[type=file]").first.set_input_files(str(garment))
        page.wait_for_timeout(1500)
        page.locator("#auto-mask").click()  # the parser fills the mask layer; the stroke below adds to it
        page.wait_for_timeout(3000)
        assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()
        page.get_by_role("button", name="Brush", exact=True).click()
        box = page.locator("#person canvas").first.bounding_box()
        x, y = box["x"] + box["width"] / 2 - 50, box["y"] + box["height"] * 0.40
        page.mouse.move(x, y)
        page.mouse.down()
        for i in range(25):  # a zigzag over the shirt
            page.mouse.move(x + i * 4, y + (i % 5) * 18, steps=3)
        page.mouse.up()
        page.locator("#run").click()
        page.wait_for_selector("#result img", timeout=120_000)
        expected = f"{before + 1} result"
        page.wait_for_function(f"() => document.querySelector('#page-label')?.innerText.includes('{expected}')",
                               timeout=30_000)
        summary = page.locator("#summary").inner_text()
        assert "Seed" in summary and "saved as" in summary
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
        if os.environ.get("STUDIO_SCREENSHOT"):
            shutil.copy(tmp_path / "studio.png", os.environ["STUDIO_SCREENSHOT"])
        browser.close()
    assert len(results(server["volume"])) == before + 1
