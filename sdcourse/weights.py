"""Loading library configs and weights into the from-scratch networks, with errors that say
what is wrong.

The one rule for configs, the same for the U-Net, the VAE, the text encoder and the samplers:
every field of a diffusers or transformers config is either
- used: it shapes the network (a missing one takes the library's default);
- fixed: a feature Stable Diffusion 1.x / 2.x does not use, accepted only at its default value;
- bookkeeping: it cannot change the forward pass (names, versions, initialisation, dtypes);
  it is accepted and ignored.
Any other field stops the build with a ValueError naming it: a field the course does not know
might change the network, and a silently different network is worse than an error.
Fields whose names start with "_" (`_class_name`, `_diffusers_version`) are bookkeeping, as
diffusers itself drops them.

A network states only what the library cannot say: the fields it uses and which of its twin's
own fields are bookkeeping (a `ConfigRule`). The rest comes from the library's config class:
its fields and their defaults, and the bookkeeping every config of that library carries.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from dataclasses import dataclass, field

from sdcourse.arguments import choice

# Fields transformers 4 wrote into every config (openai's CLIP config.json still carries them);
# transformers 5 no longer declares them, and none of them reaches a model's forward pass.
TRANSFORMERS_4_FIELDS = (
    "name_or_path", "torch_dtype", "add_cross_attention", "cross_attention_hidden_size", "decoder_start_token_id",
    "finetuning_task", "is_decoder", "prefix", "pruned_heads", "sep_token_id", "task_specific_params",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "torchscript", "use_bfloat16",
)


def read_config(config, network: str, used: dict, fixed: dict, bookkeeping=(), per_block=()) -> dict:
    """Apply the rule above to `config` (a dict, a diffusers config or a transformers config object).

    used: {field: default}; fixed: {field: tuple of accepted values}; bookkeeping: field names;
    per_block: the used fields that may hold one whole number per block. A used field must hold
    the kind of value its default has (`_check_kind`).
    Returns {field: value} for every used field, defaults filled in.
    """
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
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
    for key, default in used.items():
        if key in config:
            _check_kind(network, key, config[key], default, per_block=key in per_block)
    return {**used, **{key: value for key, value in config.items() if key in used}}


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# The kinds of value a field can hold, told by its library default: (type, test, in words).
# bool comes first: True is an int too.
_KINDS = (
    (bool, lambda v: isinstance(v, bool), "true or false"),
    (int, _whole, "a whole number"),
    (float, lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    (str, lambda v: isinstance(v, str), "a text in quotes"),
)


def _check_kind(network: str, key: str, value, default, per_block: bool = False) -> None:
    """A ValueError unless a field holds the kind of value its library default has: true or false,
    a whole number, a number, a text, or a list of one of these. per_block: a whole number may
    also be a list of them, one per block. A field whose default is None may hold anything (its
    network checks it)."""
    for kind, test, words in _KINDS:
        if isinstance(default, kind):
            if per_block and isinstance(value, (list, tuple)) and value and all(map(test, value)):
                return
            if not test(value):
                also = " or a list of them, one per block" if per_block else ""
                raise ValueError(f"{network} config: {key}={value!r}; it must be {words}{also}, like the "
                                 f"default {default!r}")
            return
    if isinstance(default, (list, tuple)):
        item = next((test for kind, test, _ in _KINDS if default and isinstance(default[0], kind)), None)
        if not isinstance(value, (list, tuple)) or item is not None and not all(map(item, value)):
            raise ValueError(f"{network} config: {key}={value!r}; it must be a list like the default {list(default)}")


@functools.cache
def library_fields(library_class: str) -> tuple[dict, frozenset]:
    """The config fields of a library class with their defaults, and the bookkeeping fields that
    every config of its library carries.

    library_class: "diffusers.<model class>" or "transformers.<config class>".
    """
    library, name = library_class.split(".")
    # imported here, on first use: importing diffusers or transformers takes seconds
    if library == "diffusers":
        import diffusers

        model = getattr(diffusers, name)
        # diffusers registers every argument of a model's __init__ in its config
        ignored = set(getattr(model, "ignore_for_config", ()))
        parameters = inspect.signature(model.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not p.empty and p.name not in ignored}, frozenset()
    if library == "transformers":
        import transformers

        fields = getattr(transformers, name)().to_dict()
        # every config's generic fields, the generation settings older configs saved (transformers
        # drops those when it reads them), and the fields of transformers 4
        generation = transformers.GenerationConfig._get_default_generation_params()
        return fields, frozenset({*transformers.PreTrainedConfig().to_dict(), *generation, *TRANSFORMERS_4_FIELDS})
    raise ValueError(f"library_class must start with 'diffusers.' or 'transformers.', got {library_class!r}")


@dataclass(frozen=True)
class ConfigRule:
    """The rule above for one network and its twin in a library.

    network:       the network's name in messages ("U-Net");
    library_class: its twin, "diffusers.UNet2DConditionModel" or "transformers.CLIPTextConfig";
    used:          the fields the network reads;
    bookkeeping:   the twin's own fields that cannot change the forward pass;
    also_accepted: {field: values} a fixed field accepts besides its default, values that keep the
                   network the same; it may name fields of older versions of the library too;
    per_block:     the used fields that take one whole number per block as well as one for all.
    Every other field of the twin is fixed at the library's default.
    """

    network: str
    library_class: str
    used: tuple[str, ...]
    bookkeeping: tuple[str, ...] = ()
    also_accepted: dict = field(default_factory=dict)
    per_block: tuple[str, ...] = ()

    def read(self, config) -> dict:
        """{field: value} for every used field of `config` (a dict or a library config object)."""
        defaults, library_bookkeeping = library_fields(self.library_class)
        bookkeeping = {*library_bookkeeping, *self.bookkeeping}
        fixed = {name: (default,) for name, default in defaults.items() if name not in self.used and name not in bookkeeping}
        for name, values in self.also_accepted.items():
            fixed[name] = (*fixed.get(name, ()), *values)
        used = {name: defaults[name] for name in self.used}
        return read_config(config, self.network, used=used, fixed=fixed, bookkeeping=bookkeeping,
                           per_block=self.per_block)


def check_block_types(config: dict, down: tuple, up: tuple) -> None:
    """Every entry of `down_block_types` is one of `down`, every entry of `up_block_types` one of
    `up`, and each has one entry per entry of `block_out_channels`."""
    levels = len(config["block_out_channels"])
    for key, allowed in (("down_block_types", down), ("up_block_types", up)):
        types = list(config[key])
        for i, block_type in enumerate(types):
            choice(f"{key}[{i}]", block_type, allowed)
        if len(types) != levels:
            raise ValueError(f"{key} has {len(types)} entries, but block_out_channels has {levels}")


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
