"""Content-addressed blobs: what a flow writes once beside its artifacts and finds again by key.

UpdatePhotos keeps its delivered ids and knn's reference batches in such a store, EvaluationFlow its
closed months; mfclient.DatastoreBlobs is the one in Metaflow's datastore, MemoryBlobStore the one
tests and benchmarks use.
"""
from __future__ import annotations

import hashlib
from typing import Protocol, Sequence


class BlobStore(Protocol):
    """Content-addressed blobs: `save` returns one key per blob and skips a blob already stored."""

    def save(self, blobs: Sequence[bytes]) -> list[str]: ...

    def load(self, keys: Sequence[str]) -> list[bytes]: ...


class MemoryBlobStore:
    """A BlobStore in a dict that counts the bytes it writes (tests, benchmarks)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.bytes_written = 0

    def save(self, blobs: Sequence[bytes]) -> list[str]:
        keys = []
        for blob in blobs:
            key = hashlib.sha1(blob).hexdigest()
            if key not in self.blobs:
                self.blobs[key] = blob
                self.bytes_written += len(blob)
            keys.append(key)
        return keys

    def load(self, keys: Sequence[str]) -> list[bytes]:
        return [self.blobs[key] for key in keys]
