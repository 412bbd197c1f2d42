"""Loading library configs and weights into the from-scratch networks, with errors that say
what is wrong.

The one rule for configs, the same for the U-Net, the VAE and the text encoder: every field of
a diffusers or transformers config is either
- used: it shapes the network (a missing one takes the library's default);
- fixed: a feature Stable Diffusion 1.x / 2.x does not use, accepted only at its default value;
- bookkeeping: it cannot change the forward pass (names, versions, initialisation, dtypes);
  it is accepted and ignored.
Any other field stops the build with a ValueError naming it: a field the course does not know
might change the network, and a silently different network is worse than an error.
Fields whose names start with "_" (`_class_name`, `_diffusers_version`) are bookkeeping.
"""

from __future__ import annotations


def read_config(config, network: str, used: dict, fixed: dict, bookkeeping=()) -> dict:
    """Apply the rule above to `config` (a dict or a library config object).

    used: {field: default}; fixed: {field: tuple of accepted values}; bookkeeping: field names.
    Returns {field: value} for every used field, defaults filled in.
    """
    config = {key: value for key, value in dict(config).items() if not key.startswith("_")}
    unknown = sorted(set(config) - set(used) - set(fixed) - set(bookkeeping))
    if unknown:
        raise ValueError(
            f"{network} config: unknown fields {unknown}. This network reads {sorted(used)}; "
            f"fields for features it does not implement must keep their defaults: {sorted(fixed)}"
        )
    for key, accepted in fixed.items():
        if key in config and config[key] not in accepted:
            allowed = " or ".join(repr(value) for value in accepted)
            raise ValueError(f"{network} config: {key}={config[key]!r} is not supported by this {network} (only {allowed})")
    return {**used, **{key: value for key, value in config.items() if key in used}}


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
