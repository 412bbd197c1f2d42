"""The course as a classroom gets it: `make lab` in a real browser (Chromium driven by Playwright).

It opens lesson 00 on a new kernel and clears its stored outputs, as a learner starting afresh does, runs
every cell, answers a quiz question by clicking, and moves lesson 02's timestep slider. Lessons run
in the suite's mode (SDCOURSE_FAST=1 under `make test`). A run that stops (an error, a dead kernel,
cells left waiting) fails at once with the cells' prompts, the kernel's state and the server's log.
Screenshots are kept in test-artifacts/browser/. It needs Debian's chromium package
(`apt-get install chromium`); Playwright's own browser download needs a network, so it is not used.
Without a browser the test is skipped, saying why.
"""

import json
import os
import re
import shutil
import time
import urllib.error
from pathlib import Path
from types import SimpleNamespace

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
RUN_TIMEOUT_S = 600  # a whole lesson on a slow laptop CPU
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
    folder = tmp_path_factory.mktemp("lab")
    with running_lab(folder, env_changes=env) as (base, _):
        yield SimpleNamespace(url=base, log=folder / "lab.log")  # the server's log, quoted when a run fails


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
    page.goto(f"{lab.url}/lab/tree/notebooks/{name}?reset&token={TOKEN}")  # reset: only this lesson's tab
    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=120_000)
    # The kernel is chosen from the notebook's metadata: no "select kernel" dialog, and it reaches idle.
    page.locator(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120_000)
    assert page.locator(".jp-Dialog").count() == 0, f"{name}: a dialog opened: {page.locator('.jp-Dialog').inner_text()}"
    return page, dialogs


def menu(page, top, item):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def kernel_state(lab, name):
    """The execution state the server reports for the lesson's kernel ("idle", "busy", ...)."""
    try:
        sessions = json.loads(get(f"{lab.url}/api/sessions")[1])
    except (TimeoutError, urllib.error.URLError) as slow_answer:
        return f"no answer ({slow_answer})"
    states = [s["kernel"]["execution_state"] for s in sessions if s["path"].endswith(name)]
    return states[0] if len(states) == 1 else str(states)


PROMPT_STATES_JS = """() => [...document.querySelectorAll('PANEL_JS .jp-CodeCell .jp-InputPrompt')]
                          .map(p => p.textContent.trim())""".replace("PANEL_JS", PANEL)
STALL_S = 30  # the server's kernel idle this long while cells still show [*]: the front end lost the run


def start_run_all(page):
    numbered = f"() => ({PROMPT_STATES_JS})().some(p => /\\[(\\*|\\d+)\\]/.test(p))"  # a cell ran or waits
    for attempt in range(3):
        # The command acts on the notebook that has the focus, and stays off until it is ready: retry.
        page.locator(f"{PANEL} .jp-Cell").first.click()
        menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_function(numbered, timeout=15_000)
            return
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells did not start the cells")


def run_all_cells(page, lab, name):
    """Clear the stored outputs, run every cell; fail early, saying why, if the run stops.

    The kernel is the one the page just started, so the run starts from execution count 1. (Restarting
    it from the page is left out on purpose: under load the front end's reconnection after a restart
    can race the server, which then drops the page's messages and the kernel never answers.)"""
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt")
    # As a learner starting afresh sees it: the stored outputs and their execution numbers go first.
    page.locator(f"{PANEL} .jp-Cell").first.click()
    menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function(f"() => ({PROMPT_STATES_JS})().every(p => !/\\[(\\*|\\d+)\\]/.test(p))", timeout=60_000)
    errors = page.locator(f"{PANEL} .jp-OutputArea-output", has_text="Traceback (most recent call last)")

    def failure(why, states):
        page.screenshot(path=ARTIFACTS / f"{name}-failed.png", full_page=True)
        log = lab.log.read_text(errors="replace")[-3000:]
        return AssertionError(f"{name}: {why}\ncell prompts: {states}\nkernel: {kernel_state(lab, name)}\n"
                              f"lab server log (end):\n{log}")

    start_run_all(page)
    deadline, stalled_since, retried = time.time() + RUN_TIMEOUT_S, None, False
    while True:
        states = page.evaluate(PROMPT_STATES_JS)
        if errors.count():
            raise failure(f"a cell printed an error:\n{errors.first.text_content()[:2000]}", states)
        if states and all(re.fullmatch(r"\[\d+\]:?", s) for s in states):
            break
        kernel = kernel_state(lab, name)
        if kernel in ("restarting", "dead"):
            raise failure(f"the kernel died or restarted during the run ({kernel})", states)
        running = any("*" in s for s in states)
        if not running:
            raise failure("the run stopped before every cell ran", states)
        if kernel == "idle":
            stalled_since = stalled_since or time.time()
            if time.time() - stalled_since > STALL_S:
                if retried:
                    raise failure(f"the kernel has been idle {STALL_S} s with cells still waiting, twice", states)
                # Execution requests lost between the page and the server (a busy machine): run them again, once.
                page.screenshot(path=ARTIFACTS / f"{name}-stalled.png", full_page=True)
                retried, stalled_since = True, None
                start_run_all(page)
        else:
            stalled_since = None
        if time.time() > deadline:
            raise failure(f"not every cell ran within {RUN_TIMEOUT_S} s", states)
        time.sleep(1)
    if not retried:  # one Run All on a new kernel numbers the cells 1, 2, 3, ...: each ran once, in order, in this run
        assert states == [f"[{i}]:" for i in range(1, len(states) + 1)], f"{name}: the cells ran out of order: {states}"
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
