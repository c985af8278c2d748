"""Masks: automatic ones from a human parser (SegFormer, ATR labels), mask tools, and paste-back.

The rules follow the spirit of CatVTON's AutoMasker without DensePose or detectron2: mask the
garment classes and the body parts the new garment will cover, protect the face, hair, accessories
and the garments that stay, fill holes, smooth, grow slightly. A drawn mask always wins.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from app.errors import ParserUnavailable, TryOnInputError, quoted
from app.images.imaging import Box, center_crop_box, feather_out

log = logging.getLogger(__name__)

# ATR-style labels (as in the SegFormer clothes parsers), by name so a checkpoint's own id2label maps them.
BACKGROUND, HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT = (
    "background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants", "dress", "belt")
LEFT_SHOE, RIGHT_SHOE, FACE, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, SCARF = (
    "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm", "right-arm", "bag", "scarf")
ATR_LABELS = (BACKGROUND, HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT, LEFT_SHOE, RIGHT_SHOE, FACE,
              LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, SCARF)

# What each garment type replaces (garments and the skin they will cover) and what it must keep.
RULES = {
    "upper": {"mask": {UPPER, DRESS, LEFT_ARM, RIGHT_ARM, SCARF},
              "protect": {FACE, HAIR, HAT, SUNGLASSES, PANTS, SKIRT, BELT, BAG, LEFT_SHOE, RIGHT_SHOE}},
    "lower": {"mask": {PANTS, SKIRT, LEFT_LEG, RIGHT_LEG, BELT},
              "protect": {FACE, HAIR, HAT, SUNGLASSES, UPPER, LEFT_ARM, RIGHT_ARM, BAG, LEFT_SHOE, RIGHT_SHOE}},
    "overall": {"mask": {UPPER, DRESS, PANTS, SKIRT, BELT, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, SCARF},
                "protect": {FACE, HAIR, HAT, SUNGLASSES, BAG, LEFT_SHOE, RIGHT_SHOE}},
}


def label_ids(id2label: dict[int, str]) -> dict[str, int]:
    return {name.strip().lower().replace(" ", "-").replace("_", "-"): int(i) for i, name in id2label.items()}


def mask_from_labels(labels: np.ndarray, garment_type: str, names: dict[str, int] | None = None,
                     grow: int | None = None) -> Image.Image:
    """The auto-mask rules on a label map (H x W ints): white where the new garment goes."""
    if garment_type not in RULES:
        raise TryOnInputError(f"garment_type={quoted(garment_type)} is not known: use one of {', '.join(RULES)}.")
    names = names or {name: i for i, name in enumerate(ATR_LABELS)}
    rule = RULES[garment_type]
    wanted = np.isin(labels, [names[n] for n in rule["mask"] if n in names])
    protected = np.isin(labels, [names[n] for n in rule["protect"] if n in names])
    mask = Image.fromarray(np.where(wanted, 255, 0).astype(np.uint8), "L")
    mask = fill_holes(mask)
    size = max(labels.shape)
    mask = smooth(mask, radius=max(1, size // 200))
    mask = grow_mask(mask, grow if grow is not None else max(1, size // 100))
    keep = np.asarray(mask) > 127
    keep &= ~protected  # protection wins over growth: faces and other garments stay as they are
    return Image.fromarray(np.where(keep, 255, 0).astype(np.uint8), "L")


# -- mask tools -------------------------------------------------------------------------------------

def fill_holes(mask: Image.Image) -> Image.Image:
    """Fill regions of black fully enclosed by white: everything black that the outside cannot reach.

    The outside spreads from the border along runs of black, by rows then by columns, until it stops
    growing: a few whole-array passes in numpy (a pixel-by-pixel flood fill took 7 s on a 6-megapixel photo).
    """
    black = np.asarray(mask.convert("L")) <= 127
    outside = np.zeros_like(black)
    outside[[0, -1], :], outside[:, [0, -1]] = black[[0, -1], :], black[:, [0, -1]]
    while True:
        spread = _along_runs(_along_runs(outside, black).T, black.T).T
        if np.array_equal(spread, outside):
            break
        outside = spread
    return Image.fromarray(np.where(outside, 0, 255).astype(np.uint8), "L")


def _along_runs(reached: np.ndarray, black: np.ndarray) -> np.ndarray:
    """Every run of black in a row that holds a reached pixel, reached whole."""
    height, width = black.shape
    flat = black.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]  # a run starts where black begins...
    starts[::width] = flat[::width]  # ...or at the start of a row
    run = np.cumsum(starts) * flat  # each black pixel's run number (1, 2, ...); 0 elsewhere
    hit = np.bincount(run, weights=reached.ravel(), minlength=int(run.max()) + 1) > 0
    hit[0] = False
    return hit[run].reshape(height, width)


AUTO_MASK_SIDE = 1024  # px: the long side at which the auto-mask rules run (the parser sees 512)
GROW_WORK_PIXELS = 2_000_000  # larger masks are grown at a reduced scale: seconds, not minutes


def grow_mask(mask: Image.Image, pixels: int) -> Image.Image:
    """Grow (pixels > 0) or shrink (pixels < 0) the white area by about ``pixels``.

    A mask over 2 megapixels is grown on a copy scaled down to 2 megapixels (by ``pixels`` times the
    scale) and brought back to black and white at full size: within a pixel or two of the scale.
    """
    mask = mask.convert("L")
    if pixels == 0:
        return mask
    step = ImageFilter.MaxFilter(3) if pixels > 0 else ImageFilter.MinFilter(3)
    scale = min(1.0, (GROW_WORK_PIXELS / (mask.width * mask.height)) ** 0.5)
    work = mask if scale == 1.0 else mask.resize((max(1, round(mask.width * scale)),
                                                  max(1, round(mask.height * scale))), Image.BILINEAR)
    for _ in range(max(1, round(abs(int(pixels)) * scale))):
        work = work.filter(step)
    if scale == 1.0:
        return work
    return work.resize(mask.size, Image.BILINEAR).point(lambda v: 255 if v >= 128 else 0)


def smooth(mask: Image.Image, radius: float) -> Image.Image:
    """Round jagged edges: blur, then threshold back to black and white."""
    blurred = mask.convert("L").filter(ImageFilter.GaussianBlur(radius))
    return blurred.point(lambda v: 255 if v >= 128 else 0)


def extend_down(mask: Image.Image, fraction: float) -> Image.Image:
    """For dresses and long coats: continue the mask's lower part downward by ``fraction`` of the height."""
    array = np.asarray(mask.convert("L")) > 127
    rows = np.flatnonzero(array.any(axis=1))
    if not len(rows) or fraction <= 0:
        return mask.convert("L")
    bottom = rows[-1]
    band = array[max(rows[0], bottom - max(2, (bottom - rows[0]) // 5)):bottom + 1].any(axis=0)
    cols = np.flatnonzero(band)
    extra = int(round(fraction * array.shape[0]))
    out = array.copy()
    out[bottom:min(array.shape[0], bottom + extra + 1), cols[0]:cols[-1] + 1] = True
    return Image.fromarray(np.where(out, 255, 0).astype(np.uint8), "L")


def apply_tools(mask: Image.Image, grow: int = 0, blur: float = 0.0, longer: float = 0.0) -> Image.Image:
    """The user's adjustments in a fixed order: extend, grow or shrink, then soften."""
    mask = extend_down(mask, longer) if longer else mask.convert("L")
    mask = grow_mask(mask, grow)
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


# -- keep my photo ----------------------------------------------------------------------------------

def paste_back(person: Image.Image, result: Image.Image, mask: Image.Image, feather: float = 8.0,
               box: Box | None = None) -> Image.Image:
    """The result put back into the original photo, inside the mask feathered outward, in the photo's size.

    The pipeline worked on ``box`` of the photo (default: the centred crop with the result's aspect; a box
    may run past the photo's edges, that part is dropped): the result is scaled back onto it, and only
    pixels under the mask or its feather change. Every masked pixel takes the result in full.
    """
    person = person.convert("RGB")
    box = center_crop_box(person.size, result.size) if box is None else box
    inner = (max(box[0], 0), max(box[1], 0), min(box[2], person.width), min(box[3], person.height))
    region = result.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.LANCZOS)
    region = region.crop((inner[0] - box[0], inner[1] - box[1], inner[2] - box[0], inner[3] - box[1]))
    alpha = feather_out(mask.convert("L").crop(inner), feather)
    out = person.copy()
    out.paste(Image.composite(region, person.crop(inner), alpha), inner[:2])
    return out


# -- the parser -------------------------------------------------------------------------------------

class HumanParser:
    """A SegFormer human parser from a local folder (config.json, model.safetensors, preprocessor_config.json)."""

    def __init__(self, folder: Path, device: str = "cpu"):
        import torch
        from transformers import SegformerForSemanticSegmentation

        self.folder = Path(folder)
        started = time.perf_counter()
        self.model = SegformerForSemanticSegmentation.from_pretrained(self.folder).to(device).eval()
        self.device = device
        config = json.loads((self.folder / "preprocessor_config.json").read_text())
        size = config.get("size", {"height": 512, "width": 512})
        self.input_size = (size["width"], size["height"]) if isinstance(size, dict) else (size, size)
        self.mean = torch.tensor(config.get("image_mean", [0.485, 0.456, 0.406])).view(1, 3, 1, 1)
        self.std = torch.tensor(config.get("image_std", [0.229, 0.224, 0.225])).view(1, 3, 1, 1)
        self.names = label_ids(self.model.config.id2label)
        self.load_seconds = time.perf_counter() - started

    def labels(self, image: Image.Image) -> np.ndarray:
        """The label of every pixel of ``image`` (H x W)."""
        import torch
        import torch.nn.functional as F

        rgb = image.convert("RGB")
        array = np.asarray(rgb.resize(self.input_size, Image.BILINEAR), dtype=np.float32) / 255.0
        pixels = (torch.from_numpy(array).permute(2, 0, 1)[None] - self.mean) / self.std
        with torch.no_grad():
            logits = self.model(pixel_values=pixels.to(self.device)).logits
            logits = F.interpolate(logits, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)[0].cpu().numpy()

    def auto_mask(self, image: Image.Image, garment_type: str) -> Image.Image:
        """The mask for ``garment_type`` in the photo's size. The rules run on the labels at most
        AUTO_MASK_SIDE px on the long side (the parser itself sees far less) and the mask is scaled up:
        a camera photo's mask in a fraction of a second instead of ten seconds."""
        scale = min(1.0, AUTO_MASK_SIDE / max(image.size))
        if scale == 1.0:
            return mask_from_labels(self.labels(image), garment_type, self.names)
        work = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.BILINEAR)
        mask = mask_from_labels(self.labels(work), garment_type, self.names)
        return mask.resize(image.size, Image.BILINEAR).point(lambda v: 255 if v >= 128 else 0)


class ParserHolder:
    """Loads the parser once per process, on first use, and remembers why it is unavailable."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._parser: HumanParser | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return all((self.folder / name).is_file() for name in ("config.json", "model.safetensors",
                                                               "preprocessor_config.json"))

    def get(self) -> HumanParser:
        with self._lock:
            if self._parser is None:
                if not self.available:
                    raise ParserUnavailable(
                        f"auto masks are unavailable: the human parser is not in {self.folder}. Fetch it with "
                        "python -m app download --with-parser, or paint the mask by hand.")
                self._parser = HumanParser(self.folder)
                log.info("human parser loaded in %.1f s", self._parser.load_seconds)
            return self._parser
