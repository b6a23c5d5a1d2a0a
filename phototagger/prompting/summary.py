"""The three lines a prompt flow prints at its end: what ran, how the models rank, what it cost."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from phototagger.mfclient import EVAL_FLOW, UPDATE_FLOW, flow_command
from phototagger.scoring.evals import RowKey
from phototagger.scoring.table import Summary


def run_summary_lines(
    models_eval: Mapping[str, Any], summaries: Mapping[str, Summary], skipped: Mapping[str, str], failed: bool = False,
    branch: Optional[str] = None,
) -> list[str]:
    """Three lines for the end of a prompt flow: what ran, how the models rank, what it cost, and what to run
    next on the run's `branch` unless the run `failed` (its error budget was broken, so there is nothing to evaluate yet)."""
    photos, results = models_eval["photos"], models_eval["results"]
    if not photos:
        return [
            f"Batch {models_eval['batch_id']} ({models_eval['batch_date']}) had no new photos: nothing was prompted.",
            "Models: none run.",
            f"Next: ingest more photos with `{flow_command(UPDATE_FLOW, branch)}`.",
        ]
    skipped_text = f"; skipped {', '.join(skipped)} (reasons in skipped_models)" if skipped else ""
    ranked = sorted(summaries.items(), key=lambda kv: -(kv[1]["avg_recall"] if kv[1]["avg_recall"] is not None else -1))
    ranking = "; ".join(
        f"{key} {_pct(s['avg_recall'])} exact, {_pct(s['avg_recall_lenient'])} lenient ({_pct(s['avg_recall_all'])} exact over all photos, {s['error_pct']:g}% errors)"
        for key, s in ranked
    ) or "none ran"
    cached = sum(1 for rows in results.values() for r in rows if r.get("cached"))
    calls = sum(len(rows) for rows in results.values())
    cost = sum(s["cost_usd"] for s in summaries.values())
    ran = {RowKey.parse(key).model for key in results}
    prompts = {RowKey.parse(key).variant for key in results}
    prompts_text = f" with {len(prompts)} prompts" if len(prompts) > 1 else ""
    return [
        f"Prompted {len(ran)} of {len(ran) + len(skipped)} models{prompts_text} on {len(photos)} photos of batch {models_eval['batch_id']} ({models_eval['batch_date']}){skipped_text}.",
        f"Avg recall: {ranking}.",
        f"Cost ${cost:.4f} at list price; {cached} of {calls} answers from the cache."
        + ("" if failed else f" Next: {flow_command(EVAL_FLOW, branch)}"),
    ]


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}%"
