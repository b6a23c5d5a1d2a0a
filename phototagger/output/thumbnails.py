"""Thumbnails for the dashboard: small JPEG data URIs fetched by the flow and handed to the renderer.

Kept apart from card.py so the renderer does no I/O: EvaluationFlow's `end` fetches the photos the
drill-down shows, within one time budget, and passes the result to `card.render_dashboard`.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterable, Optional

from phototagger.http import ImageFetchError, data_uri
from phototagger.images import load_image

log = logging.getLogger(__name__)

THUMB_PX = 176
THUMB_TIMEOUT_S = 5.0
THUMB_MAX_BYTES = 15 * 1024 * 1024
THUMBS_BUDGET_S = 60.0  # all thumbnails together; photos still pending get the placeholder


def thumbnail_data_uri(location: str, size: int = THUMB_PX, timeout_s: float = THUMB_TIMEOUT_S) -> Optional[str]:
    """A small JPEG of the image as a data URI, or None when it cannot be fetched or decoded."""
    if not location:
        return None
    try:
        thumb = load_image(location, size, draft=True, max_bytes=THUMB_MAX_BYTES, timeout_s=timeout_s)
    except ImageFetchError as exc:
        log.info("no thumbnail for %s: %s", location, exc)
        return None
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=72, optimize=True)
    return data_uri("thumb.jpg", out.getvalue())


def thumbnails(urls: Iterable[str], timeout_s: float = THUMB_TIMEOUT_S,
               budget_s: float = THUMBS_BUDGET_S) -> dict[str, Optional[str]]:
    """Thumbnails fetched 8 at a time; a slow image source delays the dashboard by `budget_s` at most."""
    pool = ThreadPoolExecutor(max_workers=8)
    futures = {url: pool.submit(thumbnail_data_uri, url, timeout_s=timeout_s) for url in urls}
    done, pending = wait(futures.values(), timeout=budget_s)
    pool.shutdown(wait=False, cancel_futures=True)
    if pending:
        log.warning("%d thumbnails not fetched within %.0f s; showing placeholders", len(pending), budget_s)
    return {url: future.result() if future in done else None for url, future in futures.items()}
