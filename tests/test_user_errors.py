"""A newcomer's first mistakes, run as the real commands: each ends non-zero in a line or two that says what is
wrong and the command that fixes it, before any photo is fetched, and with no Python traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("client_id", "openai_api", "togetherai_api")}
    environment.update({
        "METAFLOW_USER": "ci", "USER": "ci", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "datastore"),
        "HF_HUB_OFFLINE": "1", "PHOTOTAGGER_ALLOW_PRIVATE_URLS": "1", "PYTHONUNBUFFERED": "1",
    })
    return environment


def run(env: dict, script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_user_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "Internal error" not in output, output
    for text in expected:
        assert text in output, output
    return output


@pytest.mark.parametrize("args, expected", [
    (["--source", "unsplsh"], ["Invalid value for '--source': unknown source 'unsplsh'", "use one of: auto, unsplash", "folder:PATH", "demo"]),
    (["--source", "folder:/nonexistent"], ["Photo folder not found: /nonexistent", "pass --source folder:/path/to/images"]),
    (["--source", "folder:"], ["'folder:' names no folder", "pass --source folder:/path/to/photos"]),
    (["--batch-size", "-1"], ["Invalid value for '--batch-size': -1 is negative", "pass 0 (the default) or a positive number"]),
    (["--source", "unsplash"], ["Unsplash key missing", "export client_id=<your Unsplash access key>"]),
])
def test_a_bad_updatephotos_option_fails_at_parsing_in_one_line_with_the_fix(env, args, expected):
    done = run(env, "updatephotos.py", "run", *args)
    assert_user_error(done, *expected)
    assert "Workflow starting" not in done.stdout + done.stderr  # parse time: no run, no task, no photo


def test_promptmodels_before_any_updatephotos_names_the_command_for_that_branch(env):
    done = run(env, "promptmodels.py", "--branch", "fresh1", "run")
    assert_user_error(done, "No successful UpdatePhotos run on branch test.fresh1 yet", "python updatephotos.py --branch fresh1 run")


def test_evalsflow_on_an_empty_branch_names_the_commands_for_that_branch(env):
    done = run(env, "evalsflow.py", "--branch", "fresh2", "run")
    assert_user_error(done, "No successful PromptModels or PromptCustomModels run on branch test.fresh2",
                      "python updatephotos.py --branch fresh2 run", "python promptmodels.py --branch fresh2 run")


def test_finetune_offline_with_an_uncached_hub_model_says_how_to_get_a_model(env):
    done = run(env, "finetune_vlm.py", "--branch", "fresh3", "run", "--base-model", "Qwen/not-in-this-cache")
    output = assert_user_error(done, "--base-model Qwen/not-in-this-cache is neither a local folder nor in the Hugging Face cache",
                               "nor is it cached in the datastore",
                               "python -m phototagger.training.base_models cache PATH-OR-HUB-ID --name Qwen/not-in-this-cache",
                               "--base-model PATH", "python -m phototagger.training.random_qwen models/tiny-qwen --size tiny")
    assert "Task is starting" in output and "/train/" not in output  # failed in start: no GPU step was asked for


@pytest.mark.parametrize("content, expected", [
    ('{"models": [', ["is not valid JSON", "line 1 column 13"]),
    ('{"models": {"gpt": {"provider": "openai", "model": "gpt-4o-mini"}}}', ['"models" must be a list of objects']),
    ('{"models": [{"provider": "opneai", "model": "gpt-4o-mini"}]}', ["model 1 has an unknown \"provider\" 'opneai'", "use one of:"]),
    ('{"models": [{"provider": "openai"}]}', ['model 1 ({\'provider\': \'openai\'}) has no "model"']),
])
def test_a_bad_models_json_names_the_file_and_the_field(env, tmp_path, content, expected):
    models = tmp_path / "my_models.json"
    models.write_text(content)
    done = run(env, "promptmodels.py", "--config", "model-list", str(models), "run")
    output = assert_user_error(done, str(models), *expected)
    assert "Workflow starting" not in output


def test_a_missing_prompt_file_is_named(env, tmp_path):
    done = run(env, "promptmodels.py", "--config", "prompt", str(tmp_path / "nothere.txt"), "run")
    assert_user_error(done, f"configuration file '{tmp_path / 'nothere.txt'}' could not be read for 'prompt'")


def test_a_flow_finds_its_default_configs_when_run_from_another_directory(env, tmp_path):
    done = run(env, "promptmodels.py", "--branch", "elsewhere", "run", cwd=tmp_path)
    output = assert_user_error(done, "No successful UpdatePhotos run on branch test.elsewhere")  # got past the Configs
    assert "could not be read" not in output


def test_a_full_branch_name_works_for_a_flow_as_for_the_tools(env):
    done = run(env, "promptmodels.py", "--branch", "test.fresh4", "run")
    assert_user_error(done, "Branch: test.fresh4", "python updatephotos.py --branch fresh4 run")


def test_a_rejected_key_ends_the_run_with_provider_variable_url_and_the_servers_words(env, tmp_path):
    assert run(env, "updatephotos.py", "--branch", "badkey", "run", "--source", "demo", "--batch-size", "2").returncode == 0
    with FakeOpenAIServer(require_key="sk-the-right-one") as server:
        base_url = server.base_url
        models = tmp_path / "models.json"
        models.write_text(json.dumps({"models": [{"provider": "openai", "model": "gpt-4o-mini", "base_url": base_url}]}))
        done = run({**env, "openai_api": "sk-wrong"}, "promptmodels.py", "--branch", "badkey", "--config", "model-list", str(models), "run")
    output = assert_user_error(done, "openai:gpt-4o-mini | default@", ": 2 of 2 calls failed")
    final = [line for line in output.splitlines() if "calls failed" in line][-1]
    for text in ("auth=2", f"at {base_url}", "rejected the key (HTTP 401)", "Incorrect API key", "Check openai_api"):
        assert text in final, final
    assert "sk-wrong" not in output and "Next: python evalsflow.py run" not in output


def test_tools_read_a_short_branch_name_as_the_flows_write_it():
    """No --branch means the user's own branch, as Metaflow names it from the user it read at import."""
    from phototagger import mfclient

    assert [mfclient.full_branch(b) for b in ("demo1", "test.demo1", "prod", "prod.x", "user.ci", None)] == [
        "test.demo1", "test.demo1", "prod", "prod.x", "user.ci", mfclient.user_branch()]
    assert mfclient.user_branch().startswith("user.")
    assert mfclient.flow_argv(["f.py", "--branch", "test.demo1", "run"]) == ["f.py", "--branch", "demo1", "run"]
    assert mfclient.flow_argv(["f.py", "--branch=prod", "run"]) == ["f.py", "--production", "run"]


def error_lines(output: str) -> list[str]:
    """The lines of the Photo Tagger error a failed step printed: the message and its fix, without the log prefix."""
    lines = [line.split(")] ", 1)[-1] for line in output.splitlines()]
    start = lines.index("Photo Tagger:") + 1
    return [line for line in lines[start:start + 4] if line.strip() and not line.startswith("Task failed")]


def test_a_model_asked_for_without_its_key_fails_promptmodels_in_start_unless_told_to_skip_it(env):
    assert run(env, "updatephotos.py", "--branch", "nokey", "run", "--source", "demo", "--batch-size", "3").returncode == 0
    done = run(env, "promptmodels.py", "--branch", "nokey", "run", "--models", "openai:gpt-4o-mini,prior")
    output = assert_user_error(done, "1 of the models asked for cannot run: openai:gpt-4o-mini: OpenAI key missing: export openai_api=",
                               "--models prior:tag-prior", "--skip-unavailable")
    assert len(error_lines(output)) == 2, error_lines(output)
    assert "/prompt_model/" not in output, "failed in start: no model task ran"

    skipped = run(env, "promptmodels.py", "--branch", "nokey", "run", "--models", "openai:gpt-4o-mini,prior", "--skip-unavailable")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "Skipping openai:gpt-4o-mini: OpenAI key missing" in skipped.stdout + skipped.stderr
    assert "Prompted 1 of 2 models" in skipped.stdout + skipped.stderr

    nothing = run(env, "promptmodels.py", "--branch", "nokey", "run", "--models", "openai:gpt-4o-mini", "--skip-unavailable")
    assert_user_error(nothing, "No model can run: openai:gpt-4o-mini: OpenAI key missing")


def test_an_unreachable_model_server_is_found_in_start_in_two_lines(env, tmp_path):
    import socket

    assert run(env, "updatephotos.py", "--branch", "noserver", "run", "--source", "demo", "--batch-size", "2").returncode == 0
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"models": [{"provider": "openai-compatible", "model": "llava", "base_url": f"http://127.0.0.1:{port}/v1"}]}))
    done = run(env, "promptmodels.py", "--branch", "noserver", "--config", "model-list", str(models), "run")
    output = assert_user_error(done, f"openai-compatible:llava: OpenAI-compatible server at http://127.0.0.1:{port}/v1/ cannot be reached",
                               "Connection refused", "--skip-unavailable")
    assert len(error_lines(output)) == 2, error_lines(output)
    assert "/prompt_model/" not in output and "/end/" not in output, "found in start, before any model task"


def test_every_flow_and_tool_imports_phototagger_before_metaflow_so_root_and_other_directories_work():
    """phototagger/bootstrap.py sets METAFLOW_USER (root is refused) and the datastore root; Metaflow reads both
    once, when it is first imported, so a file that imports metaflow first runs without them."""
    import ast

    from phototagger import bootstrap

    late = []
    for path in sorted(set(ROOT.glob("*.py")) - {ROOT / "test_pipeline.py"}):
        modules = [alias.name if isinstance(node, ast.Import) else node.module or ""
                   for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))
                   for alias in node.names]
        ours = next((i for i, m in enumerate(modules) if m.split(".")[0] == "phototagger"), None)
        theirs = next((i for i, m in enumerate(modules) if m.split(".")[0] == "metaflow"), None)
        if theirs is not None and (ours is None or ours > theirs):
            late.append(path.name)
    assert not late, f"import phototagger before metaflow in: {late}"
    assert bootstrap.defaults({"USER": "root"}, Path("/srv/tagger")) == {
        "METAFLOW_USER": "photo-tagger", "METAFLOW_DATASTORE_SYSROOT_LOCAL": "/srv/tagger",
        "METAFLOW_CARD_LOCALROOT": "/srv/tagger/.metaflow/mf.cards"}
    assert bootstrap.defaults({"USER": "ana", "METAFLOW_DATASTORE_SYSROOT_LOCAL": "/d", "METAFLOW_CARD_LOCALROOT": "/c"}) == {}


@pytest.mark.parametrize("value, line", [
    ("0", "a lease of 0 s gives every run's photos away at once; pass a number of seconds, e.g. 300 (the default)"),
    ("-5", "a lease of -5 s gives every run's photos away at once; pass a number of seconds, e.g. 300 (the default)"),
    ("soon", "'soon' is not a whole number of seconds"),
])
def test_a_lease_below_one_second_names_the_default_not_the_batch_size_rule(value, line):
    from phototagger.errors import UserError, lease_seconds

    with pytest.raises(UserError) as raised:
        lease_seconds(value)
    assert raised.value.one_line() == line
