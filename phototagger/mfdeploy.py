"""What every deployment of the flows shares: CronWorkflows that Argo Workflows 4 accepts, API keys
fetched by Metaflow's @secrets from the sources named in PHOTOTAGGER_SECRETS, the data files every task
reads inside the code package, and each step's dependencies by role wherever it runs (docs/deploy.md).

A flow file imports this module before `metaflow`: Metaflow reads its configuration once, on import.
"""
import json
import os

# Argo Workflows 4 dropped the CronWorkflow's singular `spec.schedule` for the `spec.schedules` list
# (read since Argo 3.6). On an older Argo, export METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES=false.
os.environ.setdefault("METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES", "true")

from metaflow import Config, FlowMutator  # noqa: E402
from metaflow._vendor import click  # noqa: E402

from phototagger.dependencies import pins, python_version  # noqa: E402
from phototagger.errors import UserError  # noqa: E402

SECRETS_ENV = "PHOTOTAGGER_SECRETS"
SECRETS_CONFIG = "deploy-secrets"


def parse_secret_sources(text: str) -> dict:
    """`a, aws-secrets-manager.b` -> {"sources": ["a", "aws-secrets-manager.b"]}: @secrets sources as
    Metaflow spells them (`<backend>.<secret id>`, or a bare id for the default backend)."""
    return {"sources": [source.strip() for source in text.split(",") if source.strip()]}


def secrets_config() -> Config:
    """The Config that freezes PHOTOTAGGER_SECRETS when a flow is deployed, so its tasks fetch the same
    sources on the cluster, where the variable is not set."""
    return Config(
        SECRETS_CONFIG,
        default_value=lambda ctx: os.environ.get(SECRETS_ENV, ""),
        parser=parse_secret_sources,
        help=f"Comma-separated @secrets sources holding the API keys (default: ${SECRETS_ENV}).",
    )


class keys_in_steps(FlowMutator):
    """Adds @secrets(sources=...) from the flow's `deploy-secrets` Config to the named steps, the ones
    that read API keys from the environment; nothing when no source is configured."""

    def init(self, *steps: str):
        self.steps = steps

    def pre_mutate(self, mutable_flow) -> None:
        sources = list(dict(mutable_flow.configs)[SECRETS_CONFIG]["sources"])
        found = {name: step for name, step in mutable_flow.steps}
        missing = sorted(set(self.steps) - set(found))
        if missing:
            raise ValueError(f"keys_in_steps names steps this flow lacks: {', '.join(missing)}")
        if sources:
            for name in self.steps:
                found[name].add_decorator("secrets", deco_kwargs={"sources": sources})


# The files a task reads besides Python, shipped in Metaflow's code package by every flow's
# @package_sources(PACKAGE_DATA, suffixes=DATA_SUFFIXES): paths relative to the flow files, each placed
# in the package under its own name, so a task finds them where it finds them in the checkout.
PACKAGE_DATA = ["phototagger", "prompts", "models.json", "prices.json", "prompt.txt", "vocabulary.json", "pyproject.toml"]
DATA_SUFFIXES = [".json", ".txt", ".j2", ".css", ".toml"]

IMAGE_ENV = "PHOTO_TAGGER_IMAGE"
GPU_IMAGE_ENV = "PHOTO_TAGGER_GPU_IMAGE"
IMAGES_CONFIG = "deploy-images"
# The environments that build each step's Python from its @pypi decorators (fast-bakery: Outerbounds').
PYPI_ENVIRONMENTS = ("pypi", "conda", "fast-bakery")
# The environments that install the dependencies in the pod, whatever the image.
INSTALLING_ENVIRONMENTS = PYPI_ENVIRONMENTS + ("uv",)
KUBERNETES_COMMANDS = ("argo-workflows", "airflow", "kubernetes")


def images_config() -> Config:
    """The Config that freezes PHOTO_TAGGER_IMAGE (light steps) and PHOTO_TAGGER_GPU_IMAGE (GPU steps)
    when a flow is deployed, so the compiled workflow names the images built from docker/."""
    return Config(
        IMAGES_CONFIG,
        default_value=lambda ctx: json.dumps({"cpu": os.environ.get(IMAGE_ENV, ""), "gpu": os.environ.get(GPU_IMAGE_ENV, "")}),
        help=f"Container images as {{\"cpu\": ..., \"gpu\": ...}} (default: ${IMAGE_ENV} and ${GPU_IMAGE_ENV}).",
    )


def asks_for_gpu(step) -> bool:
    """A step whose @resources or @kubernetes requests a GPU: it runs in the "gpu" role."""
    return any(
        name in ("resources", "kubernetes") and float(kwargs.get("gpu") or 0) > 0
        for name, _, _, kwargs in step.decorator_specs
    )


def command_line() -> tuple[str, str, list[str]]:
    """(--environment, the command, the --with decorator specs) of the Metaflow command being run, from
    its click context: a FlowMutator sees neither, and which decorators a step needs depends on both."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        ctx = ctx.parent
    if ctx is None:
        return os.environ.get("METAFLOW_DEFAULT_ENVIRONMENT", "local"), "", []
    args = list(getattr(ctx, "saved_args", None) or [""])
    decospecs = list(ctx.params.get("decospecs") or [])  # `flow.py --with X run` ...
    for i, arg in enumerate(args):  # ... and `flow.py run --with X`
        if arg == "--with" and i + 1 < len(args):
            decospecs.append(args[i + 1])
        elif arg.startswith("--with="):
            decospecs.append(arg.removeprefix("--with="))
    return ctx.params.get("environment") or "local", args[0], decospecs


class dependencies_by_role(FlowMutator):
    """Gives each step what its role needs where it runs: "gpu" for the steps that ask for a GPU, "light" for the others.

    - --environment=pypi, conda or fast-bakery: @pypi_base with the light pins on the flow, @pypi with
      the CUDA stack on the GPU steps (pins from pyproject.toml, through phototagger.dependencies);
    - on Kubernetes (argo-workflows, --with kubernetes) with images configured: @kubernetes(image=...),
      the CUDA image on the GPU steps and the light one on the others;
    - on Kubernetes with neither: refuses, since Metaflow's default image (python:3.X) lacks every import
      of the flows, unless METAFLOW_KUBERNETES_CONTAINER_IMAGE names the team's own image;
    - --environment=uv: nothing; every pod syncs pyproject.toml and uv.lock.
    A local run gets nothing: it runs in the Python that started it.
    """

    def pre_mutate(self, mutable_flow) -> None:
        environment, command, decospecs = command_line()
        gpu_steps = {name for name, step in mutable_flow.steps if asks_for_gpu(step)}
        if environment in PYPI_ENVIRONMENTS:
            light = pins("light")
            cuda = {name: version for name, version in pins("gpu").items() if name not in light}
            mutable_flow.add_decorator("pypi_base", deco_kwargs={"packages": light, "python": python_version()})
            for name, step in mutable_flow.steps:
                if name in gpu_steps:
                    step.add_decorator("pypi", deco_kwargs={"packages": cuda})
        with_kubernetes = any(spec.partition(":")[0] == "kubernetes" for spec in decospecs)
        if command not in KUBERNETES_COMMANDS and not with_kubernetes:
            return
        images = dict(mutable_flow.configs)[IMAGES_CONFIG]
        wanted = {"cpu": bool(set(dict(mutable_flow.steps)) - gpu_steps), "gpu": bool(gpu_steps)}
        missing = [role for role, needed in wanted.items() if needed and not images[role]]
        if missing and (images["cpu"] or images["gpu"]):
            names = {"cpu": IMAGE_ENV, "gpu": GPU_IMAGE_ENV}
            raise UserError(
                f"This flow has {' and '.join('GPU' if r == 'gpu' else 'CPU' for r in missing)} steps but no image for them",
                f"export {' and '.join(names[r] for r in missing)} (images built from docker/, see docs/deploy.md)",
            )
        if not images["cpu"] and not images["gpu"]:
            from metaflow.metaflow_config import KUBERNETES_CONTAINER_IMAGE

            if environment not in INSTALLING_ENVIRONMENTS and not KUBERNETES_CONTAINER_IMAGE:
                raise UserError(
                    "This flow's pods would run Metaflow's default image, which lacks the flows' dependencies",
                    f"export {IMAGE_ENV} and {GPU_IMAGE_ENV} (images built from docker/), or put --environment=uv, pypi "
                    "or fast-bakery before the command (docs/deploy.md)",
                )
            return
        given = kubernetes_attributes(decospecs)
        if "image" in given:
            return  # --with kubernetes:image=... names the image of every step itself
        for name, step in mutable_flow.steps:
            step.add_decorator("kubernetes", deco_kwargs={**given, "image": images["gpu" if name in gpu_steps else "cpu"]})


def kubernetes_attributes(decospecs: list[str]) -> dict[str, str]:
    """`--with kubernetes:cpu=4,memory=8000` -> {"cpu": "4", "memory": "8000"}: a step that already has
    @kubernetes ignores --with kubernetes, so the attributes given there travel with the image."""
    for spec in decospecs:
        name, _, attributes = spec.partition(":")
        if name == "kubernetes":
            return dict(pair.split("=", 1) for pair in attributes.split(",") if "=" in pair)
    return {}
