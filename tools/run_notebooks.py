"""Execute notebooks in place, so the committed outputs are the ones a learner gets.

    python tools/run_notebooks.py notebooks/02_noise_schedules.ipynb solutions/02_noise_schedules.ipynb
    python tools/run_notebooks.py --all

Runs with the settings of the test suite (offline, text quizzes, matplotlib inline) from the
notebook's own folder, then strips run-specific metadata. Fails if any cell raises.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "SDCOURSE_QUIZ": "text", "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"}
# Seconds one cell may run. The capstone's build cell runs the lab build (about 40 minutes on
# 2 cores; longer on a busy machine), so its stored outputs show a real model.
CELL_TIMEOUT = 1200
LONG_CELL_TIMEOUT = {"14_capstone.ipynb": 3 * 3600}


def execute(path: Path, timeout: int | None = None):
    """Run a notebook from its own folder with the suite's settings, outside fast mode; return
    (the executed notebook, seconds). The file itself is not changed."""
    notebook = nbformat.read(path, as_version=4)
    os.environ.update(ENVIRONMENT)
    os.environ.pop("SDCOURSE_FAST", None)
    timeout = timeout or LONG_CELL_TIMEOUT.get(path.name, CELL_TIMEOUT)
    start = time.time()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook, time.time() - start


# A progress bar's widget is stored with the text of its first frame ("0%| | 0/4000"): with the
# widget state left out, a reader would see every bar stuck at zero. The bars are not stored.
PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+ \[")


def is_progress_bar(output) -> bool:
    data = output.get("data", {})
    return (output.get("output_type") == "display_data" and "application/vnd.jupyter.widget-view+json" in data
            and bool(PROGRESS_BAR.search("".join(data.get("text/plain", "")))))


def run(path: Path, timeout: int | None = None) -> float:
    """Execute a notebook and write it back with its new outputs, progress bars left out; return
    the seconds."""
    notebook, seconds = execute(path, timeout)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not is_progress_bar(output)]
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--all", action="store_true", help="every notebook in notebooks/ and solutions/")
    args = parser.parse_args(argv)
    paths = args.notebooks
    if args.all:
        paths = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    if not paths:
        parser.error("name notebooks, or pass --all")
    for path in paths:
        seconds = run(path.resolve())
        print(f"{path}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
