"""A camera-size photo in the studio against a phone-size one, in a real browser, on the tiny models.

Usage: python bench/studio_camera.py [--runs 2] [--stroke]

Launches ``python -m app serve --tiny`` and drives Debian's Chromium through Playwright as a designer does:
upload the person photo (600x900, then 3000x2000, both made from the example with camera-like noise),
press Auto mask, pick a garment, press Run. Per photo and run it prints the seconds from the press to
the mask being back (auto mask), to the page's first progress line from the server (first progress;
the page itself says "Sending the photos…" at once), and to the result on screen (result). With the
tiny models the model's own time is small: what is measured is everything around it. With ``--stroke`` a
brush stroke follows Auto mask (a designer's touch-up: the editor then holds a layer of the user's own).
Also printed: the browser's CPU seconds from the press to the result (every Chromium process), and how many
times the page read the editor's pixels for the run (``editor_reads``; None where the page does not count).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.studio_kit import GARMENT, PERSON, on_canvas, press_auto_mask, put_photo, stroke  # noqa: E402
from tests.test_e2e import CHROMIUM, CHROMIUM_FLAGS, launch_server  # noqa: E402

SIZES = ((600, 900), (3000, 2000))


def camera_photo(size: tuple[int, int], folder: Path) -> Path:
    """The example person scaled to ``size`` with sensor-like noise (a smooth upscale compresses unrealistically)."""
    with Image.open(PERSON) as person:
        photo = person.convert("RGB").resize(size, Image.BICUBIC)
    noisy = np.asarray(photo).astype(np.int16) + np.random.default_rng(0).normal(0, 3, (size[1], size[0], 3))
    path = folder / f"person-{size[0]}x{size[1]}.jpg"
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def browser_cpu_s() -> float:
    import psutil

    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if "chrom" in process.name():
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def one_run(page, photo: Path, touch_up: bool) -> dict:
    from app.studio.editor import view_size

    with Image.open(photo) as image:
        view = view_size(image.size)  # a larger photo is shown as a copy
    put_photo(page, photo, width=view[0])
    page.locator("#garment input[type=file]").first.set_input_files(str(GARMENT))
    page.wait_for_selector("#garment img", timeout=30_000)
    page.wait_for_timeout(1000)
    auto = press_auto_mask(page)
    if touch_up:
        stroke(page, at=on_canvas(page, view, (0.5, 0.85)))
    page.evaluate("() => { if (window.editor.tryonReads !== undefined) window.editor.tryonReads = 0; }")
    page.evaluate("() => { window.firstLine = null; const seen = () => { const t = document.querySelector("
                  "'#progress')?.innerText || ''; if (!window.firstLine && /Checking|Step|Starting|Waiting|Loading/"
                  ".test(t)) window.firstLine = performance.now(); }; new MutationObserver(seen).observe("
                  "document.querySelector('#progress'), {subtree: true, childList: true, characterData: true}); }")
    pressed, cpu = page.evaluate("() => performance.now()"), browser_cpu_s()
    page.locator("#run").click()
    page.wait_for_function("() => /Done|Not run|failed/.test(document.querySelector('#progress')?.innerText)",
                           timeout=600_000, polling=50)
    page.wait_for_function("() => document.querySelector('#result img')?.complete", timeout=120_000, polling=50)
    shown, cpu = page.evaluate("() => performance.now()"), browser_cpu_s() - cpu
    first = page.evaluate("() => window.firstLine")
    line = page.locator("#progress").inner_text()
    return {"auto_mask_s": round(auto, 2), "first_progress_s": round((first - pressed) / 1000, 2) if first else None,
            "result_s": round((shown - pressed) / 1000, 2), "browser_cpu_s": round(cpu, 1),
            "editor_reads": page.evaluate("() => window.editor.tryonReads ?? null"), "line": line.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--stroke", action="store_true", help="a brush stroke after Auto mask, before Run")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from app.config import Settings
    from app.model.tiny_models import ensure_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = folder / "volume"
        ensure_tiny_models(Settings.from_env({}, volume=str(volume), tiny_models=True))
        photos = {size: camera_photo(size, folder) for size in SIZES}
        figures = {}
        with launch_server(volume, TRYON_STEPS="3") as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            for run in range(args.runs):
                for size, photo in photos.items():
                    context = browser.new_context(viewport={"width": 1440, "height": 900})
                    page = context.new_page()
                    page.goto(server["url"] + "/")
                    page.wait_for_selector("#run")
                    started = time.monotonic()
                    figures.setdefault(f"{size[0]}x{size[1]}", []).append(one_run(page, photo, args.stroke))
                    print(f"run {run + 1} {size[0]}x{size[1]}: {figures[f'{size[0]}x{size[1]}'][-1]} "
                          f"({time.monotonic() - started:.0f} s in all)", flush=True)
                    context.close()
            browser.close()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
