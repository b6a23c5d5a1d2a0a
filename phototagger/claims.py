"""Claims: which UpdatePhotos run of a branch delivers a photo, decided atomically in the datastore.

Two runs started together read the same previous run, so history alone cannot keep them apart.
Before delivering a photo a run claims it by creating one object per (branch, epoch, photo id)
only if it is absent: a hard link onto the name on the local datastore, a conditional PUT
(`If-None-Match: *`) on S3. Exactly one run wins each photo; the others skip it.

A claim is a lease, as in a job queue: while a run is alive it renews its heartbeat object
(`<branch>/_leases/<run id>`, rewritten every third of its lease). A claim whose holder failed (Metaflow
recorded a task that ended in error), or whose holder's heartbeat is older than the lease the holder
announced (SIGKILLed, evicted, a lost pod), is taken over through the next generation of the same name
(`.1`, `.2`, ...), which again exactly one run can create. A claim is only a promise: a run delivers a
photo only if, in its `end` step, the newest generation of the photo's claim is still its own
(`Claims.confirm`), so a run that was taken over, or a resume that reuses a dead run's `fetch`, drops
the photo instead of delivering it twice. The newest generation names the one run that delivers a
photo, which is also how downstream flows count it once (`Claims.owner`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Literal, NamedTuple, Optional, Protocol
from urllib.parse import quote

FIRST_EPOCH = "0"
DEFAULT_LEASE_S = 300  # a run that stops heartbeating gives its photos back this long after its last heartbeat

RunState = Literal["successful", "failed", "running"]


class ClaimStore(Protocol):
    def create(self, key: str, body: bytes) -> bool:
        """Write `body` under `key` if nothing is there; False (and no write) if something is."""

    def read(self, key: str) -> Optional[bytes]:
        """The body under `key`, None if there is none."""

    def put(self, key: str, body: bytes) -> None:
        """Write `body` under `key`, replacing what is there."""

    def age(self, key: str) -> Optional[float]:
        """Seconds since `key` was last written, by the store's own clock where it has one; None if absent."""


class LocalClaimStore:
    """Claims as files: written aside, then hard-linked onto their name, which fails if the name exists,
    so a reader never sees a claim without its holder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _aside(self, key: str, body: bytes) -> tuple[Path, Path]:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        aside.write_bytes(body)
        return path, aside

    def create(self, key: str, body: bytes) -> bool:
        path, aside = self._aside(key, body)
        try:
            os.link(aside, path)
            return True
        except FileExistsError:
            return False
        finally:
            aside.unlink()

    def read(self, key: str) -> Optional[bytes]:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, body: bytes) -> None:
        path, aside = self._aside(key, body)
        os.replace(aside, path)

    def age(self, key: str) -> Optional[float]:
        try:
            return max(0.0, time.time() - (self.root / key).stat().st_mtime)
        except FileNotFoundError:
            return None


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

    def read(self, key: str) -> Optional[bytes]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)

    def age(self, key: str) -> Optional[float]:
        """LastModified against the Date of the same response: both S3's clock, so pods' clocks never matter."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        now = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        server_now = parsedate_to_datetime(now).timestamp() if now else time.time()
        return max(0.0, server_now - head["LastModified"].timestamp())


class Holder(NamedTuple):
    """What became of the run holding a claim."""

    state: Literal["successful", "expired", "alive"]
    why: str = ""  # expired: "it failed" or "no heartbeat for 312 s, lease 300 s"
    expires_in: float = 0.0  # alive: seconds until its lease runs out unless it renews it
    lease_s: float = 0.0  # alive or expired by its heartbeat: the lease it announced


class Claim(NamedTuple):
    holder: str  # run id of the run that delivers the photo
    state: Literal["won", "delivered", "pending"]  # ours; delivered by a successful run; its holder is alive
    taken_from: str = ""  # won: the run whose expired claim this one took over ("" when nobody held it)
    seen: Optional[Holder] = None  # won from another run: why its claim had expired; pending: when it expires


def epoch(previous_epoch: Optional[str]) -> str:
    """The claim epoch of a run: the previous run's (a branch that was reset before claims were leases keeps
    the epoch its reset started), else the first. --reset-existing keeps it too, so it never re-delivers."""
    return str(previous_epoch or FIRST_EPOCH)


def _name(photo_id: str) -> str:
    return hashlib.sha256(photo_id.encode()).hexdigest()


class Claims:
    """The claims of one run: `claim(photo_id)` says who delivers the photo, this run if nobody else does."""

    def __init__(self, store: ClaimStore, branch: str, epoch: str, run_id: str, run_state: Callable[[str], RunState],
                 lease_s: float = DEFAULT_LEASE_S, ancestors: Collection[str] = ()) -> None:
        """`ancestors`: the runs this one resumes (Metaflow's origin run, the run whose `fetch` it reuses): their
        claims are this run's to take over, unless they delivered them."""
        self.store, self.run_id, self.run_state, self.lease_s = store, str(run_id), run_state, float(lease_s)
        self.ancestors = {str(run) for run in ancestors if run} - {self.run_id}
        self.branch = quote(branch, safe="")
        self.prefix = f"{self.branch}/{quote(epoch, safe='')}"
        self._holders: dict[str, Holder] = {}

    # -- heartbeat -------------------------------------------------------------------------------
    def lease_key(self, run_id: str) -> str:
        return f"{self.branch}/_leases/{quote(run_id, safe='')}"

    def renew(self) -> None:
        """Write this run's heartbeat: its claims stay its own for `lease_s` seconds from now."""
        body = json.dumps({"run_id": self.run_id, "lease_seconds": self.lease_s, "renewed_at": time.time()}).encode()
        self.store.put(self.lease_key(self.run_id), body)

    def heartbeat(self) -> Heartbeat:
        """A context that renews this run's lease now and every third of it until the block ends."""
        return Heartbeat(self)

    # -- claims ----------------------------------------------------------------------------------
    def _body(self, photo_id: str) -> bytes:
        return json.dumps({"photo_id": photo_id, "run_id": self.run_id}).encode()

    def _key(self, photo_id: str, generation: int) -> str:
        return f"{self.prefix}/{_name(photo_id)}.{generation}"

    def _holder_of(self, key: str) -> Optional[str]:
        body = self.store.read(key)
        return None if body is None else str(json.loads(body)["run_id"])

    def holder(self, run_id: str, claim_key: str) -> Holder:
        """Whether `run_id` delivered, is gone (its claims are free) or is alive, judged once per holder: a step
        claims its photos in seconds, well within any lease."""
        if run_id in self._holders:
            return self._holders[run_id]
        state = self.run_state(run_id)
        if state == "successful":
            found = Holder("successful")
        elif state == "failed":
            found = Holder("expired", "it failed")
        elif run_id in self.ancestors:
            found = Holder("expired", "this run resumes it")
        else:
            lease = self.store.read(self.lease_key(run_id))
            if lease is not None:  # the holder's own lease, whatever this run's is
                lease_s, age = float(json.loads(lease).get("lease_seconds", self.lease_s)), self.store.age(self.lease_key(run_id))
            else:  # a claim from before leases, or a run killed before its first heartbeat: the claim's own age
                lease_s, age = self.lease_s, self.store.age(claim_key)
            age = age or 0.0
            if age > lease_s:
                found = Holder("expired", f"no heartbeat for {age:.0f} s, lease {lease_s:.0f} s", lease_s=lease_s)
            else:
                found = Holder("alive", expires_in=lease_s - age, lease_s=lease_s)
        self._holders[run_id] = found
        return found

    def claim(self, photo_id: str) -> Claim:
        body = self._body(photo_id)
        taken_from, seen = "", None
        for generation in itertools.count():
            key = self._key(photo_id, generation)
            if self.store.create(key, body):
                return Claim(self.run_id, "won", taken_from, seen)
            holder = self._holder_of(key)
            if holder is None:  # written aside and linked: never absent once created; S3 is read-after-write
                raise RuntimeError(f"claim {key} vanished")
            if holder == self.run_id:  # a retried task of this run
                return Claim(holder, "won", taken_from, seen)
            if self._has_next(photo_id, generation):
                continue  # an older generation: someone took it over already
            found = self.holder(holder, key)
            if found.state == "successful":
                return Claim(holder, "delivered")
            if found.state == "alive":
                return Claim(holder, "pending", seen=found)
            taken_from, seen = holder, found

    def _has_next(self, photo_id: str, generation: int) -> bool:
        return self.store.read(self._key(photo_id, generation + 1)) is not None

    def newest(self, photo_id: str) -> tuple[int, Optional[str]]:
        """The newest generation of the photo's claim and its holder: (-1, None) when nobody claimed it."""
        generation, holder = -1, None
        while True:
            found = self._holder_of(self._key(photo_id, generation + 1))
            if found is None:
                return generation, holder
            generation, holder = generation + 1, found

    def owner(self, photo_id: str) -> Optional[str]:
        """The run that delivers the photo: the holder of its newest claim."""
        return self.newest(photo_id)[1]

    def held_elsewhere(self, photo_ids: Iterable[str]) -> dict[str, str]:
        """The photos among `photo_ids` whose newest claim another run holds, with that run: the ones this run's
        batch must not count (a photo nobody claimed, from before claims, counts where it is)."""
        owners = {photo_id: self.owner(photo_id) for photo_id in photo_ids}
        return {photo_id: owner for photo_id, owner in owners.items() if owner is not None and owner != self.run_id}

    def confirm(self, photo_ids: Iterable[str]) -> dict[str, str]:
        """Make sure each photo's newest claim is this run's before it delivers them; the photos it may not
        deliver, with the run that holds them. A claim of an ancestor (a resume's origin, whose `fetch` this
        run reuses) is taken over unless that run delivered it; any other run's claim wins."""
        lost: dict[str, str] = {}
        for photo_id in photo_ids:
            generation, holder = self.newest(photo_id)
            if holder == self.run_id:
                continue
            if holder is None or holder in self.ancestors and self.run_state(holder) != "successful":
                if self.store.create(self._key(photo_id, generation + 1), self._body(photo_id)):
                    continue
                holder = self.owner(photo_id)
            lost[photo_id] = str(holder)
        return lost


class Heartbeat:
    """Renews a run's lease from a daemon thread while a step works, so a slow run keeps its photos."""

    def __init__(self, claims: Claims) -> None:
        self.claims, self._stop = claims, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.claims.lease_s / 3):
            try:
                self.claims.renew()
            except Exception:  # a missed beat only shortens the lease; the next one may get through
                continue

    def __enter__(self) -> Claims:
        self.claims.renew()
        self._thread.start()
        return self.claims

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.claims.renew()
