"""The machinery behind every exercise check.

A check runs the learner's function and the reference on several cases and prints either a
clear pass, or the first case that failed with expected vs got and the most likely cause.
The likely cause comes from `mistakes`: plausible wrong versions of the function (a missing
square root, an off-by-one timestep, ...). When the learner's output matches one of them, we
know what went wrong. Tests use the same mistakes to prove every check can fail.

When none of them matches, a few general probes look at how the learner's output relates to
the expected one: a constant factor, the opposite sign, swapped axes, values shifted by one
place, another dtype or device; and every check notices an input that the learner's function
changed in place.

Each exercise also has hints, from a nudge to something close to the answer. `hint()` shows
them one at a time, for the exercise whose check ran last.
"""

from __future__ import annotations

import copy
import inspect
import itertools
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
    if device_problem(got, expected):
        return False
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


def device_problem(got, expected) -> str | None:
    """How the device of `got` fails the one asked for, or None. Only two tensors have devices to compare."""
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.device.type != expected.device.type:
        return f"the result is on the {got.device.type} device; the exercise asks for {expected.device.type}"
    return None


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
    if isinstance(value, torch.Tensor) and value.device.type == "meta":
        return f"Tensor of shape {tuple(value.shape)}, {_dtype_name(value)}, on the meta device (no values)"
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
    learner's on the failing case names the likely cause; when none does, the general probes try.
    The learner's inputs are compared before and after each call: a function that changes one of
    them in place fails, even with the right result.
    has_hints: end a failure report by saying that `hint()` gives a hint.
    """
    if not callable(learner_fn):
        raise TypeError(f"{name}: expected a function, got {type(learner_fn).__name__}")
    report = None
    for case in cases:
        expected = _call(reference_fn, case)
        changed = []  # the names of the inputs the learner's call changed
        try:
            got = _call(learner_fn, case, changed)
        except NotImplementedError as error:
            report = f"❌ {name}: not filled in yet (your function raised NotImplementedError)"
            if str(error):
                report += "\n" + _wrap(f"to do: {error}", initial_indent="   ", subsequent_indent="          ")
            break
        if _same(got, expected, compare):
            if changed:
                report = (f"❌ {name}: failed on case '{case.label}'\n"
                          f"   the result is right, but {_changed_words(changed)}")
                break
            continue
        if isinstance(got, Raised) and not isinstance(expected, Raised):
            # the learner's code crashed: say where and why, not a traceback
            report = (
                f"❌ {name}: failed on case '{case.label}'\n"
                f"   your function raised {got.error.__name__}: {got.message}"
            )
            break
        where, got_part, expected_part = first_difference(got, expected)
        cause = _likely_cause(got, case, mistakes or {}, compare)
        if cause is None and changed:
            cause = _changed_words(changed)
        if cause is None:
            cause = probe(got_part, expected_part) or NO_KNOWN_CAUSE
        report = (
            f"❌ {name}: failed on case '{case.label}'\n"
            + (f"   first difference at {where}\n" if where else "")
            + f"   expected: {describe(expected_part)}\n"
            f"   got:      {describe(got_part)}\n"
            + _differing_element_line(got_part, expected_part)
            + f"   likely cause: {cause}"
        )
        break
    if report is None:
        report = f"✅ {name}: passed all {len(cases)} cases."
    elif has_hints:
        report += "\n   stuck? hint() gives a hint, one at a time."
    if verbose:
        print(report)
    return CheckResult(name=name, passed=report.startswith("✅"), report=report)


NO_KNOWN_CAUSE = ("none of the usual mistakes; go through your code against what the exercise asks, step by step, "
                  "and hint() gives the next hint.")


def _call(fn, case, changed=None):
    """fn's result on a case, or Raised(...) if it raised; NotImplementedError passes through.

    fn gets its own copies of the inputs. With a list as `changed`, the names of the inputs that
    the call changed in place are added to it.
    """
    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    inputs = _argument_names(fn, args, kwargs) if changed is not None else []
    before = [_snapshot(value) for _, value in inputs]
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as error:
        result = Raised(type(error), str(error))
    for (name, value), old in zip(inputs, before):
        if not _unchanged(_snapshot(value), old):
            changed.append(name)
    return result


def _argument_names(fn, args, kwargs):
    """[(name, value)] for each input of a call: the parameter's name where the signature tells it."""
    try:
        signature = inspect.signature(fn)
        parameters, bound = signature.parameters, signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [(f"argument {i + 1}", value) for i, value in enumerate(args)] + list(kwargs.items())
    names = []
    for name, value in bound.arguments.items():
        if parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            names += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            names += list(value.items())
        else:
            names.append((name, value))
    return names


class _NotWatchedType:
    """Stands for an input the in-place comparison does not look at (a model, a generator, ...)."""

    def __repr__(self):
        return "not watched"


_NOT_WATCHED = _NotWatchedType()


def _snapshot(value):
    """A copy of the plain data in `value` (tensors, arrays, numbers, strings, and lists, tuples and
    dicts of them), to compare after a call. Anything else, such as a model whose weights an
    exercise changes on purpose, is not watched."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if value.device.type != "meta" else _NOT_WATCHED
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value) if type(value) in (list, tuple) else _NOT_WATCHED
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str, np.number)):
        return value
    return _NOT_WATCHED


def _unchanged(now, before) -> bool:
    """True when the snapshot `now` holds the same data as `before`, or when neither is watched."""
    if before is _NOT_WATCHED or now is _NOT_WATCHED:
        return before is now
    if isinstance(before, torch.Tensor):
        if not (isinstance(now, torch.Tensor) and now.shape == before.shape and now.dtype == before.dtype):
            return False
        if before.is_floating_point():  # NaN is not equal to itself, but a NaN left in place is no change
            return bool(torch.equal(now.isnan(), before.isnan()) and torch.equal(now.nan_to_num(), before.nan_to_num()))
        return bool(torch.equal(now, before))
    if isinstance(before, np.ndarray):
        if not (isinstance(now, np.ndarray) and now.shape == before.shape and now.dtype == before.dtype):
            return False
        return bool(np.array_equal(now, before, equal_nan=np.issubdtype(before.dtype, np.inexact)))
    if isinstance(before, (list, tuple)):
        return (type(now) is type(before) and len(now) == len(before)
                and all(_unchanged(n, b) for n, b in zip(now, before)))
    if isinstance(before, dict):
        return (isinstance(now, dict) and now.keys() == before.keys()
                and all(_unchanged(now[k], before[k]) for k in before))
    both_nan = isinstance(before, float) and isinstance(now, float) and math.isnan(before) and math.isnan(now)
    return both_nan or now == before


def _changed_words(names) -> str:
    inputs = " and ".join(f"`{name}`" for name in names)
    return (f"your function changed its input {inputs} in place (an in-place operation such as add_, +=, or an "
            "assignment into it): leave the inputs as they are and build a new result")


def _same(got, expected, compare) -> bool:
    if isinstance(expected, Raised) or isinstance(got, Raised):
        return isinstance(got, Raised) and isinstance(expected, Raised) and issubclass(got.error, expected.error)
    return compare(got, expected)


def _likely_cause(got, case, mistakes, compare):
    """The first listed mistake whose output on `case` matches the learner's, or None."""
    for cause, wrong_fn in mistakes.items():
        try:
            wrong = _call(wrong_fn, case)
        except NotImplementedError:
            continue
        if _same(got, wrong, compare):
            return cause
    return None


# ---- general probes: how a wrong result relates to the expected one ---------------------------


def probe(got, expected) -> str | None:
    """Name, in plain words, how `got` differs from `expected` when no listed mistake explains it:
    another device or dtype, swapped axes, another shape, a constant factor (or the opposite sign),
    a constant offset, values shifted one place along an axis, or a number one off. None when no
    probe fits; a probe speaks only when the relation holds for every value."""
    found = device_problem(got, expected)
    if found:
        return found
    if _is_int(got) and _is_int(expected) and abs(got - expected) == 1:
        return f"one {'more' if got > expected else 'less'} than expected: an index or a count off by one?"
    try:
        g, e = _as_array(got), _as_array(expected)
    except (TypeError, ValueError, RuntimeError):
        return None
    if isinstance(got, (torch.Tensor, np.ndarray)) and isinstance(expected, (torch.Tensor, np.ndarray)):
        found = _transposed(g, e)
        if found:
            return found
        if g.shape != e.shape:
            return f"the shape is {tuple(g.shape)}; the exercise asks for {tuple(e.shape)}"
        found = dtype_problem(got, expected)
        if found:
            return found
    if g.shape != e.shape or g.dtype == bool or e.dtype == bool or not _numeric(g) or not _numeric(e):
        return None
    for find in (_constant_factor, _constant_offset, _shifted_by_one):
        found = find(g.astype(float), e.astype(float))
        if found:
            return found
    return None


def _numeric(array) -> bool:
    return np.issubdtype(array.dtype, np.number)


def _close(a, b, scale) -> bool:
    """a and b agree within the checks' tolerance, `scale` being the size of the expected values."""
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 + 1e-6 * scale, equal_nan=False))


def _transposed(g, e) -> str | None:
    if g.ndim != e.ndim or g.ndim < 2 or g.ndim > 5 or g.size != e.size or g.size < 2:
        return None
    scale = float(np.abs(e).max()) if e.size and _numeric(e) else 0.0
    for order in itertools.permutations(range(e.ndim)):
        moved = [axis for axis in order if e.shape[axis] != 1]
        if moved == sorted(moved):  # only axes of size 1 move: that is a reshape, not a transpose
            continue
        permuted = np.transpose(e, order)
        same = _close(g, permuted, scale) if _numeric(e) else np.array_equal(permuted, g)
        if permuted.shape == g.shape and same:
            swapped = [axis for axis, source in enumerate(order) if axis != source]
            if len(swapped) == 2:
                return f"transposed: axes {swapped[0]} and {swapped[1]} of your result are swapped"
            return (f"the axes are in another order: your result is the expected one with its axes permuted as "
                    f"{tuple(order)} (shape {tuple(g.shape)}; the exercise asks for {tuple(e.shape)})")
    return None


def _varied(e) -> bool:
    """At least two different non-zero values: a relation found on fewer would prove nothing."""
    values = np.unique(np.round(e[np.isfinite(e) & (e != 0)], 12))
    return len(values) >= 2


def _constant_factor(g, e) -> str | None:
    if not (np.isfinite(g).all() and np.isfinite(e).all()) or not _varied(e):
        return None
    scale = float(np.abs(e).max())
    if not g.any():
        return "the result is all zeros"
    k = float((g * e).sum() / (e * e).sum())
    if abs(k - 1) < 1e-3 or abs(k) < 1e-12 or not _close(g, k * e, scale * abs(k)):
        return None
    if abs(k + 1) < 1e-3:
        return "the sign is wrong: your result is minus the expected one"
    return (f"off by a constant factor: your result is {k:.4g} times the expected one (a scale, a square root "
            "or a power missing or extra?)")


def _constant_offset(g, e) -> str | None:
    if not (np.isfinite(g).all() and np.isfinite(e).all()) or not _varied(e):
        return None
    scale = float(np.abs(e).max())
    c = float((g - e).mean())
    if abs(c) <= 1e-5 + 1e-4 * scale or not _close(g, e + c, scale):
        return None
    return f"off by a constant: every value is {c:+.4g} from the expected one (a term missing or extra?)"


def _shifted_by_one(g, e) -> str | None:
    scale = float(np.abs(e[np.isfinite(e)]).max()) if np.isfinite(e).any() else 0.0
    for axis in range(e.ndim):
        if e.shape[axis] < 3:
            continue
        take = lambda a, start, stop: np.take(a, range(start, a.shape[axis] + stop), axis=axis)  # noqa: E731
        later, earlier = take(g, 1, 0), take(e, 0, -1)  # g[i] holds e[i - 1]
        if _close(later, earlier, scale) and _varied(earlier) and not _close(later, take(e, 1, 0), scale):
            return _shift_words(axis, e.ndim, "i - 1")
        sooner, after = take(g, 0, -1), take(e, 1, 0)  # g[i] holds e[i + 1]
        if _close(sooner, after, scale) and _varied(after) and not _close(sooner, take(e, 0, -1), scale):
            return _shift_words(axis, e.ndim, "i + 1")
    return None


def _shift_words(axis, ndim, source) -> str:
    along = f" along axis {axis}" if ndim > 1 else ""
    return (f"an index one off: your values are shifted by one place{along}; position i holds the value "
            f"expected at position {source}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _digits(value) -> str:
    """The values that `describe` shows, without the type, shape and dtype around them."""
    text = describe(value)
    return text[text.find("["):] if isinstance(value, (torch.Tensor, np.ndarray)) else text


def _differing_element_line(got, expected) -> str:
    """When expected and got print the same digits, a line naming the first element that differs."""
    if _digits(got) != _digits(expected):
        return ""
    try:
        g, e = _as_array(got), _as_array(expected)
    except (TypeError, ValueError, RuntimeError):
        return ""
    if g.shape != e.shape or not g.size:
        return ""
    if _numeric(g) and _numeric(e):
        differs = ~np.isclose(g.astype(float), e.astype(float), rtol=1e-4, atol=1e-5, equal_nan=True)
        if not differs.any():
            differs = g.astype(float) != e.astype(float)
    else:
        differs = g != e
    if not np.any(differs):
        return ""
    index = tuple(int(i) for i in np.argwhere(differs)[0])
    where = f" at index {index}" if index else ""
    show = lambda x: f"{float(x):.10g}" if _numeric(g) and _numeric(e) else repr(x.item())  # noqa: E731
    return f"   first element that differs{where}: expected {show(e[index])}, got {show(g[index])}\n"


def _is_numeric_sequence(value) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value)


def _as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            raise TypeError("a tensor on the meta device holds no values")
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
    check.prepare = prepare
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
