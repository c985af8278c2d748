"""The results store: atomic files, sidecars, newest-first paging, per-session views."""

import json
import time

from PIL import Image

from app.outputs import ResultStore


def store_at(tmp_path, **kwargs) -> ResultStore:
    return ResultStore(tmp_path / "outputs", tmp_path, **kwargs)


def test_save_writes_png_and_sidecar_under_the_date(tmp_path):
    store = store_at(tmp_path)
    saved = store.save(Image.new("RGB", (16, 24), "red"), {"seed": 3}, inputs={"person": Image.new("RGB", (4, 4))},
                       session="abc")
    assert saved.image_path.parent.parent == tmp_path / "outputs"
    assert saved.image_path.name.endswith(".png") and saved.sidecar_path.is_file()
    record = json.loads(saved.sidecar_path.read_text())
    assert record["seed"] == 3 and record["session"] == "abc" and record["image"] == saved.metadata["image"]
    assert len(record["inputs"]["person"]) == 16
    assert sorted(p.name for p in saved.image_path.parent.iterdir()) == sorted(
        [saved.image_path.name, saved.sidecar_path.name])


def test_listing_is_newest_first_paged_and_skips_incomplete_results(tmp_path):
    store = store_at(tmp_path)
    ids = []
    for i in range(5):
        ids.append(store.save(Image.new("RGB", (8, 8)), {"n": i}).id)
        time.sleep(0.01)
    folder = tmp_path / "outputs" / ids[0].split("/")[0]
    (folder / "235959-deadbeef.png").write_bytes(b"")  # an image without its sidecar: not yet complete
    (folder / ".235959-cafecafe.json.tmp").write_text("{")  # a temporary file of a write in progress
    page, total = store.list(offset=0, limit=2)
    assert total == 5 and len(page) == 2
    rest, _ = store.list(offset=2, limit=10)
    listed = [r.metadata["n"] for r in page + rest]
    assert listed == [4, 3, 2, 1, 0]
    assert store.get(ids[1]).metadata["n"] == 1
    assert store.get("../../etc/passwd") is None


def test_session_view_shows_only_that_sessions_results(tmp_path):
    store = store_at(tmp_path)
    store.save(Image.new("RGB", (8, 8)), {}, session="alice")
    store.save(Image.new("RGB", (8, 8)), {}, session="bob")
    mine, total = store.list(session="alice", only_session=True)
    assert total == 1 and mine[0].metadata["session"] == "alice"
    assert store.list(session="alice")[1] == 2  # without the restriction everyone's results show


def test_inputs_are_saved_only_when_enabled(tmp_path):
    saved = store_at(tmp_path, save_inputs=True).save(Image.new("RGB", (8, 8)), {},
                                                      inputs={"mask": Image.new("L", (8, 8))})
    assert (saved.image_path.parent / f"{saved.image_path.stem}.mask.png").is_file()
    assert saved.metadata["input_files"]["mask"].endswith(".mask.png")
