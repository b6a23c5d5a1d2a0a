"""Finding upstream runs through the Metaflow client, within one @project branch.

Every flow reads its inputs here, never from files on disk, so a user's branch, a test branch
and production (DESIGN.md) never read each other's data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

from metaflow import Flow, Run, namespace
from metaflow.exception import MetaflowNotFound

from phototagger.claims import Claims, ClaimStore, LocalClaimStore, RunState, S3ClaimStore

PROJECT = "photo_tagger"
CARD_TIMEOUT_S = 600
"""How long a card may take to render. Metaflow renders a step's card in a child process after the step and
drops it (no card at all) when its 45 s default runs out, which a machine busy with other work reaches."""


def user_branch() -> str:
    """The branch `@project` gives a run without --branch or --production (`user.<name>`), named by Metaflow itself.

    For command-line tools that read a branch's runs outside a flow (check_data.py, export_tags.py).
    """
    from metaflow.plugins.project_decorator import format_name
    from metaflow.util import get_username

    user = os.environ.get("METAFLOW_OWNER") or get_username()
    if not user:
        raise ValueError("Unknown user: export METAFLOW_USER=<your name>, or pass --branch (e.g. --branch prod)")
    return format_name("PhotoTagger", PROJECT, False, None, user)[1]


def branch_tag(branch: str) -> str:
    return f"project_branch:{branch}"


def runs_of(flow_name: str, branch: Optional[str], successful_only: bool = True) -> Iterator[Run]:
    """Runs of `flow_name`, newest first, limited to `branch` (a Metaflow @project branch name).

    Looks across namespaces so runs made by Argo or another user on the same branch are found.
    """
    namespace(None)
    try:
        flow = Flow(flow_name)
    except MetaflowNotFound:
        return
    tags = [branch_tag(branch)] if branch else []
    for run in flow.runs(*tags):
        if not successful_only or run.successful:
            yield run


def latest_successful_run(flow_name: str, branch: Optional[str]) -> Optional[Run]:
    return next(runs_of(flow_name, branch), None)


def resolve_run(flow_name: str, branch: Optional[str], pathspec: str = "") -> Optional[Run]:
    """The run a flow parameter names (`Flow/123` or `123`), else the latest successful one."""
    if not pathspec:
        return latest_successful_run(flow_name, branch)
    namespace(None)
    if "/" not in pathspec:
        pathspec = f"{flow_name}/{pathspec}"
    run = Run(pathspec)
    if not run.successful:
        raise ValueError(f"{pathspec} did not finish successfully; pick a successful run")
    return run


def scored_update_run(branch: Optional[str], pathspec: str = "") -> Run:
    """The UpdatePhotos run whose unseen batch a prompt flow scores: the one named, else the latest."""
    run = resolve_run("UpdatePhotos", branch, pathspec)
    if run is None:
        raise RuntimeError(
            f"No successful UpdatePhotos run on branch {branch}: "
            "run `python updatephotos.py run` first, or pass --update-run UpdatePhotos/<run id>"
        )
    return run


class DatastoreBlobs:
    """A flow's blobs in Metaflow's content-addressed store (the one its artifacts live in): a blob
    is keyed by its sha1, and saving one that is already there writes nothing."""

    def __init__(self, flow_name: str) -> None:
        from metaflow.datastore import FlowDataStore
        from metaflow.metaflow_config import DEFAULT_DATASTORE
        from metaflow.plugins import DATASTORES

        storage = next(impl for impl in DATASTORES if impl.TYPE == DEFAULT_DATASTORE)
        root = storage.get_datastore_root_from_config(lambda *args, **kwargs: None)
        self._store = FlowDataStore(flow_name, storage_impl=storage, ds_root=root)

    def save(self, blobs: Sequence[bytes]) -> list[str]:
        return [key for _, key in self._store.save_data(iter(blobs), len_hint=len(blobs))]

    def load(self, keys: Sequence[str]) -> list[bytes]:
        loaded = dict(self._store.load_data(list(keys)))
        return [loaded[key] for key in keys]


def claim_store(flow_name: str) -> ClaimStore:
    """Where a flow's claims live: beside its runs in the configured datastore (local folder or S3)."""
    from metaflow.metaflow_config import DATASTORE_SYSROOT_S3, DEFAULT_DATASTORE

    if DEFAULT_DATASTORE == "local":
        from metaflow.plugins.datastores.local_storage import LocalStorage

        root = LocalStorage.get_datastore_root_from_config(lambda *args, **kwargs: None)
        return LocalClaimStore(Path(root) / flow_name / "_claims")
    if DEFAULT_DATASTORE == "s3":
        from metaflow.plugins.datatools.s3.s3util import get_s3_client

        client, _ = get_s3_client()
        return S3ClaimStore(f"{DATASTORE_SYSROOT_S3.rstrip('/')}/{flow_name}/_claims", client)
    raise ValueError(
        f"{flow_name} claims its photos in a local or S3 datastore, not {DEFAULT_DATASTORE!r}: "
        "set METAFLOW_DEFAULT_DATASTORE=local or s3"
    )


def run_state(flow_name: str, run_id: str) -> RunState:
    """`successful`, `failed` (a task ended in error) or `running` (also: not visible yet, or killed)."""
    namespace(None)
    try:
        run = Run(f"{flow_name}/{run_id}")
    except MetaflowNotFound:
        return "running"
    if run.successful:
        return "successful"
    for step in run:
        for task in step:
            try:
                if task["_task_ok"].data is False:
                    return "failed"
            except KeyError:
                continue
    return "running"


def run_claims(flow_name: str, branch: str, epoch: str, run_id: str) -> Claims:
    """The claims of one run of `flow_name`, in the configured datastore, judging other holders through the client."""
    return Claims(claim_store(flow_name), branch, epoch, run_id, lambda holder: run_state(flow_name, holder))
