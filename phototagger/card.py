"""The dashboard: one self-contained HTML page from the evals table and the events behind it.

Everything the page needs is inside it (inline CSS, inline SVG, thumbnails as base64 JPEG data
URIs, no script), so it renders the same opened from disk, offline, and inside Metaflow's card
iframe. Every piece of text that came from a model, a photo source or a user is escaped.
"""
from __future__ import annotations

import html
import io
import logging
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterable, Mapping, Optional, Sequence

from .evals import FIXED_HEADERS, EvalEvent, batches_of, best_model, fold_events, split_batch_cell
from .http import ImageFetchError, data_uri
from .images import load_image
from .tags import normalise_tag

log = logging.getLogger(__name__)

DEFAULT_TITLE = "Photo Tagger: model evaluation"
THUMB_PX = 176
THUMB_TIMEOUT_S = 5.0
THUMB_MAX_BYTES = 15 * 1024 * 1024
THUMBS_BUDGET_S = 60.0  # all thumbnails together; photos still pending get the placeholder
DRILLDOWN_BATCHES = 3  # newest batches shown photo by photo; the table covers all of them

# Colours: one hue for recall deciles (light = low, strong = high), a categorical set for models.
_DECILE_LOW, _DECILE_HIGH = (0xEE, 0xF6, 0xF1), (0x0B, 0x6E, 0x4F)
_MODEL_COLOURS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                  "#475569", "#ca8a04"]

_e = html.escape


def decile(recall: Optional[float]) -> Optional[int]:
    """0..9: the tenth of the 0-100 recall scale a value falls in (100 is in the top decile)."""
    if recall is None or math.isnan(recall):
        return None
    return min(9, max(0, int(recall // 10)))


def _decile_css() -> str:
    rules = []
    for d in range(10):
        t = d / 9
        rgb = tuple(round(lo + (hi - lo) * t) for lo, hi in zip(_DECILE_LOW, _DECILE_HIGH))
        fg = "#ffffff" if d >= 5 else "#12312a"
        rules.append(f".d{d}{{background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{fg}}}")
    return "\n".join(rules)


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f5f6f8;color:#1f2933;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",
 Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 24px 40px}
header h1{margin:0 0 4px;font-size:24px;font-weight:650;letter-spacing:-.01em}
header p{margin:0;color:#5b6673}
h2{font-size:17px;margin:0 0 4px;font-weight:620}
section{background:#fff;border:1px solid #e3e7ec;border-radius:10px;padding:18px 20px;margin-top:18px}
.sub{color:#5b6673;margin:0 0 14px;font-size:13px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin-top:18px}
.kpi{background:#fff;border:1px solid #e3e7ec;border-radius:10px;padding:12px 16px}
.kpi .k{font-size:12px;color:#5b6673;text-transform:uppercase;letter-spacing:.04em}
.kpi .v{font-size:22px;font-weight:650;margin-top:2px;overflow-wrap:anywhere}
.kpi .v.small{font-size:16px;line-height:1.9}
.tablewrap{overflow-x:auto}
table.rank{border-collapse:separate;border-spacing:0;width:100%;font-variant-numeric:tabular-nums}
.rank th{font-size:12px;font-weight:600;color:#5b6673;text-align:right;padding:8px 10px;
 border-bottom:2px solid #e3e7ec;white-space:nowrap;vertical-align:bottom}
.rank th:first-child,.rank td:first-child{text-align:left}
.rank td{padding:7px 10px;border-bottom:1px solid #eef1f4;text-align:right;white-space:nowrap}
.rank tbody tr:hover td{box-shadow:inset 0 0 0 9999px rgba(0,0,0,.03)}
.rank th.batch{color:#334155}
.rank td.rec{font-weight:600;border-bottom:1px solid #fff}
.rank td.rec .n{font-weight:400;opacity:.75;font-size:11px;margin-left:3px}
.rank td.none{color:#9aa5b1}
.rank td.mcell{white-space:normal;min-width:220px;max-width:340px}
.model{overflow-wrap:anywhere;font-weight:600;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.rankno{display:inline-block;width:20px;color:#9aa5b1;font-weight:500}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:7px;vertical-align:0}
.err-hi{color:#b42318;font-weight:600}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;color:#5b6673;margin-top:12px;flex-wrap:wrap}
.legend .scale{display:flex}
.legend .scale span{width:26px;height:14px;font-size:9px;text-align:center;line-height:14px}
.chart svg{width:100%;height:auto;display:block}
.chart text{font-family:inherit}
details.batch{border:1px solid #e3e7ec;border-radius:8px;margin-top:10px;background:#fbfcfd}
details.batch>summary{cursor:pointer;padding:10px 14px;font-weight:600;list-style-position:inside}
details.batch>summary .meta{font-weight:400;color:#5b6673;margin-left:8px;font-size:13px}
.photos{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px;padding:4px 14px 14px}
.photo{background:#fff;border:1px solid #e3e7ec;border-radius:8px;padding:12px;display:flex;flex-direction:column;gap:8px}
.photo .top{display:flex;gap:12px}
.thumb{width:96px;height:96px;border-radius:6px;object-fit:cover;flex:none;background:#d5dae0}
div.thumb{display:flex;align-items:center;justify-content:center;color:#5b6673;font-size:11px;text-align:center}
.pid{font-weight:600;font-size:13px;overflow-wrap:anywhere}
.lbl{font-size:11px;color:#5b6673;text-transform:uppercase;letter-spacing:.04em;margin:4px 0 2px}
.chips{display:flex;flex-wrap:wrap;gap:4px}
.chip{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;background:#eef1f4;color:#334155;
 border:1px solid transparent}
.chip.gt{background:#fff;border-color:#cbd2d9}
.chip.hit{background:#dcf3e6;color:#0b5a3f;border-color:#a7dcc0}
.chip.hit::before{content:"\\2713\\00a0"}
.chip.miss{background:#f4f5f7;color:#6b7480;text-decoration:line-through;text-decoration-color:#b8c0c8}
.chip.errc{background:#fde8e7;color:#b42318;border-color:#f5c2be;font-weight:600}
table.answers{border-collapse:collapse;width:100%}
.answers td{vertical-align:top;padding:5px 4px;border-top:1px solid #eef1f4}
.answers td.m{width:34%;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
 overflow-wrap:anywhere}
.answers td.r{width:48px;text-align:right;font-variant-numeric:tabular-nums;font-weight:600;font-size:12px}
.empty{color:#5b6673;font-style:italic}
footer{color:#5b6673;font-size:12px;margin-top:18px}
footer dt{font-weight:600;color:#334155}
footer dd{margin:0 0 6px}
"""


def thumbnail_data_uri(location: str, size: int = THUMB_PX, timeout_s: float = THUMB_TIMEOUT_S) -> Optional[str]:
    """A small JPEG of the image as a data URI, or None when it cannot be fetched or decoded."""
    if not location:
        return None
    try:
        thumb = load_image(location, size, draft=True, max_bytes=THUMB_MAX_BYTES, timeout_s=timeout_s)
    except ImageFetchError as exc:
        log.info("no thumbnail for %s: %s", location, exc)
        return None
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=72, optimize=True)
    return data_uri("thumb.jpg", out.getvalue())


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "\u2013" if value is None else f"{value:,.{digits}f}"


def _fmt_latency(ms: Optional[float]) -> str:
    if ms is None:
        return "\u2013"
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _fmt_cost(usd: Optional[float]) -> str:
    if not usd:
        return "$0"
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


def _recall_td(recall: Optional[float], text: str, extra: str = "") -> str:
    d = decile(recall)
    if d is None:
        return f'<td class="rec none">{_e(text)}{extra}</td>'
    return f'<td class="rec d{d}" title="recall decile {d + 1} of 10">{_e(text)}{extra}</td>'


def short_name(model_key: str, limit: int = 32) -> str:
    """`provider:last-path-part` of a model key, cut to `limit` characters, for tight places."""
    provider, _, model = model_key.partition(":")
    name = f"{provider}:{model.rsplit('/', 1)[-1]}" if model else provider
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _model_colours(models: Sequence[str]) -> dict[str, str]:
    return {m: _MODEL_COLOURS[i % len(_MODEL_COLOURS)] for i, m in enumerate(models)}


def _kpis(evals: Mapping[str, list], events: list[EvalEvent]) -> str:
    rows = evals.get("rows") or []
    best = rows[0] if best_model(evals) is not None else None
    photos = {(e.get("batch_id", ""), e["photo_id"]) for e in events}
    errors = sum(1 for e in events if e.get("error"))
    tiles = [
        ("Best model", _e(best[0]) if best else "\u2013", "small"),
        ("Best avg recall", f"{best[2]:.1f}%" if best else "\u2013", ""),
        ("Models", str(len(rows)), ""),
        ("Photos", f"{len(photos):,}", ""),
        ("Batches", str(len(evals.get("headers", [])) - len(FIXED_HEADERS)), ""),
        ("Errored calls", f"{errors:,} of {len(events):,}", "small"),
    ]
    body = "".join(f'<div class="kpi"><div class="k">{k}</div><div class="v {c}">{v}</div></div>' for k, v, c in tiles)
    return f'<div class="kpis">{body}</div>'


def _ranking_table(evals: Mapping[str, list], colours: Mapping[str, str]) -> str:
    headers = list(evals.get("headers") or FIXED_HEADERS)
    rows = evals.get("rows") or []
    if not rows:
        return '<p class="empty">No model results yet: run PromptModels, then this flow again.</p>'
    head = "".join(
        f'<th class="batch" title="avg recall over valid answers (n photos) in batch {_e(h)}">{_e(h)}</th>'
        if i >= len(FIXED_HEADERS) else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for rank, row in enumerate(rows, 1):
        model, latency, recall, recall_all, error_pct, cost = row[: len(FIXED_HEADERS)]
        cells = [
            f'<td class="mcell"><span class="rankno">{rank}</span><span class="dot" style="background:{colours[model]}"></span>'
            f'<span class="model">{_e(model)}</span></td>',
            f"<td>{_fmt_latency(latency)}</td>",
            _recall_td(recall, _fmt(recall)),
            _recall_td(recall_all, _fmt(recall_all)),
            f'<td class="{"err-hi" if (error_pct or 0) >= 20 else ""}">{_fmt(error_pct)}</td>',
            f"<td>{_fmt_cost(cost)}</td>",
        ]
        for cell in row[len(FIXED_HEADERS):]:
            value, n = split_batch_cell(cell)
            if not cell:
                cells.append('<td class="rec none">\u2013</td>')
            else:
                shown = _fmt(value) if value is not None else "n/a"
                cells.append(_recall_td(value, shown, f'<span class="n">{_e(n)}</span>' if n else ""))
        body.append(f'<tr data-model="{_e(model)}">{"".join(cells)}</tr>')
    scale = "".join(f'<span class="d{d}">{d * 10}</span>' for d in range(10))
    legend = (f'<div class="legend">Recall decile<span class="scale">{scale}</span>'
              "low \u2192 high; cells without a colour had no valid answer.</div>")
    return (f'<div class="tablewrap"><table class="rank"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{legend}')


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round-numbered ticks from at or below `lo` to at or above `hi`."""
    raw = max(hi - lo, 1e-9) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _tick_label(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _place_label(
    label: str, x: float, y: float, taken: list[tuple[float, float, float, float]], x_min: float, x_max: float
) -> tuple[float, float, str, tuple[float, float, float, float]]:
    """A spot for a point's label (right, left, above, below, then further down) clear of `taken` boxes."""
    width = 6.6 * len(label)
    for dy in (0, -15, 15, -30, 30, 45, 60, 75, 90):
        for side in ("start", "end"):
            lx = x + 10 if side == "start" else x - 10
            x0, x1 = (lx, lx + width) if side == "start" else (lx - width, lx)
            box = (x0, y + dy - 9, x1, y + dy + 5)
            inside = x_min <= x0 and x1 <= x_max
            clear = all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken)
            if inside and clear:
                return lx, y + dy + 4, side, box
    lx, side = (x - 10, "end") if x + 10 + width > x_max else (x + 10, "start")
    box = (lx - width, y - 9, lx, y + 5) if side == "end" else (lx, y - 9, lx + width, y + 5)
    return lx, y + 4, side, box


def _scatter(evals: Mapping[str, list], colours: Mapping[str, str]) -> str:
    """Avg recall (y, 0-100) against avg latency (x; log scale when it spans >20x), one point per model."""
    points = [(r[0], r[1], r[2]) for r in evals.get("rows") or [] if r[1] is not None and r[2] is not None]
    left_out = [r[0] for r in evals.get("rows") or [] if r[1] is None or r[2] is None]
    if not points:
        return '<p class="empty">No model has both a latency and a recall yet.</p>'
    w, h, ml, mr, mt, mb = 860, 400, 64, 24, 16, 52
    pw, ph = w - ml - mr, h - mt - mb
    lats = [max(p[1], 0.01) for p in points]
    lo, hi = min(lats), max(lats)
    use_log = hi / lo > 20
    if use_log:
        lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        ticks = _log_ticks(lo, hi)

        def x_of(v: float) -> float:
            return ml + pw * (math.log10(max(v, 0.01)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    else:
        pad = (hi - lo) * 0.1 or max(hi * 0.2, 1.0)
        lo, hi = max(0.0, lo - pad), hi + pad
        ticks = _nice_ticks(lo, hi)
        lo, hi = ticks[0], ticks[-1]

        def x_of(v: float) -> float:
            return ml + pw * (v - lo) / (hi - lo)

    def y_of(v: float) -> float:
        return mt + ph * (1 - v / 100)

    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="Average recall against average latency, one point per model">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#e3e7ec"/>']
    for v in range(0, 101, 20):
        y = y_of(v)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e9edf1"/>'
                     f'<text x="{ml - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="#5b6673">{v}</text>')
    for t in ticks:
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#e9edf1"/>'
                     f'<text x="{x:.1f}" y="{mt + ph + 18}" text-anchor="middle" font-size="12" '
                     f'fill="#5b6673">{_tick_label(t)}</text>')
    x_title = "Avg latency per photo (ms, log scale)" if use_log else "Avg latency per photo (ms)"
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{h - 10}" text-anchor="middle" font-size="13" fill="#334155">'
                 f"{x_title}</text>"
                 f'<text transform="translate(18 {mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'font-size="13" fill="#334155">Avg recall (%)</text>')
    dots = [(x_of(lat), y_of(rec)) for _, lat, rec in points]
    boxes: list[tuple[float, float, float, float]] = [(x - 7, y - 7, x + 7, y + 7) for x, y in dots]
    for (model, latency, recall), (x, y) in sorted(zip(points, dots), key=lambda item: -item[0][2]):
        label = short_name(model)
        lx, ly, anchor, box = _place_label(label, x, y, boxes, ml, ml + pw)
        boxes.append(box)
        parts.append(
            f'<g><title>{_e(model)}: recall {recall:.1f}%, latency {_fmt_latency(latency)} ms</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colours[model]}" fill-opacity=".9" stroke="#fff" '
            f'stroke-width="1.5"/>'
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" font-size="12" fill="#1f2933" '
            f'paint-order="stroke" stroke="#fbfcfd" stroke-width="3">{_e(label)}</text></g>'
        )
    parts.append("</svg>")
    note = ""
    if left_out:
        note = (f'<p class="sub">Not plotted (no timed valid answer): '
                f'{_e(", ".join(left_out))}.</p>')
    return f'<div class="chart">{"".join(parts)}</div>{note}'


def _tag_chips(tags: Iterable[str], truth: set[str]) -> str:
    chips = []
    for tag in tags:
        hit = normalise_tag(tag) in truth
        chips.append(f'<span class="chip {"hit" if hit else "miss"}" title="{"in" if hit else "not in"} '
                     f'ground truth">{_e(tag)}</span>')
    return "".join(chips) or '<span class="empty">no tags</span>'


def _photo_card(photo_events: list[EvalEvent], order: Mapping[str, int], thumbs: Mapping[str, Optional[str]]) -> str:
    first = photo_events[0]
    truth_tags = list(first.get("ground_truth_tags") or [])
    truth = {normalise_tag(t) for t in truth_tags}
    src = thumbs.get(first.get("image_url", ""))
    img = (f'<img class="thumb" src="{src}" alt="{_e(first["photo_id"])}">' if src
           else '<div class="thumb" title="image unavailable">no image</div>')
    gt = "".join(f'<span class="chip gt">{_e(t)}</span>' for t in truth_tags) or '<span class="empty">none</span>'
    answers = []
    for ev in sorted(photo_events, key=lambda e: order.get(e["model_key"], len(order))):
        if ev.get("error"):
            recall, tags = "\u2013", f'<span class="chip errc">{_e(ev["error"])}</span>'
        else:
            recall = _fmt(ev.get("recall"), 0) if ev.get("recall") is not None else "\u2013"
            tags = _tag_chips(ev.get("tags") or [], truth)
        answers.append(f'<tr><td class="m" title="{_e(ev["model_key"])}">{_e(short_name(ev["model_key"]))}</td><td class="r">{recall}</td>'
                       f'<td><div class="chips">{tags}</div></td></tr>')
    return (f'<div class="photo"><div class="top">{img}<div><div class="pid">{_e(first["photo_id"])}</div>'
            f'<div class="lbl">Ground truth</div><div class="chips">{gt}</div></div></div>'
            f'<table class="answers">{"".join(answers)}</table></div>')


def thumbnails(urls: list[str], timeout_s: float, budget_s: float) -> dict[str, Optional[str]]:
    """Thumbnails fetched 8 at a time; a slow image source delays the dashboard by `budget_s` at most."""
    pool = ThreadPoolExecutor(max_workers=8)
    futures = {url: pool.submit(thumbnail_data_uri, url, timeout_s=timeout_s) for url in urls}
    done, pending = wait(futures.values(), timeout=budget_s)
    pool.shutdown(wait=False, cancel_futures=True)
    if pending:
        log.warning("%d thumbnails not fetched within %.0f s; showing placeholders", len(pending), budget_s)
    return {url: future.result() if future in done else None for url, future in futures.items()}


def _drilldown(events: list[EvalEvent], order: Mapping[str, int], max_batches: int, thumb_timeout_s: float) -> str:
    batches = batches_of(events)
    if not batches:
        return '<p class="empty">No photos yet.</p>'
    shown = list(reversed(batches))[:max_batches]
    by_photo: dict[tuple[str, str], list[EvalEvent]] = defaultdict(list)
    for ev in events:
        by_photo[(str(ev.get("batch_id", "")), str(ev["photo_id"]))].append(ev)
    wanted = {b["batch_id"] for b in shown}
    urls = sorted({evs[0].get("image_url", "") for (b, _), evs in by_photo.items() if b in wanted} - {""})
    thumbs = thumbnails(urls, thumb_timeout_s, THUMBS_BUDGET_S)
    out = []
    for i, batch in enumerate(shown):
        keys = sorted(k for k in by_photo if k[0] == batch["batch_id"])
        batch_events = [e for k in keys for e in by_photo[k]]
        errors = sum(1 for e in batch_events if e.get("error"))
        meta = f"{len(keys)} photos \u00b7 batch {batch['batch_id']} \u00b7 {batch['batch_date'] or 'no date'}"
        if errors:
            meta += f" \u00b7 {errors} errored calls"
        cards = "".join(_photo_card(by_photo[k], order, thumbs) for k in keys)
        out.append(f'<details class="batch"{" open" if i == 0 else ""}><summary>{_e(batch["label"])}'
                   f'<span class="meta">{_e(meta)}</span></summary><div class="photos">{cards}</div></details>')
    if len(batches) > len(shown):
        out.append(f'<p class="sub" style="margin-top:10px">{len(batches) - len(shown)} older batches are in the '
                   "table above and in the flow's <code>events</code> artifact.</p>")
    return "".join(out)


_FOOTER = """<footer><dl>
<dt>Avg Recall</dt><dd>Per photo: ground-truth tags the model predicted / ground-truth tags x 100, after the same
normalisation on both sides; averaged over the photos where the model gave a valid answer.</dd>
<dt>Recall (all photos)</dt><dd>The same average over every photo with ground truth, a failed call counting as 0.</dd>
<dt>Error %</dt><dd>Share of calls that ended in an error (rate limit, timeout, bad image, ...) after retries.</dd>
<dt>Avg Latency</dt><dd>Mean time per call that was not served from the response cache.</dd>
<dt>Batch columns</dt><dd>Avg recall over valid answers in that batch, with the number of such photos.</dd>
</dl></footer>"""


def render_dashboard(
    evals: Mapping[str, list],
    events: Iterable[EvalEvent],
    title: str = DEFAULT_TITLE,
    *,
    drilldown_batches: int = DRILLDOWN_BATCHES,
    thumb_timeout_s: float = THUMB_TIMEOUT_S,
) -> str:
    """The whole dashboard as one HTML document (see the module docstring for what it holds)."""
    events = fold_events([], events)
    models = [r[0] for r in evals.get("rows") or []]
    colours = _model_colours(models)
    order = {m: i for i, m in enumerate(models)}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}
{_decile_css()}</style></head>
<body><main>
<header><h1>{_e(title)}</h1>
<p>Vision-language models tagging photos, scored against ground-truth tags. Best model first.</p></header>
{_kpis(evals, events)}
<section><h2>Model ranking</h2>
<p class="sub">Recall in %, higher is better; latency in ms per photo; batches oldest to newest.</p>
{_ranking_table(evals, colours)}</section>
<section><h2>Recall vs latency</h2>
<p class="sub">Up and to the left is better: more ground-truth tags found, sooner.</p>
{_scatter(evals, colours)}</section>
<section><h2>Per-photo results</h2>
<p class="sub">Each model's tags: <span class="chip hit">in ground truth</span>
<span class="chip miss">not in ground truth</span> <span class="chip errc">error class</span></p>
{_drilldown(events, order, drilldown_batches, thumb_timeout_s)}</section>
{_FOOTER}
</main></body></html>
"""
