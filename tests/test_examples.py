"""Example persons and garments: the drawn built-ins match the committed files, and the studio lists
the built-ins and then the user's own catalogue from the volume, in a predictable order."""

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.config import VolumeLayout
from app.studio import demo_images, examples
from app.studio.examples import ExampleImage, example_garments, example_people

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "examples"

BUILTIN_PEOPLE = [
    ("person-1.png", "Front, red shirt"),
    ("person-2.png", "Arms out, yellow T-shirt"),
    ("person-3.png", "Tall, long sleeves"),
    ("person-4.png", "Far away, orange T-shirt"),
    ("person-5.png", "Blue dress"),
    ("person-6.png", "Pink top, black skirt"),
]
BUILTIN_GARMENTS = [
    ("garment-1.png", "Green T-shirt", "upper"),
    ("garment-2.png", "Denim jacket", "upper"),
    ("garment-3.png", "Jeans", "lower"),
    ("garment-4.png", "Pleated skirt", "lower"),
    ("garment-5.png", "Summer dress", "overall"),
]


def test_committed_files_are_what_the_drawings_make():
    rendered = demo_images.render_examples()
    committed = {p.name for p in ASSETS.iterdir() if p.name != "README.md"}
    assert set(rendered) == committed, "assets/examples and app/studio/demo_images.py list different files"
    for name, data in rendered.items():
        if name.endswith(".png"):  # pixels first: a clearer failure than differing bytes
            assert Image.open(io.BytesIO(data)).tobytes() == Image.open(ASSETS / name).tobytes(), (
                f"{name} differs from its drawing; run `python -m app.studio.demo_images assets/examples`")
        assert data == (ASSETS / name).read_bytes(), f"{name}: run `python -m app.studio.demo_images assets/examples`"


def test_first_example_stays_the_one_tests_and_docs_use():
    for name, draw in (("person-1.png", demo_images.example_person), ("garment-1.png", demo_images.example_garment),
                       ("mask-1.png", demo_images.example_mask)):
        assert draw().tobytes() == Image.open(ASSETS / name).tobytes()


def test_regenerate_command_writes_every_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.studio.demo_images", str(tmp_path / "examples")], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    written = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert written == sorted(demo_images.render_examples())
    assert "catalogue.json" in out.stdout
    for name in written:
        assert (tmp_path / "examples" / name).read_bytes() == (ASSETS / name).read_bytes()


def test_drawn_images_have_the_intended_sizes_and_stay_small():
    sizes = {}
    for name in [n for n, _ in BUILTIN_PEOPLE] + [n for n, _, _ in BUILTIN_GARMENTS]:
        with Image.open(ASSETS / name) as image:
            assert image.mode == "RGB"
            sizes[name] = image.size
        assert (ASSETS / name).stat().st_size < 16_000
    assert {sizes[n] for n, _ in BUILTIN_PEOPLE} == {(384, 512), (512, 640), (480, 800), (600, 800)}
    assert all(max(size) <= 800 for size in sizes.values())
    with Image.open(ASSETS / "garment-5.png") as dress:  # garments lie on white: the corners are white
        assert dress.getpixel((0, 0)) == dress.getpixel((319, 479)) == (255, 255, 255)


def test_catalogue_names_the_mask_of_the_first_person():
    catalogue = json.loads((ASSETS / "catalogue.json").read_text())
    assert catalogue["people"][0] == {"file": "person-1.png", "label": "Front, red shirt", "mask": "mask-1.png"}


def test_builtins_are_listed_in_catalogue_order_with_types():
    assert example_people(None) == [ExampleImage(ASSETS / f, label, None) for f, label in BUILTIN_PEOPLE]
    assert example_garments(None) == [ExampleImage(ASSETS / f, label, kind) for f, label, kind in BUILTIN_GARMENTS]
    assert all(e.path.is_file() for e in example_people(None) + example_garments(None))


def _touch(path: Path, data: bytes = b"image bytes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_user_catalogue_follows_the_builtins_sorted_by_name(tmp_path):
    person = tmp_path / "examples" / "person"
    garment = tmp_path / "examples" / "garment"
    _touch(person / "Studio_shot-2.JPG")
    _touch(person / "anna-front.png")
    _touch(person / ".hidden.png")
    _touch(person / ".anna.png.x1y2.tmp")  # an upload being written (outputs.py's temp naming)
    _touch(person / "anna-front.png~")
    _touch(person / "notes.txt")
    _touch(person / "empty.png", b"")  # a copy still in progress
    (person / "album.png").mkdir()
    (person / "missing.webp").symlink_to(tmp_path / "nowhere.webp")
    _touch(person / "nested" / "deep.png")  # only the folder's own files count
    _touch(garment / "b_scarf.webp")
    _touch(garment / "upper" / "a-hoodie.jpeg")
    _touch(garment / "lower" / "c-shorts.png")
    _touch(garment / "overall" / "D-overalls.PNG")
    _touch(garment / "overall" / "readme.md")
    _touch(garment / "shoes" / "e-boots.png")  # not a garment type: not listed

    people = example_people(tmp_path)
    garments = example_garments(tmp_path)

    assert [(e.path, e.label, e.garment_type) for e in people[len(BUILTIN_PEOPLE):]] == [
        (person / "anna-front.png", "anna front", None),
        (person / "Studio_shot-2.JPG", "Studio shot 2", None),
    ]
    assert [(e.path, e.label, e.garment_type) for e in garments[len(BUILTIN_GARMENTS):]] == [
        (garment / "upper" / "a-hoodie.jpeg", "a hoodie", "upper"),
        (garment / "b_scarf.webp", "b scarf", None),
        (garment / "lower" / "c-shorts.png", "c shorts", "lower"),
        (garment / "overall" / "D-overalls.PNG", "D overalls", "overall"),
    ]
    assert [e.label for e in garments[:len(BUILTIN_GARMENTS)]] == [label for _, label, _ in BUILTIN_GARMENTS]
    assert VolumeLayout(tmp_path).examples == tmp_path / "examples"


def test_an_unreadable_entry_is_skipped_with_a_warning(tmp_path, caplog):
    person = tmp_path / "examples" / "person"
    _touch(person / "b.png")
    (person / "a.png").symlink_to(tmp_path / "gone.png")  # dangling: stat fails
    _touch(tmp_path / "examples" / "garment")  # a file where the folder should be
    with caplog.at_level(logging.WARNING, logger="app.studio.examples"):
        people = example_people(tmp_path)
        garments = example_garments(tmp_path)
    assert [e.path for e in people[len(BUILTIN_PEOPLE):]] == [person / "b.png"]
    assert [e.label for e in garments] == [label for _, label, _ in BUILTIN_GARMENTS]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(person / "a.png") in messages and str(tmp_path / "examples" / "garment") in messages


def test_absent_or_empty_volume_folder_lists_the_builtins_only(tmp_path):
    assert example_people(tmp_path / "no-volume") == example_people(None)
    assert example_garments(tmp_path) == example_garments(None)
    (tmp_path / "examples" / "garment" / "upper").mkdir(parents=True)
    assert example_garments(tmp_path) == example_garments(None)
    assert len(example_garments(None)) == len(BUILTIN_GARMENTS)


def test_a_huge_folder_is_capped(tmp_path, caplog):
    person = tmp_path / "examples" / "person"
    for i in range(60):
        _touch(person / f"p{i:02d}.png")
    with caplog.at_level(logging.WARNING, logger="app.studio.examples"):
        people = example_people(tmp_path)
    assert len(people) == examples.MAX_EXAMPLES
    assert people[len(BUILTIN_PEOPLE)].label == "p00"
    assert people[-1].label == f"p{examples.MAX_EXAMPLES - len(BUILTIN_PEOPLE) - 1:02d}"
    assert any("not shown" in r.getMessage() for r in caplog.records)


def test_broken_catalogue_leaves_the_user_examples(tmp_path, monkeypatch, caplog):
    builtins = tmp_path / "assets"
    _touch(builtins / "catalogue.json", b"{not json")
    _touch(tmp_path / "volume" / "examples" / "person" / "mine.png")
    monkeypatch.setattr(examples, "BUILTIN_DIR", builtins)
    with caplog.at_level(logging.WARNING, logger="app.studio.examples"):
        people = example_people(tmp_path / "volume")
    assert people == [ExampleImage(tmp_path / "volume" / "examples" / "person" / "mine.png", "mine", None)]
    assert "catalogue.json" in caplog.text


@pytest.mark.parametrize("entry, expected", [
    ({"file": "x.png", "label": "X", "type": "shoes"}, [("X", None)]),  # unknown type: listed untyped
    ({"file": "gone.png", "label": "Gone", "type": "upper"}, []),  # listed but missing: skipped
    ({"label": "No file"}, []),  # malformed: skipped
])
def test_catalogue_entries_are_checked(tmp_path, monkeypatch, entry, expected):
    _touch(tmp_path / "x.png")
    _touch(tmp_path / "catalogue.json", json.dumps({"people": [], "garments": [entry]}).encode())
    monkeypatch.setattr(examples, "BUILTIN_DIR", tmp_path)
    assert [(e.label, e.garment_type) for e in example_garments(None)] == expected


def test_examples_module_stays_light():
    code = ("import sys, app.studio.examples; "
            "print(sorted(m for m in ('torch', 'gradio', 'diffusers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
