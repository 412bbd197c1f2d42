"""Checks for lesson 10: LoRA from scratch (the LoRA layer, checked against peft's; the size of an
adapter; wrapping a model's layers)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from functools import lru_cache

import torch
from torch import nn

from .core import Case, exercise_check

__all__ = ["PeftLoRALinear", "check_lora_linear", "check_lora_size", "check_inject"]

SOLUTION_NOTEBOOK = "solutions/10_lora_from_scratch.ipynb"  # hint() points here after the last hint
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


# ---- exercise 1: the LoRA layer ----------------------------------------------------------------


class PeftLoRALinear(nn.Module):
    """peft's LoRA layer around `base`, seen through the exercise's names: `base`, `lora_A`
    (rank, d_in), `lora_B` (d_out, rank), `forward` and `merge()`. The reference of the check."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        holder = nn.Sequential(OrderedDict(layer=base))
        self.peft = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["layer"]))

    @property
    def _layer(self):
        return self.peft.base_model.model.layer  # peft's lora.Linear

    @property
    def base(self):
        return self._layer.base_layer

    @property
    def lora_A(self):
        return self._layer.lora_A["default"].weight

    @property
    def lora_B(self):
        return self._layer.lora_B["default"].weight

    def forward(self, x):
        return self._layer(x)

    def merge(self):
        self._layer.merge()


def _layer_report(cls):
    """What a LoRA layer class does: build it around a Linear layer, look at it at the start, give
    it known A and B, run it, merge it and run it again."""
    if isinstance(cls, nn.Module):
        raise TypeError("pass the class itself, as in check_lora_linear(LoRALinear), not a layer made from it")

    def report(base, rank, alpha, A, B, x):
        d_out, d_in = base.weight.shape
        with torch.no_grad():
            base_output = base(x)
        with torch.random.fork_rng():  # the same start for every layer built here, and the global state left alone
            torch.manual_seed(0)
            layer = cls(base, rank, alpha)
        trainable = {"base.weight": layer.base.weight.requires_grad}
        if layer.base.bias is not None:
            trainable["base.bias"] = layer.base.bias.requires_grad
        trainable.update(lora_A=layer.lora_A.requires_grad, lora_B=layer.lora_B.requires_grad)
        shapes = {"lora_A": tuple(layer.lora_A.shape), "lora_B": tuple(layer.lora_B.shape)}
        with torch.no_grad():
            result = {
                "trainable": trainable,
                "shapes": shapes,
                "starts as the base layer": bool(torch.allclose(layer(x), base_output, atol=1e-6)),
                "A starts random": bool(layer.lora_A.abs().sum() > 0),
                "A starts like a Linear layer's weight": _starts_like_linear(layer.lora_A, d_in),
            }
        if shapes != {"lora_A": (rank, d_in), "lora_B": (d_out, rank)}:
            skipped = "not run: lora_A must be (rank, d_in) and lora_B (d_out, rank)"
            return {**result, "output": skipped, "merged weight": skipped, "output after merge": skipped}
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            output = layer(x).detach().clone()
        try:
            layer.merge()
        except Exception as error:  # noqa: BLE001 (a merge that fails is reported like a wrong one)
            failed = f"merge raised {type(error).__name__}: {error}"
            return {**result, "output": output, "merged weight": failed, "output after merge": failed}
        with torch.no_grad():
            merged_weight = layer.base.weight.detach().clone()
            after = layer(x).detach().clone()
        return {**result, "output": output, "merged weight": merged_weight, "output after merge": after}

    return report


def _starts_like_linear(A, d_in):
    """Whether A looks drawn as PyTorch draws a Linear layer's weight, kaiming_uniform_(a=sqrt(5)):
    uniform in [-1 / sqrt(d_in), 1 / sqrt(d_in)]. Its values must stay inside that range, reach past
    its middle, and take both signs (with 16 or more values, a true draw does all three but once in
    thousands of seeds, and the check always uses the same seed)."""
    bound = 1 / math.sqrt(d_in)
    values = A.detach().flatten()
    return bool(values.abs().max() <= bound * (1 + 1e-6) and values.abs().max() > bound / 2
                and values.min() < 0 < values.max())


class _LoRA(nn.Module):
    """A plain LoRA layer: the mistakes below each change one thing in it."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        d_out, d_in = base.weight.shape
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.merged = False

    def update(self, x):
        return (x @ self.lora_A.T) @ self.lora_B.T

    def forward(self, x):
        y = self.base(x)
        return y if self.merged else y + self.scaling * self.update(x)

    def delta(self):
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True


class _ScaledByAlpha(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        self.scaling = alpha


class _SwappedShapes(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        d_out, d_in = base.weight.shape
        self.lora_A = nn.Parameter(torch.empty(d_in, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(rank, d_out))

    def update(self, x):
        return x @ self.lora_A @ self.lora_B

    def delta(self):
        return self.scaling * (self.lora_A @ self.lora_B).T


class _NotTransposed(_LoRA):
    def update(self, x):
        return x @ (self.lora_B @ self.lora_A)


class _NoBaseOutput(_LoRA):
    def forward(self, x):
        return self.scaling * self.update(x)


class _RandomB(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        nn.init.normal_(self.lora_B)


class _NormalA(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        nn.init.normal_(self.lora_A)


class _ZeroA(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        nn.init.zeros_(self.lora_A)


class _NotFrozen(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        self.base.requires_grad_(True)


class _PlainTensors(_LoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        A, B = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        del self.lora_A, self.lora_B
        self.lora_A, self.lora_B = A, B


class _MergeWithoutScale(_LoRA):
    def delta(self):
        return self.lora_B @ self.lora_A


class _MergeWithGradients(_LoRA):
    def merge(self):
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True


class _AddsAfterMerge(_LoRA):
    def forward(self, x):
        return self.base(x) + self.scaling * self.update(x)


def _layer_cases():
    g = torch.Generator().manual_seed(10)

    def case(label, d_in, d_out, rank, alpha, x_shape, bias=True):
        base = nn.Linear(d_in, d_out, bias=bias)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in))
            if bias:
                base.bias.copy_(torch.randn(d_out, generator=g) * 0.1)
        A = torch.randn(rank, d_in, generator=g) * 0.5
        B = torch.randn(d_out, rank, generator=g) * 0.5
        return Case(label, (base, rank, alpha, A, B, torch.randn(*x_shape, generator=g)))

    return [
        case("a square 8 x 8 layer, rank 2, alpha 4, three inputs", 8, 8, 2, 4.0, (3, 8)),
        case("6 features in, 10 out, rank 3, alpha 3", 6, 10, 3, 3.0, (4, 6)),
        case("12 in, 5 out, no bias, rank 4, alpha 1", 12, 5, 4, 1.0, (2, 12), bias=False),
        case("attention-shaped input (2 pictures, 7 tokens, 16 features), rank 1, alpha 8", 16, 16, 1, 8.0,
             (2, 7, 16)),
    ]


check_lora_linear = exercise_check(
    "lora_linear",
    PeftLoRALinear,
    _layer_cases,
    mistakes={
        "the update was scaled by alpha; it is scaled by alpha / rank": _ScaledByAlpha,
        "A and B have each other's shapes: A is (rank, d_in) and B is (d_out, rank), stored (out, in) like a "
        "Linear layer's weight": _SwappedShapes,
        "the update was applied as x (B A); a Linear layer applies its weight transposed, x (B A)^T, "
        "which is (x A^T) B^T": _NotTransposed,
        "the base layer's output is missing: LoRA adds its update to the frozen layer's output": _NoBaseOutput,
        "B starts random, so the new layer does not start as the base layer: B starts at zero": _RandomB,
        "A starts at zero: with A and B both zero no gradient reaches either, and training never starts": _ZeroA,
        "A does not start as a Linear layer's weight does: draw it with nn.init.kaiming_uniform_(A, a=math.sqrt(5)), "
        "uniform within 1 / sqrt(d_in) of zero, as peft does": _NormalA,
        "the base layer is not frozen: only lora_A and lora_B should train": _NotFrozen,
        "lora_A and lora_B are plain tensors: wrap them in nn.Parameter so that they train": _PlainTensors,
        "merge added B A without the scale alpha / rank": _MergeWithoutScale,
        "merge changed the weight while autograd was recording: merge under torch.no_grad(), since a merge "
        "is not a step to learn from": _MergeWithGradients,
        "after merge the update is added twice: once it is in W, forward must not add it again": _AddsAfterMerge,
    },
    hints=[
        "Keep the Linear layer as self.base and freeze it. A is (rank, d_in), random like a Linear layer's "
        "weight; B is (d_out, rank), zeros. Both are nn.Parameter.",
        "forward: the base layer's output plus (alpha / rank) times the update. The update goes through A "
        "first (down to rank numbers), then through B (up to d_out).",
        "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5)) starts A; forward returns self.base(x) + "
        "(alpha / rank) * update, with update = (x @ self.lora_A.T) @ self.lora_B.T. merge, under torch.no_grad(): "
        "self.base.weight += (alpha / rank) * self.lora_B @ self.lora_A, and remember that it is merged, so "
        "forward stops adding the update.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_layer_report,
)


# ---- exercise 2: the size of an adapter ---------------------------------------------------------


def _matches(name, target):
    # peft's rule: a target names a layer by the end of its full name, after a dot
    return name == target or name.endswith("." + target)


def _size(model, target_modules, rank, match=_matches, per_layer=lambda d_in, d_out, r: r * (d_in + d_out)):
    layers = [layer for name, layer in model.named_modules()
              if isinstance(layer, nn.Linear) and any(match(name, t) for t in target_modules)]
    return {"layers": len(layers),
            "parameters": sum(per_layer(layer.in_features, layer.out_features, rank) for layer in layers)}


def lora_size_reference(model, target_modules, rank):
    from ..lora import inject_lora, lora_parameter_count

    names = inject_lora(model, target_modules, rank=rank)  # on a copy of the model: the check's cases are copied
    return {"layers": len(names), "parameters": lora_parameter_count(model)}


@lru_cache(maxsize=None)
def _tiny_config(part):
    from ..pipeline import resolve_model

    config = json.loads((resolve_model() / part / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


SD2_STYLE = {  # SD 2.x's layout, small: its transformer blocks read and write through Linear layers
    "block_out_channels": (8, 16, 16), "norm_num_groups": 4, "layers_per_block": 1, "sample_size": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12, "attention_head_dim": [2, 4, 4], "use_linear_projection": True,
    "in_channels": 4, "out_channels": 4,
}


@lru_cache(maxsize=None)
def _shape_only(kind):
    """A model built on the meta device: every parameter has its shape and no numbers (no memory).
    The cases copy it, so the cached one is never changed."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..unet import SD15_UNET_CONFIG, UNet

    with torch.device("meta"):
        if kind == "tiny unet":
            return UNet.from_config(_tiny_config("unet"))
        if kind == "tiny text encoder":
            return CLIPTextModel(CLIPTextConfig(**_tiny_config("text_encoder")))
        if kind == "sd2-style unet":
            return UNet.from_config(SD2_STYLE)
        return UNet.from_config(SD15_UNET_CONFIG)


def _size_cases():
    return [
        Case("the tiny model's U-Net, the four attention projections, rank 4",
             (_shape_only("tiny unet"), ATTENTION, 4)),
        Case("the tiny model's U-Net, to_k and to_v only, rank 8", (_shape_only("tiny unet"), ("to_k", "to_v"), 8)),
        Case("target 'proj' on a small SD 2.x-style U-Net (whose projections are Linear layers), rank 2",
             (_shape_only("sd2-style unet"), ("proj",), 2)),
        Case("the tiny model's text encoder, q_proj and v_proj, rank 2",
             (_shape_only("tiny text encoder"), ("q_proj", "v_proj"), 2)),
        Case("SD 1.5's U-Net (shapes only), the four attention projections, rank 4",
             (_shape_only("sd15 unet"), ATTENTION, 4)),
    ]


check_lora_size = exercise_check(
    "lora_size",
    lora_size_reference,
    _size_cases,
    mistakes={
        "that counts the whole update matrix, d_out x d_in: LoRA trains A and B, rank x (d_in + d_out)": (
            lambda model, targets, rank: _size(model, targets, rank, per_layer=lambda d_in, d_out, r: d_in * d_out)
        ),
        "a target matched every name that contains it; it matches the end of a name, after a dot "
        "('proj' is ff.net.0.proj, not proj_in or time_emb_proj)": (
            lambda model, targets, rank: _size(model, targets, rank, match=lambda name, t: t in name)
        ),
        "a target matched only a whole name; it names a layer by the end of its full name, as peft does": (
            lambda model, targets, rank: _size(model, targets, rank, match=lambda name, t: name == t)
        ),
        "A and B were counted with biases; LoRA's A and B have none": (
            lambda model, targets, rank: _size(model, targets, rank,
                                               per_layer=lambda d_in, d_out, r: r * (d_in + d_out) + r + d_out)
        ),
    },
    hints=[
        "Walk over model.named_modules(). A layer counts when it is an nn.Linear and its name is a target, "
        "or ends with a dot and a target.",
        "Each chosen layer trains A (rank x in_features) and B (out_features x rank).",
        "name == t or name.endswith('.' + t); then parameters = sum of rank * (layer.in_features + "
        "layer.out_features) over the chosen layers, and layers = how many there are.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: inject -------------------------------------------------------------------------


def inject_reference(model, target_modules, rank, alpha, layer_class):
    from ..lora import inject_lora

    return sorted(inject_lora(model, target_modules, rank=rank, alpha=alpha))  # wraps with sdcourse.lora.LoRALinear


def _inject_report(inject):
    """What an inject function does to a model: the names it returns, what trains afterwards, and
    the model's output once every LoRA layer it now runs has random A and B."""

    def report(model, target_modules, rank, alpha, inputs):
        from ..lora import LoRALinear

        names = inject(model, target_modules, rank, alpha, LoRALinear)
        g = torch.Generator().manual_seed(0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # these U-Nets are tiny: on a busy CPU, more threads only wait for each other
        try:
            with torch.no_grad():
                for _, layer in sorted(model.named_modules(), key=lambda item: item[0]):
                    if isinstance(layer, LoRALinear):
                        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
                        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
                output = model(*inputs)
        finally:
            torch.set_num_threads(threads)
        return {
            "names": list(names) if isinstance(names, (list, tuple)) else names,  # in the order returned
            "trainable parameters": sorted(name for name, p in model.named_parameters() if p.requires_grad),
            "output with random A and B": output,
        }

    return report


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _inject_variant(match=_matches, freeze="before", dotted=False, order=sorted):
    def inject(model, target_modules, rank, alpha, layer_class):
        chosen = [name for name, layer in model.named_modules()
                  if isinstance(layer, nn.Linear) and any(match(name, t) for t in target_modules)]
        if freeze == "before":
            model.requires_grad_(False)
        for name in chosen:
            new = layer_class(model.get_submodule(name), rank, alpha)
            if dotted:
                setattr(model, name, new)
            else:
                _replace(model, name, new)
        if freeze == "after":
            model.requires_grad_(False)
        return order(chosen)

    return inject


@lru_cache(maxsize=None)
def _small_unet(config_name):
    from ..unet import UNet

    config = SD2_STYLE if config_name == "sd2" else {**SD2_STYLE, "use_linear_projection": False,
                                                     "block_out_channels": (8, 16), "attention_head_dim": 2,
                                                     "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                                                     "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
    torch.manual_seed(0)
    return UNet.from_config(config).eval()


def _unet_inputs(seed, width=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, width, generator=g))


def _inject_cases():
    return [
        Case("a small U-Net, the four attention projections, rank 2, alpha 2",
             (_small_unet("sd1"), ATTENTION, 2, 2.0, _unet_inputs(1))),
        Case("the same U-Net, to_q and to_v, rank 1, alpha 4", (_small_unet("sd1"), ("to_q", "to_v"), 1, 4.0,
                                                               _unet_inputs(2))),
        Case("target 'proj' on a small SD 2.x-style U-Net, rank 2, alpha 2",
             (_small_unet("sd2"), ("proj",), 2, 2.0, _unet_inputs(3))),
        Case("to_out.0 alone, rank 2, alpha 1", (_small_unet("sd2"), ("to_out.0",), 2, 1.0, _unet_inputs(4))),
    ]


check_inject = exercise_check(
    "inject",
    inject_reference,
    _inject_cases,
    mistakes={
        "a target matched every name that contains it; it matches the end of a name, after a dot "
        "('proj' is ff.net.0.proj, not proj_in or time_emb_proj)": _inject_variant(match=lambda name, t: t in name),
        "the rest of the model was not frozen: only the LoRA layers' A and B should train": _inject_variant(
            freeze="never"),
        "the model was frozen after wrapping, which froze A and B too: freeze first, then wrap": _inject_variant(
            freeze="after"),
        "the names are in the model's order: return them sorted": _inject_variant(order=list),
        "setattr(model, 'a.b.c', new) adds a new attribute named 'a.b.c' and leaves the old layer in place: set "
        "the new layer on its parent module": _inject_variant(dotted=True),
    },
    hints=[
        "Three steps: freeze every parameter of the model; find the Linear layers whose names end with a target; "
        "put a layer_class(old_layer, rank, alpha) in each one's place.",
        "Collect the names first (a list), then replace: changing a model while named_modules() walks it is "
        "asking for trouble. model.get_submodule(name) gives the old layer.",
        "To replace: parent_name, _, child = name.rpartition('.'); setattr(model.get_submodule(parent_name), "
        "child, new_layer) (the model itself when parent_name is empty). Return the sorted names.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_inject_report,
)
