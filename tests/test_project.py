"""The project's own plumbing: environment files agree, exercises are in sync, notebooks are tidy."""

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_exercises  # noqa: E402


def pins(requirements):
    """{package: version spec} for requirement strings pinned with ==."""
    found = {}
    for line in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_environment_yml_pins_the_versions_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    makefile_torch = re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    wanted.update(pins([makefile_torch]))
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == wanted


def test_exercises_are_generated_from_solutions():
    stale = [
        str(path.relative_to(ROOT))
        for path, text in make_exercises.expected_exercises().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"exercises/ is out of date; run `make exercises`: {stale}"
    solutions = {p.name for p in (ROOT / "solutions").glob("*.ipynb")}
    exercises = {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    assert exercises == solutions
    assert solutions, "no solution notebooks found"


def test_blank_out_replaces_the_solution_with_the_hint():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    # HINT: double it\n    return 2 * x\n    ### END SOLUTION\n"
    assert make_exercises.blank_out(source) == "def f(x):\n    raise NotImplementedError('double it')\n"


@pytest.mark.parametrize(
    "source", ["### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"]
)
def test_blank_out_rejects_unbalanced_markers(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        make_exercises.blank_out(source)


def test_exercise_notebooks_hold_no_solutions():
    for path in (ROOT / "exercises").glob("*.ipynb"):
        text = path.read_text(encoding="utf-8")
        assert "BEGIN SOLUTION" not in text, path.name
        assert "NotImplementedError" in text, f"{path.name} has nothing to fill in"


def lesson_notebooks():
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", lesson_notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebooks_are_tidy_for_github(path):
    """Committed outputs are the ones a learner gets: executed, small, no tracebacks or machine paths."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert path.stat().st_size < 1_500_000, "keep figures small"
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c.get("execution_count") for c in code_cells), "run `make notebooks` to store the outputs"
    for cell in code_cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", "a stored traceback"
            text = json.dumps(output.get("text", "")) + json.dumps(output.get("data", {}).get("text/plain", ""))
            assert not re.search(r"/(work|tmp|root|home|Users)/[\w.-]+/", text), f"a machine path in: {text[:200]}"


def test_every_lesson_has_a_quiz_and_ends_with_it():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        last_code = next(c for c in reversed(cells) if c["cell_type"] == "code")
        number = path.name[:2]
        assert f'show_quiz("{number}")' in "".join(last_code["source"]), f"{path.name} should end with its quiz"
        assert list((ROOT / "sdcourse" / "quizzes").glob(f"{number}_*.yaml")), f"no quiz bank for lesson {number}"
