"""Exercise checks: `check_<exercise>(your_function)` prints a pass or what went wrong.

`hint()` then shows the next hint for that exercise, one at a time.
Each lesson's checks live in their own module; this package gathers them all.
"""

from .core import ALL_CHECKS, Case, CheckResult, exercise_check, hint, run_check, values_close  # noqa: F401
from .lesson00 import *  # noqa: F401,F403
from .lesson01 import *  # noqa: F401,F403
from .lesson02 import *  # noqa: F401,F403
from .lesson03 import *  # noqa: F401,F403
from .lesson04 import *  # noqa: F401,F403
from .lesson05 import *  # noqa: F401,F403
from .lesson06 import *  # noqa: F401,F403
from .lesson07 import *  # noqa: F401,F403
from .lesson08 import *  # noqa: F401,F403
from .lesson09 import *  # noqa: F401,F403
from .lesson10 import *  # noqa: F401,F403
from .lesson11 import *  # noqa: F401,F403
from .lesson12 import *  # noqa: F401,F403
from .lesson13 import *  # noqa: F401,F403
from .lesson14 import *  # noqa: F401,F403
