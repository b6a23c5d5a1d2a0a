"""A failing flow test shows the failing step's own log, not only Metaflow's one-line summary."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests import flowrun

FAILING_FLOW = Path(__file__).parent / "fakes" / "failing_flow.py"


def test_a_failed_flow_run_reports_the_failing_steps_traceback_and_prints(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "ci")
    env = {"METAFLOW_USER": "ci", "USER": "ci", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}

    with pytest.raises(AssertionError) as failure:
        flowrun.run_flow(FAILING_FLOW, env, tmp_path)

    report = str(failure.value)
    assert "failing_flow.py failed" in report and "/train/" in report
    assert "RuntimeError: shape '[96, 0]' is invalid for input of size 48" in report  # the step's traceback
    assert "step log: the layer shape is off" in report and "loading the base model from /models/tiny" in report
