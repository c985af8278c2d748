"""The try-on studio: a Gradio Blocks page over TryOnService, plus the named API endpoints for scripts.

This module wires behaviour to the panels of ``app.studio.panels`` (the person editor with its mask tools,
the garment with examples and batch inputs, the run controls with the result, the gallery). Helpers by
concern: ``app.studio.editor`` (the mask layer in photo coordinates), ``app.studio.runs`` (runs, progress, Stop),
``app.studio.gallery`` (pages, captions, reuse) and ``app.studio.api`` (the script endpoints).
"""

from __future__ import annotations

import html
import logging
import time

import gradio as gr
from PIL import Image

from app.config import Settings
from app.errors import CounterUnavailable, GenerationCancelled, TryOnInputError
from app.identity.access import Access
from app.identity.callers import request_kind, request_owner, request_party
from app.images.imaging import decode_image, flatten
from app.studio.api import add_api_endpoints
from app.studio.editor import EDITOR_SIDE, mask_layer
from app.studio.examples import example_garments, example_people
from app.studio.gallery import form_values, gallery_page, seed_caption, summary, thumbnail
from app.studio.panels import editor_panel, gallery_panel, garment_panel, run_panel
from app.studio.runs import (
    USER_ERRORS,
    Session,
    StepClock,
    auto_part,
    build_request,
    compare_pair,
    describe,
    flagged_note,
    flagged_tile,
    inputs_strip,
    model_frame,
    page_copy,
    person_and_mask,
    progress_html,
    run_in_thread,
    saved_image,
    unreadable_upload,
    upload_bytes,
)
from app.studio.streams import TRYON, Streams
from app.tryons.outputs import public_metadata
from app.tryons.service import SIZES, TryOnOptions, TryOnService

log = logging.getLogger(__name__)
STATE_TEXT = {"unloaded": "not loaded (loads on the first run)", "loading": "loading…", "ready": "ready",
              "failed": "failed to load"}
# Loads a photo (and a mask layer) into the person editor the way an upload does. Gradio 6's editor,
# given such a value from the server, re-uploads it in a loop and its brush stops drawing on replaced
# layers; its own loader, as used for uploads, has neither problem. A mask redraw sends the layer alone:
# the editor keeps its photo (the loader replaces every layer), and a camera photo is not encoded,
# downloaded and decoded again for each redraw. The loader returns the number of the mask it loaded (see
# Session.generation) into the hidden "held", which goes with every value the page sends from the editor.
NOTHING = (None, None)  # nothing for the editor loader to load
SIZE_3_4 = (768, 1024)  # every model size is 3:4: the region's shape
EDITOR_LOAD_JS = """async (photo, layer, drawn, held) => {
  const editor = window.editor;
  if (!editor || (!photo && !layer)) return held;
  const load = async () => {
    await editor.ready;  // window.editor exists before its canvas is set up; a photo given earlier is lost
    if (window.tryonClearPanel) window.tryonClearPanel();  // the photo's fit keeps clear of the tool panel
    if (photo && window.tryonFrame) window.tryonFrame('');  // another photo: no frame until its next mask
    if (photo) await editor.add_image_from_url(photo.url);
    await editor.add_layers_from_url(layer ? [layer.url] : []);
    const brush = document.querySelector('#person button[aria-label="Brush"]');
    if (brush) brush.click(); else editor.set_tool('draw');  // the button also tells the editor's toolbar
  };
  // One load at a time, in the order the server made them: the last mask made is the one left showing.
  window.tryonLoading = (window.tryonLoading || Promise.resolve()).then(load, load);
  await window.tryonLoading;
  window.tryonLoads = (window.tryonLoads || 0) + 1;  // tests wait on this, not on time
  return photo ? 0 : drawn;  // the number of the mask the editor now holds (0: none of ours)
}"""
# The editor's contents read once per change, not once per message. Gradio 6 reads an editor's value
# (get_blobs: each layer rendered and read back from the GPU with readPixels, then encoded as PNG) not only
# for the events that send it but on every loading-status update of the page: each progress line of a run
# read the whole editor again, 35 reads in one run of 3 steps (measured), seconds each for a camera photo in
# a browser drawing in software, and a GPU stall each on a laptop. Here a read is kept until anything could
# have changed the editor: any render of its canvas (its ticker runs for every stroke, zoom, undo and load),
# any pointer, key, click, drop, paste or input event in the page, and any call of the editor's own methods
# (the studio's loader, Gradio's uploads; counted again when an asynchronous one ends). Reads asked for at
# once share one. ``editor.get_blobs_fresh`` reads anew (the tests' eye on what is shown);
# ``editor.tryonReads`` counts the reads made.
EDITOR_READS_JS = """() => {
  let version = 0;
  const changed = () => { version += 1; };
  const keep = (editor) => {
    if (!editor || editor.get_blobs_fresh || typeof editor.get_blobs !== 'function') return;
    const read = editor.get_blobs.bind(editor);
    let kept = null;
    editor.tryonReads = 0;
    editor.get_blobs_fresh = (...args) => { editor.tryonReads += 1; return read(...args); };
    for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(editor))) {
      const method = editor[name];
      if (name === 'constructor' || name === 'get_blobs' || typeof method !== 'function') continue;
      editor[name] = function (...args) {
        changed();
        const result = method.apply(this, args);
        if (result && typeof result.then === 'function') result.then(changed, changed);
        return result;
      };
    }
    Promise.resolve(editor.ready).then(() => {
      if (editor.app && editor.app.ticker) editor.app.ticker.add(changed);
    });
    editor.get_blobs = (...args) => {
      if (args.length) { changed(); return editor.get_blobs_fresh(...args); }
      if (!kept || kept.version !== version) {
        const promise = editor.get_blobs_fresh();
        kept = {version, promise};
        promise.catch(() => { if (kept && kept.promise === promise) kept = null; });
      }
      return kept.promise.then((blobs) => ({...blobs, layers: [...(blobs.layers || [])]}));
    };
  };
  for (const kind of ['pointerdown', 'pointermove', 'pointerup', 'click', 'keydown', 'keyup', 'drop', 'paste',
                      'change', 'input']) {
    document.addEventListener(kind, changed, true);
  }
  let current = window.editor;  // Gradio sets window.editor to each editor it builds
  keep(current);
  Object.defineProperty(window, 'editor', {configurable: true, enumerable: true, get: () => current,
                                           set: (editor) => { changed(); current = editor; keep(editor); }});
}"""
# The person photo, checked and scaled in the page before the editor takes it. A file the browser cannot
# draw (the editor would drop it without a word) or over the upload limit gets one sentence in the progress
# line. A photo larger than EDITOR_SIDE px goes to the editor as a copy at that size (the editor encodes its
# photo for every event that reads it: seconds for a camera photo), and as it is to the server through a
# hidden upload: that original is what runs. Auto mask and Run wait for it (window.tryonOriginal).
# Colours are taken as stored (no colour-profile conversion), as the server reads them.
# Also: the editor fits a photo with 30 px around it, and its tool panel reaches further in from the left (a
# stroke begun on the photo's left edge would land on the panel): before any photo goes in, the fit is
# told to keep clear of the panel (window.tryonClearPanel; the editor may be rebuilt after the page loads).
PERSON_INTAKE_JS = """() => {
  const SIDE = %(side)d, LIMIT_MB = %(limit_mb)s;
  window.tryonOriginal = Promise.resolve();
  window.tryonClearPanel = () => {
    const zoom = window.editor && window.editor.tools && window.editor.tools.get('zoom');
    const panel = document.querySelector('#person .toolbar-wrap');
    const canvas = document.querySelector('#person .pixi-target');
    if (!zoom || !panel || !canvas) return;
    const clear = Math.ceil(panel.getBoundingClientRect().right - canvas.getBoundingClientRect().left + 8);
    if (clear > zoom.border_padding) zoom.border_padding = clear;
  };
  for (const kind of ['paste', 'drop', 'pointerdown']) {  // the other ways a photo comes in
    document.addEventListener(kind, (event) => {
      if (event.target instanceof Element && event.target.closest('#person')) window.tryonClearPanel();
    }, true);
  }
  // The frame of the region the model will see, over the editor's photo, following its zoom and pan. It
  // shows what the server has just worked out (Auto mask, a redraw, a run) and goes as soon as the mask or
  // the photo changes in the page (a stroke, an erasure, another photo), until the next.
  let region = null, drawing = false;
  const frameElement = () => {
    const host = document.querySelector('#person .image-container');
    if (!host) return null;
    let frame = host.querySelector(':scope > .tryon-frame');
    if (!frame) {
      frame = document.createElement('div');
      frame.className = 'tryon-frame';
      frame.innerHTML = '<span>what the model sees</span>';
      host.appendChild(frame);
    }
    return frame;
  };
  const place = () => {
    const frame = frameElement();
    const zoom = window.editor && window.editor.tools && window.editor.tools.get('zoom');
    const canvas = document.querySelector('#person .pixi-target');
    if (!frame || !region || !zoom || !canvas) {
      if (frame) frame.style.display = 'none';
      drawing = false;
      return;
    }
    const host = frame.parentElement.getBoundingClientRect(), box = canvas.getBoundingClientRect();
    const scale = zoom.local_scale;
    const x = box.left - host.left + zoom.local_position.x, y = box.top - host.top + zoom.local_position.y;
    Object.assign(frame.style, {display: 'block', left: `${x + region[0] * scale}px`,
      top: `${y + region[1] * scale}px`, width: `${(region[2] - region[0]) * scale}px`,
      height: `${(region[3] - region[1]) * scale}px`});
    requestAnimationFrame(place);
  };
  window.tryonFrame = (value) => {
    region = value ? JSON.parse(value) : null;
    if (!drawing) { drawing = true; requestAnimationFrame(place); }
  };
  document.addEventListener('pointerdown', (event) => {
    const tool = window.editor && window.editor.current_tool;
    if (event.target instanceof Element && event.target.closest('#person canvas') &&
        (tool === 'draw' || tool === 'erase')) region = null;
  }, true);
  const say = (text) => {
    const line = document.querySelector('#progress .tryon-progress');
    if (!line) return;
    line.className = 'tryon-progress error';
    line.innerHTML = '';
    const span = document.createElement('span');
    span.textContent = text;
    line.appendChild(span);
  };
  const hand = (input, file, ours) => {  // the input gets this file, as if it had been chosen
    const files = new DataTransfer();
    files.items.add(file);
    input.files = files.files;
    if (ours) { input.dataset.tryonChecked = '1'; window.tryonClearPanel(); window.tryonFrame(''); }
    input.dispatchEvent(new Event('change', {bubbles: true}));
  };
  document.addEventListener('change', async (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'file' || !input.closest('#person')) return;
    if (input.dataset.tryonChecked) { delete input.dataset.tryonChecked; return; }  // ours, checked
    const file = input.files && input.files[0];
    if (!file) return;
    event.stopImmediatePropagation();  // the editor gets the file below, once checked
    if (file.size > LIMIT_MB * 1e6) {
      say(`${file.name} is over ${LIMIT_MB} MB: use a smaller person photo.`);
      return;
    }
    let bitmap;
    try { bitmap = await createImageBitmap(file, {colorSpaceConversion: 'none'}); } catch (error) {
      say(`That file is not an image we can read: ${file.name} (as the person). Use a PNG, JPEG or WebP photo.`);
      return;
    }
    const long = Math.max(bitmap.width, bitmap.height);
    if (long <= SIDE) { bitmap.close(); hand(input, file, true); return; }
    const canvas = document.createElement('canvas');
    canvas.width = Math.max(1, Math.round(bitmap.width * SIDE / long));
    canvas.height = Math.max(1, Math.round(bitmap.height * SIDE / long));
    const context = canvas.getContext('2d');
    context.imageSmoothingQuality = 'high';
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const copy = await new Promise((done) => canvas.toBlob(done, 'image/png'));
    const hidden = document.querySelector('#person-original input[type=file]');
    if (hidden) {  // whoever waits on an earlier photo's original waits no more; nobody waits for ever
      if (window.tryonOriginalArrived) window.tryonOriginalArrived();
      window.tryonOriginal = new Promise((done) => {
        window.tryonOriginalArrived = done;
        setTimeout(done, 120000);  // an upload that never arrived: the editor's copy runs
      });
      hand(hidden, file, false);
    }
    hand(input, new File([copy], file.name.replace(/[.][^.]*$/, '') + '.png', {type: 'image/png'}), true);
  }, true);
}"""
FRAME_JS = "(value) => { if (window.tryonFrame) window.tryonFrame(value); }"
# Before Auto mask reads the editor: a camera photo's original has reached the server.
ORIGINAL_WAIT_JS = "async () => { await window.tryonOriginal; }"
ORIGINAL_ARRIVED_JS = "() => { if (window.tryonOriginalArrived) window.tryonOriginalArrived(); }"
# Run pressed: the page says so and disables Run at once, before the photos travel (a camera photo's
# upload and decoding take seconds), and remembers the moment; the done line then counts from it.
RUN_PRESSED_JS = """async () => {
  window.tryonPressed = performance.now();
  const run = document.querySelector('#run');
  if (run) {
    run.disabled = true;
    // The label's own text node, not textContent: the page keeps updating that node (a new one would
    // leave the button saying "Running…" after the run). The server's first line says the same.
    const label = [...run.childNodes].find((node) => node.nodeType === Node.TEXT_NODE && node.nodeValue.trim());
    if (label) label.nodeValue = 'Running…';
  }
  const line = document.querySelector('#progress .tryon-progress');
  if (line) {
    line.className = 'tryon-progress running';
    line.innerHTML = '<span>Sending the photos…</span>';
  }
  await window.tryonOriginal;  // a camera photo's original is on the server: it is what runs
}"""
RUN_DONE_JS = r"""() => {
  const line = document.querySelector('#progress .tryon-progress.done span');
  if (!line || window.tryonPressed === undefined) return;
  const seconds = ((performance.now() - window.tryonPressed) / 1000).toFixed(1);
  line.textContent = line.textContent.replace(/ in [0-9.]+ s\./, ` in ${seconds} s.`);
  window.tryonPressed = undefined;
}"""
REUSED = ("garment_type", "steps", "guidance", "random_seed", "seed", "size", "mask_blur", "mask_grow", "longer",
          "keep_photo", "draft")
def status_text(service: TryOnService, owner: str | None = None, party: str | None = None,
                kind: str | None = None) -> str:
    """The studio's status line; with ``owner``, their quota this period when one applies ("12 of 30 try-ons
    this hour")."""
    status = service.engine.status()
    parts = [f"**Model:** {STATE_TEXT.get(status.state, status.state)}"]
    if status.device:
        parts.append(f"on {status.device} ({status.dtype})")
    if status.compile.get("state") == "compiling":
        parts.append("· compiling for speed in the background (try-ons run meanwhile, a little slower)")
    queue = service.queue_state()
    if queue["running"] or queue["waiting"]:
        parts.append(f"· running, {queue['waiting']} waiting")
    try:
        usage = service.quota(owner, kind, party) if owner is not None else None
    except CounterUnavailable:  # the volume's counts cannot be read now: the line goes without them
        usage = None
    if usage is not None:
        parts.append(f"· **{usage.line}**")
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


def signed_in_line(request: gr.Request) -> str:
    owner = request_owner(request)
    if not owner.startswith("user:"):
        return ""
    name = html.escape(owner.removeprefix("user:"))
    return f'Signed in as <b>{name}</b> · <a href="logout" target="_self">Sign out</a>'  # same tab, not a new one


def build_ui(service: TryOnService, settings: Settings, access: Access, streams: Streams | None = None) -> gr.Blocks:
    """The studio's Blocks. ``streams`` (app.studio.streams) tells when a page has left: its run stops."""
    streams = streams or Streams()
    defaults = TryOnOptions.defaults(settings)
    sizes = {size_label(w, h): (w, h) for w, h in SIZES.values()}
    default_size = size_label(defaults.width, defaults.height)
    if default_size not in sizes:
        sizes[default_size] = (defaults.width, defaults.height)
    people, garments = example_people(settings.layout.root), example_garments(settings.layout.root)

    # -- the editor -----------------------------------------------------------------------------

    def example_at(examples: list, event: gr.SelectData):
        index = event.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(examples):
            raise gr.Error("there is no such example: pick one of those shown.")
        return examples[index]

    def load_person(session: Session, event: gr.SelectData):
        example = example_at(people, event)
        with Image.open(example.path) as image:
            photo = image.convert("RGB")
        return session.show(photo), None  # the photo (or its copy) with an empty mask layer

    def load_garment(event: gr.SelectData):
        example = example_at(garments, event)
        return str(example.path), example.garment_type or gr.skip()

    def on_auto(session: Session, editor, garment_type, grow, longer, mask_blur, size, held):
        """Auto mask: the parser's mask for this garment type, with the tools, the user's edits re-applied;
        the frame of the region the model will see; and the new mask's number."""
        with session.masking:
            try:
                photo, current = person_and_mask(session, editor)
                tools = (garment_type, int(grow), 0.15 if longer else 0.0)
                shown = session.redraw(current, auto_part(service, session, photo, tools), tools, held)
            except USER_ERRORS as exc:
                gr.Warning(str(exc))  # a notice, not an error state: the chain goes on and restores the button
                return NO_REDRAW
            frame = model_frame(session, session.to_photo(shown), float(mask_blur), sizes.get(size, SIZE_3_4))
            return None, mask_layer(shown), frame, session.generation  # the editor has the photo: the layer alone

    def on_tools(session: Session, editor, garment_type, grow, longer, mask_blur, size, held):
        """Grow, Longer or the garment type changed (however entered): redraw the automatic part at once,
        keeping strokes and erasures. A hand-painted mask is used exactly as painted."""
        try:
            person_and_mask(session, editor)  # notices a new photo, which has no automatic mask yet
        except USER_ERRORS:
            return NO_REDRAW
        if session.shown_auto is None:
            return NO_REDRAW
        return on_auto(session, editor, garment_type, grow, longer, mask_blur, size, held)

    def on_original(session: Session, value):
        """The full-size photo the page sent next to the smaller copy it loaded into the editor: it runs.
        Taken raw (preprocess=False) and read through the same intake as REST (size limit, EXIF)."""
        path = value.get("path") if isinstance(value, dict) else None
        try:
            data = upload_bytes(str(path), settings.max_upload_mb) if path else None
            if data is None:
                raise TryOnInputError(f"the photo is over {settings.max_upload_mb:g} MB")
            original = flatten(decode_image(data, "person"))
        except (TryOnInputError, OSError) as exc:
            text = (f"The full-size person photo could not be used ({exc}); the editor's copy (at most "
                    f"{EDITOR_SIDE} px) will run instead.")
            return None, progress_html(None, text, "error")
        with session.masking:
            session.take_original(original)
        return None, gr.skip()  # the hidden input is emptied for the next photo

    def upload_checker(role: str):
        """A garment or batch upload that is not an image we can read: one sentence in the progress line, and
        the input cleared (no toast, no error badges; Gradio never tries to decode it: preprocess=False)."""
        def check(value):
            problem = unreadable_upload(value, role, settings.max_upload_mb)
            if problem is None:
                return gr.skip(), progress_html(None, "")
            return None, progress_html(None, problem, "error")
        return check

    # -- a run ----------------------------------------------------------------------------------

    NO_REDRAW = (*NOTHING, gr.skip(), gr.skip())  # nothing to load, the frame and the number as they are

    def buttons(running: bool):
        return (gr.update(interactive=not running, value="Running…" if running else "Run try-on"),
                gr.update(interactive=running))

    def try_on(session: Session, editor, garment, garment_type, steps, guidance, random_seed, seed, size,
               mask_blur, grow, longer, keep_photo, variations, extra_persons, extra_garments, draft, held,
               request: gr.Request):
        """A run as a stream of progress lines. Errors end it in the same line (never as badges on panels)."""
        skip = [gr.skip()] * 7  # result, compare, inputs view, strip, summary, seed, frame

        def line(fraction, text, state="running"):
            return (progress_html(fraction, text, state), *buttons(state == "running"), *skip)

        try:
            width, height = sizes[size]
            options = TryOnOptions(garment_type=garment_type, steps=int(steps), guidance=float(guidance),
                                   seed=-1 if random_seed else int(seed), width=width, height=height,
                                   mask_blur=float(mask_blur), mask_grow=int(grow), longer=0.15 if longer else 0.0,
                                   keep_photo=bool(keep_photo), draft=bool(draft))
            yield line(None, "Checking the inputs…")
            run = build_request(service, session, editor, garment, extra_persons, extra_garments, options,
                                bool(random_seed), int(variations or 1), held)
        except USER_ERRORS as exc:
            yield line(None, f"Not run: {exc}", "error")
            return
        count, clock = len(run.items), StepClock()
        started = time.perf_counter()
        done, total = 0, options.denoising(settings.draft_steps)[0] * count
        # The editor frames the region the model sees of this photo with this mask.
        frame = model_frame(session, run.first_mask, options.mask_blur, (options.width, options.height))
        yield (*line(0.0, describe(service, 0, total, clock, started, count, request_party(request)))[:-1], frame)
        # A page that closed or reloaded waits for nothing: its run stops (app.studio.streams.Streams).
        page_gone = lambda: streams.gone(request.session_hash)  # noqa: E731
        try:
            for event in run_in_thread(service, session, run, request_owner(request), page_gone,
                                       party=request_party(request), kind=request_kind(request)):
                kind = event[0]
                if kind == "step":
                    done, total = event[1], event[2]
                    clock.tick(done)
                elif kind == "error":
                    exc = event[1]
                    if isinstance(exc, GenerationCancelled):
                        kept = exc.finished
                        if kept:  # a batch stopped part-way: what it finished is shown, as a run's results are
                            text = (f"Stopped at step {done} of {total}; {len(kept)} of {count} try-ons finished "
                                    "(shown here and in the gallery).")
                            yield shown_results(session, run, kept, progress_html(done / total, text, "stopped"))
                        else:
                            yield line(done / total, f"Stopped at step {done} of {total}; nothing was saved.",
                                       "stopped")
                    elif isinstance(exc, USER_ERRORS):
                        yield line(None, f"Not run: {exc}", "error")
                    else:
                        log.error("studio run failed", exc_info=exc)
                        yield line(None, f"The try-on failed ({type(exc).__name__}: {exc}); see the server log.",
                                   "error")
                    return
                elif kind == "done":
                    results = event[1]
                    kind_text = "draft try-on" if run.options.draft else "try-on"
                    note = (f"Done: {len(results)} {kind_text}{'s' if len(results) > 1 else ''} in "
                            f"{time.perf_counter() - started:.1f} s.")
                    state = "done"
                    if any(r.flagged for r in results):  # TRYON_SAFETY: said in the line, with what to do
                        note = flagged_note(results, note)
                        state = "flagged" if all(r.flagged for r in results) else "done"
                    try:
                        usage = service.quota(request_owner(request), request_kind(request), request_party(request))
                    except CounterUnavailable:  # the line goes without the count
                        usage = None
                    if usage is not None:  # TRYON_QUOTA: "12 of 30 try-ons this hour"
                        note += f" {usage.line[0].upper()}{usage.line[1:]}."
                    yield shown_results(session, run, results, progress_html(1.0, note, state))
                    return
                yield line(done / total if total else None,
                           describe(service, done, total, clock, started, count, request_party(request)))
        except GeneratorExit:  # Gradio dropped the run's stream (the page went): stop the work too
            session.cancel.set()
            raise

    def shown_results(session: Session, run, results, line_html: str):
        """The run's results in the result panel (the first in Result, Compare and Inputs; all of them in the
        strip), with ``line_html`` in the progress line. Results the safety checker flagged have no image: a
        grey card in the strip says so, and when all are flagged the panels are emptied."""
        unflagged = [r for r in results if not r.flagged]
        if not unflagged:
            return (line_html, *buttons(False), gr.update(value=None), None, None, gr.update(value=[], visible=False),
                    "**Flagged by the safety checker**: nothing saved. Try another seed.", gr.skip(), gr.skip())
        first = unflagged[0]
        image = saved_image(first)
        session.last_seed = first.metadata["seed"]
        labels = run.labels or [""] * len(results)  # which person and garment each result is, then its seed
        strip = [(flagged_tile() if r.flagged else thumbnail(r, 512),
                  " · ".join(filter(None, [label, "flagged" if r.flagged else "", seed_caption(r.metadata)])))
                 for r, label in zip(results, labels, strict=False)] if len(results) > 1 else []
        shown = gr.update(value=page_copy(first, result.GRADIO_CACHE),
                          label="Result: draft (fast preview)" if run.options.draft else "Result")
        before_after = compare_pair(run.first_person, image, first.metadata.get("region"))
        return (line_html, *buttons(False), shown, before_after,
                inputs_strip(run.first_person, run.first_mask, run.items[0].garment, image),
                gr.update(value=strip, visible=bool(strip)), summary(first.metadata), first.metadata["seed"],
                gr.skip())

    def owner_status(request: gr.Request):
        return status_text(service, request_owner(request), request_party(request), request_kind(request))

    def after_run(request: gr.Request):
        return (*buttons(False), owner_status(request))  # the status line with this run counted

    def on_stop(session: Session):
        session.cancel.set()
        return gr.update(interactive=False)

    def same_seed(session: Session):
        if session.last_seed is None:
            raise gr.Error("no run yet in this session: run once, then keep its seed.")
        return False, session.last_seed

    # -- the gallery ----------------------------------------------------------------------------

    def page_of(page: int, request: gr.Request):
        return gallery_page(service.store, access.listing_owner(request_owner(request)), page)

    def first_page(request: gr.Request):
        return page_of(0, request)

    def newer_page(current: int, request: gr.Request):
        return page_of(max(current - 1, 0), request)

    def older_page(current: int, request: gr.Request):
        return page_of(current + 1, request)

    def show_selected(session: Session, ids, event: gr.SelectData, request: gr.Request):
        index = event.index
        known = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(ids or [])
        result = service.store.get(ids[index], access.listing_owner(request_owner(request))) if known else None
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

    # Uploads and served copies in Gradio's cache are deleted hourly once 12 hours old (all of them at restart).
    with gr.Blocks(title="CatVTON try-on studio", delete_cache=(3600, 12 * 3600)) as demo:
        session = gr.State(Session())
        with gr.Row(equal_height=False):
            gr.Markdown("## Try-on studio", elem_id="title")
            status = gr.Markdown(status_text(service), elem_id="status")
            who = gr.HTML("", elem_id="who")
        with gr.Row(equal_height=False):
            person, original, frame, auto, garment_type, grow, longer, mask_blur = editor_panel(defaults)
            (garment, person_examples, garment_examples, extra_garments, extra_persons,
             variations) = garment_panel(people, garments)
            (run, stop, draft, progress, result, compare, inputs_view, strip, run_summary, steps, guidance,
             random_seed, seed, keep_seed, size, keep_photo) = run_panel(defaults, sizes, default_size,
                                                                         settings.draft_steps)
        (gallery, newer, page_label, older, selected_row, selected, selected_summary, reuse_button,
         selected_meta) = gallery_panel()
        page, ids = gr.State(0), gr.State([])
        with gr.Group(visible=False):  # what the editor loader reads: the photo and the mask layer, as PNG
            editor_photo = gr.Image(type="pil", format="png", image_mode="RGB", elem_id="editor-photo")
            editor_layer = gr.Image(type="pil", format="png", image_mode="RGBA", elem_id="editor-layer")
            drawn = gr.Number(0, precision=0, elem_id="mask-drawn")  # the number of the mask last sent
            held = gr.Number(0, precision=0, elem_id="mask-held")  # and of the one the editor holds

        add_api_endpoints(service, settings, access, streams)

        # -- events ----------------------------------------------------------------------------
        quiet = {"api_visibility": "private", "show_progress": "hidden"}
        # Photos and masks reach the editor through its own loader in the page (EDITOR_LOAD_JS), never as a
        # value sent to it: see app/studio/editor.py for the traps that avoids.
        to_editor = [editor_photo, editor_layer]

        def into_editor(event):
            return event.then(None, [*to_editor, drawn, held], held, js=EDITOR_LOAD_JS, **quiet)

        into_editor(person_examples.select(load_person, session, to_editor, **quiet))
        garment_examples.select(load_garment, None, [garment, garment_type], **quiet)
        for upload, role in ((garment, "garment"), (extra_garments, "extra garment"),
                             (extra_persons, "extra person")):
            upload.upload(upload_checker(role), upload, [upload, progress], preprocess=False, **quiet)
        original.upload(on_original, [session, original], [original, progress], preprocess=False, **quiet) \
            .then(None, None, None, js=ORIGINAL_ARRIVED_JS, **quiet)
        tool_inputs = [session, person, garment_type, grow, longer, mask_blur, size, held]
        masking = auto.click(lambda: gr.update(value="Masking…", interactive=False), None, auto, queue=False,
                             **quiet).then(None, None, None, js=ORIGINAL_WAIT_JS, **quiet) \
            .then(on_auto, tool_inputs, [*to_editor, frame, drawn], **quiet)
        into_editor(masking).then(lambda: gr.update(value="Auto mask", interactive=True), None, auto, queue=False,
                                  **quiet)
        # Every way a tool value arrives (slider, its box and Enter, Use these settings, an example garment's
        # type) is a change: the shown mask is redrawn at once, the latest value only when they come fast.
        for tool in (grow, longer, garment_type):
            into_editor(tool.change(on_tools, tool_inputs, [*to_editor, frame, drawn], trigger_mode="always_last",
                                    **quiet))
        frame.change(None, frame, None, js=FRAME_JS, **quiet)

        page_outputs = [gallery, ids, page, page_label]
        run_inputs = [session, person, garment, garment_type, steps, guidance, random_seed, seed, size, mask_blur,
                      grow, longer, keep_photo, variations, extra_persons, extra_garments, draft, held]
        run_outputs = [progress, run, stop, result, compare, inputs_view, strip, run_summary, seed, frame]
        running = run.click(None, None, None, js=RUN_PRESSED_JS, **quiet).then(
            try_on, run_inputs, run_outputs, concurrency_id=TRYON, concurrency_limit=settings.queue_max + 1,
            **quiet)
        running.then(None, None, None, js=RUN_DONE_JS, **quiet)
        # No polling timer for the status line: it refreshes on load and after each run.
        running.then(after_run, None, [run, stop, status], **quiet) \
            .then(first_page, None, page_outputs, **quiet)
        stop.click(on_stop, session, stop, concurrency_limit=None, **quiet)
        keep_seed.click(same_seed, session, [random_seed, seed], **quiet)

        demo.load(first_page, None, page_outputs, **quiet).then(owner_status, None, status, **quiet)
        demo.load(signed_in_line, None, who, **quiet)
        intake = PERSON_INTAKE_JS % {"side": EDITOR_SIDE, "limit_mb": f"{settings.max_upload_mb:g}"}
        demo.load(None, None, None, js=intake, **quiet)
        demo.load(None, None, None, js=EDITOR_READS_JS, **quiet)
        newer.click(newer_page, page, page_outputs, **quiet)
        older.click(older_page, page, page_outputs, **quiet)
        gallery.select(show_selected, [session, ids], [selected, selected_summary, selected_meta, selected_row],
                       **quiet)
        reuse_button.click(reuse, session, [garment_type, steps, guidance, random_seed, seed, size, mask_blur, grow,
                                            longer, keep_photo, draft], **quiet)  # in the order of REUSED
    return demo

