"""Claims: which UpdatePhotos run of a branch delivers a photo, decided atomically in the datastore.

Two runs started together read the same previous run, so history alone cannot keep them apart.
Before delivering a photo a run claims it by creating one object per (branch, epoch, photo id)
only if it is absent: a hard link onto the name on the local datastore, a conditional PUT
(`If-None-Match: *`) on S3. Exactly one run wins each photo; the others skip it. A claim held by a
run that failed is taken over through the next generation of the same name (`.1`, `.2`, ...), so a
failed run loses no photos. `--reset-existing` starts a new epoch, whose claims start empty.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Optional, Protocol
from urllib.parse import quote

FIRST_EPOCH = "0"

RunState = Literal["successful", "failed", "running"]


class ClaimStore(Protocol):
    def create(self, key: str, body: bytes) -> bool:
        """Write `body` under `key` if nothing is there; False (and no write) if something is."""

    def read(self, key: str) -> bytes: ...


class LocalClaimStore:
    """Claims as files: written aside, then hard-linked onto their name, which fails if the name exists,
    so a reader never sees a claim without its holder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self, key: str, body: bytes) -> bool:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        aside.write_bytes(body)
        try:
            os.link(aside, path)
            return True
        except FileExistsError:
            return False
        finally:
            aside.unlink()

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


class S3ClaimStore:
    """Claims as S3 objects, created with a conditional PUT that S3 refuses (412) when the key exists."""

    def __init__(self, url: str, client: Any, attempts: int = 5) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix, self.client, self.attempts = bucket, prefix.strip("/"), client, attempts

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def create(self, key: str, body: bytes) -> bool:
        from botocore.exceptions import ClientError

        for attempt in itertools.count(1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    return False
                if code != "ConditionalRequestConflict" or attempt >= self.attempts:
                    raise
                time.sleep(0.2 * attempt)  # another PUT of this key is in flight: S3 asks for a retry

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()


class Claim(NamedTuple):
    holder: str  # run id of the run that delivers the photo
    state: Literal["won", "delivered", "pending"]  # ours; delivered by a successful run; its run is still going


def epoch(previous_epoch: Optional[str], reset: bool, run_id: str) -> str:
    """The claim epoch of a run: the previous run's, or a fresh one when --reset-existing starts over."""
    if reset:
        return f"reset-{run_id}"
    return str(previous_epoch or FIRST_EPOCH)


class Claims:
    """The claims of one run: `claim(photo_id)` says who delivers the photo, this run if nobody else does."""

    def __init__(self, store: ClaimStore, branch: str, epoch: str, run_id: str, run_state: Callable[[str], RunState]) -> None:
        self.store, self.run_id, self.run_state = store, str(run_id), run_state
        self.prefix = f"{quote(branch, safe='')}/{quote(epoch, safe='')}"

    def claim(self, photo_id: str) -> Claim:
        body = json.dumps({"photo_id": photo_id, "run_id": self.run_id}).encode()
        name = hashlib.sha256(photo_id.encode()).hexdigest()
        for generation in itertools.count():
            key = f"{self.prefix}/{name}.{generation}"
            if self.store.create(key, body):
                return Claim(self.run_id, "won")
            holder = str(json.loads(self.store.read(key))["run_id"])
            if holder == self.run_id:  # a retried task of this run
                return Claim(holder, "won")
            state = self.run_state(holder)
            if state != "failed":
                return Claim(holder, "delivered" if state == "successful" else "pending")
