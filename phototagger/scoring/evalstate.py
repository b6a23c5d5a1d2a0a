"""What EvaluationFlow carries from one run to the next, bounded by the new runs plus a constant.

An hourly EvaluationFlow must not load and store every event ever (a year of hourly batches is
25 MB of events). It keeps instead, in one `EvalState`:
- `totals`: metrics.Totals per (row, batch), a row being a (model, prompt) pair (evals.row_key): counts
  and exact sums under both matching rules, which add up to the ranking's overall figures and its weekly
  and monthly roll-up columns exactly (evals.rank_totals);
- `events`: the per-photo events of the newest DRILLDOWN_BATCHES batches only, for the drill-down;
- `sample_parts`: a bounded per-photo score sample (SampleParts), for confidence intervals and paired comparisons;
- `intervals`: the Avg Recall interval per (row, batch) of the newest batches (those with a ranking column of
  their own), computed when that batch's totals are;
- `closed`: the months whose batches are all in a month's roll-up column for good (evals.is_closed_column),
  summed per row (evals.ClosedColumn). The batches that join a closed month (a week's, about once a week)
  leave `totals` and `dates` for one blob, written once, so the state holds about a month of batches plus
  one summary per month.
The score sample and the closed months' batches live in a blob store (EvaluationFlow's: Metaflow's
content-addressed store, mfclient.DatastoreBlobs), so the `state` artifact a run stores stays small: a
stored state is given its store again with `attach` before it is used.
Events come in scored (EvaluationFlow scores them with its vocabulary first), so the totals hold the
scores of the vocabulary in force when each answer was folded.
Every photo's full result goes out once, in the run that folded it, as the `photo_results` artifact
(Parquet bytes of `photo_frame`); `photo_results` reads a branch's runs back into one DataFrame.

A rerun of a prompt flow over a batch replaces that batch's figures: photo by photo for the batches
whose events are kept, and as a whole (model, batch) total for older ones, a closed month's too (its blob
part is read, mended and written again).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence, TypedDict

import pandas as pd

from phototagger.blobs import BlobStore, MemoryBlobStore
from phototagger.scoring.evals import (NEWEST_BATCHES, ClosedColumn, EvalEvent, Ranking, SkippedModel, add_photo_figures,
                                       batch_dates, batch_intervals, batch_totals, closed_column, columns, error_examples,
                                       fold_events, is_closed_column, ordered_batches, photo_ref, photo_scores, rank_totals,
                                       rollup_key)
from phototagger.scoring.metrics import Interval, ScoredPhoto, Totals

DRILLDOWN_BATCHES = 3
"""Newest batches whose per-photo events are kept (and shown on the dashboard's drill-down)."""
SAMPLE_SIZE = 20_000
"""Photos in the score sample: enough for a 95% interval of a mean recall within about +-0.4 points."""
SAMPLE_SEED = b"phototagger-sample-1"
"""Salts the photo hash, so which photos are sampled is fixed, the same for every model and every run."""
SAMPLE_SCORES = ("recall", "precision", "f1", "recall_lenient", "precision_lenient", "f1_lenient", "latency_ms")
SAMPLE_COLUMNS = ("hash", "batch_id", "photo_id", "model_key", *SAMPLE_SCORES, "error", "cached")
PHOTO_COLUMNS = ("batch_id", "batch_date", "photo_id", "model_key", "provider", "model", "prompt_variant", "tags",
                 "ground_truth_tags", "valid", "error", "recall", "precision", "f1", "recall_lenient",
                 "precision_lenient", "f1_lenient", "latency_ms", "cached", "prompt_tokens",
                 "completion_tokens", "cost_usd", "image_url", "raw", "source_flow", "source_run")
"""The `photo_results` columns first in a frame; fields an event has beyond them follow."""


SETTLE_S = 3600.0
"""A prompt run created more than this long ago, and ended, is settled: EvaluationFlow lists runs from the oldest
unsettled one on (the margin covers a run that shows up late and clocks that differ)."""
GIVE_UP_S = 7 * 24 * 3600.0
"""A prompt run still going after this long no longer holds the horizon back: it is reported and never folded."""


@dataclass
class FoldedRuns:
    """Which prompt runs EvaluationFlow has folded, bounded by the runs of the last hour or so, not of all time.

    Every run created before `horizon` (unix seconds) is settled: folded, or given up on; `runs` holds the
    ones folded since (pathspec -> created at). A run still going holds the horizon back, for up to GIVE_UP_S.
    """

    horizon: float = 0.0
    runs: dict[str, float] = field(default_factory=dict)

    def __contains__(self, pathspec: object) -> bool:
        return pathspec in self.runs

    def advance(self, listed: Mapping[str, float], folded: Iterable[str], pending: Iterable[str],
                now: float) -> tuple[FoldedRuns, list[str]]:
        """These runs once a collect has seen `listed` (every run created since `horizon`: pathspec -> created at),
        folded `folded` and left `pending` (not ended) for later; and the pending runs it gives up on."""
        pending = [p for p in pending if p in listed]
        horizon = max(self.horizon, now - GIVE_UP_S, min([listed[p] for p in pending] + [now - SETTLE_S]))
        done = set(self.runs) | set(folded)
        given_up = sorted(p for p in pending if listed[p] < horizon)
        return FoldedRuns(horizon=horizon, runs={p: t for p, t in listed.items() if p in done and t >= horizon}), given_up


def photo_hash(photo_id: str) -> int:
    """A seeded 63-bit hash of a photo id: the bottom-k sketch keeps the photos with the smallest."""
    digest = hashlib.blake2b(str(photo_id).encode(), digest_size=8, key=SAMPLE_SEED).digest()
    return int.from_bytes(digest, "big") >> 1


def _empty_sample() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "hash" else "float64" if c in SAMPLE_SCORES else "object")
                         for c in SAMPLE_COLUMNS})


def sample_rows(events: Iterable[EvalEvent]) -> pd.DataFrame:
    """One sample row (SAMPLE_COLUMNS) per event, its photo hashed."""
    rows = [{"hash": photo_hash(e["photo_id"]), "batch_id": str(e.get("batch_id", "")), "photo_id": str(e["photo_id"]),
             "model_key": e["model_key"], **{s: e.get(s) for s in SAMPLE_SCORES}, "error": e.get("error"),
             "cached": bool(e.get("cached"))} for e in events]
    if not rows:
        return _empty_sample()
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)).astype({s: "float64" for s in SAMPLE_SCORES})


def bottom_k(frames: Sequence[pd.DataFrame], size: int) -> pd.DataFrame:
    """The sample rows of `frames` (oldest first) as a bottom-k sketch of `size` photos.

    It keeps the `size` (batch, photo) pairs with the smallest `photo_hash`, with every row's scores
    on each (a row: a model and prompt, its `model_key`), so the sample is uniform over all history,
    bounded, and paired across rows; a later frame's answer replaces an earlier one, as in evals.fold_events.
    """
    frames = [f.astype({"batch_id": "object", "model_key": "object", "error": "object"}) for f in frames if len(f)]
    if not frames:
        return _empty_sample()
    both = pd.concat(frames, ignore_index=True).drop_duplicates(["batch_id", "photo_id", "model_key"], keep="last")
    photos = both[["hash", "batch_id", "photo_id"]].drop_duplicates().sort_values(["hash", "batch_id", "photo_id"])
    kept = photos.head(size)
    if len(kept) < len(photos):
        both = both.merge(kept, on=["hash", "batch_id", "photo_id"])
    # Few distinct batches, models and error classes: stored as categories, a row is about half the bytes.
    return both.reset_index(drop=True).astype({"batch_id": "category", "model_key": "category", "error": "category"})


NO_THRESHOLD = 2 ** 63
"""Above every photo_hash: the threshold of a sample not yet full."""


@dataclass(frozen=True)
class SampleParts:
    """The score sample (bottom_k of every answer folded) as write-once parts in a blob store.

    Each fold writes its new rows as one small part; a part is merged with the one before it while that one
    is at most twice its size (the logarithmic method of an LSM tree), so there are O(log n) parts, each row
    is rewritten O(log n) times, and a run writes a few kilobytes, not the whole sample. Once a part holds
    `size` photos, the largest hash in it bounds the sample for good (`threshold`): a photo hashed above it
    is never sampled again, and rows above it in older parts are dropped when read or merged.
    """

    size: int = SAMPLE_SIZE
    parts: tuple[tuple[str, int], ...] = ()  # (blob key, photos), oldest (and largest) first
    threshold: int = NO_THRESHOLD

    def add(self, store: BlobStore, rows: pd.DataFrame) -> SampleParts:
        """These parts with the sample `rows` of one fold (newer than every row before) as a new part."""
        rows = rows[rows["hash"] <= self.threshold]
        if not len(rows):
            return self
        parts, threshold = list(self.parts), self.threshold
        newest = bottom_k([rows], self.size)
        parts.append(self._save(store, newest))
        while len(parts) > 1 and parts[-2][1] <= 2 * parts[-1][1]:
            merged = bottom_k([self._load(store, parts[-2][0], threshold), self._load(store, parts[-1][0], threshold)],
                              self.size)
            parts[-2:] = [self._save(store, merged)]
            if parts[-1][1] >= self.size:
                threshold = min(threshold, int(merged["hash"].max()))
        return SampleParts(size=self.size, parts=tuple(parts), threshold=threshold)

    def frame(self, store: BlobStore) -> pd.DataFrame:
        """The sample: one row per (photo, row key) for the sampled photos, SAMPLE_COLUMNS."""
        return bottom_k([self._load(store, key, self.threshold) for key, _ in self.parts], self.size)

    @staticmethod
    def _save(store: BlobStore, frame: pd.DataFrame) -> tuple[str, int]:
        return _put(store, frame), int(frame[["batch_id", "photo_id"]].drop_duplicates().shape[0])

    @staticmethod
    def _load(store: BlobStore, key: str, threshold: int) -> pd.DataFrame:
        frame = _get(store, key)
        return frame[frame["hash"] <= threshold]


def _put(store: BlobStore, value: Any) -> str:
    """`value` pickled into `store`, as a blob written once; its key."""
    key, = store.save([pickle.dumps(value)])
    return key


def _get(store: BlobStore, key: str) -> Any:
    return pickle.loads(store.load([key])[0])


class ArchivedMonth(TypedDict):
    column: ClosedColumn  # the month summed up, as the ranking shows it
    parts: list[str]  # keys of its MonthPart blobs in the flow's blob store


@dataclass
class MonthPart:
    """Batches that joined a closed month together, one by one, as a blob: what a rerun of one of them mends."""

    dates: dict[str, str] = field(default_factory=dict)  # batch_id -> batch_date
    totals: dict[tuple[str, str], Totals] = field(default_factory=dict)  # (row key, batch id) -> Totals

    def column(self, column_key: str) -> ClosedColumn:
        return closed_column(column_key, self.totals, self.dates)


STATE_VERSION = 2
"""Bumped when what the state holds changes meaning: 2 counts failed calls in precision and F1 over all photos,
keeps the prompt-ignoring baselines in one row and holds unrounded t-intervals. A state of another version is not
upgraded in place: EvaluationFlow refolds all history once (as --rebuild does), so no figure mixes two definitions."""


@dataclass
class EvalState:
    """EvaluationFlow's state: Totals per (row, batch), the drill-down batches' events, the score sample."""

    dates: dict[str, str] = field(default_factory=dict)  # batch_id -> batch_date, every batch folded
    totals: dict[tuple[str, str], Totals] = field(default_factory=dict)  # (row key, batch id) -> Totals
    events: list[EvalEvent] = field(default_factory=list)  # the newest DRILLDOWN_BATCHES batches only
    intervals: dict[tuple[str, str], Interval] = field(default_factory=dict)  # (row key, newest batch id) -> recall interval
    closed: dict[str, ArchivedMonth] = field(default_factory=dict)  # closed column key -> its summary and parts
    sample_parts: SampleParts = field(default_factory=SampleParts)
    version: int = STATE_VERSION
    store: Optional[BlobStore] = field(default_factory=MemoryBlobStore, compare=False, repr=False)
    """Where the sample and the closed months' batches are: not stored with the state (a stored state's is None
    until `attach`)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "store": None}

    def __setstate__(self, stored: dict[str, Any]) -> None:
        """A state stored before `version` existed reads as version 1, which EvaluationFlow refolds."""
        self.__dict__.update({"version": 1, **stored})

    def attach(self, store: BlobStore) -> EvalState:
        """This state reading and writing its sample and closed months in `store` (the flow's blob store)."""
        return replace(self, store=store)

    def _blobs(self) -> BlobStore:
        if self.store is None:
            raise RuntimeError("a stored EvalState needs its blob store first: state.attach(DatastoreBlobs(flow_name))")
        return self.store

    @classmethod
    def from_events(cls, events: Iterable[EvalEvent], store: BlobStore) -> EvalState:
        """The state of all `events` at once: what an EvaluationFlow run stored before EvalState existed becomes."""
        return cls(store=store).fold(events)

    def fold(self, new: Iterable[EvalEvent], drilldown_batches: int = DRILLDOWN_BATCHES,
             sample_size: int = SAMPLE_SIZE) -> EvalState:
        """This state with the `new` (scored) events folded in, the latest answer per (row, photo, batch) winning,
        and the closed months archived (`archive`)."""
        new = fold_events([], new)
        closed, reruns = self._closed_reruns(new)
        sampled = sample_rows(new)
        if reruns:
            new = [e for e in new if str(e.get("batch_id", "")) not in reruns]
        dates = {**self.dates, **{b: d for b, d in batch_dates(new).items() if b not in self.dates}}
        ordered = ordered_batches(dates)
        shown = {batch_id for batch_id, _ in ordered[-drilldown_batches:]} if drilldown_batches else set()
        events = fold_events([e for e in self.events if str(e.get("batch_id", "")) in shown],
                             [e for e in new if str(e.get("batch_id", "")) in shown])
        older = [e for e in new if str(e.get("batch_id", "")) not in shown]
        totals = {**self.totals, **batch_totals(older), **batch_totals(events)}
        # Only a batch with a column of its own shows its interval: keep those of the newest NEWEST_BATCHES.
        own_column = {batch_id for batch_id, _ in ordered[-NEWEST_BATCHES:]}
        intervals = {key: interval for key, interval in {**self.intervals, **batch_intervals(older),
                                                          **batch_intervals(events)}.items() if key[1] in own_column}
        parts = self.sample_parts if self.sample_parts.size == sample_size else SampleParts(size=sample_size)
        return replace(self, dates=dates, totals=totals, events=events, intervals=intervals, closed=closed,
                       sample_parts=parts.add(self._blobs(), sampled)).archive()

    def _closed_reruns(self, new: list[EvalEvent]) -> tuple[dict[str, ArchivedMonth], dict[str, list[EvalEvent]]]:
        """The closed months with the reruns of their batches among `new` folded in, and those reruns by batch id:
        a batch the state no longer keeps on its own that one of its closed month's parts holds."""
        closed, reruns = dict(self.closed), {}
        by_month: dict[str, set[str]] = defaultdict(set)  # a batch's month is its closed column
        for batch_id, batch_date in batch_dates(new).items():
            if batch_id not in self.dates and rollup_key(batch_date) in self.closed:
                by_month[rollup_key(batch_date)].add(batch_id)
        for key, batch_ids in by_month.items():
            parts, mended = [_get(self._blobs(), part) for part in self.closed[key]["parts"]], False
            for part in parts:
                mine = batch_ids & set(part.dates)
                rerun = [e for e in new if str(e.get("batch_id", "")) in mine]
                if rerun:
                    part.totals.update(batch_totals(rerun))
                    reruns.update({b: [e for e in rerun if str(e.get("batch_id", "")) == b] for b in batch_dates(rerun)})
                    mended = True
            if mended:
                closed[key] = ArchivedMonth(column=sum((part.column(key) for part in parts[1:]), parts[0].column(key)),
                                            parts=[_put(self._blobs(), part) for part in parts])
        return closed, reruns

    def archive(self) -> EvalState:
        """This state with every batch whose ranking column is closed (a month's, for good) moved out of `totals`
        and `dates` into a new blob of its month, the month kept as one summary in `closed`."""
        _, column_of = columns(self.dates)
        leaving: dict[str, list[str]] = defaultdict(list)
        for batch_id, key in column_of.items():
            if is_closed_column(key):
                leaving[key].append(batch_id)
        if not leaving:
            return self
        closed, totals, dates, store = dict(self.closed), dict(self.totals), dict(self.dates), self._blobs()
        for key, batch_ids in leaving.items():
            gone = set(batch_ids)
            part = MonthPart(dates={b: dates.pop(b) for b in batch_ids},
                             totals={k: totals.pop(k) for k in [k for k in totals if k[1] in gone]})
            before = closed.get(key)
            closed[key] = ArchivedMonth(column=before["column"] + part.column(key) if before else part.column(key),
                                        parts=[*(before["parts"] if before else []), _put(store, part)])
        return replace(self, dates=dates, totals=totals, closed=closed)

    @property
    def sample(self) -> pd.DataFrame:
        """One row per (photo, model) for the sampled photos (SampleParts): SAMPLE_COLUMNS, scores as floats
        (NaN where a model had none; a cached answer keeps the latency measured when it was made). For the
        paired figures of two rows, `paired("recall")` gives one column per row key over the same photos."""
        return self.sample_parts.frame(self._blobs())

    def closed_columns(self) -> list[ClosedColumn]:
        return [month["column"] for month in self.closed.values()]

    def photo_scores(self) -> dict[str, dict[str, ScoredPhoto]]:
        """evals.photo_scores of the sampled photos (row key -> photo_ref -> ScoredPhoto), for the intervals,
        latency percentiles and paired comparisons; the sample keeps scores, not tags, so tags are empty."""
        scores: dict[str, dict[str, ScoredPhoto]] = {}
        for r in self.sample.astype({"batch_id": "object", "model_key": "object", "error": "object"}).itertuples():
            scores.setdefault(r.model_key, {})[photo_ref(r.batch_id, r.photo_id)] = ScoredPhoto(
                recall=_num(r.recall), recall_lenient=_num(r.recall_lenient), precision=_num(r.precision), f1=_num(r.f1),
                error=r.error if isinstance(r.error, str) else None,
                latency_ms=_num(r.latency_ms), tags=[], truth=[])
        return scores

    def ranking(self, skipped: Optional[dict[str, SkippedModel]] = None, sort_by: str = "recall") -> Ranking:
        """The ranking of this state: exact figures from the totals, per-batch intervals kept with them,
        intervals, percentiles and paired comparisons from the sample, error examples and the per-tag view
        from the newest batches' events."""
        ranking = self.totals_ranking(intervals=self.intervals, examples=error_examples(self.events), skipped=skipped)
        return add_photo_figures(ranking, self.photo_scores(), photo_scores(self.events), sort_by=sort_by)

    def totals_ranking(self, **options: Any) -> Ranking:
        """evals.rank_totals of every batch folded, the closed months' included (`options` are rank_totals')."""
        return rank_totals(self.totals, self.dates, closed=self.closed_columns(), **options)

    def paired(self, score: str = "recall", valid_only: bool = True) -> pd.DataFrame:
        """`score` of the sampled photos, one row per (batch, photo) and one column per row key (model and
        prompt), NaN where a row has none (or, with `valid_only`, erred): the paired sample of the comparisons."""
        sample = self.sample
        rows = sample[sample["error"].isna()] if valid_only else sample
        rows = rows.astype({"batch_id": "object", "model_key": "object"})
        return rows.pivot(index=["batch_id", "photo_id"], columns="model_key", values=score)


def _num(value: Any) -> Optional[float]:
    return None if pd.isna(value) else float(value)


def photo_frame(events: Iterable[EvalEvent]) -> pd.DataFrame:
    """One row per event, PHOTO_COLUMNS first: the `photo_results` artifact's table."""
    frame = pd.DataFrame.from_records(list(events))
    extra = [c for c in frame.columns if c not in PHOTO_COLUMNS]
    return frame.reindex(columns=[*PHOTO_COLUMNS, *extra])


def to_parquet(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes (an artifact any pandas reads without this package)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def read_parquet(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


def photo_results(runs: Iterable[Any]) -> pd.DataFrame:
    """Every photo result of the EvaluationFlow `runs` (e.g. mfclient.runs_of("EvaluationFlow", branch)), in one
    frame, a rerun's answer replacing the earlier one; runs stored before the `photo_results` artifact are skipped."""
    frames = [read_parquet(data) for data in (_artifact(run, "photo_results") for run in runs) if data is not None]
    if not frames:
        return photo_frame([])
    frames.reverse()  # runs_of lists newest first; the latest answer must win
    both = pd.concat(frames, ignore_index=True)
    return both.drop_duplicates(["model_key", "photo_id", "batch_id"], keep="last").reset_index(drop=True)


def _artifact(run: Any, name: str) -> Optional[Any]:
    return getattr(run.data, name) if name in run.data else None
