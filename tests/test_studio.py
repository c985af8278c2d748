"""The studio's mask in a real browser (Debian's Chromium) against a launched server on the tiny models:
what the editor shows is what the model gets, whatever the order of auto mask, brush, eraser, mask tools
and garment type. Every test checks the pixels the model received (tests/studio_kit.py).
"""

from __future__ import annotations

import numpy as np

from tests.studio_kit import (
    NEEDS_CHROMIUM,
    PATIENCE_MS,
    assert_same_photo,
    load_inputs,
    open_fold,
    pick_examples,
    press_auto_mask,
    run_and_wait,
    saved_input,
    shown_mask,
    shown_when,
    stroke,
    white,
)

pytestmark = NEEDS_CHROMIUM


# -- defect 1: auto mask, then brush --------------------------------------------------------------

def test_brush_alone_reference_then_auto_plus_brush_keeps_photo_and_coordinates(page, studio, auto_reference):
    """Auto mask then a stroke (and stroke, auto, stroke): the model gets the uploaded photo unchanged and
    the auto mask plus the stroke where it was drawn (the brush-alone run gives the stroke's pixels)."""
    volume = studio["volume"]
    load_inputs(page)
    stroke(page, mouse=True)  # the browser's own input path; the strokes below dispatch the same points
    [alone] = run_and_wait(page, volume)
    assert_same_photo(volume, alone)
    drawn = white(saved_input(volume, alone, "mask"))
    assert 1000 < drawn.sum() < 20000  # one zigzag, in the lower part of the photo
    assert np.nonzero(drawn)[0].min() > 0.6 * drawn.shape[0]

    auto = white(auto_reference["upper"])
    for sequence in (("auto", "paint"), ("paint", "auto", "paint")):
        page.reload()
        page.wait_for_selector("#run")
        load_inputs(page)
        for step in sequence:
            press_auto_mask(page) if step == "auto" else stroke(page)
        [meta] = run_and_wait(page, volume)
        assert_same_photo(volume, meta)
        mask = white(saved_input(volume, meta, "mask"))
        assert mask.shape == auto.shape
        expected = auto | drawn
        mismatch = (mask ^ expected).sum() / expected.sum()
        assert mismatch < 0.01, (sequence, mismatch)


def test_eraser_removes_from_the_auto_mask(page, studio, auto_reference):
    volume = studio["volume"]
    load_inputs(page)
    press_auto_mask(page)
    stroke(page, tool="Erase", at=(0.22, 0.62), mouse=True)  # over the background, which the tiny parser masks
    [meta] = run_and_wait(page, volume)
    mask, auto = white(saved_input(volume, meta, "mask")), white(auto_reference["upper"])
    assert not (mask & ~auto).any(), "erasing added mask pixels"
    assert 500 < (auto & ~mask).sum() < 0.5 * auto.sum(), "the eraser stroke did not remove a stroke's worth"


# -- defect 2: the mask shown is the mask used ----------------------------------------------------

def test_mask_tools_and_garment_type_redraw_the_shown_mask(page, studio, auto_reference):
    from app.images.masking import apply_tools

    volume = studio["volume"]
    load_inputs(page)
    press_auto_mask(page)
    page.locator("#garment-type label", has_text="Lower").click()
    page.wait_for_timeout(2500)
    open_fold(page, "Mask tools", "#grow input[type=number]")
    page.locator("#longer input").check()
    expected = white(apply_tools(auto_reference["lower"], longer=0.15))
    shown_when(page, expected)  # the server's redraw is on the page before Run
    [meta] = run_and_wait(page, volume)
    mask = white(saved_input(volume, meta, "mask"))
    assert (mask ^ expected).sum() / expected.sum() < 0.01
    assert meta["settings"]["garment_type"] == "lower" and meta["settings"]["longer"] == 0.15


def test_every_way_of_entering_grow_redraws_the_mask_and_the_run_is_what_was_shown(page, studio, auto_reference):
    """Typed in the box with Enter, typed and left with Tab, the slider's keys, Use these settings: each
    redraws the shown mask at once; each run saves exactly the mask shown and records the grow it shows."""
    from app.images.masking import apply_tools

    volume = studio["volume"]
    load_inputs(page)
    press_auto_mask(page)
    # On a busy machine the editor is still taking in the new layer a moment after the button comes back.
    page.wait_for_timeout(2000)
    open_fold(page, "Mask tools", "#grow input[type=number]")
    box, slider = page.locator("#grow input[type=number]"), page.locator("#grow input[type=range]")

    def entered(how: str, value: int) -> None:
        if how == "keys":  # the slider, from the keyboard: each key press moves it one step
            slider.focus()
            current = int(slider.input_value())
            for _ in range(abs(value - current)):
                slider.press("ArrowRight" if value > current else "ArrowLeft")
        else:
            box.fill(str(value))
            box.press(how)
        page.wait_for_timeout(2500)

    runs = {}
    for how, value in (("Enter", 12), ("Tab", -6), ("keys", -3)):
        entered(how, value)
        shown = shown_when(page, white(apply_tools(auto_reference["upper"], grow=value)))
        [meta] = run_and_wait(page, volume)
        assert np.array_equal(white(saved_input(volume, meta, "mask")), shown), how
        assert meta["settings"]["mask_grow"] == value and f"mask grown {value:+d} px" in \
            page.locator("#summary").inner_text()
        runs[value] = meta

    page.locator("#gallery .thumbnail-item").nth(2).click()  # newest first: the +12 run
    page.wait_for_selector("#selected-summary", state="visible")
    page.locator("#reuse").click()
    page.wait_for_function("() => document.querySelector('#grow input[type=number]').value === '12'",
                           timeout=PATIENCE_MS, polling=100)
    shown_when(page, white(saved_input(volume, runs[12], "mask")))
    [again] = run_and_wait(page, volume)
    assert again["settings"]["mask_grow"] == 12
    assert np.array_equal(white(saved_input(volume, again, "mask")), white(saved_input(volume, runs[12], "mask")))


def test_edits_survive_garment_type_changes(page, studio, auto_reference):
    """Upper -> Lower -> Upper: the eraser's and the brush's work comes back with the Upper mask; also when
    Run is pressed after the server has redrawn the mask for Upper but before the editor has loaded it
    (the run gets the Upper mask, not the Lower one still in the editor), which then shows the same."""
    volume = studio["volume"]
    load_inputs(page)
    press_auto_mask(page)
    stroke(page, tool="Erase", at=(0.22, 0.62))
    stroke(page, at=(0.5, 0.9))  # low down: overlaps what Lower masks
    [edited] = run_and_wait(page, volume)
    loads = page.evaluate("() => window.tryonLoads")
    page.locator("#garment-type label", has_text="Lower").click()
    page.wait_for_function(f"() => window.tryonLoads > {loads}", timeout=PATIENCE_MS)
    # The next mask to reach the page waits there, unloaded, until the run is over.
    page.evaluate("""() => {
      const editor = window.editor, add = editor.add_layers_from_url.bind(editor);
      const held = new Promise((release) => { window.releaseLayer = release; });
      editor.add_layers_from_url = async (urls) => { window.layerArrived = true; await held; return add(urls); };
    }""")
    page.locator("#garment-type label", has_text="Upper").click()
    page.wait_for_function("() => window.layerArrived === true", timeout=PATIENCE_MS)
    [back] = run_and_wait(page, volume)
    first, second = white(saved_input(volume, edited, "mask")), white(saved_input(volume, back, "mask"))
    auto = white(auto_reference["upper"])
    assert (auto & ~first).sum() > 500 and (first & ~auto).sum() > 500  # erased and painted
    assert np.array_equal(first, second), f"{(first ^ second).sum()} px differ after Upper -> Lower -> Upper"
    assert back["settings"]["garment_type"] == "upper"
    loads = page.evaluate("() => window.tryonLoads")
    page.evaluate("() => window.releaseLayer()")
    page.wait_for_function(f"() => window.tryonLoads > {loads}", timeout=PATIENCE_MS)
    assert np.array_equal(shown_mask(page, auto_reference["upper"].size), first)  # what ran is what shows


def test_tools_leave_a_hand_painted_mask_as_painted(page, studio):
    """Without an automatic mask on screen, changing the garment type or Longer changes nothing drawn."""
    volume = studio["volume"]
    load_inputs(page)
    stroke(page)
    [before] = run_and_wait(page, volume)
    page.locator("#garment-type label", has_text="Lower").click()
    open_fold(page, "Mask tools", "#grow input[type=number]")
    page.locator("#longer input").check()
    page.wait_for_timeout(2000)
    [after] = run_and_wait(page, volume)
    assert np.array_equal(white(saved_input(volume, before, "mask")), white(saved_input(volume, after, "mask")))


def test_example_person_auto_mask_and_tools_without_touching_the_editor(page, studio, auto_reference):
    """An example photo loaded from the server, Auto mask, Longer: the run gets exactly what is shown."""
    from app.images.masking import apply_tools

    volume = studio["volume"]
    pick_examples(page)  # person-1, garment-1
    press_auto_mask(page)
    open_fold(page, "Mask tools", "#grow input[type=number]")
    page.locator("#longer input").check()
    expected = white(apply_tools(auto_reference["upper"], longer=0.15))
    shown_when(page, expected)
    [meta] = run_and_wait(page, volume)
    assert_same_photo(volume, meta)
    mask = white(saved_input(volume, meta, "mask"))
    assert (mask ^ expected).sum() / expected.sum() < 0.01


