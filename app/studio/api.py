"""Named Gradio endpoints for scripts (gradio_client): /tryon, /tryon_batch, /auto_mask and /gallery.

Each parameter is a labelled component with the right type (integers as integers, garment types as
choices) and every optional one has a default, so ``client.view_api()`` documents the calls by itself.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from app.config import Settings
from app.errors import GenerationCancelled
from app.identity.access import Access
from app.identity.callers import request_kind, request_party
from app.identity.callers import request_owner as owner
from app.studio.gallery import caption, seed_caption, thumbnail
from app.studio.runs import USER_ERRORS, read_uploads, saved_image, seeds_for, shown_metadata
from app.studio.streams import TRYON, Streams
from app.tryons.listing import PER_PAGE_MAX, results_page
from app.tryons.service import GARMENT_TYPES, BatchItem, TryOnOptions, TryOnService


def add_api_endpoints(service: TryOnService, settings: Settings, access: Access, streams: Streams) -> None:
    """The hidden components and events of the script API; call inside the studio's Blocks."""
    defaults = TryOnOptions.defaults(settings)

    def reporter(request: gr.Request, progress: gr.Progress):
        """Steps to the caller's progress; stops the run between steps once the caller has left."""
        def report(done: int, total: int) -> None:
            if streams.gone(getattr(request, "session_hash", None)):
                raise GenerationCancelled(f"the client went away; stopped at step {done} of {total}")
            progress((done, total), desc="Denoising")
        return report

    def options(garment_type, steps, guidance, seed, width, height, mask_blur, mask_grow, longer, keep_photo,
                draft):
        return TryOnOptions(garment_type=garment_type or "upper", steps=int(steps), guidance=float(guidance),
                            seed=int(seed), width=int(width), height=int(height), mask_blur=float(mask_blur),
                            mask_grow=int(mask_grow), longer=float(longer), keep_photo=bool(keep_photo),
                            draft=False if draft is None else draft)  # anything else but a bool is refused

    def tryon(person: Image.Image, garment: Image.Image, mask: Image.Image | None = None, garment_type="upper",
              steps=defaults.steps, guidance=defaults.guidance, seed=-1, width=defaults.width,
              height=defaults.height, mask_blur=defaults.mask_blur, mask_grow=0, longer=0.0, keep_photo=True,
              draft=False, request: gr.Request = None, progress=gr.Progress()):
        try:
            if person is None or garment is None:
                raise gr.Error("person and garment images are required.")
            saved = service.run(person.convert("RGB"), garment, "auto" if mask is None else mask,
                                options(garment_type, steps, guidance, seed, width, height, mask_blur, mask_grow,
                                        longer, keep_photo, draft),
                                owner=owner(request), progress=reporter(request, progress),
                                kind=request_kind(request), party=request_party(request))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        # Flagged by the safety checker: no image, and the metadata says so in a sentence.
        return None if saved.flagged else saved_image(saved), shown_metadata(saved)

    def tryon_batch(persons: list, garments: list, masks: list | None = None, garment_type="upper",
                    steps=defaults.steps, guidance=defaults.guidance, seed=-1, variations=1,
                    width=defaults.width, height=defaults.height, mask_blur=defaults.mask_blur, mask_grow=0,
                    longer=0.0, keep_photo=True, draft=False, request: gr.Request = None,
                    progress=gr.Progress()):
        try:
            people = read_uploads(persons, "person", settings.max_upload_mb)
            clothes = read_uploads(garments, "garment", settings.max_upload_mb)
            painted = [m.convert("L") for m in read_uploads(masks, "mask", settings.max_upload_mb)]
            if not people or not clothes:
                raise gr.Error("give at least one person and one garment image.")
            if painted and len(painted) != len(people):
                raise gr.Error(f"{len(painted)} masks for {len(people)} persons: give one mask per person, or "
                               "none for automatic masks.")
            seeds = seeds_for(int(seed) == -1, int(seed), int(variations))  # bounded as in the studio
            items = [BatchItem(person, garment, painted[i] if painted else "auto", seed=s)
                     for i, person in enumerate(people) for garment in clothes for s in seeds]
            saved = service.run_batch(items, options(garment_type, steps, guidance, seed, width, height, mask_blur,
                                                     mask_grow, longer, keep_photo, draft), owner=owner(request),
                                      progress=reporter(request, progress), kind=request_kind(request),
                                      party=request_party(request))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        return ([(saved_image(s), seed_caption(s.metadata)) for s in saved if not s.flagged],
                [shown_metadata(s) for s in saved])  # every item; a flagged one has no image in the gallery

    def auto_mask(person: Image.Image, garment_type="upper", mask_grow=0, longer=0.0):
        try:
            if person is None:
                raise gr.Error("a person image is required.")
            return service.auto_mask(person.convert("RGB"), garment_type or "upper", int(mask_grow), float(longer))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None

    def gallery(page=1, per_page=12, request: gr.Request = None):
        page, per_page = int(page or 1), int(per_page or 12)
        if not 1 <= per_page <= PER_PAGE_MAX or page < 1:
            raise gr.Error(f"page must be 1 or more and per_page from 1 to {PER_PAGE_MAX}.")
        shown, answer = results_page(service.store, access.listing_owner(owner(request)), page, per_page)
        return [(thumbnail(r, 512), caption(r.metadata)) for r in shown], answer

    def garment_type_input():
        return gr.Radio(list(GARMENT_TYPES), value="upper", label="garment_type")

    def settings_inputs():
        return [gr.Number(value=defaults.steps, precision=0, label="steps"),
                gr.Number(value=defaults.guidance, label="guidance"),
                gr.Number(value=-1, precision=0, label="seed (-1: random)")]

    def size_and_tools(grow_and_longer_only: bool = False):
        tools = [gr.Number(value=0, precision=0, label="mask_grow (px, negative shrinks)"),
                 gr.Number(value=0.0, label="longer (fraction of the height)")]
        if grow_and_longer_only:
            return tools
        return [gr.Number(value=defaults.width, precision=0, label="width"),
                gr.Number(value=defaults.height, precision=0, label="height"),
                gr.Number(value=defaults.mask_blur, label="mask_blur (px)"), *tools,
                gr.Checkbox(value=True, label="keep_photo")]

    def draft_input():
        return gr.Checkbox(value=False, label=f"draft (fast preview: at most {settings.draft_steps} steps, guidance "
                           "on the first half only; run again without it for the final)")

    with gr.Group(visible=False):
        single = [gr.Image(type="pil", label="person"), gr.Image(type="pil", image_mode="RGBA", label="garment"),
                  gr.Image(type="pil", image_mode="L", label="mask (optional: white = replace)"),
                  garment_type_input(), *settings_inputs(), *size_and_tools(), draft_input()]
        single_out = [gr.Image(type="pil", format="png", label="result"), gr.JSON(label="metadata")]
        batch = [gr.File(file_count="multiple", file_types=["image"], label="persons"),
                 gr.File(file_count="multiple", file_types=["image"], label="garments"),
                 gr.File(file_count="multiple", file_types=["image"], label="masks (optional, one per person)"),
                 garment_type_input(), *settings_inputs(),
                 gr.Number(value=1, precision=0, label="variations (seeds per pair)"), *size_and_tools(),
                 draft_input()]
        batch_out = [gr.Gallery(type="pil", format="png", label="results"), gr.JSON(label="metadata")]
        masking = [gr.Image(type="pil", label="person"), garment_type_input(), *size_and_tools(True)]
        mask_out = gr.Image(type="pil", format="png", image_mode="L", label="mask")
        paging = [gr.Number(value=1, precision=0, label="page (1: newest)"),
                  gr.Number(value=12, precision=0, label=f"per_page (1-{PER_PAGE_MAX})")]
        paging_out = [gr.Gallery(type="pil", format="png", label="results"),
                      gr.JSON(label="page (results' metadata, page, pages, total, next_page)")]
        buttons = [gr.Button() for _ in range(4)]
    # Try-ons enter the service together and wait there for their party's turn (app.tryons.fair_queue).
    tryons = {"concurrency_id": TRYON, "concurrency_limit": settings.queue_max + 1}
    buttons[0].click(tryon, single, single_out, api_name="tryon", **tryons)
    buttons[1].click(tryon_batch, batch, batch_out, api_name="tryon_batch", **tryons)
    buttons[2].click(auto_mask, masking, mask_out, api_name="auto_mask")
    buttons[3].click(gallery, paging, paging_out, api_name="gallery")
