"""The ranking's order and its "beyond noise" claims, from rows compared on the photos both answered.

Rows rarely answer the same photos: a fine-tuned model joins late, a model is skipped for some batches,
a failed run leaves a batch out. A mean over each row's own photos then compares easy batches with hard
ones. Here every claim is paired:
- the order is by a paired rating: the least-squares fit of row effects to every pair's mean difference on
  its shared photos (a Massey rating, weighted by the shared photos), anchored so that it equals the row's
  own mean when all rows answered the same photos;
- each row is compared with the best on the photos both answered (a paired t-interval), and is "behind
  beyond noise" only when Holm's procedure over every pairwise comparison made rejects that comparison, so
  that picking the best from the same data does not turn noise into a claim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from phototagger.scoring.metrics import MIN_INTERVAL_N, Interval, holm, interval_of_sums


@dataclass(frozen=True)
class PairedOrder:
    order: list[str]  # row keys, best first
    rating: dict[str, Optional[float]]  # row -> paired rating (in the metric's units)
    versus_best: dict[str, Interval] = field(default_factory=dict)  # row -> mean of (row - best) on shared photos
    behind: frozenset = frozenset()  # rows behind the best beyond noise (Holm over every pair compared)
    comparisons: int = 0  # pairs with enough shared photos to compare: Holm's family

    @property
    def best(self) -> Optional[str]:
        return self.order[0] if self.order else None


def _sort_key(row: str, rating: Mapping[str, Optional[float]]) -> tuple:
    """Best rating first; equal ratings (to 1e-9, so float noise never decides) by row key, so a tie never flips."""
    value = rating.get(row)
    return (value is None, -round(value, 9) if value is not None else 0.0, row)


def paired_order(scores: Mapping[str, Mapping[str, float]], own_means: Mapping[str, Optional[float]],
                 min_n: int = MIN_INTERVAL_N) -> PairedOrder:
    """The order of the rows of `own_means` (row -> its mean over its own photos, exact), from `scores` (row ->
    photo -> score: all of them, or a uniform sample of photos with every row's answer on each)."""
    rows = sorted(own_means)
    frame = pd.DataFrame({row: pd.Series(scores.get(row, {}), dtype="float64") for row in rows})
    values = frame.to_numpy()  # photos x rows, NaN where a row has no answer
    present = ~np.isnan(values)
    filled = np.nan_to_num(values)
    shared = present.T.astype(float) @ present.astype(float)  # shared photos per pair
    sums = filled.T @ present - present.T @ filled  # sum over shared photos of (row i - row j)
    squares = (filled ** 2).T @ present + present.T @ (filled ** 2) - 2 * filled.T @ filled
    rating = _massey(rows, shared, sums, own_means)
    order = sorted(rows, key=lambda row: _sort_key(row, rating))
    index = {row: i for i, row in enumerate(rows)}
    pairs = {(a, b): interval_of_sums(int(shared[index[a], index[b]]), float(sums[index[a], index[b]]),
                                      float(squares[index[a], index[b]]), min_n)
             for a, b in combinations(rows, 2)}
    p_values = {pair: d.p for pair, d in pairs.items() if d.p is not None}
    rejected = holm(p_values)
    if not order:
        return PairedOrder(order=[], rating=rating)
    best = order[0]
    versus, behind = {}, set()
    for row in order[1:]:
        pair = (row, best) if (row, best) in pairs else (best, row)
        d = pairs[pair]
        d = d if pair[0] == row else Interval(mean=None if d.mean is None else -d.mean,
                                              low=None if d.high is None else -d.high,
                                              high=None if d.low is None else -d.low, n=d.n, p=d.p)
        versus[row] = d
        if pair in rejected and d.mean is not None and d.mean < 0:
            behind.add(row)
    return PairedOrder(order=order, rating=rating, versus_best=versus, behind=frozenset(behind),
                       comparisons=len(p_values))


def _massey(rows: list[str], shared: np.ndarray, sums: np.ndarray,
            own_means: Mapping[str, Optional[float]]) -> dict[str, Optional[float]]:
    """Row effects a minimising sum over pairs of shared(i, j) * (mean difference(i, j) - (a_i - a_j))^2, one
    connected group of rows (linked by shared photos) at a time, each group shifted so its ratings average its
    rows' own means. A row that shares no photo is its own group: its rating is its own mean."""
    rating: dict[str, Optional[float]] = {row: own_means[row] for row in rows}
    linked = shared > 0
    seen: set[int] = set()
    for start in range(len(rows)):
        if start in seen or own_means[rows[start]] is None:
            continue
        group, frontier = {start}, [start]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(linked[i]):
                if j not in group and own_means[rows[j]] is not None:
                    group.add(int(j))
                    frontier.append(int(j))
        seen |= group
        members = sorted(group)
        if len(members) < 2:
            continue
        weights = shared[np.ix_(members, members)].copy()
        np.fill_diagonal(weights, 0.0)
        laplacian = np.diag(weights.sum(axis=1)) - weights
        effects = np.linalg.lstsq(laplacian, sums[np.ix_(members, members)].sum(axis=1), rcond=None)[0]
        effects -= effects.mean()
        anchor = float(np.mean([own_means[rows[i]] for i in members]))
        for i, effect in zip(members, effects):
            rating[rows[i]] = anchor + float(effect)
    return rating
