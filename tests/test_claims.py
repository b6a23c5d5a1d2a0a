"""Claims: one run per branch delivers a photo, on the local datastore and on S3."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import time
from threading import Barrier

from phototagger import claims
from phototagger.ingest import batches as ingest
from phototagger.records import Photo


def photo(photo_id: str) -> Photo:
    return Photo(id=photo_id, image_url=f"/photos/{photo_id}.jpg", ground_truth_tags=["cat"], source="demo")


class ListSource:
    """A source over a fixed list, which remembers each fetch's limit."""

    name = "list"
    default_batch_size = 2

    def __init__(self, ids: list[str]) -> None:
        self.ids, self.notes, self.limits = ids, [], []

    def fetch(self, exclude_ids: set[str], limit: int) -> list[Photo]:
        self.limits.append(limit)
        return [photo(i) for i in self.ids if i not in exclude_ids][:limit]


def run_claims(store, run_id: str, states: dict[str, claims.RunState] | None = None, epoch: str = "0", lease_s: float = 300,
               ancestors: tuple[str, ...] = ()) -> claims.Claims:
    return claims.Claims(store, "user.test", epoch, run_id, lambda holder: (states or {}).get(holder, "running"), lease_s, ancestors)


def holder_state(claim: claims.Claim) -> tuple[str, str, str]:
    return claim.holder, claim.state, claim.taken_from


def age_files(root, seconds: float) -> None:
    """Every claim and heartbeat under `root` as if written `seconds` ago."""
    import os
    import time

    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_only_one_of_many_simultaneous_creates_wins(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    barrier = Barrier(8)

    def create(n: int) -> bool:
        barrier.wait()
        return store.create("user.test/0/photo.0", f"run {n}".encode())

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(create, range(8)))
    assert wins.count(True) == 1
    assert store.read("user.test/0/photo.0") == f"run {wins.index(True)}".encode()
    assert [p.name for p in (tmp_path / "user.test" / "0").iterdir()] == ["photo.0"]


def test_s3_claim_is_a_conditional_put_refused_when_the_key_exists():
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bucket")
        store = claims.S3ClaimStore("s3://bucket/metaflow/UpdatePhotos/_claims", client)

        assert store.create("user.test/0/photo.0", b"first") is True
        assert store.create("user.test/0/photo.0", b"second") is False
        assert store.read("user.test/0/photo.0") == b"first"
        key = client.list_objects_v2(Bucket="bucket")["Contents"][0]["Key"]
        assert key == "metaflow/UpdatePhotos/_claims/user.test/0/photo.0"


def test_a_photo_is_won_once_and_the_winner_is_named_to_the_others(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    assert holder_state(run_claims(store, "1").claim("a")) == ("1", "won", "")
    assert holder_state(run_claims(store, "1").claim("a")) == ("1", "won", ""), "a retried task of the same run keeps its photo"
    assert holder_state(run_claims(store, "2").claim("a")) == ("1", "pending", "")
    assert holder_state(run_claims(store, "2", {"1": "successful"}).claim("a")) == ("1", "delivered", "")


def test_a_failed_runs_claim_is_taken_over_by_exactly_one_run(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    run_claims(store, "1").claim("a")
    failed = {"1": "failed"}

    taken = run_claims(store, "2", failed).claim("a")
    assert holder_state(taken) == ("2", "won", "1") and taken.seen.why == "it failed"
    assert holder_state(run_claims(store, "3", failed).claim("a")) == ("2", "pending", "")


def test_a_claim_is_a_lease_kept_while_its_run_heartbeats_and_taken_over_once_after(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    killed = run_claims(store, "1", lease_s=60)
    killed.renew()
    killed.claim("a")
    age_files(tmp_path, 30)
    pending = run_claims(store, "2", lease_s=5).claim("a")
    assert holder_state(pending) == ("1", "pending", ""), "the holder's own 60 s lease counts, not the reader's 5 s"
    assert 25 < pending.seen.expires_in <= 30 and pending.seen.lease_s == 60

    age_files(tmp_path, 61)  # run 1 was SIGKILLed: its heartbeat stops
    taken = [run_claims(store, run_id).claim("a") for run_id in ("2", "3")]
    assert [holder_state(c) for c in taken] == [("2", "won", "1"), ("2", "pending", "")]
    assert taken[0].seen.why == "no heartbeat for 61 s, lease 60 s"


def test_a_slow_run_keeps_its_photos_while_its_heartbeat_renews_the_lease(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    slow = run_claims(store, "1", lease_s=0.6)
    with slow.heartbeat():
        slow.claim("a")
        for _ in range(4):  # well past the lease: the heartbeat keeps renewing it
            time.sleep(0.3)
            assert run_claims(store, "2", lease_s=0.6).claim("a").state == "pending"
    time.sleep(0.8)
    assert holder_state(run_claims(store, "2").claim("a")) == ("2", "won", "1")


def test_a_claim_from_before_leases_expires_by_its_own_age(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    run_claims(store, "1").claim("a")  # no heartbeat ever written
    assert run_claims(store, "2", lease_s=60).claim("a").state == "pending"
    age_files(tmp_path, 61)
    assert holder_state(run_claims(store, "2", lease_s=60).claim("a")) == ("2", "won", "1")


def test_confirm_keeps_its_own_claims_and_drops_those_taken_over(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    first = run_claims(store, "1", {"1": "failed"})
    for photo_id in "abc":
        first.claim(photo_id)
    run_claims(store, "2", {"1": "failed"}).claim("a")  # run 2 took "a" over while run 1 was down

    assert first.confirm(["a", "b", "c"]) == {"a": "2"}, "run 1 must not deliver what run 2 took over"
    resumed = run_claims(store, "5", {"1": "failed"}, ancestors=("1",))
    assert resumed.confirm(["a", "b", "c"]) == {"a": "2"}, "a resume takes over its origin's claims only"
    assert [resumed.owner(p) for p in "abc"] == ["2", "5", "5"]
    assert run_claims(store, "7", {"5": "successful"}, ancestors=("5",)).confirm(["b"]) == {"b": "5"}, "a delivered photo stays its run's"
    assert run_claims(store, "6", {"5": "failed"}, ancestors=("5",)).confirm(["b"]) == {} and resumed.owner("b") == "6"


def test_a_resume_takes_over_its_origins_live_looking_claims_when_it_fetches_again(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    killed = run_claims(store, "1")
    killed.renew()
    killed.claim("a")  # killed in `fetch`: no error recorded, its heartbeat still fresh
    assert run_claims(store, "2").claim("a").state == "pending"
    taken = run_claims(store, "3", ancestors=("1",)).claim("a")
    assert holder_state(taken) == ("3", "won", "1") and taken.seen.why == "this run resumes it"


def test_reset_keeps_the_claim_epoch_so_it_never_delivers_a_photo_again(tmp_path):
    assert claims.epoch(None) == claims.FIRST_EPOCH and claims.epoch("reset-5") == "reset-5"
    store = claims.LocalClaimStore(tmp_path)
    run_claims(store, "1").claim("a")
    assert run_claims(store, "5", {"1": "successful"}, epoch=claims.epoch("0")).claim("a").state == "delivered"


def test_lost_photos_are_replaced_by_fetching_again(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    source = ListSource(["a", "b", "c", "d", "e"])
    run_claims(store, "1").claim("a")
    run_claims(store, "2").claim("b")

    batch, elsewhere, notes = ingest.fetch_claimed(source, set(), 2, run_claims(store, "3", {"1": "successful"}), now=0)

    assert list(batch.unseen) == ["c", "d"] and source.limits == [2, 2]
    assert list(elsewhere) == ["a"], "a photo a successful run delivered joins the delivered ids"
    assert [*elsewhere, *batch.unseen] == ["a", "c", "d"] and batch.delivered_before == 1
    assert notes == [
        "Skipped 1 photos another run of this branch delivered; they join the history.",
        "Skipped 1 photos claimed by UpdatePhotos/2, which is still running: if it stops without finishing "
        "(killed, evicted), the first run after 00:05:00 UTC takes them over (300 s lease).",
    ]


def test_a_short_source_is_read_once_when_no_claim_is_lost(tmp_path):
    source = ListSource(["a"])
    batch, _, notes = ingest.fetch_claimed(source, set(), 5, run_claims(claims.LocalClaimStore(tmp_path), "1"))
    assert list(batch.unseen) == ["a"] and source.limits == [5] and notes == []


def test_run_state_tells_a_failed_run_from_a_successful_one(tmp_path, monkeypatch):
    """The takeover rests on this: the client must see a task that ended in error as `failed`."""
    from metaflow import Runner, metadata

    from phototagger import mfclient

    flow = tmp_path / "failsome.py"
    flow.write_text(
        "from metaflow import FlowSpec, Parameter, step\n"
        "class FailSome(FlowSpec):\n"
        "    fail = Parameter('fail', type=bool, default=False)\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.next(self.end)\n"
        "    @step\n"
        "    def end(self):\n"
        "        assert not self.fail, 'failed on purpose'\n"
        "if __name__ == '__main__':\n"
        "    FailSome()\n"
    )
    env = {"METAFLOW_USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    monkeypatch.setenv("USER", "test")
    ids = {}
    for fail in (False, True):
        with Runner(str(flow), show_output=False, env=env, cwd=str(tmp_path)).run(fail=fail) as running:
            ids[fail] = running.run.id
    metadata(f"local@{tmp_path}")

    assert mfclient.run_state("FailSome", ids[False]) == "successful"
    assert mfclient.run_state("FailSome", ids[True]) == "failed"
    assert mfclient.run_state("FailSome", "999999") == "running"


def test_s3_heartbeat_ages_by_the_servers_clock_and_a_missing_claim_reads_as_none():
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bucket")
        store = claims.S3ClaimStore("s3://bucket/metaflow/UpdatePhotos/_claims", client)
        assert store.read("user.test/0/none.0") is None and store.age("user.test/_leases/9") is None

        run = run_claims(store, "1", lease_s=60)
        run.renew()
        run.claim("a")
        assert 0 <= store.age(run.lease_key("1")) < 60
        assert holder_state(run_claims(store, "2").claim("a")) == ("1", "pending", "")
        assert run_claims(store, "2", {"1": "failed"}, ancestors=("1",)).confirm(["a"]) == {} and run.owner("a") == "2"


def test_a_photo_two_runs_delivered_counts_only_in_the_batch_of_its_claims_holder(tmp_path):
    """The downstream layer on its own: however a photo came to be in two batches, the claims name one."""
    store = claims.LocalClaimStore(tmp_path)
    for photo_id in "abc":
        run_claims(store, "1").claim(photo_id)
    run_claims(store, "2", {"1": "failed"}).claim("b")  # "b" is in both batches: run 1 delivered it anyway

    assert run_claims(store, "1").held_elsewhere(["a", "b", "c"]) == {"b": "2"}
    assert run_claims(store, "2").held_elsewhere(["b"]) == {}
    assert run_claims(store, "3").held_elsewhere(["never-claimed"]) == {}, "a photo from before claims counts where it is"
