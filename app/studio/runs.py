"""The studio's Run: one try-on, a batch or variations, with honest progress, Stop, and the run's results.

A run is a generator: the try-on works in a thread while the generator reports what it is doing (waiting
for the GPU, loading the model, step k of n with seconds left from the measured step time) into the
studio's own progress line, so nothing spills over other panels and Gradio's estimate from earlier runs
never shows.
"""

from __future__ import annotations

import html
import json
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from app.errors import CounterUnavailable, GenerationCancelled, ModelLoadError, TryOnInputError
from app.images.imaging import blur_mask, crop_padded, decode_image, flatten, resize_and_crop
from app.images.masking import apply_tools
from app.model.safety import flagged_message
from app.studio.editor import MaskEdits, is_copy_of, painted_mask, photo_digest, scaled_mask, shown_copy
from app.tryons.outputs import SavedResult, public_metadata
from app.tryons.service import BatchItem, BusyError, TryOnOptions, TryOnService, mask_region

MAX_VARIATIONS = 8
DISPLAY_SIDE = 1200  # px: the long side of the Compare view (shown about 460 px tall: sharp on a 2x screen)
TILE_SIDE = 768  # px: the long side of each picture in the Inputs view (four side by side)
USER_ERRORS = (TryOnInputError, BusyError, ModelLoadError, CounterUnavailable)


SENT_KEPT = 8  # masks sent to the editor that a value from the page may still have been painted on


class Session:
    """One browser session's studio state, held server-side in ``gr.State`` (never sent to the page).

    ``photo`` is the person photo that runs; the editor shows it at ``view`` size (the photo itself, or a
    copy at most EDITOR_SIDE px: app.studio.editor), and every mask from or to the editor is in the editor's
    coordinates. ``original`` is the full-size photo the page sent next to the copy it loaded (it may
    arrive before or after the editor's first value). ``auto_masks`` caches the parser's masks for the
    photo by garment type. When an automatic mask is drawn, ``shown_auto`` is its automatic part (tools
    applied, made with ``shown_tools``: garment type, grow, longer), ``edits`` the user's strokes and
    erasures on it, and ``shown`` the mask last sent to the editor (the two composed).

    A mask sent is not yet a mask shown: the page loads it a moment later, and a value the page sends
    meanwhile (a run, the next redraw) was painted on an earlier one. Each mask sent is numbered
    (``generation``) and the last few are kept in ``sent``; the page reports with every value the number of
    the mask its editor holds, and the user's edits are read against that mask, never a later one.
    """

    def __init__(self):
        self.photo: Image.Image | None = None
        self.photo_id: str | None = None  # the digest of the editor's photo
        self.view: tuple[int, int] | None = None
        self.original: Image.Image | None = None
        self.auto_masks: dict[str, Image.Image] = {}
        self.shown_auto: Image.Image | None = None
        self.shown_tools: tuple | None = None
        self.shown: Image.Image | None = None
        self.edits: MaskEdits | None = None
        self.generation = 0  # how many masks have been sent to the editor (numbers are never reused)
        self.sent: dict[int, Image.Image] = {}  # the last SENT_KEPT of them, by number
        self.masking = threading.Lock()  # one mask redraw at a time per session
        self.cancel = threading.Event()
        self.last_seed: int | None = None
        self.selected: dict | None = None  # metadata of the gallery item last opened

    def __deepcopy__(self, memo):  # gr.State copies its initial value for every new session
        return Session()

    def set_photo(self, shown: Image.Image) -> bool:
        """The editor's photo (an upload, or our own value echoed): False when it is the one already held.
        A new one runs as it is, unless it is the scaled-down copy of the original the page sent."""
        digest = photo_digest(shown)
        if digest == self.photo_id:
            return False
        original = self.original
        photo = original if original is not None and is_copy_of(original, shown) else shown
        if photo is shown:
            self.original = None  # an earlier photo's: not held on (its own may still come, for a copy)
        self.hold(photo, shown, digest)
        return True

    def show(self, photo: Image.Image) -> Image.Image:
        """Hold ``photo`` (an example) and return what the editor gets: the photo, or its copy."""
        shown = shown_copy(photo)
        self.hold(photo, shown, photo_digest(shown))
        return shown

    def hold(self, photo: Image.Image, shown: Image.Image, digest: str) -> None:
        self.photo, self.photo_id, self.view = photo, digest, shown.size
        self.auto_masks = {}
        self.forget_mask()

    def take_original(self, original: Image.Image) -> None:
        """The full-size photo of the copy the page loads into the editor. Held until that copy arrives, or
        put in place of the copy at once if it came first (the masks, in the editor's coordinates, stay)."""
        self.original = original
        if self.photo is not None and self.photo.size == self.view and is_copy_of(original, self.photo):
            self.photo, self.auto_masks = original, {}

    def to_view(self, mask: Image.Image) -> Image.Image:
        """A mask of the photo in the editor's coordinates."""
        return scaled_mask(mask, self.view or mask.size)

    def to_photo(self, mask: Image.Image) -> Image.Image:
        """A mask from the editor on the photo that runs (scaled up when the editor holds a copy)."""
        return scaled_mask(mask, self.photo.size) if self.photo is not None else mask

    def forget_mask(self) -> None:
        """The editor holds no mask of ours (a new photo, or an example loaded with an empty layer)."""
        self.shown_auto = self.shown_tools = self.shown = self.edits = None
        self.sent = {}

    def holds_latest(self, held: int | None) -> bool:
        """Whether the editor's value was painted on the mask last sent (``held``: the page's report)."""
        return held == self.generation

    def redraw(self, painted: Image.Image | None, auto: Image.Image, tools: tuple,
               held: int | None = None) -> Image.Image:
        """The mask to send to the editor with a new automatic part, the user's edits re-applied; numbered
        and kept as sent."""
        self.edits = self.edits_in(painted, auto.size, held)
        self.shown_auto, self.shown_tools = auto, tools
        self.shown = self.edits.compose(auto)
        self.generation += 1
        self.sent[self.generation] = self.shown
        self.sent.pop(self.generation - SENT_KEPT, None)
        return self.shown

    def as_redrawn(self, painted: Image.Image | None, auto: Image.Image, held: int | None = None) -> Image.Image:
        """The mask ``redraw`` would send, changing nothing: what a run takes when the editor's mask is not
        yet the one its values ask for (the redraw itself is on its way to the page, or was not asked)."""
        return self.edits_in(painted, auto.size, held).compose(auto)

    def edits_in(self, painted: Image.Image | None, size: tuple[int, int], held: int | None) -> MaskEdits:
        """The user's edits so far with those in ``painted`` taken in (a copy): what ``painted`` changes from
        the mask the editor held (number ``held``; the mask last sent when that is unknown, or when
        ``painted`` is that mask itself, as ``person_and_mask`` returns it for an untouched editor)."""
        edits = MaskEdits(size) if self.edits is None else self.edits.copy()
        if painted is not None:
            base = self.shown if painted is self.shown or held is None else self.sent.get(held, self.shown)
            edits.absorb(painted, base)
        return edits


@dataclass
class RunRequest:
    """What the page asked for, already checked: the items of the run and their shared options."""

    items: list[BatchItem]
    options: TryOnOptions
    first_person: Image.Image
    first_mask: Image.Image  # the mask of the first person: painted, or the parser's with the tools applied
    labels: list[str] | None = None  # per item, which person and garment it is ("" when there is one of each)


def person_and_mask(session: Session, editor: dict | None) -> tuple[Image.Image, Image.Image | None]:
    """The photo that runs and the mask painted in the editor, in the editor's coordinates (None: nothing
    painted); ``session.to_photo`` puts such a mask on the photo.

    The editor's background is the photo or its copy (nothing is ever painted into it). A background unlike
    the held one is a new upload: it replaces the photo and forgets the old one's automatic masks.
    Photos loaded from here (examples) are held before they reach the editor, which may report no
    background until the user touches it; then the mask is the one last sent, if any.
    """
    background = (editor or {}).get("background")
    if background is not None:
        background = flatten(background)
        if is_blank(background):  # the editor's empty canvas (it reports one while it loads): no new photo
            background = None
        else:
            session.set_photo(background)
    photo = session.photo
    if photo is None:
        raise TryOnInputError("no person photo: upload one in the Person editor, or pick an example.")
    if background is None and session.shown is not None:
        return photo, session.shown
    mask = painted_mask(editor, session.view or photo.size)
    return photo, (mask if mask.getbbox() else None)


def is_blank(image: Image.Image) -> bool:
    """One colour all over: the editor's canvas with no photo in it, never a person photo."""
    return all(low == high for low, high in image.getextrema())


def read_uploads(files: list | None, role: str, limit_mb: float) -> list[Image.Image]:
    """Images from a multiple-file input, each through the same intake as REST (size limit, EXIF)."""
    images = []
    for number, file in enumerate(files or [], 1):
        data = upload_bytes(getattr(file, "name", file), limit_mb)
        if data is None:
            raise TryOnInputError(f"{role} {number} is over {limit_mb:g} MB: use a smaller file.")
        images.append(flatten(decode_image(data, f"{role} {number}")))
    return images


def upload_bytes(path: str, limit_mb: float) -> bytes | None:
    """An uploaded file's bytes, or None when it is over ``limit_mb`` (read no further than the limit)."""
    with open(path, "rb") as handle:
        data = handle.read(int(limit_mb * 1_000_000) + 1)
    return None if len(data) > limit_mb * 1_000_000 else data


def unreadable_upload(value, role: str, limit_mb: float) -> str | None:
    """For an upload taken raw (a file dict, or a list of them): the sentence for the first file that is
    not an image we can read, or None when all are. The page shows it in the progress line."""
    files = [f for f in (value if isinstance(value, list) else [value]) if isinstance(f, dict)]
    for file in files:
        name = str(file.get("orig_name") or Path(str(file.get("path") or "")).name or "that file")
        try:
            data = upload_bytes(str(file.get("path")), limit_mb)
            if data is None:
                return f"{name} is over {limit_mb:g} MB: use a smaller {role} photo."
            decode_image(data, name)
        except TryOnInputError:
            return (f"That file is not an image we can read: {name} (as the {role}). Use a PNG, JPEG or WebP "
                    "photo.")
        except OSError:
            return f"{name} could not be read on the server: upload it again."
    return None


def seeds_for(random_seed: bool, seed: int, variations: int) -> list[int]:
    if not 1 <= variations <= MAX_VARIATIONS:
        raise TryOnInputError(f"variations={variations} is not usable: use 1 to {MAX_VARIATIONS}.")
    return [-1] * variations if random_seed else [seed + i for i in range(variations)]


def auto_part(service: TryOnService, session: Session, photo: Image.Image, tools: tuple) -> Image.Image:
    """The automatic mask of the held photo for ``tools`` (garment type, grow, longer), in the editor's
    coordinates: the parser runs once per garment type and photo, the tools (in the photo's pixels, as
    REST applies them) on every call."""
    garment_type, grow, longer = tools
    if garment_type not in session.auto_masks:
        session.auto_masks[garment_type] = service.auto_mask(photo, garment_type)
    return session.to_view(apply_tools(session.auto_masks[garment_type], grow=grow, longer=longer))


def build_request(service: TryOnService, session: Session, editor, garment, extra_persons, extra_garments,
                  options: TryOnOptions, random_seed: bool, variations: int, held: int | None = None) -> RunRequest:
    """Every item of the run, checked; with nothing painted, the parser's mask (as Auto mask would show it).

    What is recorded is what runs: an automatic mask drawn with other tool values than the form's (a value
    entered a moment before Run, whose redraw has not been made yet), or painted on an earlier mask than
    the one last sent (``held``: a redraw made but not yet loaded by the page), is redrawn with the form's
    values, the user's edits kept; grow and longer apply to automatic masks only, so a hand-painted mask
    records 0.
    """
    options.check()
    person, mask = person_and_mask(session, editor)
    if garment is None:
        raise TryOnInputError("no garment photo: upload one under Garment, or pick an example.")
    limit_mb = service.settings.max_upload_mb
    extra_people = read_uploads(extra_persons, "extra person", limit_mb)
    extra_clothes = read_uploads(extra_garments, "extra garment", limit_mb)
    tools = (options.garment_type, options.mask_grow, options.longer)
    if mask is None:
        mask = service.auto_mask(person, *tools)
    elif session.shown_auto is not None:
        with session.masking:
            if session.shown_tools != tools or not (mask is session.shown or session.holds_latest(held)):
                mask = session.as_redrawn(mask, auto_part(service, session, person, tools), held)
    elif not extra_people:  # a hand-painted mask runs as painted: no tool touched it
        options = replace(options, mask_grow=0, longer=0.0)
    if mask.size != person.size:  # drawn on the editor's copy of a larger photo: the same mask, on the photo
        mask = session.to_photo(mask)
    persons = [(person, mask)]
    persons += [(extra, "auto") for extra in extra_people]
    garments = [flatten(garment)] + extra_clothes  # as the model gets it: the Inputs view shows the same
    seeds = seeds_for(random_seed, options.seed, variations)
    items, labels = [], []
    for p_number, (photo, item_mask) in enumerate(persons, 1):
        for g_number, clothes in enumerate(garments, 1):
            for seed in seeds:
                items.append(BatchItem(photo, clothes, item_mask, seed=seed))
                labels.append(" · ".join(([f"person {p_number}"] if len(persons) > 1 else [])
                                         + ([f"garment {g_number}"] if len(garments) > 1 else [])))
    return RunRequest(items, options, person, mask, labels)


def model_frame(session: Session, mask: Image.Image | None, blur: float, target: tuple[int, int]) -> str:
    """The region of the photo the model will see for ``mask`` (on the photo, before the blur), as the service
    picks it, in the editor's coordinates: JSON [left, top, right, bottom] for the page's frame ("" for
    none: no mask, nothing painted)."""
    photo = session.photo
    if photo is None or mask is None or not mask.getbbox():
        return ""
    region = mask_region(photo.size, blur_mask(mask, blur), target)
    view = session.view or photo.size
    scale_x, scale_y = view[0] / photo.width, view[1] / photo.height
    return json.dumps([round(region[0] * scale_x, 1), round(region[1] * scale_y, 1),
                       round(region[2] * scale_x, 1), round(region[3] * scale_y, 1)])


def progress_html(fraction: float | None, text: str, state: str = "running") -> str:
    """The studio's progress line: a bar (when a fraction is known) and one sentence."""
    bar = "" if fraction is None else (f'<div class="tryon-bar"><div style="width:{100 * fraction:.1f}%">'
                                      "</div></div>")
    return f'<div class="tryon-progress {state}" role="status">{bar}<span>{html.escape(text)}</span></div>'


class StepClock:
    """Seconds left from the measured time per step of this run (not from earlier, other-sized runs)."""

    def __init__(self):
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (done, now)
        self.last = (done, now)

    def seconds_left(self, done: int, total: int) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        per_step = (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])
        return per_step * (total - done)


def describe(service: TryOnService, done: int, total: int, clock: StepClock, started: float, count: int,
             party: str | None = None) -> str:
    elapsed = time.perf_counter() - started
    if done == 0:
        state = service.engine.status().state
        if state in ("unloaded", "loading"):
            return f"Loading the model… {elapsed:.0f} s (the first run after a start takes longer)"
        ahead = service.turns_ahead(party) if party is not None else None
        if ahead:  # callers take turns (app.tryons.fair_queue): what runs before this one, not the whole queue
            return f"Waiting for the GPU: {ahead} try-on{'s' if ahead > 1 else ''} before yours · {elapsed:.0f} s"
        queue_state = service.queue_state()
        if party is None and queue_state["running"] and queue_state["waiting"]:  # among those waiting
            queued = queue_state["waiting"]
            return f"Waiting for the GPU: another try-on is running, {queued} queued · {elapsed:.0f} s"
        return f"Starting… {elapsed:.0f} s"
    left = clock.seconds_left(done, total)
    eta = f" · about {left:.0f} s left" if left is not None else ""
    what = f"{count} try-ons, step" if count > 1 else "Step"
    return f"{what} {done}/{total}{eta}"


def run_in_thread(service: TryOnService, session: Session, request: RunRequest, owner: str,
                  gone: Callable[[], bool] = lambda: False, party: str | None = None, kind: str | None = None):
    """Start the try-ons in a worker thread; yields (done, total, results | None, error | None) as they go.
    The thread stops between steps on Stop or once ``gone()`` says the page has left, whether or not
    anyone still iterates this generator (Gradio stops doing so when the page goes)."""
    events: queue.Queue = queue.Queue()

    def progress(done: int, total: int) -> None:
        if session.cancel.is_set() or gone():
            raise GenerationCancelled(f"stopped at step {done} of {total}")
        events.put(("step", done, total))

    def work() -> None:
        try:
            # Painted masks are sent as shown (tools already applied on screen); "auto" ones get them.
            results = service.run_batch(request.items, request.options, owner=owner, progress=progress,
                                        mask_tools_applied=True, party=party, kind=kind)
            events.put(("done", results))
        except BaseException as exc:  # reported to the page; the service keeps serving
            events.put(("error", exc))

    session.cancel.clear()
    threading.Thread(target=work, name="studio-run", daemon=True).start()
    while True:
        try:
            yield events.get(timeout=0.25)
        except queue.Empty:
            yield ("tick",)


def compare_pair(person: Image.Image, result: Image.Image,
                 region: list | None = None) -> tuple[Image.Image, Image.Image]:
    """Before and after at the same size, at most DISPLAY_SIDE px (a view, not the file): the photo as the
    result frames it (the model's ``region`` of it, when the result is the model's own frame)."""
    before = person.convert("RGB")
    if before.size != result.size:
        before = crop_padded(before, tuple(region)) if region else before
        before = resize_and_crop(before, result.size)
    return for_display(before), for_display(result)


def inputs_strip(person: Image.Image, mask: Image.Image, garment: Image.Image, result: Image.Image) -> Image.Image:
    """Person, mask, garment and result side by side: what went into the model and what came out."""
    result = for_display(result.convert("RGB"), TILE_SIDE)
    height = result.height
    tiles = [fitted(image.convert("RGB"), (result.width, height)) for image in (person, mask, garment)] + [result]
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 8 * 3, height), "white")
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, (height - tile.height) // 2))
        x += tile.width + 8
    return canvas


def for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """A view of ``image`` within ``side`` px: a camera photo's views are made and encoded in a fraction of
    the time."""
    return image if max(image.size) <= side else fitted(image, (side, side))


def fitted(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """``image`` scaled to fit ``box``, its proportions kept (a large one reduced in steps, then resampled)."""
    scale = min(box[0] / image.width, box[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.LANCZOS, reducing_gap=2.0)


def page_copy(result: SavedResult, cache_dir: str | Path) -> str:
    """The saved PNG itself, copied into Gradio's cache for the page: the file the user downloads is the
    one on the volume, and a large image is not encoded a second time (4 s for a 6-megapixel photo)."""
    folder = Path(cache_dir) / f"result-{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / result.image_path.name
    shutil.copyfile(result.image_path, target)
    return str(target)


def saved_image(result: SavedResult) -> Image.Image:
    with Image.open(result.image_path) as image:
        return image.convert("RGB")


def flagged_note(results: list[SavedResult], done_note: str) -> str:
    """The progress line of a run with results the safety checker flagged, and what to do about them."""
    flagged = [r for r in results if r.flagged]
    if len(results) == 1:
        return flagged_message(flagged[0].metadata["seed"])
    seeds = ", ".join(str(r.metadata["seed"]) for r in flagged)
    if len(flagged) == len(results):
        return (f"The safety checker flagged all {len(results)} results (seeds {seeds}), so none was saved or "
                "shown. Try other seeds, or other photos.")
    return (f"{done_note} The safety checker flagged {len(flagged)} of them (seed{'s' if len(flagged) > 1 else ''}"
            f" {seeds}): not saved or shown; try another seed for {'those' if len(flagged) > 1 else 'it'}.")


def flagged_tile(side: int = 512) -> Image.Image:
    """What a run's strip shows for a flagged result: a plain grey card (its caption says why)."""
    return Image.new("RGB", (side * 3 // 4, side), (200, 200, 200))


def shown_metadata(result: SavedResult) -> dict:
    """A result's metadata for the page and scripts; a flagged one's says why there is no image."""
    metadata = public_metadata(result.metadata)
    if result.flagged:
        metadata["message"] = flagged_message(result.metadata["seed"])
    return metadata
