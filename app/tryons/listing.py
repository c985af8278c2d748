"""A page of an owner's results, newest first, in the shape every door answers with (REST's
``GET /v1/results``, the script endpoint ``/results`` and the studio's gallery all page the same way)."""

from __future__ import annotations

from app.tryons.outputs import ResultStore, SavedResult, public_metadata

PER_PAGE_MAX = 100


def results_page(store: ResultStore, owner: str | None, page: int,
                 per_page: int) -> tuple[list[SavedResult], dict]:
    """Page ``page`` (1 = newest) of ``owner``'s results (everyone's when None), and the API's answer."""
    results, total = store.list(owner, offset=(page - 1) * per_page, limit=per_page)
    pages = max(1, -(-total // per_page))
    return results, {"results": [public_metadata(r.metadata) for r in results], "page": page,
                     "per_page": per_page, "total": total, "pages": pages,
                     "next_page": page + 1 if page < pages else None}
