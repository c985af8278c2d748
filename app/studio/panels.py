"""The studio's panels: layout only (components, labels, hints), no behaviour. ``app.studio.page`` wires them."""

from __future__ import annotations

import gradio as gr

from app.studio.editor import CANVAS_SIZE, MASK_HEX
from app.studio.examples import ExampleImage
from app.studio.runs import MAX_VARIATIONS, progress_html
from app.tryons.service import TryOnOptions

GARMENT_CHOICES = [("Upper", "upper"), ("Lower", "lower"), ("Dress / overall", "overall")]
STUDIO_CSS = """
#status p { margin: 0; font-size: 0.85em; opacity: 0.85 }
.tryon-progress { display: flex; flex-direction: column; gap: 4px; font-size: 0.9em; min-height: 1.6em }
.tryon-bar { height: 6px; border-radius: 3px; background: var(--neutral-200); overflow: hidden }
.tryon-bar > div { height: 100%; background: var(--color-accent); transition: width 0.2s }
.tryon-progress.error span, .tryon-progress.flagged span { color: var(--error-text-color) }
#person, #person .image-container { max-width: 100% }
#examples-person .grid-wrap, #examples-garment .grid-wrap { overflow-y: auto }
.hint p { font-size: 0.85em; opacity: 0.8; margin: 2px 0 }
/* The placeholder clears the editor's tool panel (the photo does too: app.studio.page EDITOR_FIT_JS) */
#person .empty.wrap { left: 52px !important; right: 8px !important; width: auto !important }
#person .empty.wrap p { white-space: normal; text-align: center }
/* Thumbnails: examples and the run's strip in three columns that fit their panel, the gallery as many as
   fit; every caption whole */
#examples-person .grid-container, #examples-garment .grid-container, #strip .grid-container {
  grid-template-columns: repeat(3, minmax(0, 1fr)) !important }
#gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)) !important }
#examples-person .thumbnail-item, #examples-garment .thumbnail-item, #strip .thumbnail-item,
#gallery .thumbnail-item { width: 100% !important; height: auto !important; aspect-ratio: 1 }
#examples-person .caption-label, #examples-garment .caption-label, #strip .caption-label,
#gallery .caption-label {
  left: 2px; right: 2px; bottom: 2px; max-width: none; white-space: normal; overflow: visible;
  text-overflow: clip; text-align: center; font-size: 11px; line-height: 1.2; padding: 1px 2px }
/* Phones: Run, Stop and the progress line stay in reach, in a bar along the bottom of the screen */
@media (max-width: 640px) {
  #run-bar { position: fixed !important; left: 0; right: 0; bottom: 0; z-index: 60; margin: 0 !important;
    padding: 8px 12px; gap: 6px; background: var(--background-fill-primary);
    box-shadow: 0 -2px 10px rgba(0, 0, 0, 0.18) }
  #bar-space { height: 120px }  /* the end of the page clears the bar */
}
.tryon-offstage { display: none !important }
.tryon-frame { position: absolute; display: none; pointer-events: none; box-sizing: border-box; z-index: 2;
  border: 2px dashed var(--color-accent) }
.tryon-frame span { position: absolute; top: 2px; left: 2px; font-size: 11px; line-height: 1.3; padding: 0 4px;
  border-radius: 3px; background: rgba(255, 255, 255, 0.85); color: #333 }
"""


def editor_panel(defaults: TryOnOptions):
    """The person editor and its mask controls: (person, original, frame, auto, garment_type, grow, longer,
    mask_blur)."""
    with gr.Column(scale=5, min_width=320):
        person = gr.ImageEditor(
            label="Person", type="pil", format="png", elem_id="person", height=560,
            sources=["upload", "clipboard"], layers=False, transforms=(), canvas_size=CANVAS_SIZE,
            brush=gr.Brush(colors=[MASK_HEX], color_mode="fixed", default_size=28),
            eraser=gr.Eraser(default_size=28),
            placeholder="Upload a person photo, then paint the clothes to replace (or press Auto mask)")
        # The full-size person photo when the editor holds a smaller copy (the page fills it in: app.studio.page), and
        # the region the model will see, which the page frames over the photo: both out of sight
        original = gr.File(file_types=["image"], elem_id="person-original", elem_classes="tryon-offstage",
                           show_label=False, container=False)
        frame = gr.Textbox(elem_id="model-frame", elem_classes="tryon-offstage", show_label=False,
                           container=False, interactive=False)
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
    return person, original, frame, auto, garment_type, grow, longer, mask_blur


def garment_panel(people: list[ExampleImage], garments: list[ExampleImage]):
    """Garment, examples and batch inputs:
    (garment, person_examples, garment_examples, extra_garments, extra_persons, variations)."""
    with gr.Column(scale=3, min_width=260):
        # RGBA: a cut-out keeps its transparency until the service puts it on white (RGB would turn it black)
        garment = gr.Image(label="Garment", type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                           elem_id="garment", height=260)
        person_examples = gr.Gallery([(str(e.path), e.label) for e in people], label="Example persons",
                                     columns=3, height=210, allow_preview=False, elem_id="examples-person",
                                     show_label=True, object_fit="contain")
        garment_examples = gr.Gallery([(str(e.path), e.label) for e in garments],
                                      label="Example garments", columns=3, height=210,
                                      allow_preview=False, elem_id="examples-garment",
                                      object_fit="contain")
        with gr.Accordion("Batch", open=False, elem_id="batch"):
            extra_garments = gr.File(file_count="multiple", file_types=["image"], label="More garments",
                                     elem_id="extra-garments")
            extra_persons = gr.File(file_count="multiple", file_types=["image"],
                                    label="More persons (auto mask)", elem_id="extra-persons")
            variations = gr.Number(value=1, precision=0, minimum=1, maximum=MAX_VARIATIONS,
                                   label="Variations", info="Seeds per person and garment",
                                   elem_id="variations")
    return garment, person_examples, garment_examples, extra_garments, extra_persons, variations


def run_panel(defaults: TryOnOptions, sizes: dict[str, tuple[int, int]], default_size: str, draft_steps: int):
    """Run controls, the result tabs and the settings."""
    with gr.Column(scale=4, min_width=320):
        with gr.Column(elem_id="run-bar"):  # on a phone, a bar along the bottom of the screen
            with gr.Row():
                run = gr.Button("Run try-on", variant="primary", elem_id="run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False, scale=1)
            progress = gr.HTML(progress_html(None, ""), elem_id="progress")
        # Next to Run, not in Settings: a designer must see when a preview is on. Never on by default.
        draft = gr.Checkbox(value=False, label="Draft (fast preview)", elem_id="draft",
                            info=f"At most {draft_steps} steps, guidance on the early steps only; untick and run "
                                 "again (same seed) for the final.")
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
        strip = gr.Gallery(label="This run", columns=3, height=260, visible=False, elem_id="strip",
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
    return (run, stop, draft, progress, result, compare, inputs_view, strip, run_summary, steps, guidance,
            random_seed, seed, keep_seed, size, keep_photo)


def gallery_panel():
    """The gallery with paging and the opened result:
    (gallery, newer, page_label, older, selected_row, selected, selected_summary, reuse_button, selected_meta)."""
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
    gr.HTML("", elem_id="bar-space", padding=False)  # room for the Run bar on a phone (STUDIO_CSS)
    return gallery, newer, page_label, older, selected_row, selected, selected_summary, reuse_button, selected_meta
