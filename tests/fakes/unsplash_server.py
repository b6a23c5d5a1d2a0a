"""A local stand-in for the Unsplash API (https://unsplash.com/documentation), with switchable faults.

Speaks what the `unsplash` source uses: `GET /photos` (latest first), `GET /search/photos`
(`total`, `total_pages`, `results`), `GET /collections/:id/photos`, `GET /photos/:id` (the detail,
with `tags` as objects with a `title`), pagination by `page`/`per_page` with a `Link` header
(first/prev/next/last) and `X-Total`/`X-Per-Page`, and `X-Ratelimit-Limit`/`X-Ratelimit-Remaining`
on every API answer. Authentication by `Authorization: Client-ID <key>` or a `client_id` parameter;
failures answer with Unsplash's `{"errors": [...]}`. Photo URLs (`urls.*`) point at tiny generated
JPEGs served by the same server at `/images/<id>.jpg` (no key needed there, as on images.unsplash.com).

Knobs (plain attributes, change them between calls):
- `photos`: list of `{"id", "tags", "description", ...}` dicts, newest first (`sample_photos(n)` builds some).
- `collections`: collection id -> list of photo ids.
- `key`: the access key it accepts; anything else gets 401 "OAuth error: The access token is invalid".
- `remaining` / `rate_limit`: the hourly budget; every authorised API call spends one, and a call
  with none left gets 403 with the text body "Rate Limit Exceeded", as Unsplash answers.
- `ratelimit_headers`: False leaves the rate-limit headers out (a gateway that strips them).
- `link_headers`: False leaves `Link` out, so clients must page by `X-Total` / `total_pages`.
- `faults`: consumed one per API request (None = answer normally): "rate_limit" (429 with
  `Retry-After: <retry_after>`), "unavailable" (503), "server_error" (500), "non_json" (200 HTML).
Received API requests land in `requests` as (path, query dict, headers with lower-case names).
"""
from __future__ import annotations

import io
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlparse

from PIL import Image

FAULTS = ("rate_limit", "unavailable", "server_error", "non_json")
MAX_PER_PAGE = 30
DEFAULT_PER_PAGE = 10
_TAG_WORDS = ("Cat", "dog", "Beach ", "mountain", "sunset", "city", "forest", "portrait", "food", "car")


def sample_photos(count: int) -> list[dict[str, Any]]:
    """`count` photos with ids p001.., three tags each (mixed case, to exercise normalisation)."""
    photos = []
    for i in range(1, count + 1):
        tags = [_TAG_WORDS[i % len(_TAG_WORDS)], _TAG_WORDS[(i + 3) % len(_TAG_WORDS)], f"tag {i}"]
        photos.append(
            {
                "id": f"p{i:03d}",
                "tags": tags,
                "description": f"Photo number {i}",
                "created_at": f"2024-03-{(i % 28) + 1:02d}T10:00:00-04:00",
                "photographer": f"Photographer {i}",
            }
        )
    return photos


def tiny_jpeg(seed: str) -> bytes:
    """An 8x8 JPEG of one colour derived from `seed`."""
    value = zlib.crc32(seed.encode())
    colour = (value & 255, (value >> 8) & 255, (value >> 16) & 255)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


class FakeUnsplashServer:
    """Use as a context manager; `.base_url` is the API root to put in UNSPLASH_API_URL."""

    def __init__(self, photos: Optional[list[dict[str, Any]]] = None, *, key: str = "test-key", rate_limit: int = 50):
        self.photos = sample_photos(12) if photos is None else photos
        self.collections: dict[str, list[str]] = {}
        self.key = key
        self.rate_limit = rate_limit
        self.remaining = rate_limit
        self.ratelimit_headers = True
        self.link_headers = True
        self.faults: list[Optional[str]] = []
        self.retry_after = "1"
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeUnsplashServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the API's answers ------------------------------------------------------------------

    def photo_json(self, photo: dict[str, Any], detail: bool = False) -> dict[str, Any]:
        """An Unsplash photo object; the detail adds `tags`, as `GET /photos/:id` does."""
        pid = photo["id"]
        image = f"{self.base_url}/images/{pid}.jpg"
        user = photo.get("photographer", "Someone")
        body = {
            "id": pid,
            "created_at": photo.get("created_at", "2024-01-01T00:00:00Z"),
            "updated_at": photo.get("created_at", "2024-01-01T00:00:00Z"),
            "width": photo.get("width", 4000),
            "height": photo.get("height", 3000),
            "color": "#404059",
            "description": photo.get("description"),
            "alt_description": photo.get("alt_description", "a photo"),
            "urls": {size: f"{image}?size={size}" for size in ("raw", "full", "regular", "small", "thumb")},
            "links": {
                "self": f"{self.base_url}/photos/{pid}",
                "html": f"https://unsplash.com/photos/{pid}",
                "download": f"https://unsplash.com/photos/{pid}/download",
                "download_location": f"{self.base_url}/photos/{pid}/download",
            },
            "likes": 1,
            "user": {
                "id": f"u-{pid}",
                "username": user.lower().replace(" ", "_"),
                "name": user,
                "links": {"html": f"https://unsplash.com/@{user.lower().replace(' ', '_')}"},
            },
        }
        if detail:
            body["tags"] = [{"type": "search", "title": t} for t in photo.get("tags", [])]
        return body

    def _page(self, items: list[dict[str, Any]], path: str, query: dict[str, str]) -> tuple[list[dict], dict[str, str], int]:
        page = max(1, int(query.get("page", 1)))
        per_page = max(1, min(int(query.get("per_page", DEFAULT_PER_PAGE)), MAX_PER_PAGE))
        last = max(1, -(-len(items) // per_page))
        chosen = items[(page - 1) * per_page : page * per_page]
        headers = {"X-Total": str(len(items)), "X-Per-Page": str(per_page)}
        if self.link_headers:

            def link(number: int, rel: str) -> str:
                return f'<{self.base_url}{path}?{urlencode({**query, "page": number})}>; rel="{rel}"'

            links = []
            if page > 1:
                links += [link(1, "first"), link(page - 1, "prev")]
            if page < last:
                links += [link(last, "last"), link(page + 1, "next")]
            headers["Link"] = ", ".join(links)
        return [self.photo_json(p) for p in chosen], headers, last

    def _answer(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        by_id = {p["id"]: p for p in self.photos}
        parts = [p for p in path.split("/") if p]
        if parts == ["photos"]:
            items, headers, _ = self._page(self.photos, path, query)
            return 200, items, headers
        if parts == ["search", "photos"]:
            needle = query.get("query", "").lower()
            hits = [
                p
                for p in self.photos
                if any(needle in t.lower() for t in p.get("tags", [])) or needle in (p.get("description") or "").lower()
            ]
            items, headers, last = self._page(hits, path, query)
            return 200, {"total": len(hits), "total_pages": last if hits else 0, "results": items}, headers
        if len(parts) == 3 and parts[0] == "collections" and parts[2] == "photos":
            if parts[1] not in self.collections:
                return 404, {"errors": ["Couldn't find Collection"]}, {}
            members = [by_id[i] for i in self.collections[parts[1]] if i in by_id]
            items, headers, _ = self._page(members, path, query)
            return 200, items, headers
        if len(parts) == 2 and parts[0] == "photos":
            if parts[1] not in by_id:
                return 404, {"errors": ["Couldn't find Photo"]}, {}
            return 200, self.photo_json(by_id[parts[1]], detail=True), {}
        return 404, {"errors": ["Not found"]}, {}

    def _handler(self) -> type:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, body: Any, headers: dict[str, str]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json", headers)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path.startswith("/images/"):
                    self._send(200, tiny_jpeg(url.path), "image/jpeg", {})
                    return
                headers_in = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append((url.path, query, headers_in))
                    authorised = headers_in.get("authorization") == f"Client-ID {fake.key}" or query.get("client_id") == fake.key
                    fault = fake.faults.pop(0) if fake.faults and authorised else None
                    spend = authorised and fault is None
                    exhausted = spend and fake.remaining <= 0
                    if spend and not exhausted:
                        fake.remaining -= 1
                    limits = (
                        {"X-Ratelimit-Limit": str(fake.rate_limit), "X-Ratelimit-Remaining": str(max(fake.remaining, 0))}
                        if fake.ratelimit_headers
                        else {}
                    )
                if not authorised:
                    self._json(401, {"errors": ["OAuth error: The access token is invalid"]}, {})
                elif fault == "rate_limit":
                    self._json(429, {"errors": ["Rate Limit Exceeded"]}, {**limits, "Retry-After": fake.retry_after})
                elif fault == "unavailable":
                    self._json(503, {"errors": ["Service Unavailable"]}, limits)
                elif fault == "server_error":
                    self._json(500, {"errors": ["Internal Server Error"]}, limits)
                elif fault == "non_json":
                    self._send(200, b"<html><body>maintenance</body></html>", "text/html", limits)
                elif exhausted:
                    self._send(403, b"Rate Limit Exceeded", "text/plain", limits)
                else:
                    status, body, headers = fake._answer(url.path, query)
                    self._json(status, body, {**limits, **headers})

        return Handler
