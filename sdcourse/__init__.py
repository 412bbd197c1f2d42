"""sdcourse: learn how Stable Diffusion works by building it.

Importing the package changes one piece of global state, and only for the course's own
warnings: `warnings.formatwarning` prints a `CourseWarning` as one line, without the file
path and source line a learner cannot act on. Every other warning prints as before.
(The course's matplotlib style is applied only inside `sdcourse.plotting`'s own figures.)
"""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"
__all__ = ["load_pipeline", "FAST", "CourseWarning", "fast_mode_requested"]


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
    """A warning meant for the learner. It prints as one line, without a file path."""


def _format_course_warning(message, category, filename, lineno, line=None, *, _default=_warnings.formatwarning):
    if issubclass(category, CourseWarning):
        return f"{category.__name__}: {message}\n"
    return _default(message, category, filename, lineno, line)


# Installed once, even if the package is reloaded.
if getattr(_warnings.formatwarning, "__name__", "") != "_format_course_warning":
    _warnings.formatwarning = _format_course_warning
