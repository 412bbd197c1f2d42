"""How long each lesson takes a learner: an estimate from what the lesson holds and how long it runs.

    python benchmarks/lesson_times.py            # runs every lecture and solution notebook (about 40 minutes on 2 cores)
    python benchmarks/lesson_times.py --no-run   # reading and exercises only

For each lesson it measures:
- the words of the lecture's text (markdown cells) and its lines of code;
- the exercises (the check functions the exercise notebook calls) and quiz questions;
- how long the lecture and the solutions take to run, top to bottom, as a learner runs them
  (not in the test suite's fast mode; copies are run, the notebooks are not rewritten). The
  capstone is not run: its lecture builds a model (25 to 35 minutes), quoted as "+ the build".

The estimate adds reading at 120 words a minute (technical text, read with care), a minute
per 10 lines of code read, the running time of both notebooks, 6 minutes per exercise and a
minute per quiz question. It is a model of a careful learner, not a timing of real ones; the
README's course map quotes it rounded to 5 minutes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
from run_notebooks import execute  # noqa: E402

from sdcourse.quiz import Quiz  # noqa: E402

READING_WORDS_PER_MINUTE = 120
CODE_LINES_PER_MINUTE = 10
MINUTES_PER_EXERCISE = 6
MINUTES_PER_QUESTION = 1
# Lessons whose lecture builds a whole model (the capstone's lab build, 25 to 35 minutes on 2
# cores): counted without running, and quoted as "+ the build".
BUILDS_A_MODEL = ("14_capstone.ipynb",)


def words_and_code(notebook) -> tuple[int, int]:
    words = sum(len(re.findall(r"[A-Za-z0-9']+", c.source)) for c in notebook.cells if c.cell_type == "markdown")
    code = sum(len([line for line in c.source.splitlines() if line.strip() and not line.strip().startswith("#")])
               for c in notebook.cells if c.cell_type == "code")
    return words, code


def exercises(path: Path) -> int:
    if not path.exists():
        return 0
    notebook = nbformat.read(path, as_version=4)
    called = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            called.update(re.findall(r"\b(check_\w+)\(", cell.source))
    return len(called)


def quiz_questions(notebook) -> int:
    """The questions of every quiz the lesson shows (`show_quiz("07")`, the capstone's module test too)."""
    shown = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            shown.update(re.findall(r"show_quiz\(\s*[\"']?(\w+)", cell.source))
    return sum(len(Quiz.from_lesson(lesson).questions) for lesson in shown)


def run_seconds(path: Path) -> float:
    """Run the notebook as the course's tools do (an executed copy, dropped); return the seconds."""
    return execute(path, timeout=1800)[1] if path.exists() else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="skip running the notebooks")
    parser.add_argument("lessons", nargs="*", help="lesson numbers, such as 03 07 (default: all)")
    args = parser.parse_args()
    lectures = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.lessons:
        lectures = [p for p in lectures if p.name[:2] in args.lessons]
    print("| lesson | words | code lines | exercises | questions | run: lecture + solutions | estimate |")
    print("|---|---|---|---|---|---|---|")
    for lecture in lectures:
        notebook = nbformat.read(lecture, as_version=4)
        words, code = words_and_code(notebook)
        n_exercises = exercises(ROOT / "exercises" / lecture.name)
        questions = quiz_questions(notebook)
        not_run = args.no_run or lecture.name in BUILDS_A_MODEL
        seconds = 0.0 if not_run else run_seconds(lecture) + run_seconds(ROOT / "solutions" / lecture.name)
        minutes = (words / READING_WORDS_PER_MINUTE + code / CODE_LINES_PER_MINUTE + seconds / 60
                   + n_exercises * MINUTES_PER_EXERCISE + questions * MINUTES_PER_QUESTION)
        ran = "not run" if not_run else f"{seconds / 60:.1f} min"
        print(f"| {lecture.name[:2]} | {words:,} | {code} | {n_exercises} | {questions} | {ran} | "
              f"{5 * round(minutes / 5)} min |", flush=True)


if __name__ == "__main__":
    main()
