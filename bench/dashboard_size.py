"""How big the dashboard gets and how long Chromium takes to open it, for a huge batch and for a year of batches.

Two dashboards, each rendered as EvaluationFlow renders it (ranking.rank, the drill-down's thumbnails,
render_dashboard) and opened in headless Chromium through scripts/screenshot_card.py:
  1. one batch of 5,000 photos and 2 models (before the drill-down cap: 35 MB of HTML, 37 s to open),
  2. a year of hourly batches (8,760 x 30 photos x 2 models; before the roll-ups: 8,766 columns).
One line per dashboard, then
  targets html_mb<3 open_s<3: <met or not>

    .venv/bin/python bench/dashboard_size.py            # about a minute; needs /usr/bin/chromium
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_evals import ROOT, batch_events, year_state  # noqa: E402

sys.path.insert(0, str(ROOT))
from phototagger.blobs import MemoryBlobStore  # noqa: E402
from phototagger.output import dashboard, thumbnails  # noqa: E402
from phototagger.scoring.ranking import rank  # noqa: E402
from phototagger.scoring.table import ScoreState  # noqa: E402
from scripts.screenshot_card import HeadlessChromium, check_card  # noqa: E402

TARGET_MB, TARGET_OPEN_S = 3.0, 3.0


def render(state: ScoreState, events: list, image_dir: Path) -> tuple[str, int]:
    """The card as EvaluationFlow's end step renders it, and its batch columns; the drill-down's photos get a noisy
    JPEG each (under `image_dir`) to thumbnail."""
    for event in events:
        event["image_url"] = str(image_dir / f"{event['photo_id']}.jpg")
    urls = dashboard.drilldown_image_urls(events)
    rng = random.Random(0)
    for url in urls:
        Image.effect_noise((640, 480), 40 + rng.random() * 40).convert("RGB").save(url, quality=85)
    ranking = rank(state, events)
    return dashboard.render_dashboard(ranking, events, thumbs=thumbnails.thumbnails(urls)), len(ranking.batches)


def measure(name: str, state: ScoreState, store: MemoryBlobStore, work: Path, browser: HeadlessChromium) -> bool:
    image_dir = work / name
    image_dir.mkdir()
    events = state.recent_events(store)
    started = time.perf_counter()
    html, columns = render(state, events, image_dir)
    render_s = time.perf_counter() - started
    path = work / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    started = time.perf_counter()
    check = check_card(browser, path, work / f"{name}.png", max_height=2000)
    open_s = time.perf_counter() - started
    nodes = browser.evaluate("document.getElementsByTagName('*').length")
    mb = len(html.encode()) / 1e6
    print(f"{name}: html_mb={mb:.2f} open_s={open_s:.2f} render_s={render_s:.2f} dom_nodes={nodes} "
          f"columns={columns} problems={len(check.problems)}", flush=True)
    for problem in check.problems:
        print(f"  problem: {problem}")
    return mb < TARGET_MB and open_s < TARGET_OPEN_S and not check.problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-photos", type=int, default=5000, help="photos in the one big batch")
    parser.add_argument("--rounds", type=int, default=8760, help="hourly batches in the year")
    parser.add_argument("--photos", type=int, default=30, help="photos per hourly batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, HeadlessChromium() as browser:
        work = Path(tmp)
        store = MemoryBlobStore()
        big = ScoreState().fold(batch_events(0, args.batch_photos, image_dir="big"), store)
        ok = measure("batch_5000_photos", big, store, work, browser)
        year = year_state(args.rounds, args.photos, store)
        ok = measure("year_of_batches", year, store, work, browser) and ok
    print(f"targets html_mb<{TARGET_MB:g} open_s<{TARGET_OPEN_S:g}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
