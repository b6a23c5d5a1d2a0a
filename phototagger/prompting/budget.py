"""The error budget: whether a prompt run as a whole is acceptable (Inspect's fail-on-error).

Every photo of a run has a result record whatever happened to its call (batch.py); afterwards
`ErrorBudget(max_error_share)` looks at the records of each model and names the models where more
than that share of the calls failed. The prompt flows store their results first, then fail the run
with `raise_if_broken` on the stored problems, so a broken run keeps every record for the user to inspect.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence, TypedDict

from phototagger.errors import UserError
from phototagger.records import ModelResult

DEFAULT_MAX_ERROR_SHARE = 0.2


class BudgetProblem(TypedDict):
    """One model over the budget: the message a user reads and its failed calls per error class."""

    message: str
    counts: dict[str, int]


class ErrorBudgetExceeded(UserError):
    """More than the allowed share of some model's calls ended in error; one message line per model.
    A UserError, so the run ends with that message (which names the first error's words) and no traceback."""

    def __init__(self, problems: Mapping[str, BudgetProblem]):
        super().__init__("\n".join(problem["message"] for problem in problems.values()))
        self.problems = dict(problems)
        self.counts = dict(sum((Counter(problem["counts"]) for problem in problems.values()), Counter()))


@dataclass(frozen=True)
class ErrorBudget:
    max_error_share: float = DEFAULT_MAX_ERROR_SHARE  # the share of failed calls a model may have, 0..1

    def check(self, results_by_model: Mapping[str, Sequence[ModelResult]]) -> dict[str, BudgetProblem]:
        """The models over the budget (model key -> problem); empty when every model is within it."""
        problems: dict[str, BudgetProblem] = {}
        for key, results in results_by_model.items():
            counts = Counter(r["error"] for r in results if r.get("error"))
            failed = sum(counts.values())
            if not results or failed / len(results) <= self.max_error_share:
                continue
            by_class = ", ".join(f"{name}={n}" for name, n in counts.most_common())
            first_class = counts.most_common(1)[0][0]
            example = next(r.get("raw") or "no message" for r in results if r.get("error") == first_class)
            problems[key] = BudgetProblem(
                message=f"{key}: {failed} of {len(results)} calls failed ({100.0 * failed / len(results):.1f}% > "
                f"{100.0 * self.max_error_share:g}% allowed): {by_class}. First {first_class} error: {example} "
                f"Fix the cause (key, quota, base URL, model name), "
                f"lower --concurrency, or raise --max-error-share",
                counts=dict(counts),
            )
        return problems


def raise_if_broken(problems: Mapping[str, BudgetProblem]) -> None:
    """Raise ErrorBudgetExceeded naming every model over the budget: the problems ErrorBudget.check found,
    which a flow stores in `join` before `end` fails on them."""
    if problems:
        raise ErrorBudgetExceeded(problems)
