"""sdcourse: learn how Stable Diffusion works by building it."""

__version__ = "0.1.0"

import os as _os

# Fast mode: training loops in notebooks run fewer steps (set by `make test` and CI).
FAST = _os.environ.get("SDCOURSE_FAST", "0") not in ("", "0", "false", "False")
