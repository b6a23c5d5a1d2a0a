import base64
import io
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from markupsafe import escape

from phototagger.output import thumbnails
from phototagger.output import dashboard as card
from phototagger.scoring import evals
from phototagger.scoring.ranking import rank_events
from phototagger.scoring.metrics import score_photo
from tests.fakes.image_server import ImageServer

EVIL = "<script>alert('x')</script>"


def png(path, size=(640, 480), colour=(200, 120, 40)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def event(model, photo, image_url, truth, tags=(), error=None, latency=100.0, batch="101", date="2024-05-06",
          variant=None):
    provider, name = model.split(":", 1)
    result = {"photo_id": photo, "provider": provider, "model": name, "tags": [] if error else list(tags),
              "error": error, "valid": not error, "latency_ms": latency, **score_photo(truth, [] if error else tags)}
    if variant:
        result["prompt_variant"] = variant
    local = {"source": "folder", "name": Path(image_url).name} if image_url.startswith("/") else {}  # a file of the folder source
    return evals.make_event(result, {"id": photo, "ground_truth_tags": list(truth), "image_url": image_url, **local},
                            batch_id=batch, batch_date=date, source_flow="PromptModels", source_run="1")


@pytest.fixture
def dashboard(tmp_path):
    cat = png(tmp_path / "cat.png")
    missing = str(tmp_path / "gone.jpg")
    events = [
        event("openai:gpt-4o-mini", "p-cat", cat, ["cat", "pet"], ["cat", "pet"], latency=900),
        event("openai:gpt-4o-mini", "p-gone", missing, ["tree"], ["tree"], latency=1100),
        event("knn:jec", "p-cat", cat, ["cat", "pet"], ["cat", "sofa"], latency=12),
        event("knn:jec", "p-gone", missing, ["tree"], ["sky"], latency=8),
        event("prior:tag-prior", "p-cat", cat, ["cat", "pet"], [EVIL, "dog"], latency=0.5),
        event("prior:tag-prior", "p-gone", missing, ["tree"], error="no_history"),
        event("together:<b>evil</b>", "p-cat", cat, ["cat", "pet"], error="rate_limited", latency=None),
    ]
    ranking = rank_events(events)
    thumbs = thumbnails.thumbnails(card.drilldown_image_urls(events))
    return ranking.table(), events, card.render_dashboard(ranking, events, title=f"Dash {EVIL}", thumbs=thumbs)


def test_table_has_every_model_row_best_first(dashboard):
    table, _, page = dashboard
    rendered = re.findall(r'<tr data-model="([^"]*)"', page)
    assert rendered == [escape(r[0]) for r in table["rows"]] * 2  # the ranking, then the same rows by batch
    assert rendered[:3] == ["openai:gpt-4o-mini", "knn:jec", "prior:tag-prior"]
    shown = [h for h in table["headers"] if f">{h}</th>" in page]
    assert shown == [*(c.header for c in card.card_columns()), *table["headers"][len(rank_events([]).table()["headers"]):]]
    assert {"Paired score", "Precision (all photos)", "F1 (all photos)", "vs best", "Error %"} <= set(shown)


def test_recall_cells_are_shaded_by_decile_higher_is_stronger(dashboard):
    _, _, page = dashboard
    assert '<td class="rec d9"' in page  # gpt-4o-mini: 100
    assert '<td class="rec d2"' in page  # knn: 25 over all photos
    assert '<td class="rec d0" title="no interval: n=1, fewer than 30 photos' in page  # the rate-limited model: 0
    assert [card.decile(v) for v in (0, 9.9, 10, 55, 99.9, 100, None)] == [0, 0, 1, 5, 9, 9, None]
    colours = re.findall(r"\.d(\d)\{background:#([0-9a-f]{6})", page)
    darkness = [sum(int(c[i:i + 2], 16) for i in (0, 2, 4)) for _, c in colours]
    assert darkness == sorted(darkness, reverse=True)  # higher decile, darker (stronger) colour


def test_text_from_models_photos_and_users_is_escaped(dashboard):
    _, _, page = dashboard
    assert EVIL not in page and "<b>evil</b>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "together:&lt;b&gt;evil&lt;/b&gt;" in page


def test_answer_and_model_name_with_script_and_quotes_render_as_text_everywhere():
    model, tag = 'openai:x"><script>alert("m")</script>', '\'"><script>alert("t")</script>'
    events = [event(model, "p1", "", ["cat"], ["cat", tag], latency=40),
              event("knn:jec", "p1", "", ["cat"], ["cat"], latency=4)]
    page = card.render_dashboard(rank_events(events), events)
    assert "<script" not in page.lower()
    assert f'<tr data-model="{escape(model)}">' in page  # the attribute holds the name, it does not end early
    assert f'<span class="chip miss" title="not in ground truth">{escape(tag)}</span>' in page
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.DOTALL).group(0))
    assert card.short_name(model) in {t.text for t in svg.iter("text")}  # the chart's legend, as text


def test_page_is_self_contained(dashboard):
    _, _, page = dashboard
    lowered = page.lower()
    assert "<script" not in lowered
    assert "<link" not in lowered
    assert "@import" not in lowered
    assert "url(" not in lowered
    assert "http" not in lowered  # no external image, font, style or namespace URL at all


def test_chart_is_well_formed_svg_with_a_labelled_point_per_model(dashboard):
    table, _, page = dashboard
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.DOTALL).group(0))
    cells = [dict(zip(table["headers"], r)) for r in table["rows"]]
    plotted = [c["Model"] for c in cells if c["Avg Latency (ms)"] is not None and c["Recall (all photos, exact)"] is not None]
    assert len(svg.findall(".//path[@aria-roledescription='circle']")) == len(plotted) == 3
    texts = [t.text for t in svg.iter("text")]
    assert "Recall, all photos, exact rule (%)" in texts
    assert any(t and t.startswith("Avg latency per photo (ms") for t in texts)
    assert {card.short_name(m) for m in plotted} <= set(texts)
    assert "Not plotted" in page and "together:&lt;b&gt;evil&lt;/b&gt;" in page


def test_thumbnails_are_small_embedded_jpegs_with_placeholder_for_missing_images(dashboard):
    _, _, page = dashboard
    uris = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 1  # one photo with a readable image
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as img:
        assert img.format == "JPEG" and max(img.size) <= thumbnails.THUMB_PX
    assert 'title="image unavailable"' in page


def test_drilldown_marks_hits_misses_and_error_classes(dashboard):
    _, _, page = dashboard
    assert '<span class="chip hit" title="in ground truth">sofa</span>' not in page
    assert '<span class="chip hit" title="in ground truth">cat</span>' in page
    assert '<span class="chip miss" title="not in ground truth">sofa</span>' in page
    assert '<span class="chip errc">rate_limited</span>' in page
    assert '<span class="chip errc">no_history</span>' in page
    assert '<span class="chip gt">pet</span>' in page


@pytest.fixture
def image_server():
    with ImageServer(size=(800, 600)) as server:
        yield server.base_url


def test_thumbnail_is_fetched_from_an_http_url(image_server):
    uri = thumbnails.thumbnail_data_uri(f"{image_server}/photo.jpg", timeout_s=2)
    assert uri.startswith("data:image/jpeg;base64,")


def test_slow_image_source_delays_the_dashboard_only_by_the_budget(image_server):
    fast, slow = f"{image_server}/photo.jpg", f"{image_server}/slow.jpg"
    started = time.monotonic()
    thumbs = thumbnails.thumbnails([fast, slow], timeout_s=5, budget_s=0.5)
    assert time.monotonic() - started < 1.2
    assert thumbs[fast].startswith("data:image/jpeg") and thumbs[slow] is None


def test_drilldown_shows_newest_batches_only_and_says_so(tmp_path):
    events = [event("knn:jec", f"p{i}", "", ["cat"], ["cat"], batch=str(i), date=f"2024-05-0{i}") for i in range(1, 6)]
    page = card.render_dashboard(rank_events(events), events, drilldown_batches=2)
    assert page.count('<details class="batch"') == 2
    assert '<details class="batch" open><summary>5 (05-05)' in page
    assert "3 older batches" in page


def test_empty_dashboard_renders_with_hints():
    page = card.render_dashboard(rank_events([]), [])
    assert "No model results yet" in page and "No photos yet" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_means_show_plus_minus_with_the_interval_and_n_on_hover():
    events = [event("knn:jec", f"p{i}", "", ["cat", "pet"], ["cat", "pet"] if i % 2 else ["cat"]) for i in range(40)]
    ranking = rank_events(events)
    page = card.render_dashboard(ranking, events)
    recall = ranking.rows[0].figures["recall_all"]
    assert (recall.mean, recall.n) == (75.0, 40) and recall.low < 75.0 < recall.high
    hover = f"95% interval {recall.low:.1f} to {recall.high:.1f} over n=40 photos"
    assert (f'<td class="rec d7" title="{hover}">75.0'
            f'<span class="pm">\u00b1{(recall.high - recall.low) / 2:.1f}</span></td>') in page
    assert f'title="{hover}; recall decile 8 of 10">75.0' in page  # the batch cell
    assert f'<span class="mean" title="knn:jec: {hover}">' in page  # the batch's mean in the drill-down


def test_fewer_photos_than_the_minimum_show_no_plus_minus():
    events = [event("knn:jec", f"p{i}", "", ["cat", "pet"], ["cat", "pet"] if i % 2 else ["cat"]) for i in range(10)]
    page = card.render_dashboard(rank_events(events), events)
    assert '<td class="rec d7" title="no interval: n=10, fewer than 30 photos">75.0</td>' in page


def test_a_tie_at_the_top_is_marked_on_the_row_and_in_the_best_model_kpi():
    photos = [f"p{i}" for i in range(40)]
    events = ([event("knn:jec", p, "", ["cat", "pet"], ["cat", "pet"]) for p in photos]
              + [event("prior:tag-prior", p, "", ["cat", "pet"], ["cat", "pet"] if i else ["cat"]) for i, p in enumerate(photos)]
              + [event("openai:gpt-4o-mini", p, "", ["cat", "pet"], ["dog"]) for p in photos])
    page = card.render_dashboard(rank_events(events), events)
    assert '<div class="k">Best model (tie)</div><div class="v small name">knn:jec</div>' in page
    assert ("tied with prior:tag-prior; ahead of 1 row beyond noise (paired on the photos both answered; "
            "Holm-corrected over 3 pairwise comparisons)") in page
    tied_row = re.search(r'<tr data-model="prior:tag-prior">.*?</tr>', page, re.DOTALL).group(0)
    worse_row = re.search(r'<tr data-model="openai:gpt-4o-mini">.*?</tr>', page, re.DOTALL).group(0)
    assert '<span class="tie"' in tied_row and '<span class="tie"' not in worse_row


def test_a_tie_between_prompt_variants_names_the_tied_row_and_per_tag_has_a_column_per_row():
    photos = [f"p{i}" for i in range(40)]
    events = [event("openai:gpt-4o", p, "", ["cat", "pet"], ["cat", "pet"] if i or v == "default" else ["cat"],
                    variant=f"{v}@abc123") for v in ("default", "short") for i, p in enumerate(photos)]
    page = card.render_dashboard(rank_events(events), events)
    assert '<div class="k">Best model (tie)</div><div class="v small name">openai:gpt-4o | default@abc123</div>' in page
    assert "tied with openai:gpt-4o | short@abc123 (paired" in page
    tied_row = re.search(r'<tr data-model="openai:gpt-4o \| short@abc123">.*?</tr>', page, re.DOTALL).group(0)
    assert '<span class="tie"' in tied_row and '<span class="variant">short@abc123</span>' in tied_row
    section = page[page.index("<h2>What each model misses</h2>"):page.index("<h2>Per-photo results</h2>")]
    assert 'title="openai:gpt-4o | short@abc123 found pet on 39 of 40 answered photos with it">98</td>' in section


def test_skipped_models_are_listed_with_their_reason_and_errors_per_class_with_an_example():
    events = [event("knn:jec", "p1", "", ["cat"], ["cat"]), event("knn:jec", "p2", "", ["cat"], error="timeout"),
              event("knn:jec", "p3", "", ["cat"], error="auth")]
    events[2]["raw"] = "openai rejected the key (HTTP 401)"
    skipped = {"openai:gpt-4o": {"reason": "OPENAI key missing: export openai_api=...", "run": "PromptModels/4"},
               "prior:tag-prior": {"reason": "no earlier batch to learn from yet", "run": "PromptModels/4"}}
    page = card.render_dashboard(rank_events(events, skipped=skipped), events)
    assert '<div class="k">Models</div><div class="v ">3</div><div class="note">1 ranked \u00b7 2 skipped</div>' in page
    for model, entry in skipped.items():
        assert (f'<td class="m">{model}</td>\n<td><span class="chip skip">skipped</span></td>\n'
                f'<td class="detail">{escape(entry["reason"])} <span class="meta">(PromptModels/4)</span>') in page
    assert ('<span class="chip errc">auth</span> <span class="count">\u00d71</span></td>\n'
            '<td class="detail">openai rejected the key (HTTP 401)</td>') in page
    assert '<span class="chip errc">timeout</span>' in page


def test_per_tag_view_shows_recall_per_frequent_tag_and_over_predicted_tags():
    events = [event("knn:jec", f"p{i}", "", ["cat", "pet"] if i < 3 else ["tree"], ["cat", "sky"]) for i in range(4)]
    page = card.render_dashboard(rank_events(events), events)
    section = page[page.index("<h2>What each model misses</h2>"):page.index("<h2>Per-photo results</h2>")]
    assert re.findall(r'<td class="tag">(\w+) <span class="n">\((\d+)\)</span>', section) == [
        ("cat", "3"), ("pet", "3"), ("tree", "1")]
    assert 'title="knn:jec found cat on 3 of 3 answered photos with it">100</td>' in section
    assert 'title="knn:jec found pet on 0 of 3 answered photos with it">0</td>' in section
    assert 'title="given on 4 photos, in their ground truth on 0">sky 0/4</span>' in section


def test_recall_vs_best_shows_the_paired_interval_itself():
    photos = [f"p{i}" for i in range(40)]
    events = ([event("knn:jec", p, "", ["cat", "pet"], ["cat", "pet"]) for p in photos]
              + [event("prior:tag-prior", p, "", ["cat", "pet"], ["cat"]) for p in photos])
    page = card.render_dashboard(rank_events(events), events)
    assert ('title="recall minus knn:jec&#39;s on the n=40 photos both answered: 95% interval -50.0 to -50.0; behind the '
            'best beyond noise (Holm-corrected)">-50.0<span class="pm">[-50.0, -50.0] n=40</span></td>') in page


def test_drilldown_shows_the_photos_models_disagree_on_most_and_says_where_the_rest_is():
    events = []
    for i in range(200):
        spread = 100 if i in (7, 150) else 0  # two photos where one model finds every tag and the other none
        events += [event("knn:jec", f"p{i:03d}", f"/img/{i:03d}.jpg", ["cat"], ["cat"]),
                   event("prior:tag-prior", f"p{i:03d}", f"/img/{i:03d}.jpg", ["cat"], ["dog"] if spread else ["cat"],
                         error="timeout" if i == 42 else None)]
    page = card.render_dashboard(rank_events(events), events, drilldown_photos=5)
    shown = re.findall(r'<div class="pid">([^<]+)</div>', page)
    assert shown == ["007.jpg", "150.jpg", "042.jpg", "000.jpg", "001.jpg"]  # named by their path in the folder
    assert "showing 5 of 200 photos" in page and "photo_results" in page
    assert card.drilldown_image_urls(events, drilldown_photos=5) == sorted(f"/img/{p}" for p in shown)


def test_every_recall_figure_on_the_card_names_its_matching_rule(dashboard):
    _, _, page = dashboard
    recall_headers = [c.header for c in card.card_columns() if "recall" in c.header.lower()]
    assert recall_headers == ["Recall (all photos, exact)"]
    assert "Recall (all photos, exact) by batch" in page and "Its recall (all photos, exact)" in page
    assert "recall (exact &middot; lenient)" in page and ">100 &middot; 100</td>" in page  # the drill-down shows both


def test_a_folder_photo_is_shown_by_its_path_in_the_folder_not_its_id():
    result = {"photo_id": "folder-1308794bd4e9e5ee", "provider": "knn", "model": "jec", "tags": ["rocket"], "error": None,
              "valid": True, "latency_ms": 5.0, **score_photo(["rocket"], ["rocket"])}
    photo = {"id": "folder-1308794bd4e9e5ee", "name": "trip/rocket.jpg", "ground_truth_tags": ["rocket"], "image_url": "/lib/trip/rocket.jpg"}
    events = [evals.make_event(result, photo, batch_id="1", batch_date="2026-05-01", source_flow="PromptModels", source_run="2")]
    page = card.render_dashboard(rank_events(events), events)
    assert re.findall(r'<div class="pid">([^<]+)</div>', page) == ["trip/rocket.jpg"]


def test_a_new_column_is_one_entry_in_the_column_list_for_the_evals_table_and_the_card(monkeypatch):
    from phototagger.scoring import ranking as rankings
    monkeypatch.setattr(rankings, "COLUMNS", (*rankings.COLUMNS, rankings.Column("Precision (lenient)", "precision_lenient", "mean")))
    events = [event("knn:jec", f"p{i}", "", ["cat", "pet"], ["cat", "pet"] if i % 2 else ["cats", "dog"]) for i in range(40)]
    ranking = rank_events(events)
    table = ranking.table()
    cells = dict(zip(table["headers"], table["rows"][0]))
    assert cells["Precision (lenient)"] == 75.0 and cells["Precision (lenient) n"] == 40
    assert cells["Precision (lenient) 95% low"] < 75.0 < cells["Precision (lenient) 95% high"]
    page = card.render_dashboard(ranking, events)
    assert '<th>Cost (USD)</th><th>Precision (lenient)</th>' in page
    row = re.search(r'<tr data-model="knn:jec">.*?</tr>', page, re.DOTALL).group(0)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[-1].startswith("75.0<span class=\"pm\">\u00b1")
