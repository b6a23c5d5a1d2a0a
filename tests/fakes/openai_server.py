"""A local stand-in for the OpenAI chat-completions API, with switchable faults.

Together and OpenAI-compatible servers (vLLM, Ollama) speak the same wire format, so one fake
serves the `openai`, `together` and `openai-compatible` providers: point the openai SDK at
`.base_url` (".../v1") and the together SDK at `.root_url` (it adds "/v1/chat/completions"
itself); any POST path ending in "/chat/completions" is answered.

Knobs (plain attributes, change them between calls):
- `latency_s`: fixed delay before every chat answer (the benchmark uses 0.3).
- `answer_fn(request_json) -> str`: the assistant's text; the default answers `{"tags": [...]}`
  from `tags_by_image` (image-URL substring -> tags), else `generic_tags`.
- `faults`: consumed one per chat request (None = answer normally); `fault_by_image`
  (image-URL substring -> fault) applies on every request whose image matches; `fault_all`
  on every request (a storm). Fault names are in `FAULTS`.
- `require_key`: a request without `Authorization: Bearer <key>` gets OpenAI's 401.
- `images`: name -> bytes served at GET /images/<name>; "missing" (404), "notimage" (HTML) and
  "huge" (declares and streams 50 MB) and "trickle" (a small image sent one byte every TRICKLE_S)
  are built in. A chat request whose image URL points at one
  of this server's images that cannot be served gets OpenAI's 400 `invalid_image_url`, as the real
  API does when it cannot download an image.
Like OpenAI, it refuses `response_format` json_object when no message mentions JSON.
Received chat requests land in `requests` as (path, headers with lower-case names, JSON body);
image downloads in `image_requests` (paths).
"""
from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from phototagger.http import image_mime

FAULTS = (
    "rate_limit",  # 429 with Retry-After: 1
    "rate_limit_no_header",  # 429 without any retry header
    "rate_limit_long",  # 429 with Retry-After: 3600, as a spent quota sends
    "server_error",  # 500
    "unavailable",  # 503
    "hang",  # no answer for 30 s (until the server closes)
    "trickle",  # a normal answer, sent one byte every TRICKLE_S: no single read ever waits long
    "reset",  # the socket is closed with a TCP reset, no answer
    "truncated",  # 200 whose JSON body is cut in half
    "non_json",  # 200 with an HTML page
    "prose",  # a normal completion whose text is prose without tags
    "length",  # finish_reason "length": the JSON answer cut off at max_tokens
    "refusal",  # content null with a `refusal` field, as OpenAI's safety refusals come
    "refusal_prose",  # a short prose refusal as the content
    "error_body",  # HTTP 200 whose body is an {"error": ...} (insufficient_quota), as some gateways send; echoes the key
    "quota",  # 429 insufficient_quota, as OpenAI answers an account without credit
    "auth",  # 401 invalid_api_key
    "bad_image",  # 400 invalid_image
    "echo_key",  # a normal completion whose tags also hold the Bearer key: as is, percent-encoded, JSON-escaped
    "echo_key_error",  # 500 whose message quotes the request's headers: the key as is and base64-encoded
)
HANG_S = 30.0
TRICKLE_S = 0.5
HUGE_BYTES = 50 * 1024 * 1024
PROSE = "This photo shows a quiet scene that I would rather describe in words than list as tags."
CUT_OFF = '{"tags": ["red", "squ'
REFUSAL = "I'm sorry, I can't help with identifying people in images."
PROSE_REFUSAL = "Sorry, I can't."
QUOTA = "You exceeded your current quota, please check your plan and billing details (key {key})."
INVALID_IMAGE = (
    "The image data you provided does not represent a valid image. Please check your input and try "
    "again with one of the supported image formats: ['image/jpeg', 'image/png', 'image/gif', 'image/webp']."
)
BUILTIN_IMAGES = ("missing", "notimage", "huge", "trickle")
JSON_MODE_NEEDS_JSON = "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."


def image_urls(request_json: dict) -> list[str]:
    """The image URLs (or data URIs) of a chat request's messages."""
    urls = []
    for message in request_json.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image = part.get("image_url")
                    urls.append(image.get("url", "") if isinstance(image, dict) else str(image))
    return urls


def prompt_text(request_json: dict) -> str:
    texts = []
    for message in request_json.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(texts)


def completion(
    model: str, text: Optional[str], prompt_tokens: int, *, finish_reason: str = "stop", refusal: Optional[str] = None
) -> dict:
    """A chat.completion object as OpenAI returns it."""
    completion_tokens = max(1, len(text or refusal or "") // 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_fake",
    }


def bearer_key(headers: dict) -> str:
    return headers.get("authorization", "").removeprefix("Bearer ")


def echo_key_answer(answer: str, key: str) -> str:
    """`answer`'s tags plus the key three ways: as is, partly percent-encoded, with a JSON escape (a leaky server's echo)."""
    try:
        tags = list(json.loads(answer)["tags"])
    except (ValueError, KeyError, TypeError):
        tags = []
    percent = "".join(f"%{ord(c):02X}" if i % 2 else c for i, c in enumerate(key))
    items = [json.dumps(t) for t in [*tags, key, f"key {percent}"]]
    items.append('"\\u%04x%s"' % (ord(key[0]), key[1:]) if key else '""')
    return '{"tags": [%s], "note": "Authorization: Bearer %s"}' % (", ".join(items), key)


def error_body(message: str, type_: str, code: Optional[str], param: Optional[str] = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    fake: "FakeOpenAIServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: tests read `requests`, not stderr."""

    # -- replies ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST, as a crashed upstream or proxy does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    # -- images ----------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        fake = self.server.fake
        with fake._lock:
            fake.image_requests.append(self.path)
        if not self.path.startswith("/images/"):
            self._json(404, error_body(f"Invalid URL (GET {self.path})", "invalid_request_error", None))
            return
        name = self.path[len("/images/") :]
        if name == "notimage":
            self._send(200, b"<html><body><h1>Not an image</h1></body></html>", "text/html; charset=utf-8")
        elif name == "huge":
            self._stream_huge()
        elif name == "trickle":
            self._trickle(200, b"\xff\xd8\xff" + b"\0" * 200, "image/jpeg")
        elif name in fake.images:
            data = fake.images[name]
            self._send(200, data, image_mime(name, data))
        else:
            self._send(404, b"not found", "text/plain")

    def _trickle(self, status: int, body: bytes, content_type: str) -> None:
        """Headers at once, then the body one byte every TRICKLE_S (until done or the server closes)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(len(body)):
                if self.server.fake._closing.wait(TRICKLE_S):
                    break
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    def _stream_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        chunk = b"\0" * (1024 * 1024)
        try:
            for _ in range(HUGE_BYTES // len(chunk)):
                self.wfile.write(chunk)
        except OSError:
            self.close_connection = True

    # -- chat completions ------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, error_body("We could not parse the JSON body of your request.", "invalid_request_error", None))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake._lock:
            fake.requests.append((self.path, headers, body))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, error_body(f"Invalid URL (POST {self.path})", "invalid_request_error", None))
            return
        if fake.require_key is not None and headers.get("authorization") != f"Bearer {fake.require_key}":
            self._fault("auth", body, headers)
            return
        if (body.get("response_format") or {}).get("type") == "json_object" and "json" not in prompt_text(body).lower():
            self._json(400, error_body(JSON_MODE_NEEDS_JSON, "invalid_request_error", None, "messages"))
            return
        fault = fake._next_fault(image_urls(body))
        if fake.latency_s:
            time.sleep(fake.latency_s)
        if fault:
            self._fault(fault, body, headers)
            return
        for url in image_urls(body):
            if url.startswith(fake.root_url + "/images/"):
                name = url[len(fake.root_url + "/images/") :]
                if name in BUILTIN_IMAGES or name not in fake.images:
                    self._json(400, error_body(f"Error while downloading {url}.", "invalid_request_error", "invalid_image_url", "url"))
                    return
        self._json(200, completion(body.get("model", ""), fake.answer_fn(body), fake._prompt_tokens(body)))

    def _fault(self, fault: str, body: dict, headers: dict) -> None:
        fake = self.server.fake
        model = body.get("model", "")
        if fault == "rate_limit":
            self._json(
                429,
                error_body(f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.", "requests", "rate_limit_exceeded"),
                {"Retry-After": "1", "x-ratelimit-remaining-requests": "0"},
            )
        elif fault == "rate_limit_long":
            self._json(
                429,
                error_body(f"You exceeded your current quota for {model}. Please try again in 1h.", "requests", "rate_limit_exceeded"),
                {"Retry-After": "3600"},
            )
        elif fault == "quota":
            self._json(429, error_body(QUOTA.format(key="..."), "insufficient_quota", "insufficient_quota"))
        elif fault == "rate_limit_no_header":
            self._json(429, error_body(f"Rate limit reached for {model}.", "requests", "rate_limit_exceeded"))
        elif fault == "server_error":
            self._json(500, error_body("The server had an error while processing your request. Sorry about that!", "server_error", None))
        elif fault == "unavailable":
            self._json(503, error_body("The engine is currently overloaded, please try again later.", "server_error", None))
        elif fault == "hang":
            if not fake._closing.wait(HANG_S):
                self._json(200, completion(model, fake.answer_fn(body), fake._prompt_tokens(body)))
            else:
                self.close_connection = True
        elif fault == "trickle":
            self._trickle(200, json.dumps(completion(model, fake.answer_fn(body), fake._prompt_tokens(body))).encode(), "application/json")
        elif fault == "reset":
            self._reset()
        elif fault == "truncated":
            full = json.dumps(completion(model, fake.answer_fn(body), fake._prompt_tokens(body))).encode()
            self._send(200, full[: len(full) // 2], "application/json")
        elif fault == "non_json":
            self._send(200, b"<html><head><title>Gateway</title></head><body>Service temporarily unavailable</body></html>", "text/html")
        elif fault == "prose":
            self._json(200, completion(model, PROSE, fake._prompt_tokens(body)))
        elif fault == "length":
            self._json(200, completion(model, CUT_OFF, fake._prompt_tokens(body), finish_reason="length"))
        elif fault == "refusal":
            self._json(200, completion(model, None, fake._prompt_tokens(body), refusal=REFUSAL))
        elif fault == "refusal_prose":
            self._json(200, completion(model, PROSE_REFUSAL, fake._prompt_tokens(body)))
        elif fault == "error_body":
            key = headers.get("authorization", "").removeprefix("Bearer ")
            self._json(200, error_body(QUOTA.format(key=key), "insufficient_quota", "insufficient_quota"))
        elif fault == "auth":
            key = bearer_key(headers)
            self._json(
                401,
                error_body(f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"),
            )
        elif fault == "bad_image":
            self._json(400, error_body(INVALID_IMAGE, "invalid_request_error", "invalid_image"))
        elif fault == "echo_key":
            self._json(200, completion(model, echo_key_answer(fake.answer_fn(body), bearer_key(headers)), fake._prompt_tokens(body)))
        elif fault == "echo_key_error":
            key = bearer_key(headers)
            basic = base64.b64encode(f"user:{key}".encode()).decode()
            message = f"Upstream failed for the request with headers authorization={headers.get('authorization')!r}, x-forwarded-auth='Basic {basic}'."
            self._json(500, error_body(message, "server_error", None))
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


class FakeOpenAIServer:
    """A threaded OpenAI chat-completions server on 127.0.0.1 (ephemeral port); a context manager."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        tags_by_image: Optional[dict[str, list[str]]] = None,
        images: Optional[dict[str, bytes]] = None,
        require_key: Optional[str] = None,
    ):
        self.latency_s = latency_s
        self.tags_by_image: dict[str, list[str]] = dict(tags_by_image or {})
        self.generic_tags: list[str] = ["photo", "outdoor", "daylight"]
        self.answer_fn: Callable[[dict], str] = self.default_answer
        self.faults: list[Optional[str]] = []
        self.fault_by_image: dict[str, str] = {}
        self.fault_all: Optional[str] = None
        self.images: dict[str, bytes] = dict(images or {})
        self.require_key = require_key
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.image_requests: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        """http://127.0.0.1:<port>: the base URL for the together SDK."""
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>/v1: the base URL for the openai SDK."""
        return self.root_url + "/v1"

    def image_url(self, name: str) -> str:
        return f"{self.root_url}/images/{name}"

    @property
    def calls(self) -> int:
        """Chat requests received so far."""
        return len(self.requests)

    # -- answers ---------------------------------------------------------------------------
    def default_answer(self, request_json: dict) -> str:
        for url in image_urls(request_json):
            for needle, tags in self.tags_by_image.items():
                if needle in url:
                    return json.dumps({"tags": tags})
        return json.dumps({"tags": self.generic_tags})

    def _next_fault(self, urls: list[str]) -> Optional[str]:
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault is None:
            fault = next((f for needle, f in self.fault_by_image.items() if any(needle in u for u in urls)), None)
        return fault or self.fault_all

    @staticmethod
    def _prompt_tokens(request_json: dict) -> int:
        """A stable estimate: four characters a token plus 85 per image (OpenAI's low-detail cost)."""
        return len(prompt_text(request_json)) // 4 + 85 * len(image_urls(request_json))
