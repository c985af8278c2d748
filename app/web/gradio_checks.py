"""What a Gradio event may take, checked before Gradio opens anything (used by app.web.gradio_door).

- whose files are whose: :class:`FileLedger` records every file an owner uploaded to Gradio's cache or was
  sent by the server, and the page's own files (examples) as everyone's;
- :func:`check_inputs`: every value of an event against the event's own components, strictly (whole
  numbers, true/false, one of the choices, ranges), and every file in it: only one the caller may use, a
  regular file (``lstat``: no device or FIFO is ever opened) within the upload size, and where an image is
  expected, a readable one within the pixel limit, from its header.

Refusals are :class:`Refused`: the field as the caller knows it and a sentence saying what to do.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from dataclasses import dataclass

IMAGE_COMPONENTS = {"Image", "ImageEditor", "Gallery"}


class Refused(Exception):
    """An input the door will not pass on: who (the field) and why, in the app's words."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class FileLedger:
    """Files in Gradio's cache by who may use them: those an owner uploaded or was sent, and the app's own
    (examples and other values in the page's config) for everyone. Keys are real paths."""

    PRUNE_AT = 20_000

    def __init__(self):
        self._owners: dict[str, set[str]] = {}
        self._public: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str) -> str | None:
        if not isinstance(path, str) or not path or "\x00" in path:
            return None
        try:
            return os.path.realpath(path)
        except (OSError, ValueError):
            return None

    def add(self, owner: str, path: str) -> None:
        key = self.key(path)
        if key is None:
            return
        with self._lock:
            self._owners.setdefault(key, set()).add(owner)
            if len(self._owners) > self.PRUNE_AT:  # Gradio deletes cached files after a while: forget those
                self._owners = {k: v for k, v in self._owners.items() if os.path.exists(k)}

    def add_public(self, path: str) -> None:
        key = self.key(path)
        if key is not None:
            with self._lock:
                self._public.add(key)

    def allows(self, owner: str, path: str) -> bool:
        key = self.key(path)
        if key is None:
            return False
        with self._lock:
            return key in self._public or owner in self._owners.get(key, ())


def file_dicts(value, found: list[dict] | None = None) -> list[dict]:
    """Every dict in ``value`` that names a file (a ``path`` or ``url``, or Gradio's FileData marker)."""
    found = [] if found is None else found
    if isinstance(value, dict):
        meta = value.get("meta")
        if "path" in value or "url" in value or (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"):
            found.append(value)
        else:
            for item in value.values():
                file_dicts(item, found)
    elif isinstance(value, list):
        for item in value:
            file_dicts(item, found)
    return found


@dataclass
class Limits:
    max_upload_bytes: int
    max_pixels: int


def field_name(component, index: int) -> str:
    label = getattr(component, "label", None)
    if isinstance(label, str) and label.strip():
        return label.split(" (")[0].strip()
    return getattr(component, "elem_id", None) or f"input {index + 1}"


def check_inputs(fn, data: list, owner: str, ledger: FileLedger, limits: Limits) -> None:
    """Raise :class:`Refused` for the first value of ``data`` that the event's components must not take."""
    inputs = list(fn.inputs)
    if len(data) != len(inputs):  # the simple /call format leaves out what the API does not show (state)
        inputs = [component for component in inputs if not getattr(component, "skip_api", False)]
    if len(data) != len(inputs):
        raise Refused("data", f"this event takes {len(inputs)} values, {len(data)} were sent.")
    for index, (component, value) in enumerate(zip(inputs, data, strict=True)):
        if getattr(component, "stateful", False):
            continue  # Gradio ignores what the client sends for server-side state
        name = field_name(component, index)
        check_value(type(component).__name__, component, value, name)
        check_shape(component, value, name)
        # An event that takes its files raw (preprocess=False) decodes them itself and reports a file that is
        # not an image in its own words; Gradio opens nothing. Ownership, kind and size still hold.
        image = getattr(fn, "preprocess", True) and (type(component).__name__ in IMAGE_COMPONENTS
                                                     or "image" in (getattr(component, "file_types", None) or []))
        for file in file_dicts(value):
            check_file(file, name, owner, ledger, limits, image)


def check_value(kind: str, component, value, name: str) -> None:
    if kind == "Number":
        precision = getattr(component, "precision", None)
        whole = precision == 0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Refused(name, f"give {'a whole number' if whole else 'a number'} (got {shown(value)}).")
        if whole and not isinstance(value, int):
            raise Refused(name, f"give a whole number (got {shown(value)}).")
        bounded(component, value, name)
    elif kind == "Slider":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Refused(name, f"give a number (got {shown(value)}).")
        bounded(component, value, name)
    elif kind == "Checkbox":
        if not isinstance(value, bool):
            raise Refused(name, f"give true or false (got {shown(value)}).")
    elif kind in ("Radio", "Dropdown"):
        choices = [choice[1] if isinstance(choice, list | tuple) else choice
                   for choice in getattr(component, "choices", None) or []]
        if getattr(component, "multiselect", False) or getattr(component, "allow_custom_value", False):
            return
        if value not in choices:
            listed = ", ".join(json.dumps(c) for c in choices)
            raise Refused(name, f"give one of {listed} (got {shown(value)}).")
    elif kind == "Textbox":
        if value is not None and not isinstance(value, str):
            raise Refused(name, f"give text (got {shown(value)}).")
    elif kind in IMAGE_COMPONENTS or kind == "File":
        if value is not None and not isinstance(value, dict | list):
            raise Refused(name, "give a file uploaded to this server (gradio_client uploads a local path for "
                          "you: pass handle_file(path)).")


def check_shape(component, value, name: str) -> None:
    """A value in the shape the component's data model takes (Gradio would otherwise answer pydantic's
    text, with the value in it)."""
    model = getattr(component, "data_model", None)
    if value is None or model is None:
        return
    try:
        model.model_validate(value)
    except Exception:
        raise Refused(name, "this is not the kind of value this input takes: see /gradio_api/info for its "
                      "type (files as {\"path\": <an upload of yours>, \"meta\": {\"_type\": \"gradio.FileData\"}}).") \
            from None


def bounded(component, value, name: str) -> None:
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if (low is not None and value < low) or (high is not None and value > high):
        raise Refused(name, f"{shown(value)} is out of range: use {low:g} to {high:g}."
                      if low is not None and high is not None else f"{shown(value)} is out of range.")


def shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def check_file(file: dict, name: str, owner: str, ledger: FileLedger, limits: Limits, image: bool) -> None:
    """Only a file this caller may use, a regular one within the size limit (and a readable image within
    the pixel limit where an image is expected). ``lstat`` only: nothing here can block on a device or a FIFO."""
    path = file.get("path")
    if not isinstance(path, str) or not ledger.allows(owner, path):
        raise Refused(name, "that file was not uploaded to this server by you: upload it first (the studio "
                      "does; gradio_client does when given handle_file(path)).")
    try:
        info = os.lstat(path)
    except OSError:
        raise Refused(name, "that upload is no longer on this server (uploads are kept 12 hours): upload it "
                      "again.") from None
    if not stat.S_ISREG(info.st_mode):
        raise Refused(name, "that upload is not a regular file: upload the image again.")
    if info.st_size > limits.max_upload_bytes:
        raise Refused(name, f"the file is over {limits.max_upload_bytes / 1e6:g} MB (TRYON_MAX_UPLOAD_MB): use a "
                      "smaller one.")
    if image:
        check_image_header(path, name, limits.max_pixels)


def check_image_header(path: str, name: str, max_pixels: int) -> None:
    """Reads the header only: a 144-megapixel photo is refused before anything decodes it."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
    except Exception:
        raise Refused(name, "the file is not an image that can be read: use a PNG, JPEG or WebP.") from None
    if width * height > max_pixels:
        raise Refused(name, f"the image is {width}x{height}, over {max_pixels // 10**6} megapixels: use a smaller "
                      "photo.")
