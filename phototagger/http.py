"""The one HTTP client setup: a requests session with retries, a fetch policy, and bounded image fetching.

Every outbound call that is not made through a vendor SDK (Unsplash, image downloads) goes
through `session()`, so retries, back-off, Retry-After, timeouts and the fetch policy (which
addresses may be reached, no credentials from URLs) behave the same everywhere; `within_deadline`
turns a timeout into a deadline for a whole call, here and for the vendor SDKs.
"""
from __future__ import annotations

import base64
import ipaddress
import mimetypes
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import httpx
import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError, ReadTimeoutError
from urllib3.util.connection import allowed_gai_family, create_connection
from urllib3.util.retry import Retry

DEFAULT_TIMEOUT_S = 20.0
MAX_IMAGE_BYTES = 20 * 1024 * 1024
USER_AGENT = "photo-tagger/0.1 (+https://github.com/photo-tagger)"
T = TypeVar("T")
ALLOW_PRIVATE_ENV = "PHOTOTAGGER_ALLOW_PRIVATE_URLS"
# Cloud metadata services (AWS, GCP, Azure: 169.254.169.254, AWS IPv6: fd00:ec2::254) and link-local
# addresses hand out credentials to whoever asks from inside the machine: never reachable.
METADATA_NETWORKS = tuple(ipaddress.ip_network(net) for net in ("169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10"))


class ImageFetchError(Exception):
    """An image could not be had: missing, refused by the fetch policy, not an image, too large, too slow.

    Class is `bad_image` or `timeout`.
    """

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
    adapter = PolicyAdapter(max_retries=retry, pool_maxsize=32)
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
    deadline, its result unused; the calls made here end soon after too, as they check a deadline of
    their own while reading a body (`_fetch_image_bytes`, `sdk_http_client`), so no thread trickles on.
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


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that raises httpx.ReadTimeout once its deadline has passed, whatever the pace of its bytes."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float, request: httpx.Request) -> None:
        self._stream, self._deadline, self._request = stream, deadline, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the response body did not arrive in time", request=self._request)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def sdk_http_client(timeout_s: float) -> httpx.Client:
    """The httpx client a vendor SDK (openai, together) is given: each response body must arrive within
    `timeout_s` of its headers, so a call within_deadline gave up on also ends, instead of reading a
    trickling answer on its thread for as long as the server sends it."""

    def bound_body(response: httpx.Response) -> None:
        response.stream = _DeadlineStream(response.stream, time.monotonic() + timeout_s, response.request)

    return httpx.Client(follow_redirects=True, event_hooks={"response": [bound_body]})


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class LocalImage(str):
    """A local image path that a photo source vouches for, with the folder it must stay inside.

    Only the folder source (inside the folder the user named), the demo set (inside the installed package)
    and the user's own command line make these; a bare path from an API or a dataset file is a plain str
    and is refused. Like markupsafe.Markup, the trust travels with the value through the code that only
    passes a location on (prompters, providers, caches), so none of it needs to know about sources.
    """

    root: str

    def __new__(cls, path: str | os.PathLike, root: str | os.PathLike) -> "LocalImage":
        value = super().__new__(cls, os.fspath(path))
        value.root = os.fspath(root)
        return value

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return LocalImage, (str(self), self.root)


def fetch_image_bytes(
    location: str, max_bytes: int = MAX_IMAGE_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bytes:
    """`_fetch_image_bytes` with `timeout_s` as a deadline for the whole fetch (connect, retries, headers, body)."""
    try:
        return within_deadline(timeout_s, _fetch_image_bytes, location, max_bytes, timeout_s)
    except DeadlineExceeded:
        raise _fetch_timed_out(location, timeout_s) from None


def _fetch_timed_out(location: str, timeout_s: float) -> ImageFetchError:
    return ImageFetchError(f"image fetch timed out after {timeout_s:g}s: {location}", "timeout")


def _fetch_image_bytes(location: str, max_bytes: int, timeout_s: float) -> bytes:
    """Read an image from an http(s) URL or a local path, at most `max_bytes`, in `timeout_s`.

    Other URL schemes (file:, ftp:, data:) are refused so a photo record cannot make us read
    arbitrary places; a local path only as a `LocalImage`, inside its root once links are resolved.
    """
    if "://" in location and not is_url(location):
        raise ImageFetchError(f"unsupported image location scheme: {location.split('://')[0]}://")
    if not is_url(location):
        if not isinstance(location, LocalImage):
            raise ImageFetchError(f"local path refused: {location} (files are read only for photos of a folder source, "
                                  "inside its folder; an image URL must be http(s))")
        path = Path(location)
        if not path.resolve().is_relative_to(Path(location.root).resolve()):
            raise ImageFetchError(f"local path refused: {location} is outside the folder {location.root}")
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
            chunks, size, deadline = [], 0, time.monotonic() + timeout_s
            # read1 returns what has arrived (iter_content waits for a whole chunk), so the deadline is checked as bytes trickle
            for chunk in iter(lambda: resp.raw.read1(64 * 1024, decode_content=True), b""):
                if time.monotonic() > deadline:  # ends this thread too when within_deadline has given up on it
                    raise _fetch_timed_out(location, timeout_s)
                size += len(chunk)
                if size > max_bytes:
                    raise ImageFetchError(f"image larger than {max_bytes} bytes: {location}")
                chunks.append(chunk)
            return b"".join(chunks)
    except URLRefused as exc:
        raise ImageFetchError(f"image URL refused: {exc}") from None
    except requests.RequestException as exc:
        if _timed_out(exc):
            raise _fetch_timed_out(location, timeout_s) from exc
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


# ---------------------------------------------------------------- fetch policy
class URLRefused(Exception):
    """The fetch policy refused a URL or the address its host resolves to; nothing was sent.

    Not an OSError, so urllib3 does not retry it and requests does not wrap it.
    """


def private_urls_allowed() -> bool:
    """Whether loopback and private addresses may be fetched (self-hosted photo servers, tests)."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def address_refusal(address: str) -> str | None:
    """Why the policy refuses to connect to `address` (an IP string), or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id ("fe80::1%eth0") is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in net for net in METADATA_NETWORKS):
        return "a cloud metadata or link-local address, which is never fetched"
    if (not ip.is_global or ip.is_multicast) and not private_urls_allowed():
        return f"a private or loopback address; set {ALLOW_PRIVATE_ENV}=1 to fetch from a self-hosted server"
    return None


def checked_addresses(host: str, port: int) -> list[str]:
    """Resolve `host` once and return its addresses, refusing the host if any one of them is refused.

    Connections go to these addresses, not to a second lookup, so a name cannot pass the check and
    then resolve elsewhere (DNS rebinding).
    """
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        reason = address_refusal(address)
        if reason:
            raise URLRefused(f"{address} is {reason}" if address == host else f"{host} resolves to {address}, {reason}")
    return addresses


def redact_userinfo(url: str) -> str:
    """The URL with any user:password@ replaced, fit for a message."""
    parts = urlsplit(url)
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl() if "@" in parts.netloc else url


def check_request_url(url: str) -> None:
    """Refuse a URL that carries credentials: requests would send them as Basic auth."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise URLRefused(f"{redact_userinfo(url)} carries user:password@ credentials, which are never sent; remove them")


class _CheckedConnect:
    """urllib3 connection mixin: resolve once, apply the policy, connect only to a checked address."""

    def _new_conn(self) -> socket.socket:
        try:
            addresses = checked_addresses(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError | None = None
        for address in addresses:
            try:
                return create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address, socket_options=self.socket_options
                )
            except OSError as exc:
                error = exc
        if isinstance(error, socket.timeout):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


class _CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class PolicyAdapter(HTTPAdapter):
    """An adapter that applies the fetch policy to every request, redirects included (each hop is sent here)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        check_request_url(request.url or "")
        if select_proxy(request.url or "", kwargs.get("proxies") or {}):  # the proxy connects for us: check the name first
            parts = urlsplit(request.url or "")
            try:
                checked_addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            except socket.gaierror as exc:
                raise requests.ConnectionError(f"cannot resolve {parts.hostname}: {exc}", request=request) from exc
        return super().send(request, **kwargs)
