"""sdcourse: learn how Stable Diffusion works by building it."""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"
__all__ = ["load_pipeline", "FAST", "CourseWarning"]

# Fast mode: training loops in notebooks run fewer steps (set by `make test` and CI).
FAST = _os.environ.get("SDCOURSE_FAST", "0") not in ("", "0", "false", "False")


def __getattr__(name):
    # Imported on first use: loading diffusers takes a few seconds.
    if name == "load_pipeline":
        from .pipeline import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'sdcourse' has no attribute {name!r}")


class CourseWarning(UserWarning):
    """A warning meant for the learner. It prints as one line, without a file path."""


_default_formatwarning = _warnings.formatwarning


def _format_course_warning(message, category, filename, lineno, line=None):
    if issubclass(category, CourseWarning):
        return f"{category.__name__}: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_warnings.formatwarning = _format_course_warning
