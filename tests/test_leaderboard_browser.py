"""The leaderboard site in a real browser: headless Debian Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no websocket library). The page is loaded from files as a reader would open
it; the test reads the tables, clicks a column header and checks the rows re-ordered, checks every image loaded,
that nothing was fetched but local files, that the page never scrolls sideways at 1280 px nor on a phone-width
screen, and saves screenshots in the test's tmp dir. Skipped where Chromium is not installed."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from genattr.cli import main
from test_leaderboard import SITE_METHODS, build_site_results

CHROMIUM = os.environ.get("GENATTR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="Chromium is not installed (Debian: apt-get install chromium); the leaderboard site's "
                         "browser check needs it")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe")


class Browser:
    """A headless Chromium and one page, over the DevTools protocol (JSON messages ending in NUL, fds 3 and 4)."""

    def __init__(self, profile: Path, timeout: float = 30.0):
        self.timeout = timeout
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # in the child: the pipe ends become fds 3 (commands in) and 4 (replies out)
            os.dup2(to_chrome_r, 100)
            os.dup2(from_chrome_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium did not answer {method} (exit code {self.proc.poll()})")
                ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(self._r, 1 << 20)
                    if not chunk:
                        raise RuntimeError("Chromium closed the DevTools pipe")
                    self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, self.session)

    def js(self, expression: str):
        r = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def size(self, width: int, height: int, mobile: bool = False) -> None:
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def open(self, path: Path) -> None:
        self.page("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait("document.readyState === 'complete' && location.protocol === 'file:'")
        self.wait("Array.from(document.images).every(i => i.complete)")

    def wait(self, condition: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(condition):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {condition}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the element."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                      "e.scrollIntoView({block: 'center', inline: 'center'}); const r = e.getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            m = self.page("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": m["width"], "height": min(m["height"], 12000), "scale": 1}
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", params)["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._w)
        os.close(self._r)
        self.log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    import test_runner_fakes as fakes

    root = tmp_path_factory.mktemp("browser")
    dirs = build_site_results(root / "runs")
    # plus one real run through the runner (the fake benchmarks: seconds, no torch model)
    fakes.install()
    try:
        real = root / "runs" / "fake-run"
        assert main(["run", "fake-bench", "fake-split", "-m", "fake-good,fake-bad", "--scale", "tiny",
                     "--device", "cpu", "--quiet", "--no-leaderboard", "--out", str(real)]) == 0
    finally:
        fakes.uninstall()
    out = root / "site"
    assert main(["leaderboard", *map(str, dirs), str(real), "--format", "html", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield b
    finally:
        b.close()


ORDER = "Array.from(document.querySelectorAll({sel} + ' tbody tr')).map(r => r.cells[0].textContent.trim())"


def _overflow(browser) -> dict:
    return browser.js("({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth,"
                      " body: document.body.scrollWidth})")


def test_index_tables_sorting_images_and_width(site, browser, tmp_path):
    browser.size(1280, 900)
    browser.open(site / "index.html")
    tables = browser.js("Array.from(document.querySelectorAll('table.sortable')).map(t => t.id)")
    for tid in ("table-customized-model-headline-object-centric", "table-customized-model-all-artist-style",
                "table-leave-k-out-headline-by-K", "table-lds-headline-all", "table-fake-bench-headline-by-K",
                "table-fake-split-headline-object"):
        assert tid in tables
    sel = json.dumps("#table-customized-model-headline-object-centric")
    rows = browser.js(ORDER.format(sel=sel))
    assert sorted(rows) == sorted(SITE_METHODS)
    headers = browser.js(f"Array.from(document.querySelectorAll({sel} + ' thead th')).map(h => h.textContent)")
    assert headers[:2] == ["Method", "n"] and any(h.startswith("mAP") for h in headers)
    assert any(h.startswith("Recall@10 − random") for h in headers)
    # the best is bold only where it is separated (objects), and the unverified concept is flagged
    assert browser.js(f"document.querySelectorAll({sel} + ' td.best strong').length") >= 1
    assert browser.js("document.querySelectorAll('#table-customized-model-headline-artist-style td.best').length") == 0
    assert "obj-c" in browser.js("document.querySelector('#customized-model .note').textContent")

    # sorting: click the mAP header; the rows follow its values, best first; click again: the other way round
    col = headers.index(next(h for h in headers if h.startswith("mAP")))
    th = f"#table-customized-model-headline-object-centric thead th[data-col='{col}']"
    values = f"Array.from(document.querySelectorAll({sel} + ' tbody tr')).map(r => Number(r.cells[{col}].dataset.sort))"
    browser.click("#table-customized-model-headline-object-centric thead th[data-col='0']")  # by name first
    by_name = browser.js(ORDER.format(sel=sel))
    assert by_name == sorted(SITE_METHODS)
    browser.click(th)
    down = browser.js(values)
    assert down == sorted(down, reverse=True) and browser.js(ORDER.format(sel=sel)) != by_name
    assert browser.js(ORDER.format(sel=sel))[0] == "unlearning"
    assert browser.js(f"document.querySelector({json.dumps(th)}).getAttribute('aria-sort')") == "descending"
    browser.click(th)
    assert browser.js(values) == sorted(down)

    # figures: every image present and loaded; nothing fetched but local files
    images = browser.js("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) == 6  # customized-model own + /all scatter, leave-k-out, lds, fake-bench, fake-split
    assert all(done and width > 0 for _, done, width in images), images
    assert browser.js("performance.getEntriesByType('resource').every(r => r.name.startsWith('file:'))")

    # plain-language pool titles, a glossary, downloads of every board's numbers, method descriptions and links
    pools = browser.js("Array.from(document.querySelectorAll('#customized-model .pool h3')).map(h => h.textContent)")
    assert "Pool: the training images and every concept's exemplars" in pools
    assert not any("Headline" in t or "/all" in t for t in pools)
    terms = browser.js("Array.from(document.querySelectorAll('#glossary dt')).map(d => d.textContent)")
    assert {"pool", "paired difference", "pack", "config hash"} <= set(terms)
    links = browser.js("Array.from(document.querySelectorAll('#customized-model a.download'))"
                       ".map(a => a.getAttribute('href'))")
    assert links == ["tables/customized-model.csv", "tables/customized-model.json"]
    assert (site / links[0]).read_text().startswith("benchmark,") and \
        json.loads((site / links[1]).read_text())["benchmarks"][0]["benchmark"] == "customized-model"
    item = browser.js("Array.from(document.querySelectorAll('#methods li')).map(li => li.textContent)"
                      ".find(t => t.startsWith('unlearning'))")
    assert "paper" in item and "code" in item and len(item) > 40  # its description and links

    # no horizontal overflow at 1280 px
    o = _overflow(browser)
    assert o["scroll"] <= o["client"], o
    shot = browser.screenshot(tmp_path / "index-1280.png", full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_method_page_images_and_per_query_table(site, browser, tmp_path):
    browser.size(1280, 900)
    browser.open(site / "method-unlearning.html")
    assert browser.js("document.querySelectorAll('#queries-customized-model tbody tr').length") == 14
    assert browser.js("document.querySelectorAll('.flag').length") >= 2  # unverified queries flagged
    imgs = browser.js("Array.from(document.images).map(i => [i.className, i.complete, i.naturalWidth])")
    assert sum(c == "query-image" for c, _, _ in imgs) == 14 and sum(c == "thumb" for c, _, _ in imgs) == 140
    assert all(done and w > 0 for _, done, w in imgs)
    # the per-query table sorts too
    sel = json.dumps("#queries-leave-k-out")
    before = browser.js(f"Array.from(document.querySelectorAll({sel} + ' tbody tr')).map(r => r.cells[1].textContent)")
    browser.click("#queries-leave-k-out thead th[data-col='3']")  # ΔL
    after = browser.js(f"Array.from(document.querySelectorAll({sel} + ' tbody tr')).map(r => r.cells[1].textContent)")
    assert sorted(after) == sorted(before) and after != before
    o = _overflow(browser)
    assert o["scroll"] <= o["client"], o
    browser.screenshot(tmp_path / "method-1280.png", full_page=True)


@pytest.mark.parametrize("page", ["index.html", "method-unlearning.html"])
def test_phone_width_scrolls_tables_not_the_page(site, browser, tmp_path, page):
    browser.size(390, 844, mobile=True)
    browser.open(site / page)
    o = _overflow(browser)
    assert o["scroll"] <= o["client"], o
    # the wide tables scroll inside their own container instead
    wraps = browser.js("Array.from(document.querySelectorAll('.table-wrap')).map(w => [w.scrollWidth, w.clientWidth,"
                       " getComputedStyle(w).overflowX])")
    assert any(s > c for s, c, _ in wraps) and all(ox == "auto" for _, _, ox in wraps)
    browser.screenshot(tmp_path / f"{page.split('.')[0]}-390.png")


def test_the_site_of_the_committed_results(browser, tmp_path):
    """The site built from the project's committed run directories (results/) renders: every board's tables, the
    downloads, the glossary, no sideways scroll."""
    from pathlib import Path

    from genattr.harness import leaderboard

    root = Path(__file__).resolve().parents[1] / "results"
    dirs = sorted(str(p.parent) for p in root.rglob("results.jsonl"))
    assert dirs, "no committed run directory under results/"
    site = tmp_path / "site"
    leaderboard.render(dirs, "html", out=site)
    browser.size(1280, 900)
    browser.open(site / "index.html")
    assert browser.js("document.querySelectorAll('table.sortable tbody tr').length") >= 5
    assert browser.js("document.querySelectorAll('a.download').length") >= 2
    assert browser.js("document.querySelectorAll('#glossary dt').length") >= 8
    o = _overflow(browser)
    assert o["scroll"] <= o["client"], o
    browser.screenshot(tmp_path / "results-site.png", full_page=True)
