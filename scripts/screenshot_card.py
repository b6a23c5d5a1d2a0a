"""Open a dashboard HTML file in headless Chromium, screenshot it, and say what went wrong on the page.

    python scripts/screenshot_card.py dashboard.html docs/dashboard.png [--width 1280] [--max-height 0]

A real browser catches what string checks on the HTML cannot: a page that renders blank, a script
or console error, a ranking table whose rows never show up, a request that leaves the machine.
Chromium is driven over the DevTools protocol (a websocket, through websocket-client), so the page's
console, exceptions and network requests are read while it loads. The same class backs the browser
check in tests/test_card_browser.py. Install Debian's chromium with scripts/install_browser.sh.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import websocket
from PIL import Image, ImageStat

log = logging.getLogger(__name__)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
]
LOCAL_SCHEMES = ("file:", "data:", "about:")
"""Requests to these stay on the machine; anything else means the page is not self-contained."""
BLANK_STDDEV = 8.0
"""A screenshot whose grey levels vary less than this is blank (a dashboard is around 30)."""


class BrowserError(RuntimeError):
    """Chromium did not start, answer or load the page."""


@dataclass
class PageLog:
    """What a page did since it was opened: console errors, uncaught exceptions, requested URLs."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]

    def problems(self) -> list[str]:
        """One line per console error, uncaught exception and request that left the machine."""
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.exceptions]
                + [f"request outside file://: {u}" for u in self.external_requests()])


def find_chromium() -> Optional[str]:
    """$CHROMIUM, else `chromium` on PATH (Debian's package), else None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class HeadlessChromium:
    """One headless Chromium with one page, started for this object alone and driven over DevTools.

    Use as a context manager; `open()` loads a page and returns the log that fills while it runs.
    """

    def __init__(self, executable: Optional[str] = None, width: int = 1280, height: int = 900,
                 timeout_s: float = 30.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("chromium not found: run scripts/install_browser.sh (as root) or set CHROMIUM=/path")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.log = PageLog()
        self._profile: Optional[tempfile.TemporaryDirectory] = None
        self._process: Optional[subprocess.Popen] = None
        self._ws: Optional[websocket.WebSocket] = None
        self._session = ""
        self._next_id = 0
        self._loaded = False

    def __enter__(self) -> HeadlessChromium:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="phototagger-chromium-")
        profile = Path(self._profile.name)
        with open(profile / "chromium.log", "wb") as stderr:
            self._process = subprocess.Popen(
                [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.exists() and len(port_file.read_text().split()) == 2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start ({self.executable}); its log ends:\n{self._log_tail()}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout_s,
                                               suppress_origin=True)
        target = self._call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                   session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._call(f"{domain}.enable")
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def close(self) -> None:
        """Closes the browser, ends its processes and removes its profile."""
        if self._ws is not None:
            try:
                self._call("Browser.close", session=False)
            except (BrowserError, OSError, websocket.WebSocketException):
                log.debug("Browser.close got no answer; ending chromium by its process group")
            self._ws.close()
            self._ws = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            self._process = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def open(self, target: str | Path) -> PageLog:
        """Loads a file path or URL and waits for its load event; the returned log is fresh for this page."""
        url = Path(target).resolve().as_uri() if "://" not in str(target) else str(target)
        self.log, self._loaded = PageLog(), False
        reply = self._call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"could not open {url}: {reply['errorText']}")
        deadline = time.monotonic() + self.timeout_s
        while not self._loaded:
            self._receive(deadline)
        self.evaluate("document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => r(true))))")
        return self.log

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} failed: {_exception_text(reply['exceptionDetails'])}")
        return reply["result"].get("value")

    def screenshot(self, png_path: str | Path, max_height: int = 0) -> Path:
        """The whole page (or its top `max_height` CSS pixels) as a PNG at the browser's width."""
        content = self._call("Page.getLayoutMetrics")["cssContentSize"]
        height = math.ceil(content["height"])
        if max_height:
            height = min(height, max_height)
        shot = self._call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
        })
        path = Path(png_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _call(self, method: str, params: Optional[dict] = None, session: bool = True) -> dict:
        if self._ws is None:
            raise BrowserError(f"{method}: chromium is not running")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _receive(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"chromium did not answer within {self.timeout_s:.0f} s")
        self._ws.settimeout(remaining)
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException as exc:
            raise BrowserError(f"chromium did not answer within {self.timeout_s:.0f} s") from exc
        if "method" in message:
            self._on_event(message["method"], message.get("params", {}))
        return message

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Page.loadEventFired":
            self._loaded = True
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.log.console_errors.append(" ".join(_remote_text(a) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.log.exceptions.append(_exception_text(params.get("exceptionDetails", {})))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.log.console_errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.log.requests.append(params["request"]["url"])

    def _log_tail(self, lines: int = 15) -> str:
        path = Path(self._profile.name) / "chromium.log" if self._profile else None
        if not path or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _remote_text(obj: dict) -> str:
    return str(obj["value"]) if "value" in obj else str(obj.get("description", obj.get("type", "")))


def _exception_text(details: dict) -> str:
    exception = details.get("exception") or {}
    return str(exception.get("description") or details.get("text") or "unknown exception").splitlines()[0]


def grey_stddev(png: str | Path) -> float:
    """How much the grey level varies over a screenshot: near 0 for a blank (uniform) page."""
    with Image.open(png) as img:
        return ImageStat.Stat(img.convert("L")).stddev[0]


RANKING_ROWS_JS = """Array.from(document.querySelectorAll('table.rank tbody tr'))
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
