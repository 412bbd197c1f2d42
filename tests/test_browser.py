"""The course as a classroom gets it: `make lab` in a real browser (Chromium driven by Playwright).

It restarts lesson 00's kernel and clears its stored outputs, as a learner starting afresh does, runs
every cell, answers a quiz question by clicking, and moves lesson 02's timestep slider. Lessons run
in the suite's mode (SDCOURSE_FAST=1 under `make test`). Screenshots are kept in test-artifacts/browser/. It needs Debian's chromium package
(`apt-get install chromium`); Playwright's own browser download needs a network, so it is not used.
Without a browser the test is skipped, saying why.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from lab_server import ROOT, TOKEN, get, running_lab

CHROMIUM = os.environ.get("SDCOURSE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# Chromium as root in a container, offline: no sandbox, no GPU, none of its background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 600_000  # a whole lesson on a slow laptop CPU
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show, not one in a background tab

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
NO_BROWSER = f"no browser at {CHROMIUM}: install Debian's chromium package, or set SDCOURSE_CHROMIUM"
if os.environ.get("CI") == "true":
    # Continuous integration installs chromium (.ci/run): there a missing browser is a failure, not a skip.
    assert Path(CHROMIUM).exists(), NO_BROWSER
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=NO_BROWSER)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # The widgets front end, as a learner gets it (the test suite otherwise asks for text quizzes).
    # Its own settings folder with autosave off, so that running a lesson never rewrites the course's files.
    settings = tmp_path_factory.mktemp("lab-settings")
    docmanager = settings / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    env = {"SDCOURSE_QUIZ": None, "MPLBACKEND": None, "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    with running_lab(tmp_path_factory.mktemp("lab"), env_changes=env) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000}
        )
        yield context
        context.close()


def open_notebook(browser, lab, name):
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{lab}/lab/tree/notebooks/{name}?reset&token={TOKEN}")  # reset: only this lesson's tab
    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=120_000)
    # The kernel is chosen from the notebook's metadata: no "select kernel" dialog, and it reaches idle.
    page.locator(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120_000)
    assert page.locator(".jp-Dialog").count() == 0, f"{name}: a dialog opened: {page.locator('.jp-Dialog').inner_text()}"
    return page, dialogs


def menu(page, top, item):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def wait_for_idle_kernel(lab, name, timeout=120):
    """Ask the server until the lesson's kernel has restarted and stays idle for a second."""
    deadline, idle_since = time.time() + timeout, None
    while time.time() < deadline:
        sessions = json.loads(get(f"{lab}/api/sessions")[1])
        states = [s["kernel"]["execution_state"] for s in sessions if s["path"].endswith(name)]
        if states == ["idle"]:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 1:
                return
        else:
            idle_since = None
        time.sleep(0.25)
    raise AssertionError(f"{name}: the kernel did not come back to idle within {timeout} s after a restart: {states}")


def run_all_cells(page, lab, name):
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt")
    numbered = """() => [...document.querySelectorAll('PANEL_JS .jp-CodeCell .jp-InputPrompt')]
                           .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""".replace("PANEL_JS", PANEL)
    # As a learner starts afresh: the stored outputs and their execution numbers go first.
    page.locator(f"{PANEL} .jp-Cell").first.click()
    menu(page, "Kernel", "Restart Kernel and Clear Outputs of All Cells")
    page.locator(".jp-Dialog button", has_text="Restart").click()
    page.wait_for_function(f"() => !({numbered})()", timeout=60_000)
    wait_for_idle_kernel(lab, name)
    for attempt in range(3):
        # The command acts on the notebook that has the focus, and stays off until it is ready: retry.
        page.locator(f"{PANEL} .jp-Cell").first.click()
        menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_function(numbered, timeout=15_000)
            break
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    else:
        page.screenshot(path=ARTIFACTS / f"{name}-did-not-start.png")
        raise AssertionError(f"{name}: Run All Cells did not start the cells (screenshot kept)")
    # Every code cell gets an execution number; "[*]" means still running, "[ ]" not run.
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('PANEL_JS .jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""".replace("PANEL_JS", PANEL),
        timeout=RUN_TIMEOUT_MS,
    )
    errors = page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)")
    assert errors.count() == 0, f"{name}: error output:\n{errors.first.inner_text()[:2000]}"
    assert page.locator(".jp-Dialog").count() == 0, f"{name}: a dialog opened: {page.locator('.jp-Dialog').inner_text()}"
    return prompts.count()


def test_lesson_00_runs_and_its_quiz_answers_a_click(browser, lab):
    page, dialogs = open_notebook(browser, lab, "00_start_here.ipynb")
    page.screenshot(path=ARTIFACTS / "00-opened.png")
    ran = run_all_cells(page, lab, "00_start_here.ipynb")
    assert ran >= 5
    assert page.locator(f"{PANEL} .jp-OutputArea-output img").count() >= 1, "lesson 00 showed no picture"
    page.screenshot(path=ARTIFACTS / "00-ran.png", full_page=True)

    quiz = page.locator(f"{PANEL} .widget-vbox", has_text="Quiz:").last
    quiz.scroll_into_view_if_needed()
    quiz.locator(".widget-radio-box input[type=radio]").first.check()
    quiz.locator("button", has_text="Check").first.click()
    feedback = quiz.locator(".widget-output", has_text="Question 1:")
    feedback.wait_for(timeout=30_000)
    assert "correct" in feedback.inner_text() or "not quite" in feedback.inner_text()
    assert "(1 answered)" in quiz.inner_text()
    quiz.screenshot(path=ARTIFACTS / "00-quiz.png")
    assert not dialogs, dialogs
    # The course's settings turn off JupyterLab's "receive official Jupyter news?" notification.
    assert page.get_by_text("official Jupyter news").count() == 0, "the Jupyter news pop-up showed"
    page.close()


def test_lesson_02_slider_changes_the_picture(browser, lab):
    page, dialogs = open_notebook(browser, lab, "02_noise_schedules.ipynb")
    run_all_cells(page, lab, "02_noise_schedules.ipynb")
    slider = page.locator(f"{PANEL} .widget-interact", has=page.locator(".widget-slider")).first
    slider.scroll_into_view_if_needed()
    # The picture belongs inside the widget's own output, or moving the slider cannot redraw it.
    picture = slider.locator(".widget-output img").first
    picture.wait_for(timeout=60_000)
    before = picture.get_attribute("src")
    slider.screenshot(path=ARTIFACTS / "02-slider-before.png")

    # Type a new timestep into the slider's readout, as a learner can, then wait for the new picture.
    readout = slider.locator(".widget-slider .widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("900")
    page.keyboard.press("Enter")
    page.wait_for_function(
        """([el, before]) => { const img = el.querySelector('.widget-output img'); return img && img.src !== before; }""",
        arg=[slider.element_handle(), before],
        timeout=60_000,
    )
    assert slider.locator(".widget-readout").first.inner_text().strip() == "900"
    slider.screenshot(path=ARTIFACTS / "02-slider-after.png")
    assert not dialogs, dialogs
    page.close()
