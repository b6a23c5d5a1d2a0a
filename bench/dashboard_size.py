"""How big the dashboard gets and how long Chromium takes to open it, for a huge batch and for a year of batches.

Two dashboards, each rendered as EvaluationFlow renders it (EvalState.ranking, the drill-down's thumbnails,
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
from phototagger.scoring.evalstate import EvalState  # noqa: E402
from scripts.screenshot_card import HeadlessChromium, check_card  # noqa: E402

TARGET_MB, TARGET_OPEN_S = 3.0, 3.0


def render(state: EvalState, image_dir: Path) -> str:
    """The card as EvaluationFlow's end step renders it; the drill-down's photos get a noisy JPEG each to thumbnail."""
    urls = dashboard.drilldown_image_urls(state.events)
    rng = random.Random(0)
    for url in urls:
        Image.effect_noise((640, 480), 40 + rng.random() * 40).convert("RGB").save(url, quality=85)
    return dashboard.render_dashboard(state.ranking(), state.events, thumbs=thumbnails.thumbnails(urls))


def measure(name: str, state: EvalState, work: Path, browser: HeadlessChromium) -> bool:
    image_dir = work / name
    image_dir.mkdir()
    for event in state.events:
        event["image_url"] = str(image_dir / Path(event["image_url"]).name) if event["image_url"] else ""
    started = time.perf_counter()
    html = render(state, image_dir)
    render_s = time.perf_counter() - started
    path = work / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    started = time.perf_counter()
    check = check_card(browser, path, work / f"{name}.png", max_height=2000)
    open_s = time.perf_counter() - started
    nodes = browser.evaluate("document.getElementsByTagName('*').length")
    mb = len(html.encode()) / 1e6
    print(f"{name}: html_mb={mb:.2f} open_s={open_s:.2f} render_s={render_s:.2f} dom_nodes={nodes} "
          f"columns={len(state.ranking().batches)} problems={len(check.problems)}", flush=True)
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
        big = EvalState().fold(batch_events(0, args.batch_photos, image_dir="big"))
        ok = measure("batch_5000_photos", big, work, browser)
        year = year_state(args.rounds, args.photos, MemoryBlobStore())
        for event in year.events:
            event["image_url"] = f"year/{event['photo_id']}.jpg"
        ok = measure("year_of_batches", year, work, browser) and ok
    print(f"targets html_mb<{TARGET_MB:g} open_s<{TARGET_OPEN_S:g}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
