"""`make lab` works headless: the server starts, serves the start notebook, and stops."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "course-test-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def test_make_lab_serves_the_start_notebook(tmp_path):
    port = free_port()
    flags = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={TOKEN}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path))
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(
        ["make", "lab", f"LAB_FLAGS={flags}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                status, body = get(f"{base}/api/contents/notebooks/00_start_here.ipynb")
                break
            except OSError:
                assert time.time() < deadline, "JupyterLab did not start within 90 s:\n" + (tmp_path / "lab.log").read_text()
                time.sleep(1)
        assert status == 200
        notebook = json.loads(body)["content"]
        assert notebook["cells"], "the start notebook is empty"
        status, page = get(f"{base}/lab/tree/notebooks/00_start_here.ipynb")
        assert status == 200 and b"JupyterLab" in page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert server.returncode is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server is still listening after it was stopped"
