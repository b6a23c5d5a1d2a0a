"""The dashboard in a real browser: headless Chromium opens the card HTML from disk and must show it.

The check (scripts/screenshot_card.py) fails on a blank screenshot, a console error or uncaught
exception, a request outside file://, an image that did not load, and a ranking table missing rows.
The broken-page tests prove each of those is caught. Chromium comes from scripts/install_browser.sh
(run here when it is missing); the tests skip only where it cannot run (not root, no apt-get).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from phototagger.output import thumbnails
from phototagger.output import dashboard as card
from phototagger.scoring import evals
from phototagger.scoring.ranking import rank_events
from phototagger.scoring.metrics import score_photo
from scripts.screenshot_card import HeadlessChromium, check_card, find_chromium

ROOT = Path(__file__).resolve().parents[1]
ODD_TAG = '<b>"sky" & sea</b>'

# Photo id: (thumbnail colours dark -> light, ground truth). Two batches of three photos.
PHOTOS = {
    "demo-harbour": (("#0b2545", "#f4a259"), ["boat", "harbour", "sea", "sunset"]),
    "demo-forest": (("#1b4332", "#b7e4c7"), ["forest", "trees", "path", "moss"]),
    "demo-chelsea": (("#3d2b1f", "#e9c46a"), ["cat", "pet", "sofa"]),
    "demo-alps": (("#023e8a", "#f8f9fa"), ["mountain", "snow", "sky", "lake"]),
    "demo-market": (("#6a040f", "#ffba08"), ["market", "fruit", "people", "stall"]),
    "demo-bridge": (("#343a40", "#adb5bd"), ["bridge", "river", "city"]),
}
BATCHES = [("1718203", "2024-06-12", list(PHOTOS)[:3]), ("1726540", "2024-06-19", list(PHOTOS)[3:])]
# Model key: (latency ms, share of the ground truth it finds, cost USD per call).
MODELS = {
    "openai:gpt-4o-mini": (1840.0, 0.75, 0.00042),
    "together:meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo": (2630.0, 0.5, 0.00018),
    "finetuned:qwen2.5-vl-3b-lora": (460.0, 0.75, None),
    "knn:jec": (14.0, 0.25, None),
    "prior:tag-prior": (0.4, 0.25, None),
}
ERRORS = {("together:meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", "demo-market"): "rate_limited",
          ("finetuned:qwen2.5-vl-3b-lora", "demo-bridge"): "timeout"}


def realistic_events(photo_dir: Path) -> list[evals.EvalEvent]:
    """Five models on two batches of three photos, with two errored calls and a tag full of HTML characters."""
    events = []
    for batch_id, date, photo_ids in BATCHES:
        for photo_id in photo_ids:
            (dark, light), truth = PHOTOS[photo_id]
            image = photo_dir / f"{photo_id}.jpg"
            ImageOps.colorize(Image.linear_gradient("L").resize((320, 240)), dark, light).save(image)
            for i, (key, (latency, share, cost)) in enumerate(MODELS.items()):
                error = ERRORS.get((key, photo_id))
                tags = [] if error else truth[: round(share * len(truth))] + ["outdoor" if i % 2 else "photo"]
                if key == "prior:tag-prior" and photo_id == "demo-alps":
                    tags.append(ODD_TAG)
                provider, model = key.split(":", 1)
                result = {"photo_id": photo_id, "provider": provider, "model": model, "tags": tags, "error": error,
                          "valid": not error, "latency_ms": latency, "cost_usd": cost, **score_photo(truth, tags)}
                photo = {"id": photo_id, "image_url": str(image), "ground_truth_tags": truth, "source": "folder", "name": image.name}
                events.append(evals.make_event(result, photo, batch_id=batch_id, batch_date=date,
                                               source_flow="PromptModels", source_run=batch_id))
    return events


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path, installed with scripts/install_browser.sh when it is missing and can be."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get): "
                    "run scripts/install_browser.sh as root, or set CHROMIUM=/path/to/chromium")
    done = subprocess.run(["bash", str(ROOT / "scripts/install_browser.sh")], capture_output=True, text=True)
    found = find_chromium()
    if done.returncode or not found:
        pytest.fail(f"scripts/install_browser.sh could not install chromium:\n{done.stderr[-2000:]}")
    return found


@pytest.fixture(scope="module")
def browser(chromium: str):
    with HeadlessChromium(chromium, width=1280) as running:
        yield running


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The ranking table and the dashboard HTML file rendered from `realistic_events`."""
    root = tmp_path_factory.mktemp("dashboard")
    events = realistic_events(root)
    ranking = rank_events(events)
    table = ranking.table()
    path = root / "dashboard.html"
    thumbs = thumbnails.thumbnails(card.drilldown_image_urls(events))
    page = card.render_dashboard(ranking, events, title="Photo Tagger: model evaluation", thumbs=thumbs)
    path.write_text(page, encoding="utf-8")
    return table, path


def test_dashboard_renders_in_chromium_with_every_row_and_no_errors(browser, dashboard, tmp_path):
    table, html_path = dashboard
    check = check_card(browser, html_path, tmp_path / "dashboard.png",
                       expected_rows=[row[0] for row in table["rows"]])
    assert check.problems == []
    assert browser.log.requests and all(url.startswith(("file:", "data:")) for url in browser.log.requests)
    with Image.open(check.png) as shot:
        assert shot.width == 1280 and shot.height > 900  # the whole page, not only the first screen


def test_browser_shows_chart_drilldown_and_odd_tag_as_text(browser, dashboard, tmp_path):
    table, html_path = dashboard
    browser.open(html_path)
    plotted = [row for row in table["rows"] if row[1] is not None and row[2] is not None]
    points = browser.evaluate("document.querySelectorAll('.chart svg [aria-roledescription=circle]').length")
    assert points == len(plotted) == 5
    assert browser.evaluate("document.querySelectorAll('details.batch[open] .photo img.thumb').length") == 3
    assert browser.evaluate("document.querySelector('details.batch[open] summary').textContent").startswith(
        evals.batch_label(*BATCHES[-1][:2]))
    chips = browser.evaluate("Array.from(document.querySelectorAll('.chip'), c => c.textContent)")
    assert ODD_TAG in chips and {"rate_limited", "timeout"} <= set(chips)
    assert browser.evaluate("document.scripts.length") == 0


def _with_stylesheet_from_the_web(page: str) -> str:
    return page.replace("<head>", '<head><link rel="stylesheet" href="http://127.0.0.1:1/fonts.css">')


@pytest.mark.parametrize(
    "break_page, caught",
    [
        (lambda page: page.replace("</main>", "<script>drawChart()</script></main>"),
         "uncaught exception: ReferenceError: drawChart is not defined"),
        (lambda page: page.replace("</main>", "<script>console.error('no data')</script></main>"),
         "console error: no data"),
        (lambda page: re.sub(r"<tr data-model=.*?</tr>", "", page, flags=re.DOTALL), "the ranking table shows no rows"),
        (lambda page: page.replace('<tr data-model="knn:jec"', '<tr hidden data-model="knn:jec"'),
         "ranking rows shown"),
        (_with_stylesheet_from_the_web, "request outside file://: http://127.0.0.1:1/fonts.css"),
        (lambda page: page.replace('src="data:image/jpeg;base64,', 'src="data:image/jpeg;base64,AAAA', 1),
         "images that did not load"),
        (lambda page: "<!DOCTYPE html><html><body></body></html>", "blank page"),
    ],
    ids=["script-error", "console-error", "no-rows", "hidden-row", "external-request", "broken-image", "blank"],
)
def test_broken_dashboard_is_caught(browser, dashboard, tmp_path, break_page, caught):
    table, html_path = dashboard
    broken = tmp_path / "broken.html"
    broken.write_text(break_page(html_path.read_text(encoding="utf-8")), encoding="utf-8")
    check = check_card(browser, broken, tmp_path / "broken.png", expected_rows=[row[0] for row in table["rows"]])
    assert any(problem.startswith(caught) for problem in check.problems), check.problems


def test_screenshot_script_writes_the_png_and_exits_0(chromium, dashboard, tmp_path):
    _, html_path = dashboard
    png = tmp_path / "docs" / "dashboard.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/screenshot_card.py"), str(html_path), str(png),
         "--max-height", "1500"],
        capture_output=True, text=True, env={**os.environ, "CHROMIUM": chromium}, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "5 ranking rows" in done.stdout
    with Image.open(png) as shot:
        assert shot.size == (1280, 1500)


def test_a_year_of_batch_columns_fits_1400_px_without_scrolling_sideways_and_names_stay_on_one_line(browser, tmp_path):
    """Three months of daily batches (newest 12, 4 weeks, then months as columns) for five models with long names
    and two prompt variants each: at 1400 px the page has no horizontal scroll and no model name wraps."""
    events = []
    for day in range(90):
        date = f"2024-{3 + day // 30:02d}-{1 + day % 30:02d}"
        for model in MODELS:
            for variant in ("default@3f2a1c", "short@9b8e7d"):
                truth = ["cat", "pet", "sofa"]
                result = {"photo_id": f"d{day}", "provider": model.split(":")[0], "model": model.split(":", 1)[1],
                          "tags": truth[: 1 + day % 3], "error": None, "valid": True, "latency_ms": 100.0,
                          "prompt_variant": variant, **score_photo(truth, truth[: 1 + day % 3])}
                photo = {"id": f"d{day}", "image_url": "", "ground_truth_tags": truth}
                events.append(evals.make_event(result, photo, batch_id=str(2000 + day), batch_date=date,
                                               source_flow="PromptModels", source_run="1"))
    ranking = rank_events(events)
    assert len(ranking.batches) >= 18
    path = tmp_path / "year.html"
    path.write_text(card.render_dashboard(ranking, events), encoding="utf-8")
    browser.page.set_viewport_size({"width": 1400, "height": 900})
    try:
        browser.open(path)
        assert browser.evaluate("document.documentElement.scrollWidth") <= 1400
        overflowing = browser.evaluate("Array.from(document.querySelectorAll('.tablewrap'))"
                                       ".filter(w => w.scrollWidth > w.clientWidth + 1).length")
        assert overflowing == 0, "a table scrolls sideways at 1400 px"
        name_heights = browser.evaluate("Array.from(document.querySelectorAll('table.rank .model'), "
                                        "m => m.getBoundingClientRect().height)")
        line = browser.evaluate("parseFloat(getComputedStyle(document.querySelector('table.rank .model')).lineHeight)")
        assert name_heights and max(name_heights) <= 1.5 * line, "a model name wraps"
    finally:
        browser.page.set_viewport_size({"width": browser.width, "height": browser.height})
