"""The machinery behind every exercise check.

A check runs the learner's function and the reference on several cases and prints either a
clear pass, or the first case that failed with expected vs got and the most likely cause.
The likely cause comes from `mistakes`: plausible wrong versions of the function (a missing
square root, an off-by-one timestep, ...). When the learner's output matches one of them, we
know what went wrong. Tests use the same mistakes to prove every check can fail.

Each exercise also has hints, from a nudge to something close to the answer. `hint()` shows
them one at a time, for the exercise whose check ran last.
"""

from __future__ import annotations

import copy
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class Case:
    """One input to try: `fn(*args, **kwargs)`, described by `label` in failure reports."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Raised:
    """What a call did when it raised instead of returning: a reference may raise on purpose
    (say, ValueError for a size that is not allowed), and the learner's function must then too."""

    error: type
    message: str = ""

    def __repr__(self):
        return f"raises {self.error.__name__}"


@dataclass
class CheckResult:
    """What a check found. Truthy when it passed; the report was already printed."""

    name: str
    passed: bool
    report: str

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return f"CheckResult(name={self.name!r}, passed={self.passed})"

    def _ipython_display_(self):
        # The report is printed when the check runs; showing the result again would repeat it.
        pass


def values_close(got, expected, atol=1e-5, rtol=1e-4) -> bool:
    """True when `got` equals `expected` within tolerance; works through dicts, lists and tuples."""
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(expected)
            and all(values_close(got[k], expected[k], atol, rtol) for k in expected)
        )
    if isinstance(expected, (list, tuple)) and not _is_numeric_sequence(expected):
        return (
            isinstance(got, (list, tuple))
            and len(got) == len(expected)
            and all(values_close(g, e, atol, rtol) for g, e in zip(got, expected))
        )
    if isinstance(expected, str) or isinstance(got, str):
        return got == expected
    try:
        got_array, expected_array = _as_array(got), _as_array(expected)
    except (TypeError, ValueError):
        return got == expected
    if got_array.shape != expected_array.shape or dtype_problem(got, expected):
        return False
    if expected_array.dtype == bool or got_array.dtype == bool:
        return np.array_equal(got_array, expected_array)
    return bool(np.allclose(got_array, expected_array, atol=atol, rtol=rtol, equal_nan=True))


def _dtype_name(value) -> str:
    return str(value.dtype).removeprefix("torch.")


def dtype_problem(got, expected) -> str | None:
    """How the dtype of `got` fails the one asked for, or None. Only tensors and arrays have one:
    an integer or bool dtype must match exactly (a picture asked for as uint8 must be uint8);
    a float one may be any float width, but not an integer."""
    if not (isinstance(got, (torch.Tensor, np.ndarray)) and isinstance(expected, (torch.Tensor, np.ndarray))):
        return None
    asked, given = _dtype_name(expected), _dtype_name(got)
    is_float = lambda name: name.startswith(("float", "bfloat", "half", "double"))  # noqa: E731
    if is_float(asked) and is_float(given) or asked == given:
        return None
    return f"the dtype is {given}; the exercise asks for {asked}"


def first_difference(got, expected, where=""):
    """(where, got part, expected part) for the first place two nested values differ.

    `where` reads like `['levels'][2]['channels']`; it is empty when the values differ as a whole.
    """
    if isinstance(expected, dict) and isinstance(got, dict) and set(got) == set(expected):
        for key in expected:
            if not values_close(got[key], expected[key]):
                return first_difference(got[key], expected[key], f"{where}[{key!r}]")
    sequence = (list, tuple)
    if (
        isinstance(expected, sequence) and isinstance(got, sequence) and len(got) == len(expected)
        and not _is_numeric_sequence(expected)
    ):
        for index, (g, e) in enumerate(zip(got, expected)):
            if not values_close(g, e):
                return first_difference(g, e, f"{where}[{index}]")
    return where, got, expected


def describe(value, limit=6) -> str:
    """A short, readable summary of a value for a failure report."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = _as_array(value)
        flat = ", ".join(f"{x:.5g}" for x in array.ravel()[:limit].astype(float))
        more = ", ..." if array.size > limit else ""
        return f"{type(value).__name__} of shape {tuple(array.shape)}, {_dtype_name(value)}: [{flat}{more}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Raised):
        return f"raises {value.error.__name__}" + (f" ({value.message})" if value.message else "")
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + " ..."


def run_check(
    name: str,
    learner_fn: Callable,
    reference_fn: Callable,
    cases: list[Case],
    mistakes: dict[str, Callable] | None = None,
    *,
    compare: Callable[[Any, Any], bool] = values_close,
    verbose: bool = True,
    has_hints: bool = False,
) -> CheckResult:
    """Run `learner_fn` and `reference_fn` on every case; report the first disagreement.

    mistakes: {likely cause: wrong function}. The first wrong function whose output matches the
    learner's on the failing case names the likely cause.
    has_hints: end a failure report by saying that `hint()` gives a hint.
    """
    if not callable(learner_fn):
        raise TypeError(f"{name}: expected a function, got {type(learner_fn).__name__}")
    report = None
    for case in cases:
        expected = _call(reference_fn, case)
        try:
            got = _call(learner_fn, case)
        except NotImplementedError as error:
            report = f"❌ {name}: not filled in yet (your function raised NotImplementedError)"
            if str(error):
                report += "\n" + _wrap(f"to do: {error}", initial_indent="   ", subsequent_indent="          ")
            break
        if _same(got, expected, compare):
            continue
        if isinstance(got, Raised) and not isinstance(expected, Raised):
            # the learner's code crashed: say where and why, not a traceback
            report = (
                f"❌ {name}: failed on case '{case.label}'\n"
                f"   your function raised {got.error.__name__}: {got.message}"
            )
            break
        cause = _likely_cause(got, case, mistakes or {}, compare)
        where, got_part, expected_part = first_difference(got, expected)
        if cause.startswith("none of the usual mistakes"):
            # Say plainly when the values may be right but their shape or dtype is not.
            shapes = [tuple(v.shape) for v in (got_part, expected_part) if isinstance(v, (torch.Tensor, np.ndarray))]
            if len(shapes) == 2 and shapes[0] != shapes[1]:
                cause = f"the shape is {shapes[0]}; the exercise asks for {shapes[1]}"
            elif dtype_problem(got_part, expected_part):
                cause = dtype_problem(got_part, expected_part)
        report = (
            f"❌ {name}: failed on case '{case.label}'\n"
            + (f"   first difference at {where}\n" if where else "")
            + f"   expected: {describe(expected_part)}\n"
            f"   got:      {describe(got_part)}\n"
            f"   likely cause: {cause}"
        )
        break
    if report is None:
        report = f"✅ {name}: passed all {len(cases)} cases."
    elif has_hints:
        report += "\n   stuck? hint() gives a hint, one at a time."
    if verbose:
        print(report)
    return CheckResult(name=name, passed=report.startswith("✅"), report=report)


def _call(fn, case):
    """fn's result on a case, or Raised(...) if it raised; NotImplementedError passes through."""
    try:
        return fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
    except NotImplementedError:
        raise
    except Exception as error:
        return Raised(type(error), str(error))


def _same(got, expected, compare) -> bool:
    if isinstance(expected, Raised) or isinstance(got, Raised):
        return isinstance(got, Raised) and isinstance(expected, Raised) and issubclass(got.error, expected.error)
    return compare(got, expected)


def _likely_cause(got, case, mistakes, compare):
    for cause, wrong_fn in mistakes.items():
        try:
            wrong = _call(wrong_fn, case)
        except NotImplementedError:
            continue
        if _same(got, wrong, compare):
            return cause
    return ("none of the usual mistakes; go through your code against what the exercise asks, step by step, "
            "and hint() gives the next hint.")


def _is_numeric_sequence(value) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value)


def _as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy() if value.dtype != torch.bool else value.cpu().numpy()
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return np.array(np.nan)
        return np.asarray(value, dtype=float)
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError("not numeric")
    return array


ALL_CHECKS: dict[str, Callable] = {}
_hints_shown: dict[str, int] = {}  # {exercise name: how many of its hints were shown}
_last_checked: str | None = None  # the exercise whose check ran last


def exercise_check(name, reference_fn, make_cases, mistakes, *, hints, solution, compare=values_close, prepare=None):
    """Build a `check_...(fn)` function for one exercise and register it.

    make_cases: a function returning the list of `Case`s (built lazily, so importing the
    checks stays cheap). The returned check keeps `reference`, `mistakes` and `cases` as
    attributes, which is how the tests prove that it passes on the reference and fails on
    every listed mistake.
    hints: what `hint()` shows, one at a time: a nudge first, something close to the answer last.
    solution: the notebook with the worked answer, e.g. "solutions/02_noise_schedules.ipynb".
    prepare: for an exercise that is not one function (a class, or a function that changes a
    model in place): turns what the learner passes into the function the cases call, such as
    "build a layer from this class, run it, and report what it did". The reference and the
    mistakes are then written in the learner's form (classes, say) and prepared the same way.
    """
    if not mistakes:
        raise ValueError(f"{name}: a check needs at least one plausible mistake to guard against")
    if isinstance(hints, str) or not hints or not all(isinstance(h, str) and h.strip() for h in hints):
        raise ValueError(f"{name}: hints must be a list of one or more non-empty strings")
    if name in ALL_CHECKS:
        raise ValueError(f"name={name!r} is already the name of another exercise check; choose a new one")

    def check(learner_fn, verbose=True):
        global _last_checked
        _last_checked = name
        learner, reference, wrong = learner_fn, reference_fn, mistakes
        if prepare is not None:
            learner, reference = prepare(learner_fn), prepare(reference_fn)
            wrong = {cause: prepare(fn) for cause, fn in mistakes.items()}
        return run_check(name, learner, reference, make_cases(), wrong, compare=compare, verbose=verbose,
                         has_hints=True)

    check.__name__ = "check_" + name
    check.__doc__ = f"Check your `{name}` against the reference on several cases."
    check.reference = reference_fn
    check.mistakes = mistakes
    check.cases = make_cases
    check.hints = list(hints)
    check.solution = solution
    ALL_CHECKS[name] = check
    return check


def hint(name=None) -> None:
    """Print the next hint for an exercise; with no name, for the exercise whose check ran last."""
    if name is None and _last_checked is None:
        print('No check has run yet, so name the exercise, as in hint("add_noise").\n' + _exercises())
        return
    name = _last_checked if name is None else name
    if name not in ALL_CHECKS:
        print(f"There is no exercise named {name!r}.\n" + _exercises())
        return
    check = ALL_CHECKS[name]
    shown, total = _hints_shown.get(name, 0), len(check.hints)
    if shown == total:
        print(f"{name}: that was the last hint ({total} of {total}). The worked answer is in {check.solution}.")
        return
    _hints_shown[name] = shown + 1
    print(_wrap(f"💡 {name}, hint {shown + 1} of {total}: {check.hints[shown]}", subsequent_indent="   "))


def _wrap(text, **indents) -> str:
    """Lines of at most 100 characters that never split a word or a piece of code."""
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False, **indents)


def _exercises() -> str:
    return _wrap("Exercises: " + ", ".join(sorted(ALL_CHECKS)), subsequent_indent="   ")
