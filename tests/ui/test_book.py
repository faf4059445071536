"""The course book (``make book``) in a real browser: every page of the built site opened in Debian's chromium
(Playwright), with the math typeset by the site's own MathJax and every figure loaded; screenshots in
``runs/ui/book/``.

Opt-in like the JupyterLab test: ``make test-book`` builds the site and runs this file (``DPMSCHED_UI=1``).  The
site is ``runs/book/html`` unless ``DPMSCHED_BOOK=/path/to/html``; without a built site, chromium or Playwright the
test skips with the reason.  The pages are served over HTTP on 127.0.0.1 by a thread of this process, and any
request that leaves 127.0.0.1 fails the test: the site must work offline.
"""
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("DPMSCHED_BOOK") or ROOT / "runs" / "book" / "html")
SHOTS = ROOT / "runs" / "ui" / "book"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.ui, pytest.mark.slow]

#: the content pages of the book, and the least each must show once rendered: (typeset formulas, figures)
PAGES = {
    "index.html": (0, 0),
    "README.html": (0, 1),                 # the results figure (benchmarks/headline.png)
    "docs/teaching.html": (2, 0),
    "docs/math.html": (200, 0),
    "notebooks/01_theorem.html": (20, 3),
    "notebooks/02_dp_baseline.html": (20, 3),
    "notebooks/03_error_bound.html": (20, 2),
    "notebooks/04_finetuning.html": (10, 3),
    "notebooks/05_skip_tuning.html": (5, 4),
    "notebooks/06_sa_solver.html": (10, 2),
    "notebooks/07_benchmark.html": (1, 2),
    "notebooks/08_mnist_guidance.html": (5, 1),
}

#: true once MathJax 2 has typeset every formula Sphinx wrote (each ``.math`` element then holds a ``span.MathJax``)
MATH_DONE = """() => typeof MathJax === 'undefined' || !MathJax.Hub ||
  document.querySelectorAll('.math.notranslate').length ===
  document.querySelectorAll('.math.notranslate span.MathJax').length"""

#: the formulas Sphinx wrote, the ones MathJax typeset, and the TeX errors among them
COUNT_MATH = """() => ({
  sources: document.querySelectorAll('.math.notranslate').length,
  typeset: document.querySelectorAll('.math.notranslate span.MathJax').length,
  errors: (typeof MathJax !== 'undefined' && MathJax.Hub
           ? MathJax.Hub.getAllJax().filter(j => j.texError || (j.root && j.root.texError)).length : 0)
          + document.querySelectorAll('.MathJax_Error').length
          + (document.body.innerText.includes('Math input error') ? 1 : 0),
  mathjax: typeof MathJax !== 'undefined' && !!MathJax.Hub,
})"""

IMAGES = """() => Array.from(document.querySelectorAll('article img, main img')).map(i => ({
  src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))"""


@pytest.fixture(scope="module")
def site():
    """(base url) of the built site, served on 127.0.0.1 by a thread."""
    if not (SITE / "index.html").is_file():
        pytest.skip(f"no built book at {SITE}: run `make book` first (or set DPMSCHED_BOOK)")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; or set CHROMIUM=/path)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[ui])")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_page_renders_its_math_and_figures_offline(site):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PAGES if not (SITE / p).is_file()]
    assert not missing, f"pages missing from the site: {missing}"
    report, outside = {}, []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def only_local(route):
            if route.request.url.startswith(site):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for rel, (min_math, min_figs) in PAGES.items():
            errors.clear()
            page.goto(f"{site}/{rel}", wait_until="load")
            page.wait_for_function(MATH_DONE, timeout=120_000)
            math = page.evaluate(COUNT_MATH)
            imgs = page.evaluate(IMAGES)
            name = rel.replace("/", "_").removesuffix(".html")
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
            report[rel] = (math, imgs)
            assert not errors, f"{rel}: JavaScript errors {errors}"
            assert math["mathjax"] or math["sources"] == 0, f"{rel}: MathJax did not load"
            assert math["errors"] == 0, f"{rel}: {math['errors']} TeX errors"
            assert math["typeset"] == math["sources"] >= min_math, f"{rel}: math {math} (expected >= {min_math})"
            bad = [i["src"] for i in imgs if not i["ok"]]
            assert not bad, f"{rel}: figures that did not load: {bad}"
            assert len(imgs) >= min_figs, f"{rel}: {len(imgs)} figures, expected >= {min_figs}"
        # one full-page screenshot of a notebook, figures and formulas together
        page.goto(f"{site}/notebooks/01_theorem.html", wait_until="load")
        page.wait_for_function(MATH_DONE, timeout=120_000)
        page.screenshot(path=str(SHOTS / "notebooks_01_theorem_full.png"), full_page=True)
        browser.close()
    assert not outside, f"the site requested files from outside 127.0.0.1: {sorted(set(outside))[:5]}"
    print({rel: (m["typeset"], len(i)) for rel, (m, i) in report.items()})
