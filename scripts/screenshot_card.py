"""Open a dashboard HTML file in headless Chromium, screenshot it, and say what went wrong on the page.

    python scripts/screenshot_card.py dashboard.html docs/dashboard.png [--width 1280] [--max-height 0]

A real browser catches what string checks on the HTML cannot: a page that renders blank, a script
or console error, a ranking table whose rows never show up, a request that leaves the machine.
Playwright drives Debian's chromium (scripts/install_browser.sh; no browser download) and reports the
page's console, exceptions and requests; requests that would leave the machine are refused and
recorded. The same class backs the browser check in tests/test_card_browser.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image, ImageStat
from playwright.sync_api import ConsoleMessage, Route, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_SCHEMES = ("file:", "data:", "about:")
"""Requests to these stay on the machine; anything else means the page is not self-contained."""
BLANK_STDDEV = 8.0
"""A screenshot whose grey levels vary less than this is blank (a dashboard is around 30)."""


@dataclass
class PageLog:
    """What a page did since it was opened: console errors, uncaught exceptions, requested URLs."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]

    def problems(self) -> list[str]:
        """One line per console error, uncaught exception and request that tried to leave the machine."""
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.exceptions]
                + [f"request outside file://: {u}" for u in self.external_requests()])


def find_chromium() -> Optional[str]:
    """$CHROMIUM, else `chromium` on PATH (Debian's package), else None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


def _refuse_external(route: Route) -> None:
    if route.request.url.startswith(LOCAL_SCHEMES):
        route.continue_()
    else:
        route.abort("blockedbyclient")


class HeadlessChromium:
    """One headless Chromium with one page; use as a context manager. `open()` loads a page and
    returns the log that fills while it runs."""

    def __init__(self, executable: Optional[str] = None, width: int = 1280, height: int = 900):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise RuntimeError("chromium not found: run scripts/install_browser.sh (as root) or set CHROMIUM=/path")
        self.width, self.height = width, height
        self.log = PageLog()

    def __enter__(self) -> HeadlessChromium:
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=self.executable, args=CHROMIUM_ARGS)
        except BaseException:
            self._playwright.stop()
            raise
        self.page = self._browser.new_page(viewport={"width": self.width, "height": self.height})
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.log.exceptions.append(f"{e.name}: {e.message}".splitlines()[0]))
        self.page.on("request", lambda r: self.log.requests.append(r.url))
        self.page.route("**/*", _refuse_external)
        return self

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            self.log.console_errors.append(message.text)

    def __exit__(self, *exc: object) -> None:
        self._browser.close()
        self._playwright.stop()

    def open(self, target: str | Path) -> PageLog:
        """Loads a file path or URL and waits for its load event and fonts; the returned log is fresh."""
        url = Path(target).resolve().as_uri() if "://" not in str(target) else str(target)
        self.log = PageLog()
        self.page.goto(url, wait_until="load")
        self.evaluate("document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => r(true))))")
        return self.log

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        return self.page.evaluate(expression)

    def screenshot(self, png_path: str | Path, max_height: int = 0) -> Path:
        """The whole page (or its top `max_height` CSS pixels) as a PNG at the browser's width."""
        path = Path(png_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": self.width, "height": max_height} if max_height else None
        self.page.screenshot(path=path, full_page=True, clip=clip)
        return path


def grey_stddev(png: str | Path) -> float:
    """How much the grey level varies over a screenshot: near 0 for a blank (uniform) page."""
    with Image.open(png) as img:
        return ImageStat.Stat(img.convert("L")).stddev[0]


RANKING_ROWS_JS = """Array.from(document.querySelectorAll('table.rank:not(.batches) tbody tr'))
  .filter(tr => tr.getBoundingClientRect().height > 0).map(tr => tr.dataset.model)"""
"""The model of each ranking-table row the browser actually laid out, top to bottom."""
BROKEN_IMAGES_JS = """Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.alt || img.src.slice(0, 60))"""


@dataclass
class CardCheck:
    """A dashboard as the browser showed it: its screenshot, its ranking rows, what was wrong."""

    png: Path
    rows: list[str]
    problems: list[str]


def check_card(browser: HeadlessChromium, html_path: str | Path, png_path: str | Path, *,
               expected_rows: Optional[list[str]] = None, max_height: int = 0) -> CardCheck:
    """Opens the dashboard, screenshots it and lists its problems: console errors, uncaught exceptions,
    requests outside file://, a blank screenshot, images that did not decode, and a ranking table
    without rows (or, given `expected_rows`, with other rows than those, in that order)."""
    page = browser.open(html_path)
    rows = browser.evaluate(RANKING_ROWS_JS)
    broken = browser.evaluate(BROKEN_IMAGES_JS)
    png = browser.screenshot(png_path, max_height=max_height)
    problems = page.problems()
    spread = grey_stddev(png)
    if spread < BLANK_STDDEV:
        problems.append(f"blank page: grey-level stddev {spread:.1f} < {BLANK_STDDEV}")
    if broken:
        problems.append(f"images that did not load: {', '.join(broken)}")
    if not rows:
        problems.append("the ranking table shows no rows")
    elif expected_rows is not None and rows != expected_rows:
        problems.append(f"ranking rows shown {rows}, expected {expected_rows}")
    return CardCheck(png=png, rows=rows, problems=problems)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", help="the dashboard HTML file (EvaluationFlow's card, saved to disk)")
    parser.add_argument("png", help="where to write the screenshot, e.g. docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1280, help="browser width in CSS pixels")
    parser.add_argument("--max-height", type=int, default=0, help="cut the page at this height (0: whole page)")
    args = parser.parse_args(argv)
    with HeadlessChromium(width=args.width) as browser:
        check = check_card(browser, args.html, args.png, max_height=args.max_height)
    with Image.open(check.png) as img:
        print(f"{check.png}: {img.width}x{img.height} px, {len(check.rows)} ranking rows")
    for problem in check.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
