"""Open a report in headless Chromium with every network request blocked and check that it
rendered (used by the browser tests and to take the screenshots in docs/).

Needs the ``playwright`` Python package (``pip install mechtrunc[test]``) and a Chromium
binary: Debian's ``/usr/bin/chromium`` (``apt-get install chromium``) or ``$MECHTRUNC_CHROMIUM``;
Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PageCheck", "check_page", "find_chromium"]


def find_chromium() -> str | None:
    """The Chromium executable: ``$MECHTRUNC_CHROMIUM``, else chromium on the PATH."""
    env = os.environ.get("MECHTRUNC_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    """What the browser saw: requests that tried to leave the page, console errors, failed
    requests, every chart and circuitsvis view with its size, and the screenshot's pixel spread."""

    blocked: list = field(default_factory=list)
    console_errors: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    charts: list = field(default_factory=list)  # (id, width, height, n_svg_nodes)
    views: list = field(default_factory=list)  # (id, component, width, height, n_nodes, largest canvas side)
    sections: list = field(default_factory=list)
    screenshot_std: float = 0.0
    screenshot: Path | None = None
    seconds: float = 0.0


_PROBE = """() => {
  const charts = [...document.querySelectorAll('.js-plotly-plot')].map(el => {
    const r = el.getBoundingClientRect();
    const svg = el.querySelector('svg.main-svg');
    const s = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return [el.id, Math.round(s.width), Math.round(s.height), el.querySelectorAll('svg *').length];
  });
  const views = [...document.querySelectorAll('.cv-view')].map(el => {
    const r = el.getBoundingClientRect();
    const canvas = Math.max(0, ...[...el.querySelectorAll('canvas')].map(c => Math.min(c.getBoundingClientRect().width, c.getBoundingClientRect().height)));
    return [el.id, el.dataset.component, Math.round(r.width), Math.round(r.height), el.querySelectorAll('*').length, Math.round(canvas)];
  });
  const sections = [...document.querySelectorAll('section[data-section]')].map(s => s.dataset.section);
  return {charts, views, sections};
}"""


def check_page(path, screenshot=None, width: int = 1300, full_page: bool = True, wait_ms: int = 800,
               executable: str | None = None) -> PageCheck:
    """Load the HTML file ``path`` from ``file://`` in headless Chromium, block and record every
    request that is not ``file:``/``data:``/``blob:``, wait for the charts and views, and return
    a :class:`PageCheck`; with ``screenshot`` a PNG of the page is written there."""
    import time

    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found: install Debian's chromium (apt-get install chromium) or set "
                                "MECHTRUNC_CHROMIUM to its path")
    url = Path(path).resolve().as_uri()
    out = PageCheck()
    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})

            def route(r):
                u = r.request.url
                if u.startswith(("file:", "data:", "blob:")):
                    r.continue_()
                else:
                    out.blocked.append(u)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.console_errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: out.failed.append(r.url))
            page.goto(url, wait_until="load")
            # charts and views render asynchronously: wait until each has content (or time out)
            try:
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.js-plotly-plot')].length == "
                    "document.querySelectorAll('.fig').length && "
                    "[...document.querySelectorAll('.cv-view')].every(e => e.childElementCount > 0) && "
                    # attention views: the zoomed pattern (chart.js) is sized asynchronously
                    "[...document.querySelectorAll('.cv-view[data-component=AttentionHeads]')].every(e => "
                    "[...e.querySelectorAll('canvas')].some(c => c.getBoundingClientRect().width > 150))",
                    timeout=20_000)
            except Exception:  # reported through the sizes below
                pass
            page.wait_for_timeout(wait_ms)
            probe = page.evaluate(_PROBE)
            out.charts = [tuple(c) for c in probe["charts"]]
            out.views = [tuple(v) for v in probe["views"]]
            out.sections = probe["sections"]
            if screenshot is not None:
                import io

                png = page.screenshot(full_page=full_page)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(png)
                out.screenshot = Path(screenshot)
                from PIL import Image
                import numpy as np

                arr = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
                out.screenshot_std = float(arr.std())
        finally:
            browser.close()
    out.seconds = time.perf_counter() - t0
    return out
