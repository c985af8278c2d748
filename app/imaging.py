"""Image geometry shared by the pipeline and the app: the reference's crop and pad, as boxes you can test."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

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
    """Soften a mask's edge (the pipeline binarises at 0.5, so this rounds corners and fills pinholes)."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask
