"""Built-in examples (persons, garments, a mask) drawn in code, so the demo runs before any upload.

Flat illustrations, no photographs, so they carry no third-party rights. ``python -m app.studio.demo_images
assets/examples`` writes every file plus ``catalogue.json`` (labels and garment types); a test checks
that the committed files are exactly what this module draws.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = (384, 512)
SKIN, SHIRT, TROUSERS, HAIR = (224, 178, 148), (178, 34, 52), (40, 52, 86), (60, 40, 30)
WHITE = (255, 255, 255)
CATALOGUE = "catalogue.json"


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


# --- Persons in other poses, builds and outfits -------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One standing person. Body coordinates are in figure units: 0 is the top of the head, 100 the soles,
    x is measured from the body's centre line (``build`` widens or narrows the body, not the head)."""

    size: tuple[int, int]
    height: int  # pixels from the top of the head to the soles
    feet_y: int  # pixel row of the soles
    floor_y: int  # pixel row where the floor starts
    top: str = "tshirt"  # "tshirt", "longsleeve" or "dress" (a dress is top and bottoms in one)
    bottom: str = "trousers"  # "trousers" or "skirt"; ignored under a dress
    pose: str = "down"  # "down": arms by the sides; "out": arms and legs spread
    build: float = 1.0
    top_colour: tuple[int, int, int] = SHIRT
    bottom_colour: tuple[int, int, int] = TROUSERS
    skin: tuple[int, int, int] = SKIN
    hair: tuple[int, int, int] = HAIR
    long_hair: bool = False
    shoes: tuple[int, int, int] = (46, 42, 40)
    wall: tuple[int, int, int] = (236, 232, 226)
    floor: tuple[int, int, int] = (205, 200, 192)


SLEEVE_LENGTH = {"tshirt": 0.4, "longsleeve": 0.9, "dress": 0.18}  # fraction of the arm, shoulder to hand


def draw_person(figure: Figure) -> Image.Image:
    f = figure
    scale = f.height / 100
    centre_x, top_y = f.size[0] / 2, f.feet_y - f.height

    def at(x: float, y: float, body: bool = True) -> tuple[float, float]:
        return centre_x + x * scale * (f.build if body else 1.0), top_y + y * scale

    def box(x0: float, y0: float, x1: float, y1: float, body: bool = True) -> tuple[float, float, float, float]:
        return (*at(x0, y0, body), *at(x1, y1, body))

    def limb(start: tuple[float, float], end: tuple[float, float], width: float, fill) -> None:
        """A straight band of ``width`` figure units from ``start`` to ``end`` (points in figure units)."""
        (x0, y0), (x1, y1) = at(*start), at(*end)
        length = math.hypot(x1 - x0, y1 - y0)
        nx, ny = (y0 - y1) / length * width * scale / 2, (x1 - x0) / length * width * scale / 2
        draw.polygon([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)], fill=fill)

    image = Image.new("RGB", f.size, f.wall)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, f.floor_y, f.size[0], f.size[1]), fill=f.floor)
    if f.long_hair:  # behind the head and shoulders
        draw.rounded_rectangle(box(-10, 2, 10, 31, body=False), radius=4 * scale, fill=f.hair)

    ankle_x, hand = (11.0, (37.0, 41.0)) if f.pose == "out" else (4.8, (19.5, 51.5))
    for side in (-1, 1):  # legs, then what covers them, then shoes
        if f.top == "dress" or f.bottom == "skirt":
            limb((side * 4.3, 56), (side * ankle_x, 96), 5.2, f.skin)
        else:
            limb((side * 4.6, 53), (side * ankle_x, 96), 8.2, f.bottom_colour)
    if f.top != "dress":
        if f.bottom == "skirt":
            draw.polygon([at(-10.5, 53), at(10.5, 53), at(17, 77), at(-17, 77)], fill=f.bottom_colour)
        else:
            draw.polygon([at(-9, 53), at(9, 53), at(8.6, 63), at(-8.6, 63)], fill=f.bottom_colour)
    for side in (-1, 1):
        draw.ellipse(box(side * (ankle_x + 1) - 4.6, 95, side * (ankle_x + 1) + 4.6, 100), fill=f.shoes)

    sleeve = SLEEVE_LENGTH[f.top]
    for side in (-1, 1):  # bare arms, sleeves over them, hands
        shoulder, wrist = (side * 10, 26.5), (side * hand[0], hand[1])  # inside the torso: no corner shows
        cuff = (shoulder[0] + (wrist[0] - shoulder[0]) * sleeve, shoulder[1] + (wrist[1] - shoulder[1]) * sleeve)
        limb(shoulder, wrist, 4.8, f.skin)
        limb(shoulder, cuff, 8.4, f.top_colour)
        draw.ellipse(box(wrist[0] - 3, wrist[1] - 3, wrist[0] + 3, wrist[1] + 3), fill=f.skin)

    draw.rectangle(box(-3.5, 15, 3.5, 26, body=False), fill=f.skin)  # neck, under the neckline
    body = [(-5, 21), (-12.5, 22), (-15, 26.5), (-13.5, 40)]
    body += [(-12, 52), (-19.5, 80)] if f.top == "dress" else [(-12.5, 58.5)]
    draw.polygon([at(x, y) for x, y in body + [(-x, y) for x, y in reversed(body)] + [(0, 24.5)]], fill=f.top_colour)

    draw.ellipse(box(-8.5, 0.5, 8.5, 18.5, body=False), fill=f.skin)  # head, face, hair
    features = tuple(max(0, c - 110) for c in f.skin)
    for side in (-1, 1):
        draw.ellipse(box(side * 3.2 - 0.8, 9, side * 3.2 + 0.8, 10.8, body=False), fill=features)
    draw.chord(box(-2.4, 12.2, 2.4, 15.2, body=False), 0, 180, fill=features)
    draw.chord(box(-9, -1, 9, 13.5, body=False), 180, 360, fill=f.hair)
    return image.filter(ImageFilter.SMOOTH)


def person_arms_out() -> Image.Image:
    return draw_person(Figure((512, 640), height=540, feet_y=612, floor_y=540, pose="out",
                              top_colour=(222, 170, 40), bottom_colour=(58, 86, 140), skin=(198, 140, 104),
                              hair=(32, 26, 24), wall=(226, 232, 236), floor=(190, 196, 202)))


def person_tall() -> Image.Image:
    return draw_person(Figure((480, 800), height=720, feet_y=772, floor_y=700, top="longsleeve", build=0.84,
                              top_colour=(36, 94, 110), bottom_colour=(196, 170, 128), skin=(240, 204, 176),
                              hair=(196, 156, 88), shoes=(92, 60, 40), wall=(238, 236, 230)))


def person_far() -> Image.Image:
    return draw_person(Figure((600, 800), height=360, feet_y=660, floor_y=560, top_colour=(230, 120, 50),
                              bottom_colour=(70, 72, 80), skin=(141, 85, 52), hair=(24, 20, 20),
                              wall=(222, 228, 222), floor=(176, 168, 156)))


def person_dress() -> Image.Image:
    return draw_person(Figure((600, 800), height=700, feet_y=770, floor_y=690, top="dress",
                              top_colour=(70, 140, 200), skin=(230, 186, 156), hair=(112, 62, 34), long_hair=True,
                              shoes=(150, 40, 60), wall=(240, 234, 230)))


def person_skirt() -> Image.Image:
    return draw_person(Figure((512, 640), height=560, feet_y=616, floor_y=552, bottom="skirt",
                              top_colour=(232, 150, 172), bottom_colour=(40, 40, 48), skin=(170, 110, 76),
                              hair=(28, 22, 20), long_hair=True, wall=(232, 230, 238), floor=(196, 192, 200)))


# --- Garments of each type, flat on white ---------------------------------------------------------------------


def garment_jacket() -> Image.Image:
    cloth, dark = (72, 104, 150), (46, 70, 108)
    image = Image.new("RGB", (360, 420), WHITE)
    draw = ImageDraw.Draw(image)
    draw.polygon([(150, 28), (180, 40), (210, 28), (270, 50), (300, 120), (332, 330), (286, 340), (258, 150),
                  (262, 392), (98, 392), (102, 150), (74, 340), (28, 330), (60, 120), (90, 50)], fill=cloth)
    draw.polygon([(28, 330), (74, 340), (77, 318), (31, 308)], fill=dark)  # cuffs
    draw.polygon([(332, 330), (286, 340), (283, 318), (329, 308)], fill=dark)
    draw.rectangle((98, 374, 262, 392), fill=dark)  # hem band
    draw.polygon([(150, 28), (180, 72), (164, 84), (136, 38)], fill=dark)  # collar
    draw.polygon([(210, 28), (180, 72), (196, 84), (224, 38)], fill=dark)
    draw.line([(180, 72), (180, 392)], fill=(200, 200, 206), width=3)  # zip
    draw.rectangle((118, 200, 156, 236), outline=dark, width=3)  # chest pockets
    draw.rectangle((204, 200, 242, 236), outline=dark, width=3)
    return image


def garment_jeans() -> Image.Image:
    cloth, seam = (58, 86, 140), (38, 60, 104)
    image = Image.new("RGB", (300, 440), WHITE)
    draw = ImageDraw.Draw(image)
    draw.polygon([(70, 44), (230, 44), (244, 420), (162, 420), (150, 150), (138, 420), (56, 420)], fill=cloth)
    draw.rectangle((70, 20, 230, 44), fill=seam)  # waistband
    draw.ellipse((144, 26, 156, 38), fill=(200, 170, 90))  # button
    draw.line([(150, 44), (150, 120)], fill=seam, width=3)  # fly
    draw.arc((44, 8, 124, 92), 0, 90, fill=seam, width=3)  # front pockets
    draw.arc((176, 8, 256, 92), 90, 180, fill=seam, width=3)
    draw.line([(64, 400), (140, 400)], fill=seam, width=3)  # hems
    draw.line([(160, 400), (242, 400)], fill=seam, width=3)
    return image


def garment_skirt() -> Image.Image:
    cloth, pleat = (170, 40, 60), (128, 26, 44)
    image = Image.new("RGB", (320, 300), WHITE)
    draw = ImageDraw.Draw(image)
    draw.polygon([(100, 52), (220, 52), (292, 272), (28, 272)], fill=cloth)
    draw.rectangle((100, 30, 220, 52), fill=pleat)  # waistband
    for i in range(1, 6):  # pleats fan out from the waist to the hem
        draw.line([(100 + 20 * i, 52), (28 + 44 * i, 272)], fill=pleat, width=3)
    return image


def garment_dress() -> Image.Image:
    cloth, belt = (236, 116, 96), (186, 70, 60)
    shape = [(112, 72), (132, 72), (160, 96), (188, 72), (208, 72), (206, 184), (292, 460), (28, 460), (114, 184)]
    image = Image.new("RGB", (320, 480), WHITE)
    draw = ImageDraw.Draw(image)
    draw.line([(116, 74), (122, 22)], fill=cloth, width=8)  # straps
    draw.line([(204, 74), (198, 22)], fill=cloth, width=8)
    draw.polygon(shape, fill=cloth)
    dots = Image.new("L", image.size, 0)  # white dots, only on the cloth
    dots_draw = ImageDraw.Draw(dots)
    for row, y in enumerate(range(110, 460, 34)):
        for x in range(20 + 17 * (row % 2), 320, 34):
            dots_draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=255)
    cloth_mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(cloth_mask).polygon(shape, fill=255)
    image.paste(WHITE, (0, 0), ImageChops.multiply(dots, cloth_mask))
    draw.rectangle((114, 178, 206, 192), fill=belt)
    return image


# --- The catalogue: file name, label, garment type, drawing ---------------------------------------------------


@dataclass(frozen=True)
class BuiltIn:
    file: str
    label: str
    draw: Callable[[], Image.Image]
    garment_type: str | None = None  # garments only: "upper", "lower" or "overall"
    mask: str | None = None  # persons only: the file of a matching upper-body mask, for scripts


PEOPLE = (
    BuiltIn("person-1.png", "Front, red shirt", example_person, mask="mask-1.png"),
    BuiltIn("person-2.png", "Arms out, yellow T-shirt", person_arms_out),
    BuiltIn("person-3.png", "Tall, long sleeves", person_tall),
    BuiltIn("person-4.png", "Far away, orange T-shirt", person_far),
    BuiltIn("person-5.png", "Blue dress", person_dress),
    BuiltIn("person-6.png", "Pink top, black skirt", person_skirt),
)
GARMENTS = (
    BuiltIn("garment-1.png", "Green T-shirt", example_garment, "upper"),
    BuiltIn("garment-2.png", "Denim jacket", garment_jacket, "upper"),
    BuiltIn("garment-3.png", "Jeans", garment_jeans, "lower"),
    BuiltIn("garment-4.png", "Pleated skirt", garment_skirt, "lower"),
    BuiltIn("garment-5.png", "Summer dress", garment_dress, "overall"),
)
MASKS = (BuiltIn("mask-1.png", "Upper body of person-1", example_mask),)


def catalogue() -> dict:
    """What ``catalogue.json`` holds: every built-in person and garment in display order."""
    people = [{"file": p.file, "label": p.label, **({"mask": p.mask} if p.mask else {})} for p in PEOPLE]
    garments = [{"file": g.file, "label": g.label, "type": g.garment_type} for g in GARMENTS]
    return {"people": people, "garments": garments}


def render_examples() -> dict[str, bytes]:
    """Every built-in file, by name, as the bytes committed under assets/examples."""
    files = {}
    for item in PEOPLE + GARMENTS + MASKS:
        buffer = io.BytesIO()
        item.draw().save(buffer, "PNG")
        files[item.file] = buffer.getvalue()
    files[CATALOGUE] = (json.dumps(catalogue(), indent=2) + "\n").encode()
    return files


def write_examples(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in render_examples().items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/examples")
    for path in write_examples(target):
        print(f"{path} ({path.stat().st_size} bytes)")
