"""A built-in example (person, garment, mask) drawn in code, so the demo runs before any upload."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFilter

SIZE = (384, 512)
SKIN, SHIRT, TROUSERS, HAIR = (224, 178, 148), (178, 34, 52), (40, 52, 86), (60, 40, 30)


def example_person() -> Image.Image:
    image = Image.new("RGB", SIZE, (236, 232, 226))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 440, 384, 512), fill=(205, 200, 192))  # floor
    draw.rectangle((150, 330, 186, 490), fill=TROUSERS)  # legs
    draw.rectangle((198, 330, 234, 490), fill=TROUSERS)
    draw.polygon([(96, 150), (130, 130), (254, 130), (288, 150), (300, 260), (268, 266), (256, 190),
                  (250, 340), (134, 340), (128, 190), (116, 266), (84, 260)], fill=SHIRT)  # shirt and sleeves
    draw.ellipse((86, 258, 112, 284), fill=SKIN)  # hands
    draw.ellipse((272, 258, 298, 284), fill=SKIN)
    draw.rectangle((176, 104, 208, 134), fill=SKIN)  # neck
    draw.ellipse((152, 34, 232, 118), fill=SKIN)  # head
    draw.chord((150, 28, 234, 96), 180, 360, fill=HAIR)
    return image.filter(ImageFilter.SMOOTH)


def example_garment() -> Image.Image:
    image = Image.new("RGB", (300, 340), (255, 255, 255))
    ImageDraw.Draw(image).polygon(
        [(40, 50), (110, 20), (150, 45), (190, 20), (260, 50), (290, 130), (240, 145), (232, 100),
         (236, 320), (64, 320), (68, 100), (60, 145), (10, 130)], fill=(46, 139, 87))
    return image


def example_mask() -> Image.Image:
    """White where the shirt and sleeves are: the area the garment replaces."""
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).polygon(
        [(90, 142), (128, 124), (256, 124), (294, 142), (306, 262), (262, 272), (256, 200), (256, 346),
         (128, 346), (128, 200), (122, 272), (78, 262)], fill=255)
    return mask
