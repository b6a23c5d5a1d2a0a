"""A pod, simulated: each of the six flows runs from Metaflow's own code package, unpacked outside the checkout.

`python <flow> package save` writes the package `argo-workflows create` uploads; it is unpacked with
Metaflow's own extract commands and environment (what a pod's bootstrap runs) into an empty folder,
and the flow runs from there on the demo photos and the tiny Qwen2.5-VL, in the test's datastore.
Every Python process of those runs carries an audit hook (a sitecustomize on PYTHONPATH) that records
each file it opens inside the checkout, the interpreter's own files apart: the test fails on any, so
no task reads a template, a config or a module that only the checkout has. The light flows run with
the CUDA stack made unimportable, as in the CPU image and under the "light" pins.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import flowrun

ROOT = Path(__file__).resolve().parent.parent
GPU_MODULES = ("torch", "torchvision", "transformers", "peft", "accelerate", "bitsandbytes", "qwen_vl_utils", "safetensors")

# Imported by every Python process whose PYTHONPATH holds its folder (site.py imports `sitecustomize`).
SITECUSTOMIZE = '''
import importlib.abc
import os
import sys

_checkout = os.environ.get("POD_SIM_CHECKOUT")
if _checkout:
    _checkout = os.path.realpath(_checkout) + os.sep
    _interpreter = os.path.realpath(sys.prefix) + os.sep
    _log = os.environ["POD_SIM_LOG"]

    def _audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(_checkout) and not path.startswith(_interpreter):
                with open(_log, "a") as log:
                    log.write(f"{os.getpid()} {path}\\n")

    sys.addaudithook(_audit)

_blocked = set(filter(None, os.environ.get("POD_SIM_BLOCK", "").split(",")))
if _blocked:
    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in _blocked:
                raise ModuleNotFoundError(f"No module named {fullname!r} (not in the light image)", name=fullname)
            return None

    sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.fixture
def hooks(tmp_path) -> Path:
    folder = tmp_path / "hooks"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def test_the_simulated_pod_records_a_read_of_the_checkout_and_refuses_the_cuda_stack(hooks, tmp_path):
    log = tmp_path / "reads.log"
    env = dict(os.environ, PYTHONPATH=str(hooks), POD_SIM_CHECKOUT=str(ROOT), POD_SIM_LOG=str(log), POD_SIM_BLOCK=",".join(GPU_MODULES))
    code = "open('README.md').close()\ntry:\n    import torch\nexcept ModuleNotFoundError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "not in the light image" in out.stdout
    assert log.read_text().split()[1:] == [str((ROOT / "README.md").resolve())]


@pytest.fixture
def pods(tmp_path, monkeypatch, hooks):
    """Unpacks a flow's code package into its own folder and runs the flow there, as a pod would."""
    monkeypatch.setenv("USER", "ci")
    reads = tmp_path / "checkout-reads.log"
    reads.touch()
    env = {
        "METAFLOW_USER": "ci",
        "USER": "ci",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "datastore"),
        "PHOTOTAGGER_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "client_id": "",
        "openai_api": "",
        "togetherai_api": "",
    }

    def unpack(flow_file: str) -> Path:
        from metaflow.package import MetaflowPackage

        pods_made = tmp_path / "pods"
        pod = pods_made / f"{len(list(pods_made.glob('*')))}-{Path(flow_file).stem}" if pods_made.exists() else pods_made / f"0-{Path(flow_file).stem}"
        pod.mkdir(parents=True)
        tar = pod / "job.tar"
        saved = subprocess.run(
            [sys.executable, flow_file, "package", "save", str(tar)], cwd=ROOT, env=dict(os.environ, **env),
            capture_output=True, text=True, timeout=300,
        )
        assert saved.returncode == 0, saved.stderr[-3000:]
        metadata = re.search(r"with metadata: (\{.*\})", saved.stdout + saved.stderr)[1]
        for command in MetaflowPackage.get_extract_commands(metadata, "job.tar", dest_dir="."):
            subprocess.run(command, shell=True, cwd=pod, check=True)
        tar.unlink()
        exports = MetaflowPackage.get_post_extract_env_vars(metadata, dest_dir=str(pod))
        pod_env = {key.rstrip(":"): value for key, value in exports.items()}
        pod_env["PYTHONPATH"] = os.pathsep.join(filter(None, [pod_env.get("PYTHONPATH", "").rstrip(":"), str(hooks)]))
        return pod, pod_env

    def run(flow_file: str, light: bool, runner_options: dict | None = None, **params):
        pod, pod_env = unpack(flow_file)
        run_env = dict(env, **pod_env, POD_SIM_CHECKOUT=str(ROOT), POD_SIM_LOG=str(reads), POD_SIM_BLOCK=",".join(GPU_MODULES) if light else "")
        result = flowrun.run_flow(pod / flow_file, run_env, pod, runner_options=runner_options, **params)
        opened = reads.read_text()
        assert not opened, f"{flow_file} read files of the checkout, not of its code package:\n{opened[:3000]}"
        return result

    return run


@pytest.mark.timeout(900)  # six flows, each packaged and unpacked, the fine-tune on the tiny model on a CPU
def test_every_flow_runs_from_its_code_package_outside_the_checkout(pods, tmp_path, tiny_qwen_dir):
    first, _ = pods("updatephotos.py", light=True, source="demo", batch_size=4)
    newest, _ = pods("updatephotos.py", light=True, source="demo", batch_size=4)
    prompted, _ = pods(
        "promptmodels.py", light=True, runner_options={"config": [("prompts", "prompts/demo.json")]}, models="prior,knn",
    )
    dataset, _ = pods("prepare_vlm_data.py", light=True)
    trained, _ = pods(
        "finetune_vlm.py", light=False, base_model=str(tiny_qwen_dir), quantize="none", max_steps=1, batch_size=2, grad_accum=1,
        epochs=1, output_dir=str(tmp_path / "checkpoints"),
    )
    custom, _ = pods("promptcustommodels.py", light=False, max_error_share=1.0, max_new_tokens=8)
    evals_run, _ = pods("evalsflow.py", light=True)

    assert set(newest.data.unseen) and not set(first.data.unseen) & set(newest.data.unseen)
    assert {key.split(" | ")[0] for key in prompted.data.models_eval["results"]} == {"prior:tag-prior", "knn:jec"}
    assert len(prompted.data.models_eval["prompts"]) == 2, "prompts/demo.json, read from the package"
    assert dataset.data.train_examples, "the earlier batch trains"
    assert trained.data.adapter_files
    (key,) = custom.data.models_eval["results"]
    assert [r["photo_id"] for r in custom.data.models_eval["results"][key]] == list(newest.data.unseen)
    rows = [row[0] for row in evals_run.data.evals["rows"]]
    assert key in rows and len(rows) == 3, "2 baselines (one row each: they read no prompt) and the fine-tuned model"
    assert f'data-model="{key}"' in evals_run.data.html, "the dashboard, from the package's templates"
