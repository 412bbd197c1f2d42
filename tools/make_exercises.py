"""Generate exercises/ from solutions/: every solution block becomes a blank to fill in.

In a solution notebook, code between `### BEGIN SOLUTION` and `### END SOLUTION` is the
answer. A line `# HINT: ...` right after `### BEGIN SOLUTION` becomes the message of the
`raise NotImplementedError(...)` that replaces the block. Outputs are cleared, so a learner
starts from a clean notebook.

    python tools/make_exercises.py           # write exercises/
    python tools/make_exercises.py --check   # exit 1 if exercises/ is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HINT = re.compile(r"^\s*#\s*HINT:\s*(.*)$")


def blank_out(source: str, where: str = "cell") -> str:
    """Replace each solution block in a cell's source with a NotImplementedError stub."""
    lines, out, inside, hint, indent = source.split("\n"), [], False, None, ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution block")
            inside, hint, indent = True, None, line[: len(line) - len(line.lstrip())]
            continue
        if stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            message = hint or "fill in this part"
            out.append(f"{indent}raise NotImplementedError({message!r})")
            inside = False
            continue
        if inside:
            match = HINT.match(line)
            if match and hint is None:
                hint = match.group(1).strip()
            continue
        out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def make_exercise_notebook(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    exercise = nbformat.v4.new_notebook(metadata=solution.metadata)
    for index, cell in enumerate(solution.cells):
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(blank_out(cell.source, f"{name}, cell {index}"))
            new.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        exercise.cells.append(new)
    for cell in exercise.cells:
        cell.pop("id", None)
    exercise.nbformat_minor = 4  # no cell ids: the generated file is the same on every run
    return exercise


def expected_exercises() -> dict[Path, str]:
    """{exercise path: the text it should hold}, for every notebook in solutions/."""
    result = {}
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        solution = nbformat.read(path, as_version=4)
        exercise = make_exercise_notebook(solution, path.name)
        result[ROOT / "exercises" / path.name] = nbformat.writes(exercise) + "\n"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether exercises/ is up to date")
    args = parser.parse_args(argv)
    expected = expected_exercises()
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    extra = [p for p in (ROOT / "exercises").glob("*.ipynb") if p not in expected]
    if args.check:
        for path in stale + extra:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    (ROOT / "exercises").mkdir(exist_ok=True)
    for path in stale:
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    for path in extra:
        print(f"no solution notebook for {path.relative_to(ROOT)}; delete it or add solutions/{path.name}")
    return 1 if extra else 0


if __name__ == "__main__":
    sys.exit(main())
