"""Loading library weights into the from-scratch networks, with errors that say what is wrong."""

from __future__ import annotations


class StateDictMismatch(ValueError, RuntimeError):
    """A state dict that does not fit a model. A ValueError (bad input) and, like torch's own
    loading errors, a RuntimeError."""


def _listed(items, limit=20) -> str:
    shown = [repr(item) for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more")
    return "[" + ", ".join(shown) + "]"


def check_state_dict(module, state_dict, strict=True, hint=None) -> None:
    """Raise StateDictMismatch listing missing, unexpected and wrongly shaped keys.

    strict=False checks shapes only, the way torch's non-strict loading still does.
    hint: a function of (missing, unexpected) returning an extra sentence, or None.
    """
    expected = module.state_dict()
    problems = []
    if strict:
        missing = sorted(k for k in expected if k not in state_dict)
        unexpected = sorted(k for k in state_dict if k not in expected)
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if hint is not None and (missing or unexpected):
            extra = hint(missing, unexpected)
            if extra:
                problems.append(extra)
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listed(mismatched)}")
    if problems:
        raise StateDictMismatch(
            f"{type(module).__name__}.load_state_dict: the state dict does not fit the model.\n  " + "\n  ".join(problems)
        )
