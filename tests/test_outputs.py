"""The results store: owners' folders, ids that sort and locate, pages that cost O(page), upkeep at start."""

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

from PIL import Image

from app.tryons.outputs import LEGACY_OWNER, ResultStore, owner_key, public_metadata


def store_at(tmp_path, **kwargs) -> ResultStore:
    return ResultStore(tmp_path / "outputs", tmp_path, **kwargs)


def test_save_writes_png_and_sidecar_in_the_owners_month_folder(tmp_path):
    store = store_at(tmp_path)
    saved = store.save(Image.new("RGB", (16, 24), "red"), {"seed": 3}, inputs={"person": Image.new("RGB", (4, 4))},
                       owner="user:alice")
    now = datetime.now(timezone.utc)
    assert saved.image_path.parent == tmp_path / "outputs" / owner_key("user:alice") / f"{now:%Y-%m}"
    record = json.loads(saved.sidecar_path.read_text())
    assert record["seed"] == 3 and record["owner"] == "user:alice" and record["image"] == saved.metadata["image"]
    assert record["id"] == saved.id and saved.id.endswith(owner_key("user:alice"))
    assert len(record["inputs"]["person"]) == 16
    assert sorted(p.name for p in saved.image_path.parent.iterdir()) == sorted(
        [saved.image_path.name, saved.sidecar_path.name])
    with Image.open(saved.image_path) as image:
        assert image.size == (16, 24) and image.getpixel((0, 0)) == (255, 0, 0)
    assert "owner" not in public_metadata(record)


def test_owner_folders_are_keyed_by_the_volume_secret_and_old_folders_move_in(tmp_path):
    unkeyed = store_at(tmp_path)  # the layout before keys
    old = [unkeyed.save(Image.new("RGB", (8, 8), "blue"), {"n": i}, inputs={"person": Image.new("RGB", (4, 4))},
                        owner="user:alice") for i in range(3)]
    keeps = unkeyed.save(Image.new("RGB", (8, 8)), {"n": 9}, owner="user:bob")
    pixels = [result.image_path.read_bytes() for result in old]
    store = store_at(tmp_path, secret=b"s" * 32, save_inputs=True)
    key = store.key_of("user:alice")
    assert key != owner_key("user:alice") and key == owner_key("user:alice", b"s" * 32)
    assert key != owner_key("user:alice", b"t" * 32)  # another volume, another key: a guessed name tells nothing
    listed, total = store.list("user:alice")
    assert total == 3 and [r.metadata["n"] for r in listed] == [2, 1, 0]
    for result, before, png in zip(listed[::-1], old, pixels, strict=True):
        assert result.id.endswith(key) and result.id != before.id and result.image_path.read_bytes() == png
        assert result.metadata["id"] == result.id and result.metadata["image"] == store.relative(result.image_path)
        assert not before.image_path.exists() and not before.sidecar_path.exists()
    assert not (tmp_path / "outputs" / owner_key("user:alice")).exists()
    assert keeps.image_path.is_file()  # another owner's results wait for that owner
    assert store.get(listed[0].id, "user:alice") is not None and store.get(listed[0].id, "user:bob") is None


def test_ids_sort_by_time_name_the_worker_and_never_repeat(tmp_path):
    one, two = store_at(tmp_path), store_at(tmp_path)  # two server processes on one volume
    ids = []
    for _ in range(50):
        ids.append(one.save(Image.new("RGB", (2, 2)), {}, owner="user:a").id)
        ids.append(two.save(Image.new("RGB", (2, 2)), {}, owner="user:a").id)
    assert len(set(ids)) == 100
    assert one.worker != two.worker and {i.split("-")[2] for i in ids} == {one.worker, two.worker}
    assert sorted(ids) == ids  # made one after another: sorted by id is sorted by time
    listed, total = one.list("user:a", limit=200)
    assert total == 100 and [r.id for r in listed] == ids[::-1]


def test_listing_is_newest_first_paged_and_skips_incomplete_results(tmp_path):
    store = store_at(tmp_path)
    ids = [store.save(Image.new("RGB", (8, 8)), {"n": i}, owner="user:a").id for i in range(5)]
    folder = store.path_of(ids[0]).parent
    (folder / "20991231-235959000000-aaaaaa-bbbbbb.png").write_bytes(b"")  # an image without its sidecar
    (folder / ".20991231-235959000000-aaaaaa-cccccc.json.abc.tmp").write_text("{")  # a write in progress
    page, total = store.list("user:a", offset=0, limit=2)
    assert total == 5 and len(page) == 2
    rest, _ = store.list("user:a", offset=2, limit=10)
    assert [r.metadata["n"] for r in page + rest] == [4, 3, 2, 1, 0]
    assert store.get(ids[1], "user:a").metadata["n"] == 1
    for bad in ("../../etc/passwd", "", ids[1] + "x", ids[1].replace("-", "/")):
        assert store.get(bad, "user:a") is None and store.get(bad, None) is None


def test_each_owner_sees_only_their_results_and_everyone_sees_all(tmp_path):
    store = store_at(tmp_path)
    alice = store.save(Image.new("RGB", (8, 8)), {}, owner="user:alice")
    bob = store.save(Image.new("RGB", (8, 8)), {}, owner="user:bob")
    assert [r.id for r in store.list("user:alice")[0]] == [alice.id]
    assert [r.id for r in store.list("user:bob")[0]] == [bob.id]
    assert store.list("visitor:someone")[0] == []
    assert [r.id for r in store.list(None)[0]] == [bob.id, alice.id]
    assert store.get(bob.id, "user:alice") is None and store.get(bob.id, "user:bob").id == bob.id
    assert store.get(bob.id, None).id == bob.id


def test_a_page_reads_only_its_own_sidecars_however_many_results(tmp_path):
    store = store_at(tmp_path)
    for n in range(300):
        store.save(Image.new("RGB", (2, 2)), {"n": n}, owner="user:busy" if n % 3 else "user:other")
    opened: list[str] = []
    listed: list[str] = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, os.PathLike)) and str(tmp_path) in str(args[0]):
            opened.append(str(args[0]))
        elif event in ("os.listdir", "os.scandir") and str(tmp_path) in str(args[0]):
            listed.append(str(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed; this one only records paths under this test's folder
    page, total = store.list("user:busy", offset=150, limit=12)
    assert total == 200 and [r.metadata["n"] for r in page][:2] == [74, 73]
    assert len(opened) == 12 and all(p.endswith(".json") for p in opened)
    assert len(listed) == 2  # the owner's folder and its one month


def test_legacy_layout_moves_under_the_legacy_owner_once(tmp_path):
    day = tmp_path / "outputs" / "2026-11-20"
    day.mkdir(parents=True)
    for name, seed in (("101112131415-0a0b0c0d", 1), ("090000000001-ffffeeee", 2)):
        Image.new("RGB", (4, 4), "blue").save(day / f"{name}.png")
        Image.new("L", (4, 4)).save(day / f"{name}.mask.png")
        (day / f"{name}.json").write_text(json.dumps({"id": f"2026-11-20/{name}", "seed": seed, "session": "api",
                                                      "input_files": {"mask": f"outputs/2026-11-20/{name}.mask.png"}}))
    (day / "091500000000-deadbeef.png").write_bytes(b"")  # never finished: no sidecar, stays
    store, other_worker = store_at(tmp_path), store_at(tmp_path)
    assert store.migrate_legacy() == 2 and other_worker.migrate_legacy() == 0
    assert sorted(p.name for p in day.iterdir()) == ["091500000000-deadbeef.png"]
    results, total = store.list(LEGACY_OWNER)
    assert total == 2 and [r.metadata["seed"] for r in results] == [1, 2]  # 10:11 is newer than 09:00
    first = results[0]
    assert first.metadata["owner"] == LEGACY_OWNER and "session" not in first.metadata
    assert first.id.startswith("20261120-101112131415-000000-0a0b0c-")
    assert (tmp_path / first.metadata["input_files"]["mask"]).is_file()
    with Image.open(first.image_path) as image:
        assert image.getpixel((0, 0)) == (0, 0, 255)
    assert store.list(None)[1] == 2 and store.list("user:api")[1] == 0


def test_sweep_removes_only_old_temporary_files(tmp_path):
    store = store_at(tmp_path)
    saved = store.save(Image.new("RGB", (2, 2)), {}, owner="user:a")
    folder = saved.image_path.parent
    old, fresh = folder / ".x.png.abc.tmp", folder / ".y.png.def.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    assert store.sweep_temp() == 1
    assert not old.exists() and fresh.exists() and saved.image_path.exists() and saved.sidecar_path.exists()


def test_inputs_are_saved_only_when_enabled(tmp_path):
    saved = store_at(tmp_path, save_inputs=True).save(Image.new("RGB", (8, 8)), {},
                                                      inputs={"mask": Image.new("L", (8, 8))}, owner="user:a")
    assert (saved.image_path.parent / f"{saved.image_path.stem}.mask.png").is_file()
    assert saved.metadata["input_files"]["mask"].endswith(".mask.png")
    plain = store_at(tmp_path).save(Image.new("RGB", (8, 8)), {}, inputs={"mask": Image.new("L", (8, 8))},
                                    owner="user:a")
    assert "input_files" not in plain.metadata


def test_months_are_listed_newest_first(tmp_path):
    store = store_at(tmp_path)
    now = datetime.now(timezone.utc)
    for months_ago, n in ((2, "old"), (0, "new"), (1, "mid")):
        path = store.path_for_new("user:a", now - timedelta(days=31 * months_ago))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(path)
        path.with_suffix(".json").write_text(json.dumps({"n": n}))
    assert [r.metadata["n"] for r in store.list("user:a")[0]] == ["new", "mid", "old"]
