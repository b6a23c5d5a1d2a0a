"""Every flow compiles for Argo Workflows (`argo-workflows create --only-json`).

Argo needs an S3 datastore even for --only-json (it uploads the code package), so a moto S3
server on 127.0.0.1 stands in for it. The JSON is checked for what a deployment relies on:
GPU and memory requests, the hourly schedule, the event triggers and the parameters.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "photo-tagger-ci"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def argo_env(tmp_path_factory):
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        pytest.fail("moto_server is missing: it comes with moto[server] in requirements.txt")
    port = _free_port()
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        METAFLOW_USER="ci",
        METAFLOW_DEFAULT_DATASTORE="s3",
        METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/metaflow",
        METAFLOW_S3_ENDPOINT_URL=endpoint,
        METAFLOW_KUBERNETES_NAMESPACE="default",
        METAFLOW_ARGO_EVENTS_EVENT="metaflow-event",
        METAFLOW_ARGO_EVENTS_EVENT_BUS="default",
        METAFLOW_ARGO_EVENTS_EVENT_SOURCE="argo-events-webhook",
        METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT="operate-workflow-sa",
        METAFLOW_ARGO_EVENTS_WEBHOOK_URL="http://127.0.0.1:1/metaflow-event",
        METAFLOW_HOME=str(tmp_path_factory.mktemp("mfhome")),
    )
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    for _ in range(100):
        try:
            s3.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            time.sleep(0.1)
    yield env
    proc.terminate()
    proc.wait(timeout=10)


def compile_flow(flow_file: str, env: dict, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, flow_file, *extra, "argo-workflows", "create", "--only-json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def annotations(wf: dict) -> dict:
    return wf["metadata"]["annotations"]


def parameters(wf: dict) -> set[str]:
    return {p["name"] for p in wf["spec"]["arguments"]["parameters"]}


def triggers(wf: dict) -> set[str]:
    return {t["name"].rsplit(".", 2)[-2] for t in json.loads(annotations(wf).get("metaflow/triggers", "[]"))}


def step_resources(wf: dict) -> dict[str, dict]:
    return {t["name"]: t["container"]["resources"] for t in wf["spec"]["templates"] if t.get("container")}


def gpu_steps(wf: dict) -> dict[str, dict]:
    return {name: r for name, r in step_resources(wf).items() if r.get("limits", {}).get("nvidia.com/gpu")}


def mebibytes(value: str) -> float:
    return float(value.rstrip("Mi").rstrip("M"))


def test_updatephotos_deploys_hourly_with_its_parameters(argo_env):
    wf = compile_flow("updatephotos.py", argo_env)
    assert json.loads(annotations(wf)["metaflow/cron"])["schedule"] == "0 * * * ?"
    assert {"source", "batch-size", "reset-existing"} <= parameters(wf)
    assert annotations(wf)["metaflow/project_name"] == "photo_tagger"


def test_promptmodels_runs_when_updatephotos_finishes(argo_env):
    wf = compile_flow("promptmodels.py", argo_env)
    assert "UpdatePhotos" in triggers(wf)
    assert {"concurrency", "max-error-share"} <= parameters(wf)
    assert not gpu_steps(wf), "vendor API calls need no GPU"


def test_prepare_vlm_data_runs_when_updatephotos_finishes(argo_env):
    wf = compile_flow("prepare_vlm_data.py", argo_env)
    assert "UpdatePhotos" in triggers(wf)
    assert {"min-tags", "max-samples", "seed"} <= parameters(wf)


def test_finetune_trains_on_one_gpu_with_enough_memory(argo_env):
    wf = compile_flow("finetune_vlm.py", argo_env)
    assert "PrepareVLMData" in triggers(wf)
    gpus = gpu_steps(wf)
    assert len(gpus) == 1, f"exactly the training step asks for a GPU, got {sorted(gpus)}"
    (res,) = gpus.values()
    assert res["limits"]["nvidia.com/gpu"] == "1"
    assert mebibytes(res["requests"]["memory"]) >= 16000
    assert {"base-model", "epochs", "learning-rate", "lora-rank", "quantize"} <= parameters(wf)


def test_promptcustommodels_evaluates_on_a_gpu_after_finetuning(argo_env):
    wf = compile_flow("promptcustommodels.py", argo_env)
    assert "FineTuneVLM" in triggers(wf)
    gpus = gpu_steps(wf)
    assert len(gpus) == 1
    (res,) = gpus.values()
    assert mebibytes(res["requests"]["memory"]) >= 16000


def test_evaluationflow_runs_after_either_prompt_flow(argo_env):
    wf = compile_flow("evalsflow.py", argo_env)
    assert {"PromptModels", "PromptCustomModels"} <= triggers(wf)
    assert not gpu_steps(wf)


def test_production_and_branches_deploy_apart(argo_env):
    prod = compile_flow("evalsflow.py", argo_env, "--production")
    test_branch = compile_flow("evalsflow.py", argo_env, "--branch", "feature1")
    assert annotations(prod)["metaflow/branch_name"] == "prod"
    assert annotations(test_branch)["metaflow/branch_name"] == "test.feature1"
    assert prod["metadata"]["name"] != test_branch["metadata"]["name"]
