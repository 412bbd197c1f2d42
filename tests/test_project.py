"""The project's own plumbing: environment files agree, exercises are in sync, notebooks are tidy."""

import ast
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


def test_blank_out_turns_the_todo_lines_into_the_stub_message():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    # TODO: Return x, doubled.\n    return 2 * x\n    ### END SOLUTION\n"
    assert make_exercises.blank_out(source) == 'def f(x):\n    raise NotImplementedError("Return x, doubled.")\n'


def test_several_todo_lines_make_one_message():
    source = (
        "def f(x):\n    ### BEGIN SOLUTION\n    # TODO: Return x, doubled,\n    # TODO: as a float.\n"
        "    return 2.0 * x\n    ### END SOLUTION\n"
    )
    stub = make_exercises.blank_out(source)
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match=r"^Return x, doubled, as a float\.$"):
        namespace["f"](1)


@pytest.mark.parametrize(
    "block, problem",
    [
        ("    return 2 * x\n", "no `# TODO: ...` line"),
        ("    # TODO: Return x, doubled.\n    # HINT: multiply by 2\n    return 2 * x\n", "HINT"),
        ("    # HINT: multiply by 2\n    return 2 * x\n", "HINT"),
        ("    y = 2 * x\n    # TODO: Return x, doubled.\n    return y\n", "at the start"),
    ],
)
def test_blank_out_rejects_a_block_without_todo_or_with_a_hint(block, problem):
    source = "def f(x):\n    ### BEGIN SOLUTION\n" + block + "    ### END SOLUTION\n"
    with pytest.raises(ValueError, match="solutions/99_demo.ipynb, cell 3, line") as error:
        make_exercises.blank_out(source, "solutions/99_demo.ipynb, cell 3")
    assert problem in str(error.value)


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


# Code in a stub message: an operator, a call `name(`, an index `name[`, an attribute `.name`.
FORMULA = re.compile(r"[=*/+^<>]|\s-\s|\w\(|\w\[|\.\w")


def stub_messages(path):
    """The message of every `raise NotImplementedError("...")` in a notebook's code cells."""
    messages = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = "\n".join(line for line in "".join(cell["source"]).split("\n") if not line.startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):  # every code cell must parse
            call = node.exc if isinstance(node, ast.Raise) else None
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "NotImplementedError":
                messages.append(call.args[0].value if call.args else "")
    return messages


@pytest.mark.parametrize("path", sorted((ROOT / "exercises").glob("*.ipynb")), ids=lambda p: p.name)
def test_stub_messages_say_what_to_write_not_how(path):
    solution = (ROOT / "solutions" / path.name).read_text(encoding="utf-8")
    messages = stub_messages(path)
    assert len(messages) == solution.count("### BEGIN SOLUTION"), "one stub per solution block"
    for message in messages:
        assert message.strip(), "an empty stub message"
        assert not FORMULA.search(message), f"a formula or code in the stub message: {message!r}"


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


LAST_LESSON = max((ROOT / "notebooks").glob("*.ipynb"))


def test_every_lesson_has_a_quiz_and_ends_with_it():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        number = path.name[:2]
        if path == LAST_LESSON:  # the course ends with its quiz, then the module test
            assert 'show_quiz("module")' in code[-1], f"{path.name} should end with the module test"
            code = code[:-1]
        assert f'show_quiz("{number}")' in code[-1], f"{path.name} should end with its quiz"
        assert list((ROOT / "sdcourse" / "quizzes").glob(f"{number}_*.yaml")), f"no quiz bank for lesson {number}"


def test_importing_the_course_leaves_warning_formatting_alone():
    """Course warnings print as one line; every other warning prints as Python prints it."""
    import subprocess
    import sys

    script = (
        "import warnings, sys; before = warnings.formatwarning; import sdcourse, sdcourse.pipeline; "
        "assert warnings.formatwarning is before, 'importing sdcourse changed warnings.formatwarning'; "
        "warnings.simplefilter('always'); sdcourse.warn('mind the gap'); warnings.warn('a plain one'); "
        "assert warnings.formatwarning is before"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "CourseWarning: mind the gap"
    assert lines[1].endswith("UserWarning: a plain one") and lines[1] != "UserWarning: a plain one"


def test_warn_takes_course_warnings_only():
    import sdcourse

    with pytest.raises(ValueError, match=r"category must be CourseWarning or a subclass of it, got <class 'UserWarning'>"):
        sdcourse.warn("a message", UserWarning)


def test_the_readme_layout_names_every_module():
    """A newcomer finds any piece from the README's layout table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    package = ROOT / "sdcourse"
    modules = [p for p in package.glob("*.py") if p.name != "__init__.py"]
    modules += [p for p in (package / "training").glob("*.py") if p.name != "__init__.py"]
    modules += [p for p in (package / "data").glob("*.py") if p.name != "__init__.py"]
    named = [p.relative_to(package).as_posix() for p in modules]
    missing = [name for name in named if f"`{name}`" not in layout and f"`{name.split('/')[-1]}`" not in layout]
    assert not missing, f"modules the README's layout table does not name: {missing}"
    for folder in ("evaluate/", "checks/", "quizzes/", "assets/"):
        assert f"`{folder}`" in layout, folder
