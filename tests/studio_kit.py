"""What the studio's browser tests share (tests/test_studio*.py): a launched server on the tiny models
with TRYON_SAVE_INPUTS (the person, mask and garment the model received are kept next to each result),
one browser page per test, the tiny parser's own masks, and the moves a designer makes (upload, stroke,
auto mask, run) with the reads a designer's eye would (the mask shown, the files saved)."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_e2e import CHROMIUM, launch_server

NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); "
                                    "CI installs it")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
PERSON, GARMENT = EXAMPLES / "person-1.png", EXAMPLES / "garment-1.png"
# How long the page may take to show what it shows at once on a quiet machine (Run enabled again, a fold open, the
# busy label): a bound for liveness only, long enough for two busy cores; the tests judge what was shown and saved.
PATIENCE_MS = 120_000
SCREENSHOTS = os.environ.get("STUDIO_SCREENSHOTS")  # a folder: refresh docs/ screenshots from this run


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """One launched server for every studio module a pytest worker runs (each test opens its own page, a
    new visitor with its own results; the tests count what each run adds to the volume)."""
    from app.config import Settings
    from app.model.tiny_models import ensure_tiny_models

    volume = tmp_path_factory.mktemp("studio-volume")
    ensure_tiny_models(Settings.from_env({}, volume=str(volume), tiny_models=True))  # the tests read its parser
    with launch_server(volume, TRYON_SAVE_INPUTS="1", TRYON_STEPS="3") as server:
        yield server


@pytest.fixture
def page(browser, studio):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(studio["url"] + "/")
    page.wait_for_selector("#run")
    yield page
    context.close()


@pytest.fixture(scope="session")
def auto_reference(studio):
    """The parser's mask for person-1 and 'upper', computed here with the same tiny parser."""
    from app.images.masking import HumanParser

    settings_parser = studio["volume"] / "tiny-models" / "mattmdjaga" / "segformer_b2_clothes"
    parser = HumanParser(settings_parser)
    with Image.open(PERSON) as person:
        photo = person.convert("RGB")
    return {kind: parser.auto_mask(photo, kind) for kind in ("upper", "lower")}


# -- helpers ------------------------------------------------------------------------------------

def results(volume: Path) -> list[Path]:
    """Result sidecars (outputs/<owner>/<month>/<time>-....json), oldest first."""
    return sorted((volume / "outputs").glob("*/*/*.json"), key=lambda p: p.name)


def load_inputs(page, person=PERSON, garment=GARMENT):
    put_photo(page, person)
    page.locator("#garment input[type=file]").first.set_input_files(str(garment))
    page.wait_for_selector("#garment img", timeout=30_000)
    page.wait_for_timeout(1200)  # a moment for the uploads to reach the server


def editor_ready(page, timeout_ms: int) -> None:
    """Wait until the page's editor exists and says it is ready (its canvas set up)."""
    page.wait_for_function("async () => { if (!window.editor) return false; await window.editor.ready; "
                           "return true; }", timeout=timeout_ms)


def pick_examples(page, person: int | None = 0, garment: int | None = 0) -> None:
    """Click example thumbnails (their index; None: leave that one) and wait until the studio holds them: the
    person photo in the editor, the garment under Garment. A click is a select event that the server answers
    with the photo; on a busy machine that takes seconds, and a Run pressed before the answer lands runs
    without it ("Not run: no garment photo")."""
    if person is not None:
        editor_ready(page, PATIENCE_MS)
        shown = "async () => ((await window.editor.get_blobs()).background?.size || 0) > 1000"
        for _attempt in range(3):  # a photo given to the editor as it starts up can be lost: pick it again
            page.locator("#examples-person .thumbnail-item").nth(person).click()
            try:
                page.wait_for_function(shown, timeout=PATIENCE_MS // 4, polling=250)
                break
            except Exception:
                continue
        else:
            raise AssertionError(f"the editor never showed example person {person}")
    if garment is not None:
        before = page.evaluate("() => document.querySelector('#garment img')?.src || ''")
        page.locator("#examples-garment .thumbnail-item").nth(garment).click()
        page.wait_for_function("before => { const src = document.querySelector('#garment img')?.src || ''; "
                               "return src !== '' && src !== before; }", arg=before, timeout=PATIENCE_MS,
                               polling=100)


def files_listed(page, selector: str, count: int) -> None:
    """Wait until a file input (``selector``) lists ``count`` files: they are uploaded and its value holds them.
    A Run pressed before that runs without them (on a busy machine the upload takes seconds)."""
    page.wait_for_function("([selector, count]) => document.querySelectorAll(selector + ' tr.file').length === count",
                           arg=[selector, count], timeout=PATIENCE_MS, polling=100)


def put_photo(page, person, width: int | None = None):
    """Upload the person photo into the editor, as a designer does, until the editor shows it.

    The editor exposes itself (``window.editor``) before its canvas is set up, and a photo given to it
    before that is lost: wait until it is ready (on a busy machine, seconds after the rest of the page),
    and give the photo again if its canvas has not taken the photo's size (``width``: the width the editor
    shows it at, when that is not the photo's own: a copy of a larger photo)."""
    editor_ready(page, 60_000)
    page.wait_for_timeout(300)  # the editor replays its history just after it is ready
    with Image.open(person) as photo:
        loaded = (f"async () => window.editor && window.editor.width === {width or photo.width} && "
                  "((await window.editor.get_blobs()).background?.size || 0) > 1000")
    for _attempt in range(3):
        page.locator("#person input[type=file]").first.set_input_files(str(person))
        try:
            page.wait_for_function(loaded, timeout=15_000)
            page.wait_for_timeout(1000)  # still there a moment later: not lost to the editor starting up
            page.wait_for_function(loaded, timeout=1_000)
            return
        except Exception:  # the checks on the pixels sent are the verdict, not this wait
            continue


def press_auto_mask(page) -> float:
    """Auto mask, waiting for its result; the seconds from the click to the mask being back."""
    started = time.monotonic()
    page.locator("#auto-mask").click()
    page.wait_for_function("() => document.querySelector('#auto-mask').innerText.includes('Masking')",
                           timeout=PATIENCE_MS, polling=20)
    page.wait_for_function("() => document.querySelector('#auto-mask').innerText.includes('Auto mask')",
                           timeout=120_000, polling=20)
    seconds = time.monotonic() - started
    page.wait_for_timeout(800)  # the editor loads the returned layer
    return seconds


def on_canvas(page, view: tuple[int, int], at: tuple[float, float]) -> tuple[float, float]:
    """Where a point of the photo (as fractions of it; ``view``: the size the editor holds it at) lies, as
    fractions of the editor's canvas: for ``stroke``."""
    return tuple(page.evaluate("""([view, at]) => {
      const zoom = window.editor.tools.get('zoom');
      const box = document.querySelector('#person canvas').getBoundingClientRect();
      return [(zoom.local_position.x + at[0] * view[0] * zoom.local_scale) / box.width,
              (zoom.local_position.y + at[1] * view[1] * zoom.local_scale) / box.height]; }""", [list(view), list(at)]))


def open_fold(page, name: str, inside: str) -> None:
    """Open an accordion and wait until ``inside`` (a selector in it) is on screen and settled: Gradio
    renders a fold's contents as it opens, and a value typed into them meanwhile can be lost."""
    page.get_by_text(name, exact=True).click()
    page.locator(inside).first.wait_for(state="visible", timeout=PATIENCE_MS)
    page.wait_for_timeout(500)


def stroke(page, tool="Brush", at=(0.5, 0.8), mouse=False):
    """A zigzag with the brush (or eraser) at a fraction of the editor canvas: pointer down, ten moves (straight
    segments: the editor joins successive points with a line), pointer up.

    By default the pointer events are dispatched on the canvas in one task: the editor's brush code receives
    the same events at the same points (6129 pixels painted against 6132 for the same zigzag by the mouse).
    ``mouse=True`` moves Playwright's mouse instead, through the browser's own input path: each trusted move
    makes the browser draw frames of the whole page, about half a CPU second per move in software WebGL
    (6.1 CPU-s a stroke against 1.0), so the first brush test and the eraser test use it and the rest dispatch."""
    page.get_by_role("button", name=tool, exact=True).click()
    box = page.locator("#person canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * at[0] - 30, box["y"] + box["height"] * at[1]
    points = [(x + i * 4, y + (i % 5) * 6) for i in range(10)]
    if mouse:
        page.mouse.move(x, y)
        page.mouse.down()
        for point in points:
            page.mouse.move(*point)
        page.mouse.up()
    else:
        page.evaluate("""([start, points]) => {
          const canvas = document.querySelector('#person canvas');
          const send = (type, [x, y], buttons) => canvas.dispatchEvent(new PointerEvent(type, {
            clientX: x, clientY: y, pointerId: 1, pointerType: 'mouse', isPrimary: true, button: 0, buttons,
            bubbles: true, cancelable: true, composed: true}));
          send('pointermove', start, 0);
          send('pointerdown', start, 1);
          for (const point of points) send('pointermove', point, 1);
          send('pointerup', points[points.length - 1], 0);
        }""", [[x, y], [list(p) for p in points]])
    page.wait_for_timeout(400)


def run_and_wait(page, volume: Path, count: int = 1) -> list[dict]:
    before = len(results(volume))
    page.evaluate("() => { const line = document.querySelector('#progress span'); if (line) line.textContent = ''; }")
    page.locator("#run").click()
    try:
        page.wait_for_function("() => /Done|Not run|failed/.test(document.querySelector('#progress')?.innerText) "
                               "|| document.querySelector('.toast-body')", timeout=240_000)
    except Exception as error:  # say what the page and the server were doing, not only that time ran out
        try:
            state = httpx.get(page.url.split("?")[0].rstrip("/") + "/v1/status", timeout=10).json()
        except (httpx.HTTPError, ValueError) as gone:
            state = {"queue": f"unknown ({gone})"}
        run = page.locator("#run")
        raise AssertionError(f"no end of the run in 240 s: progress {page.locator('#progress').inner_text()!r}, "
                             f"Run {run.inner_text()!r} (disabled: {run.is_disabled()}), server queue "
                             f"{state.get('queue')}, saved {len(results(volume)) - before}") from error
    problems = page.locator(".toast-body").all_inner_texts()
    assert not problems and "Done" in page.locator("#progress").inner_text(), (
        problems, page.locator("#progress").inner_text())
    page.wait_for_function("() => !document.querySelector('#run').disabled", timeout=PATIENCE_MS)
    assert page.locator("#run").inner_text().strip() == "Run try-on"  # ready for the next, and says so
    saved = results(volume)
    assert len(saved) == before + count, [p.name for p in saved]
    return [json.loads(p.read_text()) for p in saved[before:]]


def shown_mask(page, size: tuple[int, int]) -> np.ndarray:
    """The mask the editor shows now: the painted pixels of its layers (read from the page itself) in
    photo coordinates, white where painted."""
    from app.studio.editor import painted_mask

    urls = page.evaluate("""async () => {
      const editor = window.editor;  // read anew: not the page's kept read (app/studio/page.py EDITOR_READS_JS)
      const blobs = await (editor.get_blobs_fresh ? editor.get_blobs_fresh() : editor.get_blobs());
      const read = (blob) => new Promise((done) => {
        const reader = new FileReader(); reader.onload = () => done(reader.result); reader.readAsDataURL(blob); });
      return Promise.all((blobs.layers || []).filter(Boolean).map(read));
    }""")
    layers = [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]
    return white(painted_mask({"layers": layers}, size))


def shown_when(page, expected: np.ndarray, seconds: float = 60) -> np.ndarray:
    """The mask the editor shows once it is ``expected`` (within 1% of its pixels): a redraw asked of the server
    lands seconds later on a busy machine. Fails saying how far apart they stayed."""
    deadline = time.monotonic() + seconds
    while True:
        shown = shown_mask(page, (expected.shape[1], expected.shape[0]))
        apart = (shown ^ expected).sum() / max(expected.sum(), 1)
        if apart < 0.01:
            return shown
        assert time.monotonic() < deadline, f"the mask shown stayed {apart:.1%} apart from the one expected"
        page.wait_for_timeout(500)


def saved_input(volume: Path, meta: dict, role: str) -> Image.Image:
    with Image.open(volume / meta["input_files"][role]) as image:
        return image.copy()


def white(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")) > 127


def assert_same_photo(volume: Path, meta: dict):
    sent = np.asarray(saved_input(volume, meta, "person").convert("RGB")).astype(int)
    with Image.open(PERSON) as person:
        uploaded = np.asarray(person.convert("RGB")).astype(int)
    assert sent.shape == uploaded.shape
    assert np.abs(sent - uploaded).max() == 0, "the person photo sent to the model is not the uploaded one"


def shoot(page, name: str):
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=False)
