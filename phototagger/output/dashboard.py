"""The dashboard: one self-contained HTML page from the model ranking and the events behind it.

Everything the page needs is inside it (inline CSS, an inline SVG chart, thumbnails as data URIs the
caller fetched, no script), so it renders the same opened from disk, offline, and inside Metaflow's
card iframe. The page is a Jinja2 template with autoescape (templates/dashboard.html.j2), so text
from a model, a photo source or a user cannot break it; the chart is a Vega-Lite spec rendered to
SVG here by vl-convert. The renderer receives data and does no I/O.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

import vl_convert
from markupsafe import Markup

from phototagger.http import LocalImage
from phototagger.output.templating import TEMPLATES
from phototagger.scoring.evals import EvalEvent, RowKey, batches_of, fold_events
from phototagger.scoring.metrics import MIN_INTERVAL_N, Interval
from phototagger.scoring import ranking as rankings
from phototagger.scoring.ranking import Column, Ranking, RankingRow
from phototagger.scoring.table import DRILLDOWN_BATCHES
from phototagger.scoring.tags import normalise_tag

DEFAULT_TITLE = "Photo Tagger: model evaluation"
DRILLDOWN_PHOTOS = 60
"""Photos shown per drill-down batch: those where the models disagree most, then those with errors. A
5,000-photo batch shown whole was 35 MB of HTML and 37 s to open; the rest is in `photo_results`."""


def card_columns() -> list[Column]:
    """The ranking table's columns before the batches: the ranking.COLUMNS the card shows (all are in `evals`)."""
    return [column for column in rankings.COLUMNS if column.show]


SORT_NAMES = {"recall": "recall", "f1": "F1"}

# Colours: one hue for recall deciles (light = low, strong = high), a categorical set for models.
_DECILE_LOW, _DECILE_HIGH = (0xEE, 0xF6, 0xF1), (0x0B, 0x6E, 0x4F)
_MODEL_COLOURS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                  "#475569", "#ca8a04"]


def decile(recall: Optional[float]) -> Optional[int]:
    """0..9: the tenth of the 0-100 recall scale a value falls in (100 is in the top decile)."""
    if recall is None or math.isnan(recall):
        return None
    return min(9, max(0, int(recall // 10)))


def _decile_colours() -> list[tuple[str, str]]:
    """(background, text) per decile, interpolated from light to strong."""
    colours = []
    for d in range(10):
        rgb = (round(lo + (hi - lo) * d / 9) for lo, hi in zip(_DECILE_LOW, _DECILE_HIGH))
        colours.append(("#" + "".join(f"{c:02x}" for c in rgb), "#ffffff" if d >= 5 else "#12312a"))
    return colours


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "\u2013" if value is None else f"{value:,.{digits}f}"


def _fmt_latency(ms: Optional[float]) -> str:
    if ms is None:
        return "\u2013"
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _pm(low: Optional[float], high: Optional[float]) -> str:
    """`±h`, half the width of a 95% interval, for showing next to its mean; "" without an interval."""
    return "" if low is None or high is None else f"\u00b1{(high - low) / 2:,.1f}"


def _interval(low: Optional[float], high: Optional[float], n: int) -> str:
    """The hover text of a mean: its 95% t-interval and n."""
    if low is None or high is None:
        return f"no interval: n={n}, fewer than {MIN_INTERVAL_N} photos" if n else "no photos"
    return f"95% interval {low:,.1f} to {high:,.1f} over n={n} photos"


def _signed(value: float) -> str:
    """`+1.5`, `-0.3`, and `+0.0` for a difference that rounds to zero from either side (never "-0.0")."""
    return f"{round(value, 1) + 0.0:+,.1f}"


def _fmt_cost(usd: Optional[float]) -> str:
    if not usd:
        return "$0"
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


def short_name(key: RowKey | str, limit: int = 32) -> str:
    """`provider:last-path-part` of a row's model, cut to `limit` characters, then its prompt variant whole, for tight places."""
    key = key if isinstance(key, RowKey) else RowKey.parse(key)
    provider, _, model = key.model.partition(":")
    name = f"{provider}:{model.rsplit('/', 1)[-1]}" if model else provider
    name = name if len(name) <= limit else name[: limit - 1] + "\u2026"
    return str(RowKey(name, key.variant))


TEMPLATES.filters.update(fmt=_fmt, latency=_fmt_latency, cost=_fmt_cost, decile=decile, short_name=short_name, pm=_pm)


# ---------------------------------------------------------------- recall vs latency chart
def recall_latency_spec(points: Sequence[tuple[str, float, float]], colours: Mapping[str, str]) -> dict:
    """A Vega-Lite scatter of recall over all photos (exact rule, 0-100) against avg latency, one labelled point per row.

    `points` are (model, latency ms, recall %). Latency is on a log scale when it spans more than 20x,
    with 1-2-5 ticks over whole decades; otherwise linear with 10% padding.
    """
    lats = [max(lat, 0.01) for _, lat, _ in points]
    lo, hi = min(lats), max(lats)
    if hi / lo > 20:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        lo, hi = 10.0 ** decades[0], 10.0 ** decades[-1]
        x_scale: dict[str, Any] = {"type": "log", "domain": [lo, hi]}
        x_axis: dict[str, Any] = {"values": [m * 10.0 ** e for e in decades for m in (1, 2, 5) if m * 10.0 ** e <= hi]}
        x_title = "Avg latency per photo (ms, log scale)"
    else:
        pad = (hi - lo) * 0.1 or max(hi * 0.2, 1.0)
        x_scale, x_axis = {"domain": [max(0.0, lo - pad), hi + pad], "nice": True, "zero": False}, {}
        x_title = "Avg latency per photo (ms)"
    x_axis["labelExpr"] = "datum.value >= 1000 ? format(datum.value / 1000, '~g') + 'k' : format(datum.value, '~g')"
    rows = [{"model": m, "latency": max(lat, 0.01), "recall": rec,
             "description": f"{m}: recall (exact) {rec:.1f}%, latency {_fmt_latency(lat)} ms"} for m, lat, rec in points]
    models = [m for m, _, _ in points]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": 770, "height": 330, "background": None,
        "config": {
            "view": {"fill": "#fbfcfd", "stroke": "#e3e7ec"},
            "axis": {"gridColor": "#e9edf1", "domain": False, "ticks": False, "labelColor": "#5b6673",
                     "labelFontSize": 12, "labelPadding": 6, "titleColor": "#334155", "titleFontSize": 13,
                     "titleFontWeight": "normal", "titlePadding": 10},
        },
        "data": {"values": rows},
        "mark": {"type": "circle", "size": 144, "opacity": 0.9, "stroke": "#ffffff", "strokeWidth": 1.5},
        "encoding": {
            "x": {"field": "latency", "type": "quantitative", "title": x_title, "scale": x_scale, "axis": x_axis},
            "y": {"field": "recall", "type": "quantitative", "title": "Recall, all photos, exact rule (%)",
                  "scale": {"domain": [0, 100]}, "axis": {"values": list(range(0, 101, 20))}},
            # The legend names each point, best model first, so close points never hide each other's label.
            "color": {"field": "model", "type": "nominal", "title": None,
                      "scale": {"domain": models, "range": [colours[m] for m in models]},
                      "legend": {"orient": "bottom", "columns": 3, "labelFontSize": 12, "labelColor": "#1f2933",
                                 "labelLimit": 300, "symbolSize": 110, "columnPadding": 24, "symbolOpacity": 0.9,
                                 "labelExpr": f"{json.dumps({m: short_name(m) for m in models})}[datum.label]"}},
            "description": {"field": "description"},
        },
    }


def _inline_svg(spec: dict) -> Markup:
    """The spec as SVG for inlining in HTML: the XML namespace declarations, which HTML implies, dropped."""
    root, rest = vl_convert.vegalite_to_svg(spec).split(">", 1)
    return Markup(re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", root) + ">" + rest)


# ---------------------------------------------------------------- the page's parts
def _claims(ranking: Ranking) -> str:
    """What the order claims, in a sentence: ties and rows behind the best, on how many shared photos, Holm-corrected."""
    best = ranking.best
    if best is None or len(ranking.rows) < 2:
        return ""
    behind, tied = ranking.behind_best, ranking.tied_with_best
    untested = [row for row in ranking.rows[1:] if not row.tied_with_best and not row.behind_best]
    parts = []
    if tied:
        names = [short_name(r.key) for r in tied]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append(f"tied with {', '.join(names[:3])}{more}")
    if behind:
        parts.append(f"ahead of {len(behind)} row{'s' if len(behind) > 1 else ''} beyond noise")
    if untested:
        parts.append(f"{len(untested)} not compared (fewer than {MIN_INTERVAL_N} photos shared)")
    family = (f"paired on the photos both answered; Holm-corrected over {ranking.comparisons} pairwise comparison"
              f"{'s' if ranking.comparisons != 1 else ''}")
    return f"{'; '.join(parts)} ({family})"


def _kpis(ranking: Ranking) -> list[tuple[str, str, str, str]]:
    """(label, value, size class, note) per KPI tile."""
    best, tied = ranking.best, ranking.tied_with_best
    batches = sum(b.get("batches", 1) for b in ranking.batches)
    ranked = {row.key.model for row in ranking.rows}
    not_ranked = [m for m in ranking.skipped if m not in ranked]
    metric = SORT_NAMES[ranking.sort_by]
    headline = best.value(f"{ranking.sort_by}_all") if best else None
    return [
        ("Best model (tie)" if tied else "Best model", short_name(best.key) if best else "\u2013", "small name",
         _claims(ranking)),
        (f"Its {metric} (all photos, exact)", f"{headline.mean:.1f}% {_pm(headline.low, headline.high)}" if headline else "\u2013",
         "", f"{_interval(headline.low, headline.high, headline.n)}; a failed call counts 0" if headline else ""),
        ("Its precision \u00b7 F1", f"{_fmt(best.mean('precision_all'))} \u00b7 {_fmt(best.mean('f1_all'))}" if best else "\u2013",
         "", "over all photos with ground truth" if best else ""),
        ("Models", str(len(ranked) + len(not_ranked)), "",
         f"{len(ranked)} ranked \u00b7 {len(not_ranked)} skipped" if not_ranked else ""),
        ("Photos", f"{ranking.photos:,}", "", ""),
        ("Batches", f"{batches:,}", "", ""),
        ("Errored calls", f"{ranking.errored_calls:,} of {ranking.calls:,}", "small", ""),
    ]


def grouped_by_model(rows: Sequence[RankingRow]) -> list[RankingRow]:
    """`rows` (best first) with each model's prompt variants together: models in the order of their best row."""
    first: dict[str, int] = {}
    for index, row in enumerate(rows):
        first.setdefault(row.key.model, index)
    return sorted(rows, key=lambda row: first[row.key.model])


def _versus_best(row: RankingRow, best: Optional[RankingRow], metric: str) -> dict:
    """The "vs best" cell: the paired difference, its interval in brackets (often lopsided; whether it holds 0 is
    the point), and the verdict."""
    if best is None or row is best:
        return {"text": "best" if best is not None else "\u2013", "pm": "", "title": "", "cls": ""}
    versus = row.vs_best
    if versus is None or versus.mean is None:
        return {"text": "\u2013", "pm": "", "cls": "", "title": f"no photo answered by both this row and {best.key}"}
    if versus.low is None or versus.high is None:
        return {"text": _signed(versus.mean), "pm": f"n={versus.n}", "cls": "",
                "title": f"{versus.n} photos answered by both this row and {best.key}: fewer than {MIN_INTERVAL_N}, "
                         "too few to compare"}
    verdict = ("behind the best beyond noise" if row.behind_best else
               "not distinguishable from the best: tied")
    title = (f"{metric} minus {best.key}'s on the n={versus.n} photos both answered: 95% interval "
             f"{_signed(versus.low)} to {_signed(versus.high)}; {verdict} (Holm-corrected)")
    return {"text": _signed(versus.mean), "pm": f"[{_signed(versus.low)}, {_signed(versus.high)}] n={versus.n:,}",
            "title": title, "cls": "tiecell" if row.tied_with_best else ""}


def _cell(row: RankingRow, column: Column, ranking: Ranking) -> dict:
    """One ranking-table cell as the template shows it: text, ± half the interval, hover, shading class."""
    value = row.value(column.field)
    figure = value if isinstance(value, Interval) else Interval(value, None, None, 0)
    value, low, high, n = figure.mean, figure.low, figure.high, figure.n
    cell = {"text": "", "pm": "", "title": column.title, "cls": ""}
    if column.show == "versus":
        return _versus_best(row, ranking.best, SORT_NAMES[ranking.sort_by])
    if column.show in ("recall", "mean"):
        cell.update(text=_fmt(value), pm=_pm(low, high), title=_interval(low, high, n))
        d = decile(value) if column.show == "recall" else None
        cell["cls"] = "rec none" if column.show == "recall" and d is None else f"rec d{d}" if d is not None else ""
    elif column.show == "rating":
        cell.update(text=_fmt(value), cls="rating")
    elif column.show == "percent":
        cell.update(text=_fmt(value), cls="err-hi" if (value or 0) >= 20 else "")
    elif column.show == "latency":
        cell["text"] = _fmt_latency(value)
    elif column.show == "cost":
        cell["text"] = _fmt_cost(value)
    return cell


def _table_rows(ranking: Ranking, colours: Mapping[str, str]) -> list[dict]:
    """The ranking table in rank order: the model, then one cell per card column (card_columns) after it."""
    out = []
    for rank, row in enumerate(ranking.rows, 1):
        out.append({"rank": rank, "key": str(row.key), "name": short_name(row.key.model), "variant": row.key.variant,
                    "colour": colours[str(row.key)],
                    "tied": row.tied_with_best, "behind": row.behind_best,
                    "versus_title": _versus_best(row, ranking.best, SORT_NAMES[ranking.sort_by])["title"],
                    "cells": [_cell(row, column, ranking) for column in card_columns() if column.show != "model"]})
    return out


def _batch_rows(ranking: Ranking, colours: Mapping[str, str]) -> list[dict]:
    """The by-batch table: per row, one cell per batch column (recall over all photos, n, interval)."""
    out = []
    for row in ranking.rows:
        cells = [row.batches.get(b["batch_id"]) for b in ranking.batches]
        out.append({"key": str(row.key), "name": short_name(row.key.model), "variant": row.key.variant,
                    "colour": colours[str(row.key)],
                    "batches": [{"recall": cell.mean, "n": cell.n, "pm": _pm(cell.low, cell.high),
                                 "title": _interval(cell.low, cell.high, cell.n)} if cell else None for cell in cells]})
    return out


def _model_status(ranking: Ranking) -> list[dict]:
    """One line per skipped model (with its latest run's reason) and per error class of a ranked model
    (with its count and one example message): what the ranking table alone does not say."""
    ranked = {row.key.model for row in ranking.rows}
    lines = [{"model": model, "kind": "skipped", "label": "skipped", "count": "",
              "detail": entry["reason"], "run": entry["run"], "also_ranked": model in ranked}
             for model, entry in ranking.skipped.items()]
    for row in ranking.rows:
        for error, seen in sorted(row.errors.items(), key=lambda item: (-item[1]["count"], item[0])):
            lines.append({"model": str(row.key), "kind": "error", "label": error, "count": f"\u00d7{seen['count']}",
                          "detail": seen["example"], "run": "", "also_ranked": False})
    return lines


def _per_tag(ranking: Ranking) -> Optional[dict]:
    """The per-tag heatmap: rows are the frequent ground-truth tags, columns the ranking's (model, prompt) rows."""
    view = ranking.per_tag
    if not view or not view["tags"]:
        return None
    models = [str(row.key) for row in grouped_by_model(ranking.rows) if str(row.key) in view["recall"]]
    rows = [{"tag": t["tag"], "photos": t["photos"],
             "cells": [{**view["recall"][m][t["tag"]], "model": m} for m in models]} for t in view["tags"]]
    over = [{"model": m, "tags": view["over_predicted"].get(m) or []} for m in models]
    return {"models": models, "rows": rows, "over": over}


def _photo(photo_events: list[EvalEvent], order: Mapping[str, int], thumbs: Mapping[str, Optional[str]]) -> dict:
    first = photo_events[0]
    truth_tags = list(first.get("ground_truth_tags") or [])
    truth = {normalise_tag(t) for t in truth_tags}
    answers = [{"model_key": ev["model_key"], "error": ev.get("error"), "recall": ev.get("recall"),
                "recall_lenient": ev.get("recall_lenient"),
                "tags": [(tag, normalise_tag(tag) in truth) for tag in ev.get("tags") or []]}
               for ev in sorted(photo_events, key=lambda e: order.get(e["model_key"], len(order)))]
    return {"photo_id": first["photo_id"], "name": first.get("photo_name") or first["photo_id"], "thumb": thumbs.get(first.get("image_url", "")), "truth": truth_tags,
            "answers": answers}


def _events_by_photo(events: Iterable[EvalEvent]) -> dict[tuple[str, str], list[EvalEvent]]:
    by_photo: dict[tuple[str, str], list[EvalEvent]] = defaultdict(list)
    for ev in events:
        by_photo[(str(ev.get("batch_id", "")), str(ev["photo_id"]))].append(ev)
    return by_photo


def _shown_batches(events: list[EvalEvent], max_batches: int) -> list[dict[str, str]]:
    return list(reversed(batches_of(events)))[:max_batches]


def _disagreement(photo_events: list[EvalEvent]) -> tuple:
    """Sort key, most telling photo first: the widest spread of recall across the models' valid answers,
    then the most errored calls, then the photo id."""
    recalls = [e["recall"] for e in photo_events if not e.get("error") and e.get("recall") is not None]
    spread = max(recalls) - min(recalls) if len(recalls) > 1 else 0.0
    return (-spread, -sum(1 for e in photo_events if e.get("error")), str(photo_events[0]["photo_id"]))


def _shown_photos(events: list[EvalEvent], max_batches: int,
                  max_photos: int) -> list[tuple[dict[str, str], list[list[EvalEvent]], int]]:
    """(batch, the events of each photo shown, photos in the batch) for each drill-down batch, newest first."""
    by_batch: dict[str, list[list[EvalEvent]]] = defaultdict(list)
    for (batch_id, _), photo_events in _events_by_photo(events).items():
        by_batch[batch_id].append(photo_events)
    return [(batch, sorted(by_batch[batch["batch_id"]], key=_disagreement)[:max_photos], len(by_batch[batch["batch_id"]]))
            for batch in _shown_batches(events, max_batches)]


def drilldown_image_urls(events: Iterable[EvalEvent], drilldown_batches: int = DRILLDOWN_BATCHES,
                         drilldown_photos: int = DRILLDOWN_PHOTOS) -> list[str]:
    """The image URLs of the photos the drill-down shows: what the caller fetches thumbnails for."""
    shown = _shown_photos(fold_events([], events), drilldown_batches, drilldown_photos)
    urls = {_image_location(evs[0]) for _, photos, _ in shown for evs in photos} - {""}
    return sorted(urls)


def _image_location(event: EvalEvent) -> str:
    """The event's image URL; a local file as the `LocalImage` its photo source vouched for (`image_root`)."""
    url, root = event.get("image_url", ""), event.get("image_root")
    return LocalImage(url, root) if url and isinstance(root, str) and root else url


def _batch_means(ranking: Ranking, batch_id: str) -> list[dict]:
    """Each row's mean recall on one batch with its interval, for the batch's drill-down header."""
    return [{"model": str(row.key), "recall": cell.mean, "pm": _pm(cell.low, cell.high), "n": cell.n,
             "title": f"{row.key}: {_interval(cell.low, cell.high, cell.n)}"}
            for row in grouped_by_model(ranking.rows) if (cell := row.batches.get(batch_id)) is not None]


def _drilldown(events: list[EvalEvent], order: Mapping[str, int], max_batches: int, max_photos: int,
               thumbs: Mapping[str, Optional[str]], ranking: Ranking) -> list[dict]:
    out = []
    for batch, photos, total in _shown_photos(events, max_batches, max_photos):
        errors = sum(1 for evs in photos for e in evs if e.get("error"))
        meta = f"{total:,} photos \u00b7 batch {batch['batch_id']} \u00b7 {batch['batch_date'] or 'no date'}"
        if errors:
            meta += f" \u00b7 {errors} errored calls shown"
        note = (f"showing {len(photos):,} of {total:,} photos (where the models disagree most, then errors); "
                "full data in the photo_results artifact" if len(photos) < total else "")
        out.append({"label": batch["label"], "meta": meta, "note": note,
                    "photos": [_photo(evs, order, thumbs) for evs in photos],
                    "means": _batch_means(ranking, batch["batch_id"])})
    return out


def _plottable(row: RankingRow) -> bool:
    """A model is a point on the chart once it has both an avg latency and a recall."""
    return row.mean("latency_ms") is not None and row.mean("recall_all") is not None


def render_dashboard(
    ranking: Ranking,
    events: Iterable[EvalEvent],
    title: str = DEFAULT_TITLE,
    *,
    thumbs: Optional[Mapping[str, Optional[str]]] = None,
    drilldown_batches: int = DRILLDOWN_BATCHES,
    drilldown_photos: int = DRILLDOWN_PHOTOS,
) -> str:
    """The whole dashboard as one HTML document: `ranking` (ranking.rank) and the events of the newest
    batches (ScoreState.recent_events), of which the drill-down shows up to `drilldown_photos` per batch.
    `thumbs` maps image URLs to data URIs (thumbnails.thumbnails of drilldown_image_urls); a photo
    without one gets a placeholder."""
    events = fold_events([], events)
    models = [str(row.key) for row in ranking.rows]
    colours = {m: _MODEL_COLOURS[i % len(_MODEL_COLOURS)] for i, m in enumerate(models)}
    points = [(str(row.key), row.mean("latency_ms"), row.mean("recall_all")) for row in ranking.rows if _plottable(row)]
    return TEMPLATES.get_template("dashboard.html.j2").render(
        title=title,
        decile_colours=_decile_colours(),
        kpis=_kpis(ranking),
        columns=card_columns(),
        sort_name=SORT_NAMES[ranking.sort_by],
        comparisons=ranking.comparisons,
        min_n=MIN_INTERVAL_N,
        batch_headers=[b["label"] for b in ranking.batches],
        rows=_table_rows(ranking, colours),
        batch_rows=_batch_rows(ranking, colours),
        model_status=_model_status(ranking),
        per_tag=_per_tag(ranking),
        chart=_inline_svg(recall_latency_spec(points, colours)) if points else None,
        not_plotted=[str(row.key) for row in ranking.rows if not _plottable(row)],
        batches=_drilldown(events, {m: i for i, m in enumerate(models)}, drilldown_batches, drilldown_photos,
                           thumbs or {}, ranking),
        older_batches=max(0, sum(b.get("batches", 1) for b in ranking.batches) - drilldown_batches),
    )
