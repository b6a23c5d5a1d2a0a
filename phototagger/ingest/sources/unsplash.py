"""Photos from the Unsplash API (https://unsplash.com/documentation): latest, a search, or a collection.

Listing pages give the photos; one detail call per photo (`GET /photos/:id`) gives its `tags`,
which become the ground truth. Calls go through the shared requests session (retries with
back-off for 429/5xx, Retry-After honoured). The hourly budget (`X-Ratelimit-Remaining`) is
watched: when it runs out the fetch stops with what it has and says so in `notes`, and the
next run continues, because photos not delivered are not recorded as seen.

The access key travels only in the `Authorization` header of API calls, never in a URL, a
message or a record, and never to the image host.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import requests

from phototagger.http import URLRefused, env_url, shared_session
from phototagger.records import Photo
from phototagger.redact import scrub
from phototagger.ingest.sources.base import SourceError, collect_tags, make_photo, to_int, utc_iso

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.unsplash.com"
KEY_ENV = "client_id"
MAX_PER_PAGE = 30  # Unsplash's cap on per_page
MISSING_KEY = "Unsplash key missing"
MISSING_KEY_FIX = "export client_id=<your Unsplash access key> (https://unsplash.com/oauth/applications) or use --source demo"
MODES = ("latest", "search", "collection")


class RateLimited(Exception):
    """The hourly budget is spent; the fetch stops with what it has."""


class UnsplashSource:
    """Latest photos (`mode="latest"`), a search (`"search"`, `query`) or a collection (`"collection"`, `query`=id)."""

    source = "unsplash"
    default_batch_size = 20  # about 21 calls a run: fits the 50-an-hour demo-mode budget with room to spare

    def __init__(
        self,
        key: str,
        mode: str = "latest",
        query: str = "",
        *,
        base_url: Optional[str] = None,
        session: Optional[requests.Session] = None,
        per_page: int = MAX_PER_PAGE,
        max_pages: int = 20,
        timeout_s: float = 20.0,
    ):
        if not key:
            raise SourceError(MISSING_KEY, MISSING_KEY_FIX)
        if mode not in MODES:
            raise SourceError(f"unknown Unsplash mode {mode!r}", f"use one of {', '.join(MODES)}")
        if mode != "latest" and not query:
            raise SourceError(f"unsplash:{mode} needs a value", "e.g. --source unsplash:search:mountains or unsplash:collection:317099")
        self._key = key
        self.mode = mode
        self.query = query
        self.base_url = (base_url or env_url("UNSPLASH_API_URL", DEFAULT_API_URL)).rstrip("/")
        self._session = session or shared_session()
        self.per_page = max(1, min(per_page, MAX_PER_PAGE))
        self.max_pages = max_pages
        self.timeout_s = timeout_s
        self.name = "unsplash" if mode == "latest" else f"unsplash:{mode}:{query}"
        self.notes: list[str] = []
        self.calls = 0
        self._remaining: Optional[int] = None
        self._limit: Optional[int] = None

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        self.notes = []
        if limit <= 0:
            return []
        photos: list[Photo] = []
        taken: set[str] = set()
        vanished = 0
        try:
            for item in self._listing():
                photo_id = unsplash_photo_id(item["id"])
                if photo_id in exclude_ids or photo_id in taken:
                    continue
                taken.add(photo_id)
                detail = self._get(f"/photos/{item['id']}", missing_ok=True)
                if detail is None:
                    vanished += 1
                    continue
                photos.append(photo_from_api(detail))
                if len(photos) >= limit:
                    break
        except RateLimited:
            budget = f" ({self._limit} requests an hour)" if self._limit else ""
            self.notes.append(
                f"Unsplash rate limit reached{budget}: stopped after {len(photos)} new photos; "
                "the next run continues from here."
            )
        if vanished:
            self.notes.append(f"{vanished} photos were removed from Unsplash before their tags could be read; skipped.")
        log.info("unsplash: %d photos in %d API calls, %s requests left", len(photos), self.calls, self._remaining)
        return photos

    # -- listing and pagination ------------------------------------------------------------

    def _listing(self) -> Iterator[dict[str, Any]]:
        """Photos of the chosen listing, page by page, until the last page or `max_pages`."""
        if self.mode == "latest":
            path, params = "/photos", {"order_by": "latest"}
        elif self.mode == "search":
            path, params = "/search/photos", {"query": self.query}
        else:
            path, params = f"/collections/{self.query}/photos", {}
        for page in range(1, self.max_pages + 1):
            body, resp = self._get_page(path, {**params, "page": page, "per_page": self.per_page})
            items = body.get("results", []) if isinstance(body, dict) else body
            yield from items
            if not items or not self._has_next(resp, body, page):
                return
        self.notes.append(f"Read {self.max_pages} pages of {self.name} without filling the batch; stopped there.")

    def _has_next(self, resp: requests.Response, body: Any, page: int) -> bool:
        """The Link header decides; without one, total_pages (search) or X-Total."""
        if resp.headers.get("Link"):
            return "next" in resp.links
        if isinstance(body, dict) and "total_pages" in body:
            return page < int(body["total_pages"] or 0)
        total = to_int(resp.headers.get("X-Total"))
        if total is not None:
            return page * self.per_page < total
        return len(body) >= self.per_page

    # -- one API call ----------------------------------------------------------------------

    def _get_page(self, path: str, params: dict[str, Any]) -> tuple[Any, requests.Response]:
        resp = self._request(path, params)
        if resp.status_code == 404:
            what = f"collection {self.query!r}" if self.mode == "collection" else path
            raise SourceError(f"Unsplash has no {what} (HTTP 404: {self._errors(resp)}); check the --source value")
        return self._json(resp), resp

    def _get(self, path: str, missing_ok: bool = False) -> Optional[dict[str, Any]]:
        resp = self._request(path, {})
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code == 404:
            raise SourceError(f"Unsplash has no {path} (HTTP 404: {self._errors(resp)})")
        return self._json(resp)

    def _request(self, path: str, params: dict[str, Any]) -> requests.Response:
        if self._remaining == 0:
            raise RateLimited()
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Client-ID {self._key}", "Accept-Version": "v1"}
        try:
            resp = self._session.get(url, params=params, headers=headers, timeout=(5, self.timeout_s))
        except requests.RequestException as exc:
            raise SourceError(
                f"Could not reach Unsplash at {self.base_url} ({type(exc).__name__}); "
                "check the network or UNSPLASH_API_URL"
            ) from None
        except URLRefused as exc:
            raise SourceError(f"Unsplash at {self.base_url} refused by the fetch policy: {exc}") from None
        self.calls += 1
        self._remaining = to_int(resp.headers.get("X-Ratelimit-Remaining"))
        self._limit = to_int(resp.headers.get("X-Ratelimit-Limit")) or self._limit
        self._raise_for_status(resp)
        return resp

    def _raise_for_status(self, resp: requests.Response) -> None:
        status = resp.status_code
        if status < 400 or status == 404:
            return
        if status == 429 or (status == 403 and "rate limit" in resp.text.lower()):
            raise RateLimited()
        if status == 401:
            raise SourceError(
                f"Unsplash rejected the key in client_id (HTTP 401: {self._errors(resp)}); "
                "check the access key at https://unsplash.com/oauth/applications, or use --source demo"
            )
        if status >= 500:
            raise SourceError(f"Unsplash answered HTTP {status} after retries ({self._errors(resp)}); try again later")
        raise SourceError(f"Unsplash refused the request (HTTP {status}: {self._errors(resp)})")

    def _errors(self, resp: requests.Response) -> str:
        """The `errors` list Unsplash sends on failure, else the start of the body; never the key."""
        try:
            errors = resp.json().get("errors")
            text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else resp.text
        except ValueError:
            text = resp.text
        return " ".join(scrub(text, (self._key,)).split())[:200] or "no details"

    def _json(self, resp: requests.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise SourceError(
                f"Unsplash answered HTTP {resp.status_code} with something that is not JSON; "
                f"is UNSPLASH_API_URL ({self.base_url}) the API?"
            ) from None


def unsplash_photo_id(unsplash_id: str) -> str:
    """Our id for an Unsplash photo; the API and the Lite dataset give the same one."""
    return f"unsplash-{unsplash_id}"


def unsplash_attribution(name: Optional[str], link: Optional[str]) -> str:
    """The credit line; the API and the Lite dataset must give the same photo the same one."""
    attribution = f"Photo by {name} on Unsplash" if name else "Photo on Unsplash"
    return f"{attribution} ({link.strip()})" if link else attribution


def photo_from_api(item: dict[str, Any]) -> Photo:
    """A Photo from an Unsplash photo object (the detail call's, which carries `tags`)."""
    user = item.get("user") or {}
    name = user.get("name") or user.get("username")
    profile = (user.get("links") or {}).get("html")
    tags = collect_tags((t.get("title"), "user") for t in item.get("tags") or [] if isinstance(t, dict))
    return make_photo(
        unsplash_photo_id(item["id"]),
        (item.get("urls") or {}).get("regular", ""),
        "unsplash",
        tags,
        utc_iso(item.get("created_at")),
        description=item.get("description") or item.get("alt_description"),
        width=to_int(item.get("width")),
        height=to_int(item.get("height")),
        photographer=name,
        attribution=unsplash_attribution(name, profile),
    )
