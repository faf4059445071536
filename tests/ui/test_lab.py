"""Notebook 01 in a real browser: JupyterLab (127.0.0.1 only, random port, token) driven by Playwright.

Opens a copy of ``notebooks/01_theorem.ipynb``, runs all cells from the Run menu, drags the "steps"
slider of the schedule explorer and checks that both the figure and the printed bound
``bound L_disc … =`` change.  Screenshots go to ``runs/ui/``.

Opt-in (``make test-ui``): needs Debian's chromium (``apt-get install chromium``; Playwright's own
browser download is never used) and ``pip install -e .[ui]``.  Skips with the reason when either is
missing.
"""
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "runs" / "ui"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
BOUND = re.compile(r"bound L_disc \(1-D Gaussian, c = [^)]*\) = ([0-9.eE+-]+)")

pytestmark = [pytest.mark.ui, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebook 01; yields (url, token)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; or set CHROMIUM=/path)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[ui])")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "01_theorem.ipynb", root)
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
                        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    env.pop("JUPYTER_PATH", None)
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={tmp_path / 'ws'}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate", "--ServerApp.allow_remote_access=False"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start within 90 s"
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError):          # the token is required
            urllib.request.urlopen(f"{url}/api/contents", timeout=5)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _bound_and_figure(page):
    """(printed bound, figure PNG source) of the schedule explorer's output."""
    out = page.locator(".widget-output").filter(has_text="bound L_disc").last
    text = out.inner_text()
    m = BOUND.search(text)
    assert m, f"no 'bound L_disc … =' line in the widget output: {text[:300]!r}"
    return float(m.group(1)), out.locator("img").last.get_attribute("src")


def test_run_all_and_move_the_slider(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{url}/lab/tree/01_theorem.ipynb?token={token}")
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
            try:   # a lab that has not listed its kernels yet asks which one to start: the preferred one
                page.locator(".jp-Dialog").get_by_role("button", name="Select").click(timeout=15_000)
            except PlaywrightTimeout:
                pass

            page.get_by_role("menuitem", name="Run", exact=True).click()       # the menu a reader uses
            page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()

            slider = page.locator(".widget-slider").filter(has_text="steps").first
            slider.scroll_into_view_if_needed()
            expect(page.locator(".widget-output").filter(has_text="bound L_disc").last).to_contain_text("bound L_disc")
            # every cell ran: no cell is still queued or running ([*]) and none raised
            expect(page.locator(".jp-InputArea-prompt", has_text="[*]")).to_have_count(0, timeout=180_000)
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                ).filter(has_text="Traceback").count() == 0
            for toast in page.get_by_role("button", name="No", exact=True).all():   # "get Jupyter news?"
                toast.click()
            bound0, fig0 = _bound_and_figure(page)
            assert fig0 and fig0.startswith("data:image/png"), "the explorer drew no figure"
            page.screenshot(path=str(SHOTS / "01_before.png"))

            handle = slider.locator(".noUi-handle").first
            box = handle.bounding_box()
            value0 = slider.locator(".widget-readout").inner_text()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2, steps=8)
            page.mouse.up()
            readout = slider.locator(".widget-readout")
            expect(readout).not_to_have_text(value0)
            steps = int(readout.inner_text())
            assert steps > int(value0), (value0, steps)
            # the kernel redraws (once per value the slider passed): wait for the drawing of the final value,
            # whose printed sigma list has steps + 1 entries
            page.wait_for_function(
                """([n]) => { const o = [...document.querySelectorAll('.widget-output')]
                                 .filter(e => e.innerText.includes('bound L_disc')).pop();
                               const m = o && o.innerText.match(/sigmas = \\[([^\\]]*)\\]/);
                               return m && m[1].split(',').length === n + 1; }""",
                arg=[steps])
            expect(page.get_by_text(re.compile(r"\(ipykernel\) \| Idle"))).to_be_visible()
            bound1, fig1 = _bound_and_figure(page)
            assert bound1 < bound0, f"steps {value0} -> {steps}: bound {bound0} -> {bound1}"
            assert fig1 != fig0, "the figure did not change with the slider"
            page.screenshot(path=str(SHOTS / "01_after.png"))
        except Exception:
            page.screenshot(path=str(SHOTS / "01_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
