"""The GitHub Actions workflow is valid for GitHub and runs the README's test command.

check-jsonschema ships GitHub's workflow schema (`--builtin-schema vendor.github-workflows`), so a
typo in .github/workflows/tests.yml fails here, offline, not on a user's fork.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"


def validate(path: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.fail("check-jsonschema is missing: it is pinned in requirements.txt")
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True, timeout=120
    )


def test_workflow_passes_githubs_schema():
    out = validate(WORKFLOW)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_with_a_misspelt_key_fails_githubs_schema(tmp_path):
    text = WORKFLOW.read_text()
    assert "runs-on:" in text
    broken = tmp_path / "tests.yml"
    broken.write_text(text.replace("runs-on:", "runs_on:"))
    out = validate(broken)
    assert out.returncode != 0
    assert "'runs-on' is a required property" in out.stdout


def test_workflow_runs_the_test_suite_on_python_311_with_a_pip_cache_and_a_timeout():
    (job,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    assert job["timeout-minutes"] > 0
    assert "gpu" not in str(job["runs-on"]).lower()
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "requirements.txt"}
    assert any(s.get("run", "").startswith("./run_tests.sh") for s in job["steps"])
