"""Running a flow from a test: on failure, the failing steps' own logs, not only Metaflow's summary line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from metaflow import Runner

LOG_TAIL = 6000


def failed_task_logs(running: Any, tail: int = LOG_TAIL) -> str:
    """The stderr and stdout of every task of the run that did not succeed, each cut to its last `tail` characters.

    Metaflow's own output ends with "Step train (task-id 2) failed."; the traceback and the step's
    prints are in that task's logs, which the client reads from the run's datastore."""
    reports = []
    for step in running.run:
        for task in step:
            if not task.successful:
                reports.append(
                    f"--- {task.pathspec} stderr ---\n{task.stderr[-tail:]}\n--- {task.pathspec} stdout ---\n{task.stdout[-tail:]}"
                )
    return "\n".join(reports) or f"(no failed task recorded; the run's own stderr)\n{running.stderr[-tail:]}"


def run_flow(flow_file: str | Path, env: dict, cwd: str | Path, runner_options: dict | None = None, **params: Any):
    """Run a flow to completion; return (Run, stdout). A failed run fails the test with the failing steps' logs."""
    with Runner(str(flow_file), show_output=False, env=env, cwd=str(cwd), **(runner_options or {})).run(**params) as running:
        assert running.status == "successful", f"{Path(flow_file).name} failed:\n{failed_task_logs(running)}"
        return running.run, running.stdout
