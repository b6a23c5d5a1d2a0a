"""The one HTTP client setup: a requests session with retries, and bounded image fetching.

Every outbound call that is not made through a vendor SDK (Unsplash, image downloads) goes
through `session()`, so retries, back-off, Retry-After and timeouts behave the same everywhere;
`within_deadline` turns a timeout into a deadline for a whole call, here and for the vendor SDKs.
"""
from __future__ import annotations

import base64
import mimetypes
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

DEFAULT_TIMEOUT_S = 20.0
MAX_IMAGE_BYTES = 20 * 1024 * 1024
USER_AGENT = "photo-tagger/0.1 (+https://github.com/photo-tagger)"
T = TypeVar("T")


class ImageFetchError(Exception):
    """An image could not be had: missing, not an image, too large, too slow. Class is `bad_image` or `timeout`."""

    def __init__(self, message: str, error_class: str = "bad_image"):
        super().__init__(message)
        self.error_class = error_class


def session(retries: int = 4, backoff: float = 0.5) -> requests.Session:
    """A session that retries 429 and 5xx with exponential back-off, honouring Retry-After."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        backoff_max=30,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = USER_AGENT
    return s


_SESSION: requests.Session | None = None
_SESSION_LOCK = threading.Lock()


def shared_session() -> requests.Session:
    """The process's one session; first asked for from worker threads, so built under a lock."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = session()
    return _SESSION


class DeadlineExceeded(TimeoutError):
    """A call given `within_deadline` was still running when its time was up."""


def within_deadline(timeout_s: float, call: Callable[..., T], *args: object) -> T:
    """`call(*args)`, or DeadlineExceeded once `timeout_s` seconds have passed, whatever it is doing.

    Client timeouts (requests', httpx's) bound each socket operation, not the call: a server that
    trickles a byte every half second, or a Retry-After sleep inside a client's retries, holds a
    call far past them. The call runs on a daemon thread the caller stops waiting for at the
    deadline; an abandoned call ends on its client's own per-read timeout, its result unused.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="deadline-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise DeadlineExceeded(f"no answer within {timeout_s:g}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def fetch_image_bytes(
    location: str, max_bytes: int = MAX_IMAGE_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bytes:
    """`_fetch_image_bytes` with `timeout_s` as a deadline for the whole fetch (connect, retries, headers, body)."""
    try:
        return within_deadline(timeout_s, _fetch_image_bytes, location, max_bytes, timeout_s)
    except DeadlineExceeded:
        raise ImageFetchError(f"image fetch timed out after {timeout_s:g}s: {location}", "timeout") from None


def _fetch_image_bytes(location: str, max_bytes: int, timeout_s: float) -> bytes:
    """Read an image from an http(s) URL or a local path, at most `max_bytes`, in `timeout_s`.

    Other URL schemes (file:, ftp:, data:) are refused so a photo record cannot make us read
    arbitrary places.
    """
    if "://" in location and not is_url(location):
        raise ImageFetchError(f"unsupported image location scheme: {location.split('://')[0]}://")
    if not is_url(location):
        path = Path(location)
        if not path.is_file():
            raise ImageFetchError(f"image file not found: {location}")
        if path.stat().st_size > max_bytes:
            raise ImageFetchError(f"image file larger than {max_bytes} bytes: {location}")
        return path.read_bytes()
    try:
        with shared_session().get(location, stream=True, timeout=(5, timeout_s)) as resp:
            if resp.status_code != 200:
                raise ImageFetchError(f"image URL answered HTTP {resp.status_code}: {location}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype and not ctype.startswith("image/") and "octet-stream" not in ctype:
                raise ImageFetchError(f"image URL is not an image ({ctype}): {location}")
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise ImageFetchError(f"image larger than {max_bytes} bytes ({declared}): {location}")
            chunks, size = [], 0
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageFetchError(f"image larger than {max_bytes} bytes: {location}")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        if _timed_out(exc):
            raise ImageFetchError(f"image fetch timed out after {timeout_s}s: {location}", "timeout") from exc
        raise ImageFetchError(f"image fetch failed ({type(exc).__name__}): {location}") from exc


def _timed_out(exc: requests.RequestException) -> bool:
    """A stall while streaming the body reaches us as ConnectionError(ReadTimeoutError), not Timeout."""
    return isinstance(exc, requests.Timeout) or any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def image_mime(location: str, data: bytes) -> str:
    """The MIME type from the bytes' magic number, falling back to the file name."""
    for magic, mime in ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp")):
        if data.startswith(magic):
            return mime
    return mimetypes.guess_type(location)[0] or "application/octet-stream"


def data_uri(location: str, data: bytes) -> str:
    return f"data:{image_mime(location, data)};base64,{base64.b64encode(data).decode('ascii')}"


def env_url(name: str, default: str) -> str:
    """A base URL from the environment (UNSPLASH_API_URL, OPENAI_BASE_URL, ...) without a trailing slash."""
    return (os.environ.get(name) or default).rstrip("/")
