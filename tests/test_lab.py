"""`make lab` works headless: the server starts, serves the start notebook, and stops."""

import json

from lab_server import get, running_lab


def test_make_lab_serves_the_start_notebook(tmp_path):
    with running_lab(tmp_path) as (base, _):
        status, body = get(f"{base}/api/contents/notebooks/00_start_here.ipynb")
        assert status == 200
        notebook = json.loads(body)["content"]
        assert notebook["cells"], "the start notebook is empty"
        status, page = get(f"{base}/lab/tree/notebooks/00_start_here.ipynb")
        assert status == 200 and b"JupyterLab" in page


def test_lab_settings_turn_off_the_news_pop_up(tmp_path):
    with running_lab(tmp_path) as (base, _):
        status, body = get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification")
        assert status == 200
        defaults = json.loads(body)["schema"]["properties"]
        # Overrides replace the schema's defaults; a learner's own settings still win over them.
        assert defaults["fetchNews"]["default"] == "false", defaults["fetchNews"]
        assert defaults["checkForUpdates"]["default"] is False, defaults["checkForUpdates"]
