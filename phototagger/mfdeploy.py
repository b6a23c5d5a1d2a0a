"""What every deployment of the flows shares: CronWorkflows that Argo Workflows 4 accepts, and API keys
fetched by Metaflow's @secrets from the sources named in PHOTOTAGGER_SECRETS, with no edit to a flow.

A flow file imports this module before `metaflow`: Metaflow reads its configuration once, on import.
"""
import os

# Argo Workflows 4 dropped the CronWorkflow's singular `spec.schedule` for the `spec.schedules` list
# (read since Argo 3.6). On an older Argo, export METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES=false.
os.environ.setdefault("METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES", "true")

from metaflow import Config, FlowMutator  # noqa: E402

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
