"""The person editor's contents in photo coordinates: the mask layer the studio loads into Gradio's
ImageEditor, and the mask read back from what the editor sends.

Gradio's editor (6.x) has traps this module keeps away from the try-on:
- A value's ``composite`` is drawn as the editor's *background*, so a composite carrying the mask would be
  baked into the photo the model receives. Nothing here ever paints into the photo.
- A layer loaded from a URL is centred inside the editor's container bounds, which also span the initial
  canvas (``canvas_size``) long after a smaller photo was loaded. Layers are therefore padded to
  ``max(canvas, photo)`` and anchored top-left, so they land on the photo's own pixels.
- Its default file format is lossy WebP; the studio asks for PNG.
- It reads its pixels back (a GPU readback and a PNG per layer) on every loading-status update of the page,
  not only for the events that send it; the page keeps one read until the editor can have changed
  (``EDITOR_READS_JS`` in ``app.studio.page``).

No Gradio import here: plain PIL functions, tested without a browser.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

MASK_COLOR = (255, 43, 214)  # the brush colour: a magenta that clothes rarely have
MASK_HEX = "#{:02x}{:02x}{:02x}".format(*MASK_COLOR)
CANVAS_SIZE = (64, 64)  # the editor's initial canvas; kept small so it never widens the container bounds
# px: the long side of the copy of a larger photo that the editor holds. The editor encodes its photo as PNG
# for every event that reads it (Auto mask, each redraw, Run): a camera photo (6 megapixels) costs seconds
# each time, a copy at this size a fraction. The original is held on the server and is what runs; a mask
# drawn on the copy is scaled up to it. The parser works at 1024 px, so the copy loses no automatic detail.
EDITOR_SIDE = 1280


def photo_digest(image: Image.Image) -> str:
    """Identifies a photo by its pixels, to tell the editor's echo of our own value from a new upload."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def view_size(photo_size: tuple[int, int]) -> tuple[int, int]:
    """The size the editor shows a photo at: its own up to EDITOR_SIDE, else scaled down to it (as the page
    scales it: the long side EDITOR_SIDE, the other rounded)."""
    width, height = photo_size
    if max(width, height) <= EDITOR_SIDE:
        return width, height
    scale = EDITOR_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def shown_copy(photo: Image.Image) -> Image.Image:
    """What the editor gets for ``photo``: the photo itself, or its copy at ``view_size``."""
    size = view_size(photo.size)
    return photo if size == photo.size else photo.resize(size, Image.LANCZOS)


def is_copy_of(original: Image.Image, shown: Image.Image) -> bool:
    """Whether ``shown`` (as the editor sends it) is ``original`` scaled down: the same proportions and,
    scaled to the same size, the same picture (resampling differs by a few levels, another photo by tens)."""
    if shown.width >= original.width or shown.height >= original.height:
        return False
    if abs(original.width * shown.height - original.height * shown.width) > max(original.size):
        return False  # other proportions (over one pixel of rounding on the copy's short side)
    small = np.asarray(original.convert("RGB").resize(shown.size, Image.BOX), dtype=np.int16)
    return float(np.abs(small - np.asarray(shown.convert("RGB"), dtype=np.int16)).mean()) < 6.0


def scaled_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A white-on-black mask at another size, still binary: the editor's mask on the photo that runs (or the
    photo's automatic mask on the editor's copy). Smooth edges, not blocks: resampled, then cut at half."""
    mask = mask.convert("L")
    if mask.size == size:
        return mask
    return mask.resize(size, Image.BILINEAR).point(lambda v: 255 if v >= 128 else 0)


def layer_size(photo_size: tuple[int, int]) -> tuple[int, int]:
    return max(CANVAS_SIZE[0], photo_size[0]), max(CANVAS_SIZE[1], photo_size[1])


def mask_layer(mask: Image.Image) -> Image.Image:
    """``mask`` (white = replace) as a brush-coloured RGBA layer, padded so the editor places it at (0, 0)."""
    binary = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    alpha = Image.new("L", layer_size(mask.size), 0)
    alpha.paste(binary, (0, 0))
    layer = Image.new("RGBA", alpha.size, MASK_COLOR + (0,))
    layer.putalpha(alpha)
    return layer


def painted_mask(value: dict | None, photo_size: tuple[int, int]) -> Image.Image:
    """The painted area of the editor's layers (any non-transparent pixel) in photo coordinates, white on black."""
    mask = Image.new("L", photo_size, 0)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != photo_size:
            if alpha.width >= photo_size[0] and alpha.height >= photo_size[1]:
                alpha = alpha.crop((0, 0, *photo_size))  # the padding of mask_layer, or the editor's own canvas
            else:
                alpha = alpha.resize(photo_size, Image.NEAREST)
        mask.paste(255, (0, 0), alpha.point(lambda a: 255 if a > 0 else 0))
    return mask


class MaskEdits:
    """The user's own edits to the automatic mask, kept as layers of their own: strokes (added by the brush)
    and erasures (removed by the eraser). A redraw of the automatic mask (another garment type, grow,
    longer) re-applies both, so no edit is lost however often the automatic part changes.
    """

    def __init__(self, size: tuple[int, int]):
        self.strokes = np.zeros((size[1], size[0]), dtype=bool)
        self.erased = np.zeros_like(self.strokes)

    def copy(self) -> MaskEdits:
        twin = MaskEdits((self.strokes.shape[1], self.strokes.shape[0]))
        twin.strokes, twin.erased = self.strokes.copy(), self.erased.copy()
        return twin

    def absorb(self, painted: Image.Image, shown: Image.Image | None) -> None:
        """Take in what the user did to ``shown`` (the mask last drawn in the editor; None: nothing was):
        what ``painted`` adds is a stroke, what it removes an erasure, the latest edit of a pixel wins."""
        now = np.asarray(painted.convert("L")) > 127
        before = np.zeros_like(now) if shown is None else np.asarray(shown.convert("L")) > 127
        added, removed = now & ~before, before & ~now
        self.strokes = (self.strokes | added) & ~removed
        self.erased = (self.erased | removed) & ~added

    def compose(self, auto: Image.Image | None) -> Image.Image:
        """The mask to show: ``auto`` less the erasures, plus the strokes."""
        base = np.zeros_like(self.strokes) if auto is None else np.asarray(auto.convert("L")) > 127
        return Image.fromarray(np.where((base & ~self.erased) | self.strokes, 255, 0).astype(np.uint8), "L")
