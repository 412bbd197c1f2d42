"""Generate exercises/ from solutions/: every solution block becomes a blank to fill in.

In a solution notebook, code between `### BEGIN SOLUTION` and `### END SOLUTION` is the
answer. The block starts with one or more `# TODO: ...` lines that say what to write (the
inputs, the output and its shape), never how. They become the message of the
`raise NotImplementedError(...)` that replaces the block. Hints do not go here: they live
beside the exercise's check in sdcourse/checks (`hints=[...]`), and `hint()` shows them.
Outputs are cleared, so a learner starts from a clean notebook.

    python tools/make_exercises.py           # write exercises/
    python tools/make_exercises.py --check   # exit 1 if exercises/ is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TODO = re.compile(r"^\s*#\s*TODO:\s*(.*)$")
HINT = re.compile(r"^\s*#\s*HINT:")


def stub(todo: list[str], indent: str) -> list[str]:
    """The lines of `raise NotImplementedError("...")`, one string piece per TODO line."""
    texts = [text + " " for text in todo[:-1]] + todo[-1:]  # the pieces join with a space between lines
    # json.dumps writes a double-quoted string literal that Python reads back unchanged
    pieces = [json.dumps(text, ensure_ascii=False) for text in texts]
    if len(pieces) == 1:
        return [f"{indent}raise NotImplementedError({pieces[0]})"]
    return [f"{indent}raise NotImplementedError(", *(f"{indent}    {piece}" for piece in pieces), f"{indent})"]


def blank_out(source: str, where: str = "cell") -> str:
    """Replace each solution block in a cell's source with a NotImplementedError stub."""
    out, inside, todo, code_seen, indent, start = [], False, [], False, "", 0
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution block")
            inside, todo, code_seen, start = True, [], False, number
            indent = line[: len(line) - len(line.lstrip())]
            continue
        if stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            if not todo:
                raise ValueError(
                    f"{where}, line {start}: the solution block has no `# TODO: ...` line; "
                    "start it with one that says what to write"
                )
            out.extend(stub(todo, indent))
            inside = False
            continue
        if not inside:
            out.append(line)
        elif HINT.match(line):
            raise ValueError(
                f"{where}, line {number}: a `# HINT:` line in a solution block; say what to write in "
                "`# TODO:` lines, and put hints in the exercise check's hints=[...] in sdcourse/checks"
            )
        elif TODO.match(line):
            if code_seen:
                raise ValueError(f"{where}, line {number}: `# TODO:` lines go at the start of the solution block")
            todo.append(TODO.match(line).group(1).strip())
        elif stripped:
            code_seen = True
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
