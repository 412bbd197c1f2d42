"""Checking the arguments of the course's public functions, in one place.

Every check returns the value in its plain Python type, or raises a ValueError that names the
argument, the value given and what is allowed:

    >>> whole_number("num_inference_steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: num_inference_steps must be at least 1, got 0

Whole numbers may be of any integer type (int, numpy.int64, a 0-d integer tensor), never a
bool. Real numbers may be ints or floats of any kind, never a bool or NaN.
"""

from __future__ import annotations

import math
import numbers
import operator


def whole_number(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int, from `minimum` to `maximum` (both included, either may be None)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and maximum is not None and not minimum <= number <= maximum:
        raise ValueError(f"{name} must be from {minimum} to {maximum}, got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {number}")
    return number


def random_seed(name: str, value, count: int = 1) -> int:
    """A seed for torch.Generator().manual_seed, from 0 to 2**63 - 1; `count` seeds value, value + 1, ...
    must all be in that range (a call that seeds picture i with seed + i)."""
    return whole_number(name, value, minimum=0, maximum=2**63 - count)


def real_number(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False, meaning: str = "") -> float:
    """`value` as a float in the interval from `low` to `high`.

    The ends are included unless `low_open` / `high_open`; infinite ends are never reached.
    `meaning` (e.g. "0: plain DDIM, 1: as much noise as DDPM") is added to the message in brackets.
    """
    allowed = describe_interval(low, high, low_open, high_open)
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if is_number:
        number = float(value)
        inside = (number > low if low_open else number >= low) and (number < high if high_open else number <= high)
        if inside and math.isfinite(number):
            return number
    explained = f" ({meaning})" if meaning else ""
    raise ValueError(f"{name} must be {allowed}{explained}, got {value!r}")


def describe_interval(low, high, low_open=False, high_open=False) -> str:
    """The interval in words a learner reads at once: "a number in [0, 1]", "a number above 0", ..."""
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"a number above {_plain(low)}" if low_open else f"a number >= {_plain(low)}"
    if math.isinf(low):
        return f"a number below {_plain(high)}" if high_open else f"a number <= {_plain(high)}"
    return f"a number in {'(' if low_open else '['}{_plain(low)}, {_plain(high)}{')' if high_open else ']'}"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def probability(name: str, value, *, below_one: bool = False, meaning: str = "") -> float:
    """A share or probability: a float in [0, 1], or [0, 1) with `below_one`."""
    return real_number(name, value, 0.0, 1.0, high_open=below_one, meaning=meaning)


def choice(name: str, value, allowed):
    """`value` if it is one of `allowed` (any collection; a dict's keys), else a ValueError listing them."""
    options = list(allowed)
    try:
        known = value in options
    except TypeError:  # an unhashable value against a dict's keys, say
        known = False
    if not known:
        listed = ", ".join(repr(option) for option in options)
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {listed}")
    return value


def flag(name: str, value) -> bool:
    """`value` if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
