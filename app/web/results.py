"""GET /v1/results: the caller's results, newest first; one result's metadata; its PNG.

Ids of results the caller may not see answer 404 exactly like ids that do not exist (never 403), so
an id tells nothing about other owners.
"""

from __future__ import annotations

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse

from app.errors import ApiError
from app.identity.access import Access
from app.identity.callers import identity_of
from app.tryons.listing import PER_PAGE_MAX, results_page
from app.tryons.outputs import ResultStore, SavedResult, public_metadata


def add_results_routes(app: FastAPI, store: ResultStore, access: Access) -> None:
    def find(request: Request, result_id: str) -> SavedResult:
        result = store.get(result_id, access.listing_owner(identity_of(request)))
        if result is None:
            raise ApiError(404, "not_found", f"no result {result_id[:80]!r} among yours.")
        return result

    @app.get("/v1/results")
    def list_results(request: Request, page: int = Query(1, ge=1, le=100_000),
                     per_page: int = Query(24, ge=1, le=PER_PAGE_MAX)) -> dict:
        """Your results, newest first (everyone's with TRYON_GALLERY=all)."""
        return results_page(store, access.listing_owner(identity_of(request)), page, per_page)[1]

    @app.get("/v1/results/{result_id}")
    def result_metadata(request: Request, result_id: str) -> dict:
        """One of your results: its settings, seed, timings and size."""
        return public_metadata(find(request, result_id).metadata)

    @app.get("/v1/results/{result_id}/image", response_class=FileResponse)
    def result_image(request: Request, result_id: str) -> FileResponse:
        """One of your results as PNG."""
        result = find(request, result_id)
        return FileResponse(result.image_path, media_type="image/png", filename=f"{result.id}.png")
