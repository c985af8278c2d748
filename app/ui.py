"""The try-on studio: a Gradio Blocks page over TryOnService, plus named API endpoints for scripts."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps

from app.config import Settings
from app.errors import ModelLoadError, TryOnInputError
from app.imaging import mask_from_layers
from app.service import GARMENT_TYPES, SIZES, BusyError, TryOnOptions, TryOnService

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
PAGE_SIZE = 12
DISPLAY_MODES = ("result", "person, mask, garment and result")
STATE_TEXT = {"unloaded": "not loaded (loads on the first run)", "loading": "loading…", "ready": "ready",
              "failed": "failed to load"}


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


def editor_person_and_mask(editor: dict | None) -> tuple[Image.Image, Image.Image | None]:
    if not editor or editor.get("background") is None:
        raise TryOnInputError("no person photo: upload one in the person editor.")
    background = editor["background"]
    mask = mask_from_layers(editor.get("layers") or [], background.size)
    return background.convert("RGB"), (mask if mask.getbbox() else None)


def side_by_side(person: Image.Image, mask: Image.Image, garment: Image.Image, result: Image.Image) -> Image.Image:
    height = result.height
    tiles = []
    for image in (person.convert("RGB"), mask.convert("RGB"), garment.convert("RGB"), result):
        tiles.append(ImageOps.contain(image, (result.width, height)))
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 8 * 3, height), "white")
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, (height - tile.height) // 2))
        x += tile.width + 8
    return canvas


MASK_COLOR = (255, 43, 214)


def mask_layer(person: Image.Image, mask: Image.Image) -> dict:
    """An editor value: the photo with ``mask`` painted on its layer, ready for the user to adjust."""
    binary = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    layer = Image.new("RGBA", person.size, MASK_COLOR + (0,))
    layer.putalpha(binary)
    composite = person.convert("RGBA")
    composite.alpha_composite(layer)
    return {"background": person.convert("RGB"), "layers": [layer], "composite": composite}


def run_summary(saved) -> str:
    meta = saved.metadata
    timings = meta["timings"]
    return (f"Seed **{meta['seed']}** · {meta['settings']['steps']} steps · guidance {meta['settings']['guidance']}"
            f" · {timings['total']:.1f} s on {meta['device']} · saved as `{meta['image']}`")


def build_ui(service: TryOnService, settings: Settings, per_session_gallery: bool = False) -> gr.Blocks:
    defaults = TryOnOptions.defaults(settings)
    size_labels = list(SIZES)
    default_size = next((label for label, wh in SIZES.items() if wh == (defaults.width, defaults.height)),
                        size_labels[0])

    def fill_auto_mask(editor, garment_type):
        # The parser's own mask, to see and edit; grow/shrink and "longer" apply at run time to any mask.
        try:
            person, _ = editor_person_and_mask(editor)
            mask = service.auto_mask(person, garment_type)
        except (TryOnInputError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None
        return mask_layer(person, mask)

    def api_auto_mask(person, garment_type, grow, longer):
        try:
            if person is None:
                raise TryOnInputError("a person image is required.")
            return service.auto_mask(person.convert("RGB"), garment_type or "upper", int(grow), float(longer))
        except (TryOnInputError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None

    def try_on(editor, garment, garment_type, steps, guidance, random_seed, seed, size, mask_blur, grow, longer,
               keep_photo, display, request: gr.Request, progress=gr.Progress()):
        try:
            person, mask = editor_person_and_mask(editor)
            if garment is None:
                raise TryOnInputError("no garment photo: upload one.")
            width, height = SIZES[size]
            options = TryOnOptions(garment_type=garment_type, steps=int(steps), guidance=float(guidance),
                                   seed=-1 if random_seed else int(seed), width=width, height=height,
                                   mask_blur=float(mask_blur), mask_grow=int(grow), longer=0.15 if longer else 0.0,
                                   keep_photo=bool(keep_photo))
            if mask is None:  # nothing painted: the parser's mask for this garment type
                mask = service.auto_mask(person, options.garment_type)
            saved = service.run(person, garment, mask, options, session=request.session_hash,
                                progress=lambda step, total: progress((step, total), desc="Denoising"))
        except (TryOnInputError, BusyError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None
        image = Image.open(saved.image_path).convert("RGB")
        if display == DISPLAY_MODES[1]:
            image = side_by_side(person, mask, garment, image)
        return image, run_summary(saved), saved.metadata["seed"], *gallery_page(0, request)

    def api_try_on(person, garment, mask, garment_type, steps, guidance, seed, width, height, mask_blur, keep_photo,
                   request: gr.Request, progress=gr.Progress()):
        try:
            if person is None or garment is None:
                raise TryOnInputError("person and garment images are required.")
            options = TryOnOptions(garment_type=garment_type or "upper", steps=int(steps), guidance=float(guidance),
                                   seed=int(seed), width=int(width), height=int(height), mask_blur=float(mask_blur),
                                   keep_photo=bool(keep_photo))
            saved = service.run(person, garment, "auto" if mask is None else mask, options,
                                session=request.session_hash,
                                progress=lambda step, total: progress((step, total), desc="Denoising"))
        except (TryOnInputError, BusyError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None
        meta = {k: v for k, v in saved.metadata.items() if k != "session"}
        return Image.open(saved.image_path).convert("RGB"), meta

    def gallery_page(page: int, request: gr.Request):
        session = request.session_hash if request else None
        results, total = service.store.list(session=session, offset=page * PAGE_SIZE, limit=PAGE_SIZE,
                                            only_session=per_session_gallery)
        pages = max(1, -(-total // PAGE_SIZE))
        if page > pages - 1:  # past the end (results were deleted, or "Older" on the last page)
            page = pages - 1
            results, total = service.store.list(session=session, offset=page * PAGE_SIZE, limit=PAGE_SIZE,
                                                only_session=per_session_gallery)
        items = []
        for result in results:
            with Image.open(result.image_path) as image:
                thumb = ImageOps.contain(image.convert("RGB"), (256, 256))
            items.append((thumb, result.metadata.get("created", "")))
        label = f"Page {page + 1} of {pages} · {total} result(s)"
        return items, [r.id for r in results], page, label

    def show_selected(ids, event: gr.SelectData):
        result = service.store.get(ids[event.index]) if ids and event.index < len(ids) else None
        if result is None:
            raise gr.Error("that result is no longer on the volume.")
        meta = {k: v for k, v in result.metadata.items() if k != "session"}
        return Image.open(result.image_path).convert("RGB"), meta

    with gr.Blocks(title="CatVTON try-on studio") as demo:
        gr.Markdown("# Try-on studio\nUpload a person photo and **paint over the clothes to replace**, add a garment, "
                    "then run.")
        status = gr.Markdown(status_text(service), elem_id="status")
        with gr.Row():
            with gr.Column():
                person = gr.ImageEditor(label="Person: upload, then paint the area to replace", type="pil",
                                        sources=["upload", "clipboard"], layers=False, transforms=(),
                                        brush=gr.Brush(colors=["#ff2bd6"], color_mode="fixed", default_size=28),
                                        eraser=gr.Eraser(default_size=28), elem_id="person", height=560)
                garment = gr.Image(label="Garment", type="pil", sources=["upload", "clipboard"], elem_id="garment",
                                   height=320)
                garment_type = gr.Radio(list(GARMENT_TYPES), value="upper", label="Garment type")
                with gr.Row():
                    auto = gr.Button("Auto mask", elem_id="auto-mask")
                    grow = gr.Slider(-30, 30, value=0, step=1, label="Grow / shrink mask (px)")
                    longer = gr.Checkbox(value=False, label="Longer garment (dress, long coat)")
                keep_photo = gr.Checkbox(value=True, label="Keep my photo (paste the result into the original)")
                with gr.Accordion("Advanced settings", open=False):
                    steps = gr.Slider(10, 100, value=min(max(defaults.steps, 10), 100), step=1, label="Steps")
                    guidance = gr.Slider(0, 7.5, value=min(defaults.guidance, 7.5), step=0.1, label="Guidance")
                    with gr.Row():
                        random_seed = gr.Checkbox(value=defaults.seed == -1, label="Random seed")
                        seed = gr.Number(value=max(defaults.seed, 0), precision=0, minimum=0, label="Seed")
                    size = gr.Radio(size_labels, value=default_size, label="Resolution (height x width)")
                    mask_blur = gr.Slider(0, 30, value=defaults.mask_blur, step=1, label="Mask blur")
                    display = gr.Radio(list(DISPLAY_MODES), value=DISPLAY_MODES[0], label="Show")
                run = gr.Button("Run try-on", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Image(label="Result", type="pil", interactive=False, format="png", elem_id="result")
                summary = gr.Markdown(elem_id="summary")
        with gr.Accordion("Gallery", open=True):
            gallery = gr.Gallery(label="Earlier results, newest first", columns=6, height=300, object_fit="contain",
                                 allow_preview=False, elem_id="gallery")
            with gr.Row():
                previous = gr.Button("Newer", size="sm")
                page_label = gr.Markdown(elem_id="page-label")
                following = gr.Button("Older", size="sm")
            with gr.Row():
                selected = gr.Image(label="Selected result", type="pil", interactive=False, format="png")
                selected_meta = gr.JSON(label="Its settings")
        page, ids = gr.State(0), gr.State([])
        examples = sorted(EXAMPLES_DIR.glob("person-*.png"))
        garments = sorted(EXAMPLES_DIR.glob("garment-*.png"))
        if examples and garments:
            gr.Examples([[str(p), str(g)] for p, g in zip(examples, garments, strict=False)], inputs=[person, garment],
                        label="Examples")

        # Scripts: the same try-on with plain images (gradio_client), as /tryon.
        with gr.Group(visible=False):
            api_inputs = [gr.Image(type="pil", label="person"), gr.Image(type="pil", label="garment"),
                          gr.Image(type="pil", label="mask"), gr.Textbox(value="upper", label="garment_type"),
                          gr.Number(value=defaults.steps, label="steps"),
                          gr.Number(value=defaults.guidance, label="guidance"), gr.Number(value=-1, label="seed"),
                          gr.Number(value=defaults.width, label="width"),
                          gr.Number(value=defaults.height, label="height"),
                          gr.Number(value=defaults.mask_blur, label="mask_blur"),
                          gr.Checkbox(value=True, label="keep_photo")]
            api_outputs = [gr.Image(type="pil", format="png"), gr.JSON()]
            api_button = gr.Button()
            mask_inputs = [gr.Image(type="pil", label="person"), gr.Textbox(value="upper", label="garment_type"),
                           gr.Number(value=0, label="grow"), gr.Number(value=0.0, label="longer")]
            mask_output = gr.Image(type="pil", format="png", image_mode="L")
            mask_button = gr.Button()

        auto.click(fill_auto_mask, [person, garment_type], person, api_visibility="private")
        mask_button.click(api_auto_mask, mask_inputs, mask_output, api_name="auto_mask")
        run.click(try_on, [person, garment, garment_type, steps, guidance, random_seed, seed, size, mask_blur, grow,
                           longer, keep_photo, display],
                  [result, summary, seed, gallery, ids, page, page_label], concurrency_id="gpu",
                  concurrency_limit=1, api_visibility="private")
        api_button.click(api_try_on, api_inputs, api_outputs, api_name="tryon", concurrency_id="gpu",
                         concurrency_limit=1)
        def first_page(request: gr.Request):
            return gallery_page(0, request)

        def newer_page(current: int, request: gr.Request):
            return gallery_page(max(current - 1, 0), request)

        def older_page(current: int, request: gr.Request):
            return gallery_page(current + 1, request)

        page_outputs = [gallery, ids, page, page_label]
        demo.load(first_page, None, page_outputs, api_visibility="private")
        previous.click(newer_page, page, page_outputs, api_visibility="private")
        following.click(older_page, page, page_outputs, api_visibility="private")
        gallery.select(show_selected, ids, [selected, selected_meta], api_visibility="private")
        gr.Timer(2.0).tick(lambda: status_text(service), None, status, api_visibility="private", show_progress="hidden")
    return demo
