"""The flows by name, and finding upstream runs through the Metaflow client within one @project branch.

Every flow reads its inputs here, never from files on disk, so a user's branch, a test branch
and production (DESIGN.md) never read each other's data. A --branch value means the same
everywhere: a full name (`test.x`, `prod`, `prod.x`, `user.<name>`), or a short name `x` that
means `test.x`, as a flow's own --branch does.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from metaflow import Flow, Run, namespace
from metaflow.exception import MetaflowNotFound

from phototagger.bootstrap import PROJECT_ROOT
from phototagger.claims import DEFAULT_LEASE_S, Claims, ClaimStore, LocalClaimStore, RunState, S3ClaimStore
from phototagger.errors import UserError

PROJECT = "photo_tagger"

UPDATE_FLOW = "UpdatePhotos"
PROMPT_FLOW = "PromptModels"
DATASET_FLOW = "PrepareVLMData"
FINETUNE_FLOW = "FineTuneVLM"
CUSTOM_PROMPT_FLOW = "PromptCustomModels"
EVAL_FLOW = "EvaluationFlow"
PROMPT_FLOWS = (PROMPT_FLOW, CUSTOM_PROMPT_FLOW)
"""The flows whose `models_eval` EvaluationFlow folds and export_tags.py reads."""
SCRIPTS = {
    UPDATE_FLOW: "updatephotos.py",
    PROMPT_FLOW: "promptmodels.py",
    DATASET_FLOW: "prepare_vlm_data.py",
    FINETUNE_FLOW: "finetune_vlm.py",
    CUSTOM_PROMPT_FLOW: "promptcustommodels.py",
    EVAL_FLOW: "evalsflow.py",
}
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
        raise UserError("Unknown user", "export METAFLOW_USER=<your name>, or pass --branch (e.g. --branch prod)")
    return format_name("PhotoTagger", PROJECT, False, None, user)[1]


def full_branch(branch: Optional[str]) -> str:
    """The full @project branch a --branch value names: `x` is `test.x` (a flow's --branch x), `prod`,
    `prod.x`, `test.x` and `user.<name>` are taken as they are, nothing is your own user branch."""
    if not branch:
        return user_branch()
    if branch == "prod" or branch.split(".", 1)[0] in ("user", "test", "prod") and "." in branch:
        return branch
    return f"test.{branch}"


def flow_branch_args(branch: str) -> list[str]:
    """The options that put a flow on the full `branch`: ["--branch", "x"] for test.x, ["--production"] for prod."""
    kind, _, name = branch.partition(".")
    if branch == "prod":
        return ["--production"]
    if kind == "prod":
        return ["--production", "--branch", name]
    if kind == "test":
        return ["--branch", name]
    if branch == user_branch():
        return []
    raise UserError(f"--branch {branch}: a flow runs on another user's branch only as that user", f"run it as METAFLOW_USER={name}")


def flow_argv(argv: list[str]) -> list[str]:
    """A flow's command line with a full --branch name turned into the options Metaflow takes (which
    reads `--branch x` as `test.x` and rejects `test.x`), so flows and tools take the same names."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name != "--branch":
            out.append(arg)
            continue
        value = value if eq else next(args, "")
        out += flow_branch_args(full_branch(value)) if value else [arg]
    return out


def run_cli(flow_cls: type) -> None:
    """A flow file's `__main__`: the flow's command line, with --branch taken in either form."""
    try:
        sys.argv[:] = flow_argv(sys.argv)
    except UserError as exc:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {exc.one_line()}")
    flow_cls()


def config_file(config: str, default: str) -> str:
    """The file a flow's Config `config` is read from: the one given with --config, else its default.
    For Config parsers, which Metaflow hands only the file's text, so their errors can name the file."""
    args = sys.argv
    for i, arg in enumerate(args[:-2]):
        if arg == "--config" and args[i + 1] == config:
            return args[i + 2]
    return default


def script_command(script: str, *args: str) -> str:
    """`script` (a flow or tool of this project) with `args`, as a user can type it where they are: with
    `.venv/bin/python` when this process runs from the project's .venv (a bare `python` may have no metaflow),
    and the script's path from the working directory when that is not the project folder."""
    venv_python = PROJECT_ROOT / ".venv" / "bin" / "python"
    in_venv = venv_python.exists() and Path(sys.prefix).resolve() == (PROJECT_ROOT / ".venv").resolve()
    return " ".join([_from_cwd(venv_python) if in_venv else "python", _from_cwd(PROJECT_ROOT / script), *args])


def _from_cwd(path: Path) -> str:
    """`path` relative to the working directory when it lies under it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def flow_command(flow_name: str, branch: Optional[str], command: str = "run") -> str:
    """The command line that runs `flow_name` on the full `branch`, for hints (`python updatephotos.py --branch x run`)."""
    kind, _, name = (branch or "").partition(".")
    if kind == "user" and branch != user_branch():
        return f"METAFLOW_USER={name} {script_command(SCRIPTS[flow_name], command)}"
    options = flow_branch_args(branch) if branch else []
    return script_command(SCRIPTS[flow_name], *options, command)


def branch_tag(branch: str) -> str:
    return f"project_branch:{branch}"


def runs_of(flow_name: str, branch: Optional[str], successful_only: bool = True, created_since: float = 0.0) -> Iterator[Run]:
    """Runs of `flow_name`, newest first, limited to `branch` (a Metaflow @project branch name) and to the runs
    created at or after `created_since` (unix seconds).

    Looks across namespaces so runs made by Argo or another user on the same branch are found.
    """
    namespace(None)
    try:
        flow = Flow(flow_name)
    except MetaflowNotFound:
        return
    tags = [branch_tag(branch)] if branch else []
    for run in flow.runs(*tags):
        if run.created_at.timestamp() < created_since:
            return
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
        raise UserError(f"{pathspec} did not finish successfully", "pick a successful run")
    return run


def required_run(flow_name: str, branch: Optional[str], pathspec: str = "", option: str = "") -> Run:
    """The run a flow parameter names, else the latest successful one; none yet is a user's mistake whose
    fix names the upstream command on this same branch."""
    run = resolve_run(flow_name, branch, pathspec)
    if run is None:
        raise no_run_error(flow_name, branch, option)
    return run


def no_run_error(flow_name: str, branch: Optional[str], option: str = "") -> UserError:
    """No successful `flow_name` run on `branch` yet: the fix runs it on this same branch (or names `option`)."""
    return UserError(
        f"No successful {flow_name} run on branch {branch} yet",
        f"run `{flow_command(flow_name, branch)}` first" + (f", or pass {option} {flow_name}/<run id>" if option else ""),
    )


def require_prompt_runs(branch: Optional[str]) -> None:
    """Raise UserError when `branch` has no successful prompt run for EvaluationFlow to rank, naming the
    commands that make one on this same branch."""
    if not any(latest_successful_run(flow, branch) for flow in PROMPT_FLOWS):
        raise UserError(
            f"No successful {' or '.join(PROMPT_FLOWS)} run on branch {branch} yet: nothing to rank",
            f"run `{flow_command(UPDATE_FLOW, branch)}`, then `{flow_command(PROMPT_FLOW, branch)}`",
        )


def scored_update_run(branch: Optional[str], pathspec: str = "") -> Run:
    """The UpdatePhotos run whose unseen batch a prompt flow scores: the one named, else the latest."""
    return required_run(UPDATE_FLOW, branch, pathspec, "--update-run")


def adapter_run(branch: Optional[str], pathspec: str = "") -> tuple[Optional[Run], Optional[dict]]:
    """(run, its finetune_meta): the FineTuneVLM run named, else the newest of `branch` that trained an
    adapter; (None, None) when none has."""
    if pathspec:
        run = resolve_run(FINETUNE_FLOW, branch, pathspec)
        meta = run.data.finetune_meta
        if not meta:
            raise UserError(f"{run.pathspec} trained no adapter (its dataset was empty)", "pass another --finetune-run")
        return run, dict(meta)
    for run in runs_of(FINETUNE_FLOW, branch):
        meta = run.data.finetune_meta
        if meta:
            return run, dict(meta)
    return None, None


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
    """`successful`, `failed` (a task ended in error) or `running` (also: not visible yet, or killed: the
    client cannot tell a SIGKILLed run from a live one, which is why claims carry a lease)."""
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


def run_claims(flow_name: str, branch: str, epoch: str, run_id: str, lease_s: float = DEFAULT_LEASE_S,
               ancestors: Iterable[Optional[str]] = ()) -> Claims:
    """The claims of one run of `flow_name`, in the configured datastore, judging other holders through the client."""
    return Claims(claim_store(flow_name), branch, epoch, run_id, lambda holder: run_state(flow_name, holder), lease_s,
                  [run for run in ancestors if run])


def delivered_by(update_run: Run, branch: str, photo_ids: Iterable[str]) -> dict[str, str]:
    """The photos among `photo_ids` of an UpdatePhotos run's batch that the claims say another run delivers,
    with that run's id: downstream flows count a photo once per branch, in the batch of the run that holds
    its claim, whatever happened upstream. A run from before claims holds all its photos."""
    data = update_run.data
    if "claim_epoch" not in data:
        return {}
    claims = Claims(claim_store(UPDATE_FLOW), branch, data.claim_epoch, update_run.id, lambda holder: run_state(UPDATE_FLOW, holder))
    return claims.held_elsewhere(photo_ids)


def once_per_branch(update_run: Run, branch: str, photos: dict) -> tuple[dict, str]:
    """The photos of an UpdatePhotos batch this batch counts (those whose claim another run holds are that
    run's to count), and a note naming what was left out ("" when nothing was)."""
    elsewhere = delivered_by(update_run, branch, photos)
    if not elsewhere:
        return photos, ""
    runs = ", ".join(f"{UPDATE_FLOW}/{run_id}" for run_id in sorted(set(elsewhere.values())))
    kept = {photo_id: photo for photo_id, photo in photos.items() if photo_id not in elsewhere}
    return kept, (f"Left out {len(elsewhere)} photos of {update_run.pathspec} that {runs} delivered: "
                  "a photo counts once per branch, in the batch of the run holding its claim.")


def events_once_per_branch(prompt_run: Run, branch: str, events: list[Mapping]) -> tuple[list[Mapping], str]:
    """A prompt run's events (each with its `photo_id`) less those on photos another UpdatePhotos run delivers
    (an upstream that delivered a photo twice, or a prompt run that did not leave them out), and a note on them."""
    data = prompt_run.data
    if not events or "update_run_pathspec" not in data:
        return events, ""
    namespace(None)
    update_run = Run(data.update_run_pathspec)
    elsewhere = delivered_by(update_run, branch, {str(event["photo_id"]) for event in events})
    if not elsewhere:
        return events, ""
    kept = [event for event in events if str(event["photo_id"]) not in elsewhere]
    note = (f"{prompt_run.pathspec}: left out {len(events) - len(kept)} answers on {len(elsewhere)} photos that "
            f"another UpdatePhotos run delivered; they count once, in that run's batch.")
    return kept, note


SETTLE_S = 3600.0
"""A prompt run created more than this long ago, and ended, is settled: EvaluationFlow lists runs from the oldest
unsettled one on (the margin covers a run that shows up late and clocks that differ)."""
GIVE_UP_S = 7 * 24 * 3600.0
"""A prompt run still going after this long no longer holds the horizon back: it is reported and never folded."""


@dataclass
class FoldedRuns:
    """Which prompt runs EvaluationFlow has folded, bounded by the runs of the last hour or so, not of all time.

    Every run created before `horizon` (unix seconds) is settled: folded, or given up on; `runs` holds the
    ones folded since (pathspec -> created at). A run still going holds the horizon back, for up to GIVE_UP_S.
    """

    horizon: float = 0.0
    runs: dict[str, float] = field(default_factory=dict)

    def __contains__(self, pathspec: object) -> bool:
        return pathspec in self.runs

    def advance(self, listed: Mapping[str, float], folded: Iterable[str], pending: Iterable[str],
                now: float) -> tuple[FoldedRuns, list[str]]:
        """These runs once a collect has seen `listed` (every run created since `horizon`: pathspec -> created at),
        folded `folded` and left `pending` (not ended) for later; and the pending runs it gives up on."""
        pending = [p for p in pending if p in listed]
        horizon = max(self.horizon, now - GIVE_UP_S, min([listed[p] for p in pending] + [now - SETTLE_S]))
        done = set(self.runs) | set(folded)
        given_up = sorted(p for p in pending if listed[p] < horizon)
        return FoldedRuns(horizon=horizon, runs={p: t for p, t in listed.items() if p in done and t >= horizon}), given_up
