"""The studio's gallery: pages of saved results with readable captions, a summary of the one opened, and
the settings it was made with, ready to fill the form again."""

from __future__ import annotations

from datetime import datetime

from PIL import Image, ImageOps

from app.tryons.outputs import ResultStore, SavedResult

PAGE_SIZE = 12
GARMENT_LABELS = {"upper": "Upper", "lower": "Lower", "overall": "Dress / overall"}
DRAFT_LABEL = "Draft"


def caption(metadata: dict) -> str:
    """"Upper · seed 42 · 14:03" ("Draft · Upper · ..." for a fast preview): what a designer scans a grid for."""
    settings = metadata.get("settings") or {}
    parts = [DRAFT_LABEL] if metadata.get("draft") else []
    parts.append(GARMENT_LABELS.get(settings.get("garment_type"), "Try-on"))
    if metadata.get("seed") is not None:
        parts.append(f"seed {metadata['seed']}")
    created = metadata.get("created")
    if created:
        try:
            parts.append(datetime.fromisoformat(created).strftime("%d %b %H:%M"))
        except ValueError:
            pass
    return " · ".join(parts)


def seed_caption(metadata: dict) -> str:
    """"seed 42", or "Draft · seed 42": a result among the others of one run."""
    seed = f"seed {metadata.get('seed')}"
    return f"{DRAFT_LABEL} · {seed}" if metadata.get("draft") else seed


def denoising_line(metadata: dict) -> str:
    """How the result was denoised; a draft says what it skipped and how to get the full one."""
    settings = metadata.get("settings") or {}
    if not metadata.get("draft"):
        return f"{settings.get('steps')} steps"
    return (f"draft: {settings.get('steps_run')} of {settings.get('steps')} steps, guided on the first "
            f"{settings.get('guidance_steps')} (untick Draft and run again with this seed for the final)")


def summary(metadata: dict) -> str:
    """One short paragraph: how the result was made, and where it is."""
    settings = metadata.get("settings") or {}
    timings = metadata.get("timings") or {}
    size = metadata.get("size") or ["?", "?"]
    lines = [f"**{caption(metadata)}**",
             f"Seed **{metadata.get('seed')}** · {denoising_line(metadata)} · guidance {settings.get('guidance')}"
             f" · {settings.get('width')}x{settings.get('height')}"]
    tools = []
    if settings.get("mask_grow"):
        tools.append(f"mask grown {settings['mask_grow']:+d} px")
    if settings.get("longer"):
        tools.append("longer garment")
    if settings.get("mask_blur") is not None:
        tools.append(f"blur {settings['mask_blur']:g} px")
    if settings.get("keep_photo"):
        tools.append("kept in the photo")
    if tools:
        lines.append(" · ".join(tools))
    total = timings.get("total")
    when = f"{total:.1f} s on {metadata.get('device')}" if isinstance(total, (int, float)) else ""
    lines.append(f"{when} · {size[0]}x{size[1]} · saved as `{metadata.get('image')}`".lstrip(" ·"))
    return "  \n".join(lines)


def thumbnail(result: SavedResult, size: int = 256) -> Image.Image:
    with Image.open(result.image_path) as image:
        return ImageOps.contain(image.convert("RGB"), (size, size))


def gallery_page(store: ResultStore, owner: str | None, page: int) -> tuple[list, list[str], int, str]:
    """(items, ids, page, label) of ``page`` (0 = newest) of ``owner``'s results (everyone's when None),
    clamped to the pages there are."""
    results, total = store.list(owner, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    if page > pages - 1:  # past the end (results were deleted, or "Older" on the last page)
        page = pages - 1
        results, total = store.list(owner, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
    items = [(thumbnail(result), caption(result.metadata)) for result in results]
    label = f"Page {page + 1} of {pages} · {total} result{'s' if total != 1 else ''}"
    return items, [r.id for r in results], page, label


def form_values(metadata: dict, size_labels: dict[str, tuple[int, int]]) -> dict:
    """The studio's form fields as they were for this result (for "Use these settings")."""
    settings = metadata.get("settings") or {}
    size = next((label for label, wh in size_labels.items()
                 if wh == (settings.get("width"), settings.get("height"))), None)
    return {"garment_type": settings.get("garment_type"), "steps": settings.get("steps"),
            "guidance": settings.get("guidance"), "seed": metadata.get("seed"), "size": size,
            "mask_blur": settings.get("mask_blur"), "mask_grow": settings.get("mask_grow"),
            "longer": bool(settings.get("longer")), "keep_photo": settings.get("keep_photo"),
            "draft": bool(settings.get("draft"))}
