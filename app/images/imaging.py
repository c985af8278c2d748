"""Image geometry shared by the pipeline and the app: the reference's crop and pad, as boxes you can test."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps, UnidentifiedImageError

from app.errors import TryOnInputError

MAX_PIXELS = 50_000_000  # a 50-megapixel photo is plenty; larger is a mistake or a decompression bomb
Box = tuple[int, int, int, int]


def center_crop_box(size: tuple[int, int], target: tuple[int, int]) -> Box:
    """The centred box of ``size`` with the aspect of ``target``, in CatVTON's integer floor arithmetic."""
    w, h = size
    target_w, target_h = target
    if w / h < target_w / target_h:
        new_w, new_h = w, w * target_h // target_w
    else:
        new_w, new_h = h * target_w // target_h, h
    return (w - new_w) // 2, (h - new_h) // 2, (w + new_w) // 2, (h + new_h) // 2


def model_region(size: tuple[int, int], target: tuple[int, int], mask_box: Box | None = None,
                 margin: int = 0) -> Box:
    """The region of a photo of ``size`` the model sees, with the aspect of ``target``: it contains
    ``mask_box`` (grown by ``margin``, within the photo) so that no masked pixel is left out.

    Where the mask fits the reference's centre crop moved as little as possible, that is the region (same
    scale as the reference). Otherwise a larger region of the target's aspect that holds the whole mask,
    running past the photo's edges where it must (``crop_padded`` fills that part).
    """
    centre = center_crop_box(size, target)
    if mask_box is None:
        return centre
    w, h = size
    left, top = max(0, mask_box[0] - margin), max(0, mask_box[1] - margin)
    right, bottom = min(w, mask_box[2] + margin), min(h, mask_box[3] + margin)
    box_w, box_h = centre[2] - centre[0], centre[3] - centre[1]
    if right - left > box_w or bottom - top > box_h:
        target_w, target_h = target
        unit = math.gcd(target_w, target_h)
        unit_w, unit_h = target_w // unit, target_h // unit
        n = max(math.ceil((right - left) / unit_w), math.ceil((bottom - top) / unit_h))
        box_w, box_h = n * unit_w, n * unit_h

    def place(start: int, length: int, low: int, high: int, extent: int) -> int:
        if length > extent:  # past the photo on this side: centre it on the photo
            return (extent - length) // 2
        start = min(max(start, high - length), low)  # the least move that covers [low, high)
        return min(max(start, 0), extent - length)

    x = place(centre[0], box_w, left, right, w)
    y = place(centre[1], box_h, top, bottom, h)
    return x, y, x + box_w, y + box_h


def crop_padded(image: Image.Image, box: Box, fill: str = "edge") -> Image.Image:
    """``image.crop(box)`` for a box that may run past the image: the outside repeats the nearest edge
    pixels (``fill="edge"``, for photos) or is black (``fill="black"``, for masks)."""
    w, h = image.size
    if box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h:
        return image.crop(box)
    inner = (max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h))
    array = np.asarray(image.crop(inner))
    pads = [(inner[1] - box[1], box[3] - inner[3]), (inner[0] - box[0], box[2] - inner[2])]
    pads += [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, pads, mode="edge") if fill == "edge" else np.pad(array, pads)
    return Image.fromarray(padded, image.mode)


def fit_box(size: tuple[int, int], target: tuple[int, int]) -> Box:
    """Where an image of ``size``, scaled to fit inside ``target``, sits when centred on it."""
    w, h = size
    target_w, target_h = target
    if w / h < target_w / target_h:
        new_w, new_h = w * target_h // h, target_h
    else:
        new_w, new_h = target_w, h * target_w // w
    left, top = (target_w - new_w) // 2, (target_h - new_h) // 2
    return left, top, left + new_w, top + new_h


def resize_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop to the aspect of ``size`` (width, height), then LANCZOS-resize to it."""
    return image.crop(center_crop_box(image.size, size)).resize(size, Image.LANCZOS)


def resize_and_pad(image: Image.Image, size: tuple[int, int], fill=(255, 255, 255)) -> Image.Image:
    """LANCZOS-resize to fit inside ``size``, centred on a white RGB canvas of ``size``."""
    left, top, right, bottom = fit_box(image.size, size)
    canvas = Image.new("RGB", size, fill)
    canvas.paste(image.resize((right - left, bottom - top), Image.LANCZOS), (left, top))
    return canvas


def decode_image(data: bytes, role: str) -> Image.Image:
    """Bytes -> an upright PIL image, or a TryOnInputError naming ``role`` and what to send instead."""
    if not data:
        raise TryOnInputError(f"{role} image is empty: send the bytes of a PNG, JPEG or WebP file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise TryOnInputError(f"{role} image is {image.width}x{image.height}, over {MAX_PIXELS // 10**6} "
                                      "megapixels: send a smaller photo.")
            image.load()
    except TryOnInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        detail = "not a known image format" if isinstance(exc, UnidentifiedImageError) else str(exc)[:120]
        raise TryOnInputError(f"{role} is not an image that can be read ({len(data)} bytes starting "
                              f"{data[:8].hex(' ')}: {detail}); send a PNG, JPEG or WebP.") from None
    return ImageOps.exif_transpose(image)


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency put on white (cut-outs and editor renders have transparent areas)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """Soften a mask's edge without removing anything painted: the larger of the mask and its blur. Every
    painted pixel stays fully masked (a thin stroke is not blurred away); the blur fills pinholes and
    notches and softens the edge outward (the pipeline binarises at 0.5, paste-back feathers from it)."""
    mask = mask.convert("L")
    if radius <= 0:
        return mask
    binary = mask.point(lambda v: 255 if v >= 128 else 0)
    return ImageChops.lighter(binary, binary.filter(ImageFilter.GaussianBlur(radius)))


def feather_out(mask: Image.Image, radius: float) -> Image.Image:
    """White where ``mask`` is white (at least half), fading to black over about ``radius`` px outside it:
    the larger of the mask and twice its blur, so the fade starts at full strength on the mask's edge."""
    mask = mask.convert("L")
    if radius <= 0:
        return mask
    binary = mask.point(lambda v: 255 if v >= 128 else 0)
    doubled = binary.filter(ImageFilter.GaussianBlur(radius)).point(lambda v: min(255, 2 * v))
    return ImageChops.lighter(binary, doubled)
