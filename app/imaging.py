"""Image geometry shared by the pipeline and the app: the reference's crop and pad, as boxes you can test."""

from __future__ import annotations

from PIL import Image

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
