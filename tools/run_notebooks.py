"""Execute notebooks in place, so the committed outputs are the ones a learner gets.

    python tools/run_notebooks.py notebooks/02_noise_schedules.ipynb solutions/02_noise_schedules.ipynb
    python tools/run_notebooks.py --all

Runs with the settings of the test suite (offline, text quizzes, matplotlib inline) from the
notebook's own folder, then strips run-specific metadata. Fails if any cell raises.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "SDCOURSE_QUIZ": "text", "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"}
# The capstone's full build takes hours on a laptop: its stored outputs show the fast build, and its text says so.
STORED_IN_FAST_MODE = {"14_capstone.ipynb"}


def execute(path: Path, timeout: int = 1200):
    """Run a notebook from its own folder with the suite's settings; return (the executed
    notebook, seconds). The file itself is not changed."""
    notebook = nbformat.read(path, as_version=4)
    os.environ.update(ENVIRONMENT)
    if path.name in STORED_IN_FAST_MODE:
        os.environ["SDCOURSE_FAST"] = "1"
    else:
        os.environ.pop("SDCOURSE_FAST", None)
    start = time.time()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook, time.time() - start


def run(path: Path, timeout: int = 1200) -> float:
    """Execute a notebook and write it back with its new outputs; return the seconds."""
    notebook, seconds = execute(path, timeout)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
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
