"""The studio's photos in a real browser: a camera-size photo edited as a copy and run at full size, the
frame of the region the model sees, the photo kept on screen while masking, and the layout on a desktop
and a phone (tests/studio_kit.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.studio_kit import (
    EXAMPLES,
    GARMENT,
    NEEDS_CHROMIUM,
    PATIENCE_MS,
    PERSON,
    ROOT,
    files_listed,
    load_inputs,
    on_canvas,
    open_fold,
    press_auto_mask,
    put_photo,
    run_and_wait,
    saved_input,
    shoot,
    shown_mask,
    stroke,
    white,
)

pytestmark = NEEDS_CHROMIUM


# -- defect 5: auto mask keeps the photo on screen ------------------------------------------------

def camera_photo(folder: Path, size: tuple[int, int] = (3000, 2000), turned: bool = False) -> Path:
    """The example person at camera size (upright) with sensor-like noise, as a camera's JPEG; ``turned``:
    stored on its side with an EXIF orientation that turns it upright, as phones save portraits."""
    with Image.open(PERSON) as person:
        photo = person.convert("RGB").resize(size, Image.BICUBIC)
    noisy = np.asarray(photo).astype(np.int16) + np.random.default_rng(0).normal(0, 3, (size[1], size[0], 3))
    path = folder / f"camera-{size[0]}x{size[1]}{'-turned' if turned else ''}.jpg"
    stored = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if turned:
        stored = stored.transpose(Image.ROTATE_90)
        exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    stored.save(path, quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("turned", [False, True], ids=["landscape", "exif-portrait"])
def test_a_camera_photo_is_edited_as_a_copy_and_runs_at_full_size(page, studio, tmp_path, turned):
    """The editor holds a copy of a 3000x2000 photo at 1280 px (each event that reads it encodes a fifth of
    the pixels); the original runs, pixel for pixel, with the mask the editor shows scaled up to it. A
    phone's portrait (stored on its side, EXIF-turned) is turned the same way in the page and the server."""
    from app.studio.editor import scaled_mask, view_size

    volume = studio["volume"]
    path = camera_photo(tmp_path, (2000, 3000) if turned else (3000, 2000), turned)
    with Image.open(path) as image:
        original = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    view = view_size((original.shape[1], original.shape[0]))
    assert view == ((853, 1280) if turned else (1280, 853))
    put_photo(page, path, width=view[0])
    held = page.evaluate("async () => { const blobs = await window.editor.get_blobs(); "
                         "const bitmap = await createImageBitmap(blobs.background); "
                         "return [bitmap.width, bitmap.height]; }")
    assert tuple(held) == view  # what every event encodes and sends: the copy
    page.locator("#garment input[type=file]").first.set_input_files(str(GARMENT))
    page.wait_for_selector("#garment img", timeout=30_000)
    stroke(page, at=on_canvas(page, view, (0.5, 0.85)))  # the user's own stroke, low on the photo
    stroked = shown_mask(page, view)
    assert stroked.any()
    press_auto_mask(page)
    shown = shown_mask(page, view)
    assert not (stroked & ~shown).any(), "Auto mask dropped the stroke"
    page.evaluate("() => { window.editor.tryonReads = 0; }")
    [meta] = run_and_wait(page, volume)
    # The editor is read for the run, not again for each progress line (Gradio reads it on every status
    # update: 35 times in a run of 3 steps, seconds each for this photo in a browser drawing in software).
    reads = page.evaluate("() => window.editor.tryonReads")
    assert reads is not None and reads <= 3, f"the page read the editor {reads} times for one run"
    sent = np.asarray(saved_input(volume, meta, "person").convert("RGB"))
    assert sent.shape == original.shape and np.array_equal(sent, original), "the original did not run"
    size = sent.shape[1::-1]

    def scaled(mask: np.ndarray) -> np.ndarray:
        return white(scaled_mask(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)), size))

    saved = white(saved_input(volume, meta, "mask"))
    assert np.array_equal(saved, scaled(shown)), "the mask that ran is not the one shown"
    assert not (scaled(stroked) & ~saved).any(), "the stroke did not reach the photo's mask"
    with Image.open(volume / meta["image"]) as result:
        assert result.size == (original.shape[1], original.shape[0])  # the result in the photo's own size


def shown_frame(page) -> list[float] | None:
    """The frame the editor draws over the photo, in the photo's coordinates (None: no frame shown)."""
    return page.evaluate("""() => {
      const frame = document.querySelector('#person .tryon-frame');
      if (!frame || getComputedStyle(frame).display === 'none') return null;
      const zoom = window.editor.tools.get('zoom'), box = frame.getBoundingClientRect();
      const canvas = document.querySelector('#person .pixi-target').getBoundingClientRect();
      const x = canvas.left + zoom.local_position.x, y = canvas.top + zoom.local_position.y, s = zoom.local_scale;
      return [(box.left - x) / s, (box.top - y) / s, (box.right - x) / s, (box.bottom - y) / s]; }""")


def test_the_editor_frames_the_region_the_model_sees(page, studio, tmp_path):
    """A run frames the region the model sees (its sidecar's) over the photo; so does Auto mask before the
    run, and the run then sees exactly that region; a stroke takes the frame away until the next."""
    volume = studio["volume"]
    landscape = tmp_path / "wide.png"
    with Image.open(PERSON) as person:  # the person near the left of a wide photo, as taken
        person = person.convert("RGB")
        wide = Image.new("RGB", (900, 600), person.getpixel((0, 0)))
        wide.paste(person, (30, 88))
        wide.save(landscape)
    put_photo(page, landscape)
    page.locator("#garment input[type=file]").first.set_input_files(str(GARMENT))
    page.wait_for_selector("#garment img", timeout=30_000)
    assert shown_frame(page) is None
    stroke(page, at=(0.25, 0.5))  # a hand-painted mask on the left: the frame comes with the run
    [painted] = run_and_wait(page, volume)
    region = painted["region"]
    assert region[2] - region[0] < 900 and region[0] < 225, region  # moved left from the centre crop
    framed = shown_frame(page)
    assert framed is not None and max(abs(a - b) for a, b in zip(framed, region, strict=True)) <= 2, \
        (framed, region)
    shoot(page, "studio-1440-frame.png")
    stroke(page, at=(0.5, 0.75))
    assert shown_frame(page) is None, "the frame stayed after the mask changed"
    press_auto_mask(page)
    framed = shown_frame(page)
    assert framed is not None, "no frame after Auto mask"
    [auto] = run_and_wait(page, volume)
    assert max(abs(a - b) for a, b in zip(framed, auto["region"], strict=True)) <= 2, (framed, auto["region"])


def test_auto_mask_keeps_the_photo_visible(page, studio):
    load_inputs(page)
    press_auto_mask(page)  # the first press loads the parser
    seconds = []
    for _ in range(2):
        page.locator("#auto-mask").click()
        started = time.monotonic()
        page.wait_for_function("() => document.querySelector('#auto-mask').innerText.includes('Masking')",
                               timeout=PATIENCE_MS, polling=20)
        assert page.locator("#person canvas").first.is_visible()
        assert page.locator("#person .wrap.translucent, #person .eta-bar").count() == 0
        page.wait_for_function("() => document.querySelector('#auto-mask').innerText.includes('Auto mask')",
                               timeout=60_000, polling=20)
        seconds.append(time.monotonic() - started)
    print(f"\nAuto mask in the browser (parser loaded): {', '.join(f'{s:.2f}' for s in seconds)} s")


def overlaps(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


@pytest.mark.parametrize("viewport", [(1440, 900), (390, 844)])
def test_the_layout_cuts_and_covers_nothing(browser, studio, viewport, tmp_path):
    """Desktop and phone: Run in reach on first sight; the placeholder whole; a landscape photo clear of the
    editor's tool panel (a stroke begun on its left edge paints there); example thumbnails inside their
    panels with whole captions; both of two batch files listed; nothing hidden behind the phone's Run bar."""
    phone = viewport[0] < 640
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  device_scale_factor=2 if phone else 1)
    page = context.new_page()
    page.goto(studio["url"] + "/")
    page.wait_for_selector("#run")
    page.wait_for_timeout(1500)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= viewport[0], f"the page is {width} px wide on a {viewport[0]} px screen"
    run = page.locator("#run").bounding_box()
    assert 0 <= run["y"] and run["y"] + run["height"] <= viewport[1], f"Run is at y={run['y']:.0f}"
    panel = page.locator("#person .toolbar-wrap").first.bounding_box()
    placeholder = page.locator("#person .empty.wrap p").first
    assert placeholder.inner_text().startswith("Upload a person photo")
    assert not overlaps(placeholder.bounding_box(), panel), "the placeholder is under the tool panel"
    if phone:
        shoot(page, "studio-390-first-load.png")

    landscape = tmp_path / "landscape.png"
    with Image.open(PERSON) as person:
        person.convert("RGB").resize((900, 600)).save(landscape)
    put_photo(page, landscape)
    page.wait_for_timeout(800)  # the fit animates
    left, top, height = page.evaluate("""() => {
      const zoom = window.editor.tools.get('zoom'), canvas = document.querySelector('#person .pixi-target');
      const box = canvas.getBoundingClientRect();
      return [box.left + zoom.local_position.x, box.top + zoom.local_position.y, 600 * zoom.local_scale]; }""")
    panel = page.locator("#person .toolbar-wrap").first.bounding_box()
    assert left >= panel["x"] + panel["width"], f"the photo starts at x={left:.0f}, under the tool panel"
    y = top + height * 0.4
    page.mouse.move(left + 2, y)
    page.mouse.down()
    page.mouse.move(left + 40, y, steps=8)
    page.mouse.up()
    page.wait_for_timeout(400)
    painted = shown_mask(page, (900, 600))
    assert painted[:, :8].any(), "a stroke begun on the photo's left edge painted nothing there"

    for gallery in ("#examples-person", "#examples-garment"):
        box = page.locator(gallery).bounding_box()
        for item in page.locator(f"{gallery} .thumbnail-item").all():
            thumb = item.bounding_box()
            assert box["x"] <= thumb["x"] and thumb["x"] + thumb["width"] <= box["x"] + box["width"] + 0.5, gallery
        cut = page.evaluate(f"""() => [...document.querySelectorAll('{gallery} .caption-label')]
            .filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.innerText)""")
        assert not cut, f"captions cut in {gallery}: {cut}"

    open_fold(page, "Batch", "#extra-garments")
    page.locator("#extra-garments input[type=file]").first.set_input_files([str(GARMENT),
                                                                             str(EXAMPLES / "garment-2.png")])
    files_listed(page, "#extra-garments", 2)
    files = page.locator("#extra-garments").bounding_box()
    for row in page.locator("#extra-garments tr.file").all():
        line = row.bounding_box()
        assert files["y"] <= line["y"] and line["y"] + line["height"] <= files["y"] + files["height"] + 0.5, \
            "a batch file is hidden in its list"

    if phone:  # scrolled to the end, the last control is above the Run bar, not behind it
        page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
        page.wait_for_timeout(300)
        bar = page.locator("#run-bar").bounding_box()
        last = page.get_by_role("button", name="Older").bounding_box()
        assert last["y"] + last["height"] <= bar["y"], (last, bar)
        assert bar["y"] + bar["height"] <= viewport[1] + 0.5
    context.close()


def test_screenshots_are_committed():
    for name in ("studio-1440-first-load.png", "studio-1440-after-batch.png", "studio-1440-compare.png",
                 "studio-1440-frame.png", "studio-390-first-load.png"):
        path = ROOT / "docs" / name
        assert path.is_file() and path.stat().st_size > 10_000, name
        assert f"docs/{name}" in (ROOT / "README.md").read_text(), f"README does not show {name}"
