"""Every flow compiles for Argo Workflows (`argo-workflows create --only-json`), and deploys.

Argo needs an S3 datastore even for --only-json (it uploads the code package), so a moto S3
server on 127.0.0.1 stands in for it. The JSON is checked for what a deployment relies on:
GPU and memory requests, the hourly schedule, the event triggers and the parameters.
--only-json prints the WorkflowTemplate alone, so the CronWorkflow and the Sensors are checked on
what a real `argo-workflows create` sends to a fake Kubernetes API (tests/fakes/kubernetes_server.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.fakes.kubernetes_server import FakeKubernetes
from tests.fakes.moto_s3 import moto_s3

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "photo-tagger-ci"
SECRETS_ENV = "PHOTOTAGGER_SECRETS"
SECRET_SOURCES = ["aws-secrets-manager.photo-tagger-keys", "photo-tagger-unsplash"]
KEY_VALUE = f"sk-{uuid.uuid4().hex}"  # made at run time: this file itself is in the code package
IMAGES = {"PHOTO_TAGGER_IMAGE": "registry.example.org/photo-tagger:cpu", "PHOTO_TAGGER_GPU_IMAGE": "registry.example.org/photo-tagger:cuda"}
FLOWS = ["updatephotos.py", "promptmodels.py", "prepare_vlm_data.py", "finetune_vlm.py", "promptcustommodels.py", "evalsflow.py"]


@pytest.fixture(scope="module")
def argo_env(tmp_path_factory):
    with moto_s3(BUCKET) as endpoint:
        env = dict(
            {k: v for k, v in os.environ.items() if k not in ("METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES", SECRETS_ENV)},
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
            **IMAGES,  # the images built from docker/: without them (or an environment) a deployment is refused
        )
        yield env


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    with FakeKubernetes() as server:
        yield server, server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


def deploy_flow(flow_file: str, env: dict, kube: tuple[FakeKubernetes, Path], **extra_env: str) -> dict[str, dict]:
    """Run the real `argo-workflows create` against the fake cluster: kind -> the object it created."""
    server, kubeconfig = kube
    server.take()
    out = subprocess.run(
        [sys.executable, flow_file, "argo-workflows", "create"],
        cwd=ROOT, env=dict(env, KUBECONFIG=str(kubeconfig), **extra_env), capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {obj["kind"]: obj for obj in server.take()}


def compile_flow(flow_file: str, env: dict, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, flow_file, *extra, "argo-workflows", "create", "--only-json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def containers(wf: dict) -> dict[str, dict]:
    """Step name -> the container of its template (the steps the DAGs run, not Metaflow's own exit hooks)."""
    steps = {task["template"] for t in wf["spec"]["templates"] if t.get("dag") for task in t["dag"]["tasks"]}
    return {t["name"]: t["container"] for t in wf["spec"]["templates"] if t.get("container") and t["name"] in steps}


def installs_its_dependencies(container: dict) -> str | None:
    """What gives this container the flows' imports: an image built from docker/, or an environment that
    installs them when the pod starts (Metaflow's uv or pypi bootstrap); None for a bare image."""
    if container["image"] in IMAGES.values():
        return container["image"]
    script = " ".join((container.get("command") or []) + (container.get("args") or []))
    for bootstrap in ("metaflow.plugins.uv.bootstrap", "metaflow.plugins.pypi.bootstrap"):
        if bootstrap in script:
            return bootstrap
    return None


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


def test_evaluationflow_runs_after_each_promptmodels_run(argo_env):
    wf = compile_flow("evalsflow.py", argo_env)
    assert triggers(wf) == {"PromptModels"}
    assert not gpu_steps(wf)


def test_production_and_branches_deploy_apart(argo_env):
    prod = compile_flow("evalsflow.py", argo_env, "--production")
    test_branch = compile_flow("evalsflow.py", argo_env, "--branch", "feature1")
    assert annotations(prod)["metaflow/branch_name"] == "prod"
    assert annotations(test_branch)["metaflow/branch_name"] == "test.feature1"
    assert prod["metadata"]["name"] != test_branch["metadata"]["name"]


def container_env(wf: dict, name: str) -> str:
    return next(e["value"] for t in wf["spec"]["templates"] if t.get("container") for e in t["container"]["env"] if e["name"] == name)


def sensor_flows(sensor: dict) -> set[str]:
    """The flows whose `end` events the Sensor waits for."""
    return {
        expr["expr"].split("'")[1].rsplit(".", 2)[-2]
        for dep in sensor["spec"]["dependencies"]
        for expr in dep["filters"]["exprs"]
        if expr["expr"].startswith("name == ")
    }


def sensor_branches(sensor: dict) -> set[str]:
    return {
        expr["expr"].split("'")[1]
        for dep in sensor["spec"]["dependencies"]
        for expr in dep["filters"]["exprs"]
        if expr["fields"][0]["path"] == "body.payload.branch_name"
    }


def triggered_template(sensor: dict) -> set[str]:
    return {t["template"]["k8s"]["source"]["resource"]["spec"]["workflowTemplateRef"]["name"] for t in sensor["spec"]["triggers"]}


def test_updatephotos_cron_workflow_has_the_schedules_list_argo_4_requires(argo_env, kube):
    deployed = deploy_flow("updatephotos.py", argo_env, kube)
    spec = deployed["CronWorkflow"]["spec"]
    assert "schedule" not in spec, "Argo Workflows 4 removed the singular spec.schedule"
    assert spec["schedules"] == ["0 * * * ?"]
    assert spec["suspend"] is False
    assert spec["workflowSpec"]["workflowTemplateRef"]["name"] == deployed["WorkflowTemplate"]["metadata"]["name"]


def test_argo_3_deployment_keeps_the_singular_schedule_when_asked(argo_env, kube):
    spec = deploy_flow("updatephotos.py", argo_env, kube, METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES="false")["CronWorkflow"]["spec"]
    assert spec["schedule"] == "0 * * * ?"
    assert "schedules" not in spec


@pytest.fixture(scope="module")
def deployed_promptmodels(argo_env, kube):
    """PromptModels deployed with its keys in a secrets manager and a key value in the deployer's shell."""
    return deploy_flow("promptmodels.py", argo_env, kube, **{SECRETS_ENV: ", ".join(SECRET_SOURCES), "openai_api": KEY_VALUE})


def test_promptmodels_sensor_starts_it_when_updatephotos_of_the_same_branch_finishes(deployed_promptmodels):
    sensor = deployed_promptmodels["Sensor"]
    assert sensor_flows(sensor) == {"UpdatePhotos"}
    assert sensor_branches(sensor) == {"user.ci"}
    assert triggered_template(sensor) == {deployed_promptmodels["WorkflowTemplate"]["metadata"]["name"]}


def test_evaluationflow_sensor_waits_for_promptmodels_alone_so_the_baseline_path_refreshes_it(argo_env, kube):
    """A Sensor with two dependencies waits for both, and the quick baseline path never runs PromptCustomModels."""
    deployed = deploy_flow("evalsflow.py", argo_env, kube)
    sensor = deployed["Sensor"]
    assert sensor_flows(sensor) == {"PromptModels"}
    assert sensor_branches(sensor) == {"user.ci"}
    assert triggered_template(sensor) == {deployed["WorkflowTemplate"]["metadata"]["name"]}
    assert "CronWorkflow" not in deployed


def test_deployed_prompt_step_fetches_its_keys_from_the_named_secret_sources(deployed_promptmodels, argo_env, tmp_path):
    """The pod sees neither PHOTOTAGGER_SECRETS nor the deployer's files: it reads the sources from the
    code package the template names, and Metaflow then puts @secrets on start (which skips models without a key) and on the step that calls the models."""
    import boto3

    wf = deployed_promptmodels["WorkflowTemplate"]
    bucket, key = container_env(wf, "METAFLOW_CODE_URL").removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=argo_env["METAFLOW_S3_ENDPOINT_URL"], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    package = tmp_path / "job.tar"
    package.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    with tarfile.open(package) as tar:
        tar.extractall(tmp_path / "pod", filter="data")
        packed = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert KEY_VALUE.encode() not in packed
    assert KEY_VALUE not in json.dumps(deployed_promptmodels)
    pod_env = {k: v for k, v in argo_env.items() if k not in ("openai_api", SECRETS_ENV)}
    shown = subprocess.run(
        [sys.executable, "promptmodels.py", "show"],
        cwd=tmp_path / "pod", capture_output=True, text=True, timeout=120,
        env=dict(pod_env, METAFLOW_FLOW_CONFIG_VALUE=container_env(wf, "METAFLOW_FLOW_CONFIG_VALUE"),
                 METAFLOW_EXTRACTED_ROOT=str(tmp_path / "pod"), PYTHONPATH=str(tmp_path / "pod" / ".mf_code")),
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "@secrets\nStep prompt_model" in shown.stdout and "@secrets\nStep start" in shown.stdout
    assert shown.stdout.count("@secrets") == 2, "only start (which skips models without a key) and the step that calls the models fetch keys"
    configs = json.loads((tmp_path / "pod" / ".mf_meta" / "CONFIG").read_text())["user_configs"]
    assert configs["deploy-secrets"][0] == {"sources": SECRET_SOURCES}


def test_every_step_runs_in_the_image_of_its_role(argo_env):
    """The light steps in the CPU image, the GPU steps (and only they) in the CUDA one: both built from pyproject.toml."""
    for flow_file in FLOWS:
        wf = compile_flow(flow_file, argo_env)
        gpus = gpu_steps(wf)
        assert {"start", "end"} <= set(containers(wf))
        for name, container in containers(wf).items():
            want = IMAGES["PHOTO_TAGGER_GPU_IMAGE" if name in gpus else "PHOTO_TAGGER_IMAGE"]
            assert container["image"] == want, f"{flow_file} step {name}: {container['image']}"
            assert installs_its_dependencies(container)
        assert bool(gpus) == (flow_file in ("finetune_vlm.py", "promptcustommodels.py")), flow_file


def test_a_deployment_into_metaflows_bare_python_image_is_refused_with_the_fix(argo_env):
    bare = {k: v for k, v in argo_env.items() if k not in IMAGES}
    out = subprocess.run(
        [sys.executable, "promptmodels.py", "argo-workflows", "create", "--only-json"],
        cwd=ROOT, env=bare, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode != 0
    assert "default image" in out.stderr and "PHOTO_TAGGER_IMAGE" in out.stderr and "--environment=uv" in out.stderr
    assert "Traceback" not in out.stderr
    only_cpu = subprocess.run(
        [sys.executable, "finetune_vlm.py", "argo-workflows", "create", "--only-json"],
        cwd=ROOT, env=dict(bare, PHOTO_TAGGER_IMAGE=IMAGES["PHOTO_TAGGER_IMAGE"]), capture_output=True, text=True, timeout=240,
    )
    assert only_cpu.returncode != 0 and "PHOTO_TAGGER_GPU_IMAGE" in only_cpu.stderr


def test_the_check_fails_on_a_bare_python_image():
    bare = {"image": "python:3.11", "command": ["bash", "-c", "python flow.py step start"]}
    assert installs_its_dependencies(bare) is None


def test_with_the_uv_environment_every_pod_syncs_the_lockfile_shipped_in_its_code_package(argo_env, tmp_path):
    bare = {k: v for k, v in argo_env.items() if k not in IMAGES}
    wf = compile_flow("finetune_vlm.py", bare, "--environment=uv")
    assert {"start", "train", "end"} <= set(containers(wf))
    for name, container in containers(wf).items():
        assert installs_its_dependencies(container) == "metaflow.plugins.uv.bootstrap", name
    import boto3

    bucket, key = container_env(wf, "METAFLOW_CODE_URL").removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=argo_env["METAFLOW_S3_ENDPOINT_URL"], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    package = tmp_path / "job.tar"
    package.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    with tarfile.open(package) as tar:
        names = tar.getnames()
        packed = {Path(n).name: tar.extractfile(n).read() for n in names if Path(n).name in ("uv.lock", "pyproject.toml")}
    assert packed["uv.lock"] == (ROOT / "uv.lock").read_bytes()
    assert packed["pyproject.toml"] == (ROOT / "pyproject.toml").read_bytes()
