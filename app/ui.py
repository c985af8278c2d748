"""The try-on studio: a Gradio Blocks page over TryOnService, plus the named API endpoints for scripts.

Panels: the person editor with its mask tools, the garment with examples and batch inputs, the run
controls with the result (compare, inputs, the run's strip) and the gallery. Helpers by concern:
``app.editor`` (editor values in photo coordinates), ``app.ui_run`` (runs, progress, Stop),
``app.ui_gallery`` (pages, captions, reuse) and ``app.ui_api`` (the script endpoints).
"""

from __future__ import annotations

import logging
import time

import gradio as gr
from PIL import Image

from app.config import Settings
from app.editor import CANVAS_SIZE, MASK_HEX, mask_layer, redraw_auto
from app.errors import GenerationCancelled
from app.examples import example_garments, example_people
from app.masking import apply_tools
from app.service import SIZES, TryOnOptions, TryOnService
from app.ui_api import add_api_endpoints
from app.ui_gallery import form_values, gallery_page, public_metadata, summary
from app.ui_run import (
    MAX_VARIATIONS,
    USER_ERRORS,
    Session,
    StepClock,
    build_request,
    compare_pair,
    describe,
    inputs_strip,
    person_and_mask,
    progress_html,
    run_in_thread,
    saved_image,
)

log = logging.getLogger(__name__)
STATE_TEXT = {"unloaded": "not loaded (loads on the first run)", "loading": "loading…", "ready": "ready",
              "failed": "failed to load"}
# Loads a photo (and a mask layer) into the person editor the way an upload does. Gradio 6's editor,
# given such a value from the server, re-uploads it in a loop and its brush stops drawing on replaced
# layers; its own loader, as used for uploads, has neither problem.
EDITOR_LOAD_JS = """async (photo, layer) => {
  const editor = window.editor;
  if (!editor || !photo) return;
  await editor.add_image_from_url(photo.url);
  await editor.add_layers_from_url(layer ? [layer.url] : []);
  const brush = document.querySelector('#person button[aria-label="Brush"]');
  if (brush) brush.click(); else editor.set_tool('draw');  // the button also tells the editor's toolbar
}"""
REUSED = ("garment_type", "steps", "guidance", "random_seed", "seed", "size", "mask_blur", "mask_grow", "longer",
          "keep_photo")
GARMENT_CHOICES = [("Upper", "upper"), ("Lower", "lower"), ("Dress / overall", "overall")]
STUDIO_CSS = """
#status p { margin: 0; font-size: 0.85em; opacity: 0.85 }
.tryon-progress { display: flex; flex-direction: column; gap: 4px; font-size: 0.9em; min-height: 1.6em }
.tryon-bar { height: 6px; border-radius: 3px; background: var(--neutral-200); overflow: hidden }
.tryon-bar > div { height: 100%; background: var(--color-accent); transition: width 0.2s }
.tryon-progress.error span { color: var(--error-text-color) }
#person, #person .image-container { max-width: 100% }
#examples-person .grid-wrap, #examples-garment .grid-wrap { overflow-y: auto }
.hint p { font-size: 0.85em; opacity: 0.8; margin: 2px 0 }
"""


def status_text(service: TryOnService) -> str:
    status = service.engine.status()
    parts = [f"**Model:** {STATE_TEXT.get(status.state, status.state)}"]
    if status.device:
        parts.append(f"on {status.device} ({status.dtype})")
    queue = service.queue_state()
    if queue["running"] or queue["waiting"]:
        parts.append(f"· running, {queue['waiting']} waiting")
    if service.settings.tiny_models:
        parts.append("· tiny random-weight models: results are noise")
    if not service.parser.available and not service.settings.tiny_models:
        parts.append("· auto masks unavailable (no human parser on the volume): paint the mask")
    text = " ".join(parts)
    if status.state == "failed" and status.error:
        text += f"\n\n`{status.error.splitlines()[0]}`"
    return text


def size_label(width: int, height: int) -> str:
    return f"{width} x {height}"


def build_ui(service: TryOnService, settings: Settings, per_session_gallery: bool = False) -> gr.Blocks:
    defaults = TryOnOptions.defaults(settings)
    sizes = {size_label(w, h): (w, h) for w, h in SIZES.values()}
    default_size = size_label(defaults.width, defaults.height)
    if default_size not in sizes:
        sizes[default_size] = (defaults.width, defaults.height)
    people, garments = example_people(settings.layout.root), example_garments(settings.layout.root)

    def owner(request: gr.Request | None) -> str | None:
        return request.session_hash if request else None

    # -- the editor -----------------------------------------------------------------------------

    def load_person(session: Session, event: gr.SelectData):
        example = people[event.index]
        with Image.open(example.path) as image:
            photo = image.convert("RGB")
        session.set_photo(photo)
        session.shown_auto = None  # the editor gets the photo with an empty mask layer
        return photo, None

    def load_garment(event: gr.SelectData):
        example = garments[event.index]
        return str(example.path), example.garment_type or gr.skip()

    def auto_for(session: Session, photo: Image.Image, garment_type: str, grow, longer) -> Image.Image:
        if garment_type not in session.auto_masks:
            session.auto_masks[garment_type] = service.auto_mask(photo, garment_type)
        return apply_tools(session.auto_masks[garment_type], grow=int(grow), longer=0.15 if longer else 0.0)

    def on_auto(session: Session, editor, garment_type, grow, longer):
        """Auto mask: the parser's mask for this garment type, with the tools, added to the user's strokes."""
        try:
            photo, current = person_and_mask(session, editor)
            new = auto_for(session, photo, garment_type, grow, longer)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        merged = redraw_auto(current if current is not None else Image.new("L", photo.size, 0), session.shown_auto,
                             new)
        session.shown_auto = new
        return photo, mask_layer(merged)

    def on_tools(session: Session, editor, garment_type, grow, longer):
        """Grow, Longer or the garment type changed: redraw the automatic part, keep strokes and erasures."""
        try:
            person_and_mask(session, editor)  # notices a new photo, which has no automatic mask yet
        except USER_ERRORS:
            return gr.skip(), gr.skip()
        if session.shown_auto is None:
            return gr.skip(), gr.skip()  # a hand-painted mask is used exactly as painted
        return on_auto(session, editor, garment_type, grow, longer)

    # -- a run ----------------------------------------------------------------------------------

    def buttons(running: bool):
        return (gr.update(interactive=not running, value="Running…" if running else "Run try-on"),
                gr.update(interactive=running))

    def try_on(session: Session, editor, garment, garment_type, steps, guidance, random_seed, seed, size,
               mask_blur, grow, longer, keep_photo, variations, extra_persons, extra_garments,
               request: gr.Request):
        """A run as a stream of progress lines. Errors end it in the same line (never as badges on panels)."""
        skip = [gr.skip()] * 7

        def line(fraction, text, state="running"):
            return (progress_html(fraction, text, state), *buttons(state == "running"), *skip)

        try:
            width, height = sizes[size]
            options = TryOnOptions(garment_type=garment_type, steps=int(steps), guidance=float(guidance),
                                   seed=-1 if random_seed else int(seed), width=width, height=height,
                                   mask_blur=float(mask_blur), mask_grow=int(grow), longer=0.15 if longer else 0.0,
                                   keep_photo=bool(keep_photo))
            yield line(None, "Checking the inputs…")
            run = build_request(service, session, editor, garment, extra_persons, extra_garments, options,
                                bool(random_seed), int(variations or 1))
        except USER_ERRORS as exc:
            yield line(None, f"Not run: {exc}", "error")
            return
        count, clock = len(run.items), StepClock()
        started = time.perf_counter()
        done, total = 0, options.steps * count
        yield line(0.0, describe(service, 0, total, clock, started, count))
        for event in run_in_thread(service, session, run, owner(request)):
            kind = event[0]
            if kind == "step":
                done, total = event[1], event[2]
                clock.tick(done)
            elif kind == "error":
                exc = event[1]
                if isinstance(exc, GenerationCancelled):
                    yield line(done / total, f"Stopped at step {done} of {total}; finished results are in the "
                               "gallery.", "stopped")
                elif isinstance(exc, USER_ERRORS):
                    yield line(None, f"Not run: {exc}", "error")
                else:
                    log.error("studio run failed", exc_info=exc)
                    yield line(None, f"The try-on failed ({type(exc).__name__}: {exc}); see the server log.",
                               "error")
                return
            elif kind == "done":
                yield finished(session, run, event[1], started)
                return
            yield line(done / total if total else None, describe(service, done, total, clock, started, count))

    def finished(session: Session, run, results, started):
        first = results[0]
        image = saved_image(first)
        session.last_seed = first.metadata["seed"]
        elapsed = time.perf_counter() - started
        strip = [(saved_image(r), f"seed {r.metadata['seed']}") for r in results] if len(results) > 1 else []
        note = f"Done: {len(results)} try-on{'s' if len(results) > 1 else ''} in {elapsed:.1f} s."
        return (progress_html(1.0, note, "done"), *buttons(False), image, compare_pair(run.first_person, image),
                inputs_strip(run.first_person, run.first_mask, run.items[0].garment, image),
                gr.update(value=strip, visible=bool(strip)), summary(first.metadata), first.metadata["seed"])

    def on_stop(session: Session):
        session.cancel.set()
        return gr.update(interactive=False)

    def same_seed(session: Session):
        if session.last_seed is None:
            raise gr.Error("no run yet in this session: run once, then keep its seed.")
        return False, session.last_seed

    # -- the gallery ----------------------------------------------------------------------------

    def page_of(page: int, request: gr.Request):
        return gallery_page(service.store, owner(request), per_session_gallery, page)

    def first_page(request: gr.Request):
        return page_of(0, request)

    def newer_page(current: int, request: gr.Request):
        return page_of(max(current - 1, 0), request)

    def older_page(current: int, request: gr.Request):
        return page_of(current + 1, request)

    def show_selected(session: Session, ids, event: gr.SelectData):
        result = service.store.get(ids[event.index]) if ids and event.index < len(ids) else None
        if result is None:
            raise gr.Error("that result is no longer on the volume.")
        session.selected = result.metadata
        image = saved_image(result)
        return image, summary(result.metadata), public_metadata(result.metadata), gr.update(visible=True)

    def reuse(session: Session):
        if not session.selected:
            raise gr.Error("open a result in the gallery first.")
        values = form_values(session.selected, sizes)
        values["random_seed"] = False
        return tuple(gr.skip() if values[name] is None else values[name] for name in REUSED)

    # -- layout ---------------------------------------------------------------------------------

    with gr.Blocks(title="CatVTON try-on studio") as demo:
        session = gr.State(Session())
        with gr.Row(equal_height=False):
            gr.Markdown("## Try-on studio", elem_id="title")
            status = gr.Markdown(status_text(service), elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                person = gr.ImageEditor(
                    label="Person", type="pil", format="png", elem_id="person", height=560,
                    sources=["upload", "clipboard"], layers=False, transforms=(), canvas_size=CANVAS_SIZE,
                    brush=gr.Brush(colors=[MASK_HEX], color_mode="fixed", default_size=28),
                    eraser=gr.Eraser(default_size=28),
                    placeholder="Upload a person photo, then paint the clothes to replace (or press Auto mask)")
                gr.Markdown("Paint over the clothes to replace, or press **Auto mask**; the brush adds, the "
                            "eraser removes. What you see is the mask the model gets.", elem_classes="hint")
                with gr.Row():
                    auto = gr.Button("Auto mask", elem_id="auto-mask", size="sm", scale=1)
                    garment_type = gr.Radio(GARMENT_CHOICES, value="upper", label="Garment type", scale=3,
                                            elem_id="garment-type",
                                            info="Overall: a dress or jumpsuit, from shoulders to legs")
                with gr.Accordion("Mask tools", open=False):
                    grow = gr.Slider(-30, 30, value=0, step=1, label="Grow / shrink (px)", elem_id="grow",
                                     info="Redraws the automatic mask; your strokes stay")
                    longer = gr.Checkbox(value=False, label="Longer garment", elem_id="longer",
                                         info="Extends the automatic mask down by 15 % of the height")
                    mask_blur = gr.Slider(0, 30, value=defaults.mask_blur, step=1, label="Edge blur (px)",
                                          info="Softens the mask's edge before the try-on")
            with gr.Column(scale=3, min_width=260):
                garment = gr.Image(label="Garment", type="pil", sources=["upload", "clipboard"],
                                   elem_id="garment", height=260)
                person_examples = gr.Gallery([(str(e.path), e.label) for e in people], label="Example persons",
                                             columns=4, height=150, allow_preview=False, elem_id="examples-person",
                                             show_label=True, object_fit="contain")
                garment_examples = gr.Gallery([(str(e.path), e.label) for e in garments],
                                              label="Example garments", columns=4, height=150,
                                              allow_preview=False, elem_id="examples-garment",
                                              object_fit="contain")
                with gr.Accordion("Batch", open=False, elem_id="batch"):
                    extra_garments = gr.File(file_count="multiple", file_types=["image"], label="More garments",
                                             elem_id="extra-garments", height=90)
                    extra_persons = gr.File(file_count="multiple", file_types=["image"],
                                            label="More persons (auto mask)", elem_id="extra-persons", height=90)
                    variations = gr.Number(value=1, precision=0, minimum=1, maximum=MAX_VARIATIONS,
                                           label="Variations", info="Seeds per person and garment",
                                           elem_id="variations")
            with gr.Column(scale=4, min_width=320):
                with gr.Row():
                    run = gr.Button("Run try-on", variant="primary", elem_id="run", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False, scale=1)
                progress = gr.HTML(progress_html(None, ""), elem_id="progress")
                with gr.Tabs(elem_id="result-tabs"):
                    with gr.Tab("Result", id="result-tab"):
                        result = gr.Image(label="Result", type="pil", interactive=False, format="png",
                                          elem_id="result", height=460)
                    with gr.Tab("Compare", id="compare-tab", elem_id="compare-tab"):
                        compare = gr.ImageSlider(label="Before / after", type="pil", interactive=False,
                                                 elem_id="compare", height=460)
                    with gr.Tab("Inputs", id="inputs-tab"):
                        inputs_view = gr.Image(label="Person, mask, garment and result", type="pil",
                                               interactive=False, format="png", elem_id="inputs-view")
                strip = gr.Gallery(label="This run", columns=4, height=180, visible=False, elem_id="strip",
                                   object_fit="contain")
                run_summary = gr.Markdown(elem_id="summary")
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=defaults.guidance, step=0.1, label="Guidance (CFG)",
                                         info="How strongly the garment steers the result; 1 or less turns it off")
                    with gr.Row():
                        random_seed = gr.Checkbox(value=defaults.seed == -1, label="Random seed",
                                                  elem_id="random-seed")
                        seed = gr.Number(value=max(defaults.seed, 0), precision=0, minimum=0, label="Seed",
                                         elem_id="seed")
                        keep_seed = gr.Button("Same seed", size="sm", elem_id="same-seed")
                    size = gr.Radio(list(sizes), value=default_size, label="Resolution (width x height)")
                    keep_photo = gr.Checkbox(value=True, label="Keep my photo",
                                             info="Paste the result into the original photo, in its own size")
        with gr.Accordion("Gallery", open=True):
            gallery = gr.Gallery(label="Results, newest first", columns=6, height=300, object_fit="contain",
                                 allow_preview=False, elem_id="gallery")
            with gr.Row():
                newer = gr.Button("Newer", size="sm")
                page_label = gr.Markdown(elem_id="page-label")
                older = gr.Button("Older", size="sm")
            with gr.Row(visible=False) as selected_row:
                selected = gr.Image(label="Selected result", type="pil", interactive=False, format="png",
                                    elem_id="selected")
                with gr.Column():
                    selected_summary = gr.Markdown(elem_id="selected-summary")
                    reuse_button = gr.Button("Use these settings", size="sm", elem_id="reuse")
                    with gr.Accordion("All settings (JSON)", open=False):
                        selected_meta = gr.JSON(label="Metadata")
        page, ids = gr.State(0), gr.State([])
        with gr.Group(visible=False):  # what the editor loader reads: the photo and the mask layer, as PNG
            editor_photo = gr.Image(type="pil", format="png", image_mode="RGB", elem_id="editor-photo")
            editor_layer = gr.Image(type="pil", format="png", image_mode="RGBA", elem_id="editor-layer")

        add_api_endpoints(service, settings)

        # -- events ----------------------------------------------------------------------------
        quiet = {"api_visibility": "private", "show_progress": "hidden"}
        # Photos and masks reach the editor through its own loader in the page (EDITOR_LOAD_JS), never as a
        # value sent to it: see app/editor.py for the traps that avoids.
        to_editor = [editor_photo, editor_layer]

        def into_editor(event):
            return event.then(None, to_editor, None, js=EDITOR_LOAD_JS, **quiet)

        into_editor(person_examples.select(load_person, session, to_editor, **quiet))
        garment_examples.select(load_garment, None, [garment, garment_type], **quiet)
        tool_inputs = [session, person, garment_type, grow, longer]
        masking = auto.click(lambda: gr.update(value="Masking…", interactive=False), None, auto, queue=False,
                             **quiet).then(on_auto, tool_inputs, to_editor, **quiet)
        into_editor(masking).then(lambda: gr.update(value="Auto mask", interactive=True), None, auto, queue=False,
                                  **quiet)
        into_editor(grow.release(on_tools, tool_inputs, to_editor, **quiet))
        into_editor(longer.input(on_tools, tool_inputs, to_editor, **quiet))
        into_editor(garment_type.input(on_tools, tool_inputs, to_editor, **quiet))

        page_outputs = [gallery, ids, page, page_label]
        run_inputs = [session, person, garment, garment_type, steps, guidance, random_seed, seed, size, mask_blur,
                      grow, longer, keep_photo, variations, extra_persons, extra_garments]
        run_outputs = [progress, run, stop, result, compare, inputs_view, strip, run_summary, seed]
        running = run.click(try_on, run_inputs, run_outputs, concurrency_id="studio-run",
                            concurrency_limit=settings.queue_max + 1, **quiet)
        # No polling timer for the status line: it refreshes on load and after each run.
        running.then(lambda: (*buttons(False), status_text(service)), None, [run, stop, status], **quiet) \
            .then(first_page, None, page_outputs, **quiet)
        stop.click(on_stop, session, stop, concurrency_limit=None, **quiet)
        keep_seed.click(same_seed, session, [random_seed, seed], **quiet)

        demo.load(first_page, None, page_outputs, **quiet).then(lambda: status_text(service), None, status, **quiet)
        newer.click(newer_page, page, page_outputs, **quiet)
        older.click(older_page, page, page_outputs, **quiet)
        gallery.select(show_selected, [session, ids], [selected, selected_summary, selected_meta, selected_row],
                       **quiet)
        reuse_button.click(reuse, session, [garment_type, steps, guidance, random_seed, seed, size, mask_blur, grow,
                                            longer, keep_photo], **quiet)  # in the order of REUSED
    return demo

