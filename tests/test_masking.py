"""Auto-mask rules on hand-made label maps, the real parser path on a tiny SegFormer, mask tools, paste-back."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.errors import ParserUnavailable, TryOnInputError
from app.images.masking import (
    ATR_LABELS,
    HumanParser,
    ParserHolder,
    apply_tools,
    extend_down,
    fill_holes,
    grow_mask,
    mask_from_labels,
    paste_back,
)

L = {name: i for i, name in enumerate(ATR_LABELS)}


def figure() -> np.ndarray:
    """A 200x100 label map of a standing person: hair, face, shirt with arms, pants, shoes, a bag."""
    labels = np.zeros((200, 100), dtype=np.int64)
    labels[5:20, 35:65] = L["hair"]
    labels[20:40, 38:62] = L["face"]
    labels[45:110, 30:70] = L["upper-clothes"]
    labels[70:80, 45:55] = L["background"]  # a hole in the shirt (a print the parser missed)
    labels[45:105, 18:30] = L["left-arm"]
    labels[45:105, 70:82] = L["right-arm"]
    labels[110:180, 32:68] = L["pants"]
    labels[180:195, 30:48] = L["left-shoe"]
    labels[180:195, 52:70] = L["right-shoe"]
    labels[90:120, 84:96] = L["bag"]
    return labels


def white(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) > 127


def test_upper_covers_shirt_and_arms_fills_holes_and_protects_the_rest():
    labels = figure()
    mask = white(mask_from_labels(labels, "upper", grow=2))
    assert mask[75, 50], "the hole in the shirt is filled"
    assert mask[60, 50] and mask[60, 22] and mask[60, 76], "shirt and both arms are masked"
    for name in ("face", "hair", "pants", "left-shoe", "bag"):
        assert not mask[labels == L[name]].any(), f"{name} must stay untouched"


def test_lower_covers_pants_and_keeps_the_shirt():
    labels = figure()
    mask = white(mask_from_labels(labels, "lower", grow=2))
    assert mask[150, 50]
    assert not mask[labels == L["upper-clothes"]].any() and not mask[labels == L["right-shoe"]].any()


def test_overall_covers_both_garments_but_not_face_or_shoes():
    labels = figure()
    mask = white(mask_from_labels(labels, "overall", grow=2))
    assert mask[60, 50] and mask[150, 50]
    assert not mask[labels == L["face"]].any() and not mask[labels == L["left-shoe"]].any()


def test_growth_reaches_background_but_never_protected_pixels():
    labels = figure()
    tight, grown = white(mask_from_labels(labels, "upper", grow=0)), white(mask_from_labels(labels, "upper", grow=4))
    assert grown.sum() > tight.sum()
    assert grown[108, 24] and not tight[108, 24]  # grew into the background below the left sleeve
    assert not grown[labels == L["face"]].any()


def test_unknown_garment_type_is_refused():
    with pytest.raises(TryOnInputError, match="garment_type='hat'"):
        mask_from_labels(figure(), "hat")


def test_fill_holes_fills_enclosed_regions_only():
    mask = Image.new("L", (50, 50), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((10, 10, 40, 40), fill=255)
    draw.rectangle((20, 20, 30, 30), fill=0)  # enclosed
    draw.rectangle((0, 0, 5, 5), fill=0)
    filled = white(fill_holes(mask))
    assert filled[25, 25] and filled[10:41, 10:41].all() and not filled[0, 0] and not filled[45, 45]


def test_grow_and_shrink_by_n_pixels():
    mask = Image.new("L", (60, 60), 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 39, 39), fill=255)  # 20x20
    assert white(grow_mask(mask, 3)).sum() == 26 * 26
    assert white(grow_mask(mask, -3)).sum() == 14 * 14
    assert white(grow_mask(mask, 0)).sum() == 400


def test_longer_garment_extends_the_mask_downward_within_its_width():
    mask = Image.new("L", (100, 200), 0)
    ImageDraw.Draw(mask).rectangle((30, 40, 69, 99), fill=255)
    longer = white(extend_down(mask, 0.25))
    assert longer[99 + 50, 50] and not longer[99 + 52, 50]
    assert not longer[120, 20] and not longer[120, 80]
    blurred = apply_tools(mask, grow=2, blur=3, longer=0.1)
    assert 0 < np.asarray(blurred)[38, 50] < 255  # soft edge after the blur


def test_paste_back_keeps_size_and_pixels_outside_the_feathered_mask():
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 255, (500, 300, 3), dtype=np.uint8))  # not 3:4
    mask = Image.new("L", person.size, 0)
    ImageDraw.Draw(mask).rectangle((100, 150, 200, 300), fill=255)
    result = Image.new("RGB", (96, 128), (0, 255, 0))
    out = paste_back(person, result, mask, feather=4)
    assert out.size == person.size
    before, after = np.asarray(person).astype(int), np.asarray(out).astype(int)
    changed = np.abs(before - after).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    feather_margin = 4 * 3
    assert ys.min() >= 150 - feather_margin and ys.max() <= 300 + feather_margin
    assert xs.min() >= 100 - feather_margin and xs.max() <= 200 + feather_margin
    assert tuple(after[225, 150]) == (0, 255, 0)  # the middle of the mask is the result


def test_real_parser_path_on_the_tiny_segformer(tiny_volume, images):
    folder = tiny_volume / "models" / "mattmdjaga" / "segformer_b2_clothes"
    parser = HumanParser(folder)
    labels = parser.labels(images["person"])
    assert labels.shape == (512, 384) and labels.min() >= 0 and labels.max() < len(ATR_LABELS)
    assert parser.names["upper-clothes"] == 4
    mask = parser.auto_mask(images["person"], "overall")
    assert mask.size == images["person"].size and mask.mode == "L"


def test_parser_holder_explains_a_missing_parser(tmp_path):
    holder = ParserHolder(tmp_path / "nothing-here")
    assert not holder.available
    with pytest.raises(ParserUnavailable, match="--with-parser, or paint the mask by hand"):
        holder.get()


def test_auto_mask_layer_reads_back_as_the_painted_mask_in_photo_coordinates(images):
    from app.studio.editor import CANVAS_SIZE, MaskEdits, mask_layer, painted_mask

    mask = images["mask"]
    layer = mask_layer(mask)
    assert layer.size == (max(CANVAS_SIZE[0], mask.width), max(CANVAS_SIZE[1], mask.height))
    assert np.array_equal(white(painted_mask({"layers": [layer]}, mask.size)), white(mask))
    # A layer padded beyond the photo (the editor's own canvas) is cropped, not scaled.
    padded = Image.new("RGBA", (mask.width + 100, mask.height + 40))
    padded.paste(layer, (0, 0))
    assert np.array_equal(white(painted_mask({"layers": [padded]}, mask.size)), white(mask))
    tiny = Image.new("L", (40, 30), 0)
    tiny.paste(255, (5, 5, 20, 20))
    assert np.array_equal(white(painted_mask({"layers": [mask_layer(tiny)]}, tiny.size)), white(tiny))

    # Redrawing the automatic part keeps strokes and erasures.
    old_auto, new_auto = Image.new("L", (10, 10), 0), Image.new("L", (10, 10), 0)
    old_auto.paste(255, (2, 2, 6, 6))
    new_auto.paste(255, (1, 1, 7, 7))  # grown
    painted = old_auto.copy()
    painted.paste(255, (8, 8, 10, 10))  # a stroke
    painted.paste(0, (2, 2, 3, 3))  # an erasure
    edits = MaskEdits((10, 10))
    edits.absorb(painted, old_auto)
    result = white(edits.compose(new_auto))
    assert result[8, 8] and result[9, 9]  # stroke kept
    assert not result[2, 2]  # erasure kept
    assert result[1, 1] and result[6, 6]  # growth shown
    fresh = MaskEdits((10, 10))
    fresh.absorb(painted, None)  # painted before any automatic mask: all of it is the user's
    assert white(fresh.compose(new_auto)).sum() == (white(painted) | white(new_auto)).sum()


def test_edits_survive_a_round_trip_through_other_garment_types():
    """Upper -> Lower -> Upper brought back every erased pixel and dropped strokes that overlapped Lower."""
    from app.studio.editor import MaskEdits

    upper, lower = Image.new("L", (20, 20), 0), Image.new("L", (20, 20), 0)
    upper.paste(255, (2, 2, 18, 10))
    lower.paste(255, (2, 8, 18, 18))
    painted = upper.copy()
    painted.paste(0, (4, 4, 8, 8))  # erased from the upper mask
    painted.paste(255, (10, 12, 14, 16))  # a stroke inside what Lower masks
    edits = MaskEdits((20, 20))
    shown = upper
    for auto in (lower, upper, lower, upper):
        edits.absorb(painted, shown)
        shown = painted = edits.compose(auto)  # what the editor shows next, unedited meanwhile
    final = white(painted)
    assert not final[4:8, 4:8].any()  # the erasure survived
    assert final[12:16, 10:14].all()  # and the stroke
    assert final[2:4, 2:18].all() and not final[16:18, 2:10].any()  # Upper's own part, not Lower's
    # an edit of an edit: erasing part of a stroke later removes it from the strokes
    painted = painted.copy()
    painted.paste(0, (10, 12, 12, 16))
    edits.absorb(painted, shown)
    again = white(edits.compose(lower))
    assert not again[12:16, 10:12].any() and again[12:16, 12:14].all()


def test_growing_a_huge_mask_is_scaled_and_close_to_exact():
    """Over GROW_WORK_PIXELS the grow runs on a scaled copy (a 48-megapixel photo with mask_grow 100 took
    72 s unscaled); the result stays within a few pixels of the exact grow and black and white."""
    from app.images.masking import GROW_WORK_PIXELS, grow_mask

    big = Image.new("L", (3000, 4000), 0)
    ImageDraw.Draw(big).rectangle((1000, 1000, 2000, 3000), fill=255)
    assert big.width * big.height > GROW_WORK_PIXELS
    grown = grow_mask(big, 40)
    left, top, right, bottom = grown.getbbox()
    for got, exact in ((left, 960), (top, 960), (right, 2041), (bottom, 3041)):
        assert abs(got - exact) <= 3, (got, exact)
    assert set(np.unique(np.asarray(grown)).tolist()) == {0, 255}


def test_paste_back_into_a_region_that_runs_past_the_photo():
    person = Image.new("RGB", (300, 200), (10, 10, 10))
    mask = Image.new("L", person.size, 0)
    ImageDraw.Draw(mask).rectangle((0, 20, 40, 180), fill=255)  # at the left edge
    box = (-30, -100, 270, 300)  # 300x400: the model's region, past the left, top and bottom edges
    result = Image.new("RGB", (96, 128), (0, 255, 0))
    out = np.asarray(paste_back(person, result, mask, feather=4, box=box)).astype(int)
    assert out.shape == (200, 300, 3)
    assert (out[20:181, 0:41] == (0, 255, 0)).all()  # every masked pixel, edge included, is the result
    assert (out[:, 80:] == 10).all()  # beyond the feather nothing changed


def test_fill_holes_matches_a_flood_fill_from_the_border():
    """The run-based fill against PIL's pixel-by-pixel flood fill, on random blobs and a spiral corridor
    (the outside must turn many corners to reach its end)."""
    from PIL import ImageDraw as Draw

    def flood_reference(mask: Image.Image) -> np.ndarray:
        padded = Image.fromarray(np.pad(white(mask).astype(np.uint8) * 255, 1), "L").copy()  # writable
        Draw.floodfill(padded, (0, 0), 128)
        return np.asarray(padded)[1:-1, 1:-1] != 128

    rng = np.random.default_rng(3)
    shapes = []
    for _ in range(6):
        blob = Image.new("L", (90, 70), 0)
        draw = Draw.Draw(blob)
        for _ in range(12):
            x, y = rng.integers(0, 90), rng.integers(0, 70)
            draw.ellipse((x, y, x + rng.integers(5, 30), y + rng.integers(5, 30)), outline=255,
                         width=int(rng.integers(1, 4)))
        shapes.append(blob)
    spiral = Image.new("L", (101, 101), 0)
    draw = Draw.Draw(spiral)
    for i in range(0, 50, 6):  # nested squares, each with a gap on alternating sides: a long winding way in
        draw.rectangle((i, i, 100 - i, 100 - i), outline=255, width=2)
        gap = (i + 1, 50, i + 2, 52) if (i // 6) % 2 else (99 - i, 48, 100 - i, 50)
        draw.rectangle(gap, fill=0)
    shapes.append(spiral)
    for shape in shapes:
        assert np.array_equal(white(fill_holes(shape)), flood_reference(shape))


def camera_like(size=(3000, 2000), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 12, 3)).astype(np.uint8)  # large areas of colour, as a scene has
    photo = np.asarray(Image.fromarray(base).resize(size, Image.BICUBIC)).astype(np.int16)
    return Image.fromarray(np.clip(photo + rng.normal(0, 3, photo.shape), 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_a_larger_photo_is_edited_as_a_copy_and_the_original_runs_whichever_arrives_first():
    from app.studio.editor import EDITOR_SIDE, is_copy_of, shown_copy, view_size
    from app.studio.runs import Session

    original = camera_like()
    assert view_size(original.size) == (EDITOR_SIDE, 853) and view_size((600, 900)) == (600, 900)
    as_the_page_scales = original.resize((1280, 853), Image.BILINEAR)  # another resampler than ours
    assert is_copy_of(original, shown_copy(original)) and is_copy_of(original, as_the_page_scales)
    assert not is_copy_of(original, camera_like(seed=1).resize((1280, 853)))  # another photo
    assert not is_copy_of(original, original.resize((1280, 900)))  # other proportions
    assert not is_copy_of(original.resize((1280, 853)), original)  # never a larger one

    first = Session()  # the original first, then the editor's first value
    first.take_original(original)
    assert first.set_photo(as_the_page_scales) and first.photo is original and first.view == (1280, 853)
    later = Session()  # the editor's value first: the copy is held until the original arrives
    later.set_photo(as_the_page_scales)
    assert later.photo.size == (1280, 853)
    later.take_original(original)
    assert later.photo is original
    stale = Session()  # an original of another photo never replaces the one in the editor
    stale.take_original(camera_like(seed=1))
    stale.set_photo(as_the_page_scales)
    assert stale.photo is as_the_page_scales and stale.original is None  # not held on to
    stale.take_original(original)  # this photo's own, arriving after
    assert stale.photo is original


def test_a_value_painted_on_an_earlier_mask_keeps_its_edits_against_that_mask():
    """Upper -> Lower -> Upper, with the page a step behind: the redraw to Upper was made (and numbered)
    but the editor still holds the Lower mask when it sends its value again (the next redraw, or Run).
    The edits are read against the mask the editor held, so neither the next redraw nor a run takes
    the difference between Lower and Upper for strokes and erasures."""
    from app.studio.runs import Session

    session = Session()
    session.show(Image.new("RGB", (20, 20), "gray"))
    upper, lower = Image.new("L", (20, 20), 0), Image.new("L", (20, 20), 0)
    upper.paste(255, (2, 2, 18, 10))
    lower.paste(255, (2, 8, 18, 18))
    tools_upper, tools_lower = ("upper", 0, 0.0), ("lower", 0, 0.0)
    first = session.redraw(None, upper, tools_upper, held=0)
    assert session.generation == 1
    painted = first.copy()
    painted.paste(0, (4, 4, 8, 8))  # erased
    painted.paste(255, (10, 12, 14, 16))  # a stroke
    as_lower = session.redraw(painted, lower, tools_lower, held=1)
    expected = session.as_redrawn(as_lower, upper, held=2)  # the Upper mask the user should get back
    assert not white(expected)[4:8, 4:8].any() and white(expected)[12:16, 10:14].all()
    assert white(expected)[2:4, 2:18].all()

    as_upper = session.redraw(as_lower, upper, tools_upper, held=2)  # made; the page still holds number 2
    assert session.generation == 3 and not session.holds_latest(2) and session.holds_latest(3)
    assert np.array_equal(white(as_upper), white(expected))
    # Run pressed now sends the editor's Lower mask, painted on number 2: the run gets the Upper mask.
    assert np.array_equal(white(session.as_redrawn(as_lower, upper, held=2)), white(expected))
    assert session.generation == 3  # a run's redraw sends nothing: no number taken
    # Read against the last mask sent instead (as before numbering), Lower's part counts as strokes.
    assert not np.array_equal(white(session.as_redrawn(as_lower, upper, held=3)), white(expected))
    # The next redraw, from the same stale value, also gives the user's mask, and then the editor's own.
    again = session.redraw(as_lower, upper, tools_upper, held=2)
    assert np.array_equal(white(again), white(expected))
    assert np.array_equal(white(session.redraw(again, upper, tools_upper, held=4)), white(expected))
    # Only the last few masks sent are kept; a new photo forgets them all.
    for _ in range(10):
        session.redraw(None, upper, tools_upper, held=session.generation)
    assert sorted(session.sent) == list(range(session.generation - 7, session.generation + 1))
    session.forget_mask()
    assert session.sent == {} and session.generation == 15


def test_a_mask_on_the_copy_is_the_same_mask_on_the_original():
    from app.studio.editor import scaled_mask
    from app.studio.runs import Session

    session = Session()
    session.take_original(camera_like())
    shown = session.show(camera_like())
    assert shown.size == (1280, 853) and session.photo.size == (3000, 2000)
    painted = Image.new("L", shown.size, 0)
    ImageDraw.Draw(painted).ellipse((400, 200, 800, 700), fill=255)
    ImageDraw.Draw(painted).line((100, 820, 1200, 820), fill=255, width=3)  # a thin stroke survives scaling
    on_photo = session.to_photo(painted)
    assert on_photo.size == (3000, 2000) and set(np.unique(np.asarray(on_photo))) <= {0, 255}
    nearest = np.asarray(painted.resize((3000, 2000), Image.NEAREST)) > 127
    assert ((np.asarray(on_photo) > 127) ^ nearest).mean() < 0.002  # only edge pixels differ
    assert (np.asarray(on_photo)[1915:1930] > 127).any()
    back = session.to_view(on_photo)
    assert ((np.asarray(back) > 127) ^ (np.asarray(painted) > 127)).mean() < 0.001
    assert scaled_mask(painted, painted.size).tobytes() == painted.tobytes()


def test_the_editors_empty_canvas_is_not_taken_for_a_new_photo():
    """While it loads, the editor may report its blank canvas as the background: the held photo and the
    mask shown on it stay (taking the canvas for an upload would forget the mask and skip a redraw)."""
    from app.studio.runs import Session, person_and_mask

    session = Session()
    photo = camera_like((300, 400))
    session.show(photo)
    session.shown = Image.new("L", photo.size, 0)
    session.shown.paste(255, (50, 50, 150, 150))
    for blank in (Image.new("RGBA", (64, 64), (0, 0, 0, 0)), Image.new("RGB", (300, 400), "white")):
        held, mask = person_and_mask(session, {"background": blank, "layers": []})
        assert held is photo and mask is session.shown
    other = camera_like((300, 400), seed=3)
    held, mask = person_and_mask(session, {"background": other, "layers": []})
    assert held is not photo and mask is None  # a real new photo still replaces it
