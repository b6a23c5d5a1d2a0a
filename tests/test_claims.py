"""Claims: one run per branch delivers a photo, on the local datastore and on S3."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def run_claims(store, run_id: str, states: dict[str, claims.RunState] | None = None, epoch: str = "0") -> claims.Claims:
    return claims.Claims(store, "user.test", epoch, run_id, lambda holder: (states or {}).get(holder, "running"))


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
    assert run_claims(store, "1").claim("a") == ("1", "won")
    assert run_claims(store, "1").claim("a") == ("1", "won"), "a retried task of the same run keeps its photo"
    assert run_claims(store, "2").claim("a") == ("1", "pending")
    assert run_claims(store, "2", {"1": "successful"}).claim("a") == ("1", "delivered")


def test_a_failed_runs_claim_is_taken_over_by_exactly_one_run(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    run_claims(store, "1").claim("a")
    failed = {"1": "failed"}

    assert run_claims(store, "2", failed).claim("a") == ("2", "won")
    assert run_claims(store, "3", failed).claim("a") == ("2", "pending")


def test_reset_starts_a_new_epoch_with_no_claims(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    run_claims(store, "1", epoch=claims.epoch(None, False, "1")).claim("a")
    reset_epoch = claims.epoch("0", True, "5")

    assert claims.epoch(reset_epoch, False, "6") == reset_epoch == "reset-5"
    assert run_claims(store, "5", epoch=reset_epoch).claim("a") == ("5", "won")


def test_lost_photos_are_replaced_by_fetching_again(tmp_path):
    store = claims.LocalClaimStore(tmp_path)
    source = ListSource(["a", "b", "c", "d", "e"])
    run_claims(store, "1").claim("a")
    run_claims(store, "2").claim("b")

    batch, elsewhere, notes = ingest.fetch_claimed(source, set(), 2, run_claims(store, "3", {"1": "successful"}))

    assert list(batch.unseen) == ["c", "d"] and source.limits == [2, 2]
    assert list(elsewhere) == ["a"], "a photo a successful run delivered joins the delivered ids"
    assert [*elsewhere, *batch.unseen] == ["a", "c", "d"] and batch.delivered_before == 1
    assert notes == [
        "Skipped 1 photos another run of this branch delivered; they join the history.",
        "Skipped 1 photos claimed by runs still in progress (UpdatePhotos/2).",
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
