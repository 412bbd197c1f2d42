"""sdcourse: learn how Stable Diffusion works by building it.

Importing the package changes no global state: the course's warnings (`warn`) format
themselves, and its matplotlib style is applied only inside `sdcourse.plotting`'s own figures.
"""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"
__all__ = ["load_pipeline", "FAST", "CourseWarning", "warn", "fast_mode_requested"]


def fast_mode_requested() -> bool:
    """True when the environment variable SDCOURSE_FAST is set to anything but "", "0" or "false".

    Fast mode (set by `make test` and CI) makes training loops in notebooks and the build run
    fewer steps; it never skips a cell.
    """
    return _os.environ.get("SDCOURSE_FAST", "0").strip().lower() not in ("", "0", "false")


FAST = fast_mode_requested()


def __getattr__(name):
    # Imported on first use: loading diffusers takes a few seconds.
    if name == "load_pipeline":
        from .pipeline import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'sdcourse' has no attribute {name!r}")


class CourseWarning(UserWarning):
    """A warning meant for the learner. `warn` prints it as one line, without a file path."""


def warn(message: str, category: type[CourseWarning] = CourseWarning, stacklevel: int = 2):
    """Warn the learner in one line, "CourseWarning: message", without the file path and source
    line of the course's code, which a learner cannot act on.

    The one-line format is in force for this warning alone: every other warning prints as
    Python prints it. Filters work as for any warning (`warnings.simplefilter("error", CourseWarning)`).
    """
    if not (isinstance(category, type) and issubclass(category, CourseWarning)):
        raise ValueError(f"category must be CourseWarning or a subclass of it, got {category!r}")
    python_format = _warnings.formatwarning
    _warnings.formatwarning = _one_line
    try:
        _warnings.warn(message, category, stacklevel=stacklevel + 1)
    finally:
        _warnings.formatwarning = python_format


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"
