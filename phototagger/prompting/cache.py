"""A response cache for model calls: on by default, errors never cached.

A rerun, or the second prompt flow over the same photos, should not pay for an answer it
already has (promptfoo and lmms-eval cache per sample the same way). The key is a sha256 over
everything that can change the answer: provider, model, the prompt's hash, the image's
identity (the URL for http(s) images, the sha256 of the bytes for local files) and the
generation settings the prompter reports. Only successful answers are stored, so a rate limit,
a timeout, a cut-off or a refused answer is retried on the next run instead of being replayed. An
entry is checked when read: one that is not a stored answer (the wrong shape, or text that does
not parse as one) is a miss, and the next successful answer overwrites it.

A stored answer keeps the latency measured when the model made it, and a hit comes back with it (marked
`cached`): a rerun served from the cache shows the model's latency, not the time of a cache read.

Where it lives: `$PHOTOTAGGER_CACHE_DIR`, else `.phototagger_cache/responses` under the
working directory; when Metaflow's configured datastore is S3 (deployed runs), under
`<METAFLOW_DATASTORE_SYSROOT_S3>/photo_tagger/response_cache` through `metaflow.S3`, so every
run and every pod shares it. Setting `PHOTOTAGGER_CACHE_DIR` always selects a local directory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

from phototagger.http import is_url
from phototagger.records import ModelResult
from phototagger.scoring.tags import parse_tags

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "PHOTOTAGGER_CACHE_DIR"
KEY_VERSION = 1
# The fields of a result that belong to the answer; scores, cost and photo id are recomputed per use.
STORED_FIELDS = ("provider", "model", "tags", "raw", "valid", "latency_ms", "prompt_tokens", "completion_tokens")


class CacheBackend(Protocol):
    location: str

    def read(self, key: str) -> Optional[bytes]: ...

    def write(self, key: str, data: bytes) -> None: ...


class LocalCacheBackend:
    """One JSON file per key under `root/<key[:2]>/`, written atomically (temp file + rename)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def read(self, key: str) -> Optional[bytes]:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class S3CacheBackend:
    """One object per key under an S3 prefix, through metaflow.S3 (the datastore's credentials and endpoint)."""

    def __init__(self, s3root: str):
        self.s3root = s3root.rstrip("/")
        self.location = self.s3root

    def _s3(self):
        from metaflow import S3

        return S3(s3root=self.s3root, tmproot=tempfile.gettempdir())

    def read(self, key: str) -> Optional[bytes]:
        with self._s3() as s3:
            obj = s3.get(f"{key[:2]}/{key}.json", return_missing=True)
            return obj.blob if obj.exists else None

    def write(self, key: str, data: bytes) -> None:
        with self._s3() as s3:
            s3.put(f"{key[:2]}/{key}.json", data)


class ResponseCache:
    """Get and put successful model answers by key. Thread-safe; a broken backend degrades to misses."""

    def __init__(self, backend: CacheBackend):
        self.backend = backend
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._lock = threading.Lock()
        self._image_ids: dict[tuple, str] = {}

    @property
    def location(self) -> str:
        return self.backend.location

    def image_identity(self, image: str) -> str:
        """The URL for http(s) images; the sha256 of the file's bytes for local ones (a moved file still hits)."""
        if is_url(image):
            return image
        try:
            stat = os.stat(image)
        except OSError:
            return f"unreadable:{image}"
        memo = (os.path.abspath(image), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._image_ids.get(memo)
        if known is None:
            digest = hashlib.sha256()
            with open(image, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            known = f"sha256:{digest.hexdigest()}"
            with self._lock:
                self._image_ids[memo] = known
        return known

    def key(self, settings: Mapping[str, Any], prompt_text: str, image: str) -> str:
        """sha256 over provider, model, prompt hash, image identity and generation settings."""
        material = {
            "v": KEY_VERSION,
            "provider": settings.get("provider"),
            "model": settings.get("model"),
            "prompt_sha256": hashlib.sha256(prompt_text.encode("utf-8")).hexdigest(),
            "image": self.image_identity(image),
            "settings": dict(settings),
        }
        blob = json.dumps(material, sort_keys=True, default=str).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def get(self, key: str) -> Optional[ModelResult]:
        """The stored answer marked `cached=True`, or None on a miss (or an unreadable entry)."""
        try:
            data = self.backend.read(key)
            stored = json.loads(data) if data is not None else None
        except Exception as exc:  # a cache must never fail a run
            log.warning("response cache read failed (%s); calling the model instead", type(exc).__name__)
            stored = None
        answer = stored is not None and _is_stored_answer(stored)
        if stored is not None and not answer:
            log.warning("response cache entry %s is not a stored answer (wrong shape); calling the model again", key[:12])
        with self._lock:
            if answer:
                self.hits += 1
            else:
                self.misses += 1
        if not answer:
            return None
        result = ModelResult(**{k: stored.get(k) for k in STORED_FIELDS})
        result["error"] = None
        result["cached"] = True
        return result

    def put(self, key: str, result: ModelResult) -> bool:
        """Store a successful answer; errors are never stored. Returns whether it was written."""
        if result.get("error"):
            return False
        data = json.dumps({k: result.get(k) for k in STORED_FIELDS}, sort_keys=True).encode("utf-8")
        try:
            self.backend.write(key, data)
        except Exception as exc:
            log.warning("response cache write failed (%s); the answer is kept for this run only", type(exc).__name__)
            return False
        with self._lock:
            self.writes += 1
        return True


def _is_stored_answer(stored: Any) -> bool:
    """Whether `stored` is what `put` writes for a successful answer: tags a list of strings, `valid` a
    bool, numbers or None for latency and tokens, and raw text that parses without an error."""
    if not isinstance(stored, dict):
        return False
    tags, raw = stored.get("tags"), stored.get("raw")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags) or not isinstance(raw, str):
        return False
    if not isinstance(stored.get("valid"), bool):
        return False
    numbers = (stored.get(k) for k in ("latency_ms", "prompt_tokens", "completion_tokens"))
    if not all(n is None or (isinstance(n, (int, float)) and not isinstance(n, bool)) for n in numbers):
        return False
    return parse_tags(raw).error is None


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.cwd() / ".phototagger_cache" / "responses")


def make_cache(enabled: bool = True) -> Optional[ResponseCache]:
    """The cache for this environment, or None when disabled (`--no-cache`)."""
    if not enabled:
        return None
    if not os.environ.get(CACHE_DIR_ENV):
        from metaflow.metaflow_config import DATASTORE_SYSROOT_S3, DEFAULT_DATASTORE

        if DEFAULT_DATASTORE == "s3" and DATASTORE_SYSROOT_S3:
            return ResponseCache(S3CacheBackend(f"{DATASTORE_SYSROOT_S3.rstrip('/')}/photo_tagger/response_cache"))
    return ResponseCache(LocalCacheBackend(default_cache_dir()))
