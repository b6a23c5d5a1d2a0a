"""Claims after a crash, with real processes: an UpdatePhotos run SIGKILLed after it claims (a pod that
vanished) gives its photos back after its lease, to exactly one later run, with no flag; a resume of it
delivers nothing twice. Each test prints its figures: photos delivered, duplicates, seconds until the
stuck photos came back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from metaflow import Runner

from tests.test_ingest import datastore_env  # noqa: F401  (a fixture: the local datastore, or S3 on a moto server)

REPO = Path(__file__).resolve().parents[1]
DEMO_PHOTOS = 18  # the demo source's photos
LEASE_S = 15  # the killed run's --claim-lease-seconds: short, so a test waits seconds, not minutes


def start_run(env: dict, cwd: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """An UpdatePhotos run in its own process group, as a pod is: killing the group kills its tasks too."""
    run_id_file = cwd / f"{name}.run-id"
    command = [sys.executable, str(REPO / "updatephotos.py"), "run", "--run-id-file", str(run_id_file), "--source", "demo", *args]
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, run_id_file


def kill_in_end(proc: subprocess.Popen, run_id_file: Path, sysroot: Path, timeout: float = 300) -> tuple[str, float]:
    """SIGKILL the run (runtime and task) as soon as its `end` task starts, after `fetch` stored its claimed
    photos; its run id and the moment of the kill."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if run_id_file.exists() and run_id_file.read_text().strip():
            run_id = run_id_file.read_text().strip()
            if (sysroot / ".metaflow" / "UpdatePhotos" / run_id / "end").exists():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return run_id, time.time()
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the run never reached its end step")


def run_update(env: dict, cwd: Path, **params) -> str:
    with Runner(str(REPO / "updatephotos.py"), show_output=False, env=env, cwd=str(cwd)).run(source="demo", **params) as running:
        assert running.status == "successful", running.stderr
        return running.run.id


def resume_update(env: dict, cwd: Path, origin: str) -> str:
    with Runner(str(REPO / "updatephotos.py"), show_output=False, env=env, cwd=str(cwd)).resume(origin_run_id=origin) as running:
        assert running.status == "successful", running.stderr
        return running.run.id


def runs(run_ids: list[str], env: dict, cwd: Path) -> list[dict]:
    """What each run stored, read by a client in a process with the runs' datastore settings: whether it
    succeeded, its `unseen`, its notes, and the photos its `fetch` claimed."""
    script = (
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "out = []\n"
        "for i in sys.argv[1:]:\n"
        "    run = Run('UpdatePhotos/' + i)\n"
        "    fetch = run['fetch'].task.data\n"
        "    data = run.data if run.successful else None\n"
        "    out.append({'id': i, 'successful': run.successful, 'claimed': sorted(fetch.claimed),\n"
        "                'unseen': sorted(data.unseen) if data else [], 'notes': list(data.notes) if data else [],\n"
        "                'fetched_at': run['fetch'].task.finished_at.timestamp()})\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *run_ids], env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                          cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def duplicates(delivered: list[dict]) -> int:
    counts = Counter(photo_id for run in delivered if run["successful"] for photo_id in run["unseen"])
    return sum(n - 1 for n in counts.values())


@pytest.mark.parametrize("datastore_env", ["local", "s3"], indirect=True)
def test_two_runs_started_together_one_killed_deliver_every_photo_once_after_the_lease(datastore_env, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "test")
    killed, run_id_file = start_run(datastore_env, tmp_path, "killed", "--batch-size", "6", "--claim-lease-seconds", str(LEASE_S))
    beside: dict[str, str] = {}
    thread = threading.Thread(target=lambda: beside.setdefault("id", run_update(datastore_env, tmp_path, batch_size=6)))
    thread.start()
    killed_id, killed_at = kill_in_end(killed, run_id_file, tmp_path)
    thread.join()

    time.sleep(max(0.0, killed_at + LEASE_S + 1 - time.time()))
    later = run_update(datastore_env, tmp_path, batch_size=12)  # no flag: the lease alone gives the photos back
    back_s = time.time() - killed_at
    dead, together, took_over = runs([killed_id, beside["id"], later], datastore_env, tmp_path)

    assert not dead["successful"] and len(dead["claimed"]) == 6
    assert set(dead["claimed"]) <= set(took_over["unseen"]), "the killed run's photos come back to the next run after its lease"
    assert any(note.startswith(f"Took over {len(dead['claimed'])} photos claimed by UpdatePhotos/{killed_id}, which will not deliver them")
               for note in took_over["notes"]), took_over["notes"]
    delivered = [together, took_over]
    assert len({p for run in delivered for p in run["unseen"]}) == DEMO_PHOTOS and duplicates(delivered) == 0
    print(f"\n[{datastore_env.get('METAFLOW_DEFAULT_DATASTORE', 'local')}] delivered {DEMO_PHOTOS} photos, "
          f"{duplicates(delivered)} duplicates; the killed run's {len(dead['claimed'])} photos were taken over "
          f"{took_over['fetched_at'] - killed_at:.0f} s after the kill and delivered {back_s:.0f} s after it (lease {LEASE_S} s)")


@pytest.mark.parametrize("datastore_env", ["local", "s3"], indirect=True)
def test_a_resume_after_a_takeover_delivers_no_photo_twice(datastore_env, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "test")
    killed, run_id_file = start_run(datastore_env, tmp_path, "killed", "--batch-size", "6", "--claim-lease-seconds", "3")
    killed_id, killed_at = kill_in_end(killed, run_id_file, tmp_path)
    time.sleep(max(0.0, killed_at + 4 - time.time()))
    taker = run_update(datastore_env, tmp_path, batch_size=3)  # takes over 3 of the killed run's 6 photos
    resumed = resume_update(datastore_env, tmp_path, killed_id)  # reuses the killed run's `fetch`
    dead, took_over, again = runs([killed_id, taker, resumed], datastore_env, tmp_path)

    assert len(took_over["unseen"]) == 3 and set(took_over["unseen"]) < set(dead["claimed"]) and again["claimed"] == dead["claimed"]
    assert again["unseen"] == sorted(set(dead["claimed"]) - set(took_over["unseen"])), "the resume delivers the photos nobody took over"
    assert duplicates([took_over, again]) == 0
    assert f"Dropped 3 photos from this batch: their claims were taken over by UpdatePhotos/{taker}, which delivers them." in again["notes"]
    print(f"\n[{datastore_env.get('METAFLOW_DEFAULT_DATASTORE', 'local')}] resume after takeover: "
          f"{len(took_over['unseen']) + len(again['unseen'])} photos delivered, {duplicates([took_over, again])} delivered twice")


def test_reset_existing_rebuilds_the_history_from_the_claims_and_delivers_no_photo_again(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "test")
    env = {"METAFLOW_USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    first = run_update(env, tmp_path, batch_size=6)
    reset = run_update(env, tmp_path, batch_size=6, reset_existing=True)
    before, after = runs([first, reset], env, tmp_path)

    assert len(after["unseen"]) == 6 and duplicates([before, after]) == 0, "the issue's reset delivered the first 6 photos again"
    assert "Skipped 6 photos another run of this branch delivered; they join the history." in after["notes"]
