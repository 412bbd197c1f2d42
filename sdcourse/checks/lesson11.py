"""Checks for lesson 11: LoRA with peft and diffusers (the fused weight, against diffusers'
`fuse_lora`; the mix of several adapters, against `set_adapters`; choosing a LoRA's rank and
steps from measured numbers)."""

from __future__ import annotations

import copy
import math
import warnings
from functools import lru_cache

import torch
from torch import nn

from .core import Case, exercise_check

__all__ = ["check_fused_weight", "check_mixed_update", "check_choose_setting"]

SOLUTION_NOTEBOOK = "solutions/11_lora_peft_diffusers.ipynb"  # hint() points here after the last hint


# ---- exercise 1: the fused weight ---------------------------------------------------------------


@lru_cache(maxsize=None)
def _one_layer_model_class():
    """A diffusers model holding one bias-free Linear layer named `layer`: the smallest thing that
    diffusers' own `add_adapter` and `fuse_lora` (PeftAdapterMixin, as on the U-Net) work on."""
    from diffusers import ModelMixin
    from diffusers.loaders.peft import PeftAdapterMixin

    class OneLayer(ModelMixin, PeftAdapterMixin):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.layer = nn.Linear(d_in, d_out, bias=False)

    return OneLayer


def fused_weight_reference(weight, lora_A, lora_B, alpha, lora_scale):
    """The weight diffusers leaves in a layer after `fuse_lora(lora_scale=...)`, for a layer with this
    weight and an adapter with this A (rank, d_in), B (d_out, rank) and alpha."""
    from peft import LoraConfig

    rank, d_in = lora_A.shape
    model = _one_layer_model_class()(d_in, weight.shape[0])
    with torch.no_grad():
        model.layer.weight.copy_(weight)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["layer"]))
    with torch.no_grad():
        model.layer.lora_A["default"].weight.copy_(lora_A)
        model.layer.lora_B["default"].weight.copy_(lora_B)
    model.fuse_lora(lora_scale=lora_scale)
    return model.layer.base_layer.weight.detach().clone()


def _fuse_report(fused_weight):
    """What a fused_weight function does: the weight it returns, and whether it left the weight it was
    given as it was."""

    def report(weight, lora_A, lora_B, alpha, lora_scale):
        given = weight.clone()
        result = fused_weight(weight, lora_A, lora_B, alpha, lora_scale)
        if isinstance(result, torch.Tensor):
            result = result.detach().clone()
        return {"fused weight": result, "the weight passed in is unchanged": bool(torch.equal(weight, given))}

    return report


def _fused(factor=lambda alpha, rank, scale: scale * alpha / rank, scale_weight=False, transposed=False,
           in_place=False):
    def fused_weight(weight, lora_A, lora_B, alpha, lora_scale):
        update = lora_B @ lora_A
        if transposed:
            update = update.T
        update = factor(alpha, lora_A.shape[0], lora_scale) * update
        if in_place:
            weight += update
            return weight
        if scale_weight:
            return lora_scale * (weight + alpha / lora_A.shape[0] * (lora_B @ lora_A))
        return weight + update

    return fused_weight


@lru_cache(maxsize=None)
def _tiny_unet_weights() -> dict:
    """The embedded model's U-Net weights, by name, as stored (read once)."""
    from safetensors.torch import load_file

    from ..pipeline import resolve_model

    return load_file(str(resolve_model() / "unet" / "diffusion_pytorch_model.safetensors"))


def _fuse_cases():
    weights = _tiny_unet_weights()
    g = torch.Generator().manual_seed(11)

    def case(label, layer, rank, alpha, lora_scale):
        weight = weights[f"{layer}.weight"].float()  # float32, as load_pipeline gives it
        d_out, d_in = weight.shape
        lora_A = torch.randn(rank, d_in, generator=g) / math.sqrt(d_in)
        lora_B = torch.randn(d_out, rank, generator=g) * 0.1
        return Case(label, (weight, lora_A, lora_B, alpha, lora_scale))

    block = "transformer_blocks.0"
    return [
        case("attn1.to_q of the first down block (64 x 64), rank 4, alpha 8, lora_scale 0.8",
             f"down_blocks.0.attentions.0.{block}.attn1.to_q", 4, 8.0, 0.8),
        case("attn2.to_k of the first down block (64 x 32: it reads the text), rank 2, alpha 1, lora_scale 0.5",
             f"down_blocks.0.attentions.0.{block}.attn2.to_k", 2, 1.0, 0.5),
        case("the mid block's attn1.to_out.0 (128 x 128), rank 8, alpha 4, lora_scale 1.5",
             f"mid_block.attentions.0.{block}.attn1.to_out.0", 8, 4.0, 1.5),
        case("lora_scale 0, which leaves W as it was: attn2.to_v of an up block (64 x 32), rank 1, alpha 16",
             f"up_blocks.1.attentions.0.{block}.attn2.to_v", 1, 16.0, 0.0),
    ]


check_fused_weight = exercise_check(
    "fused_weight",
    fused_weight_reference,
    _fuse_cases,
    mistakes={
        "the update was not scaled by alpha / rank: the adapter's own scale comes before lora_scale":
            _fused(factor=lambda alpha, rank, scale: scale),
        "lora_scale is missing: fuse_lora(lora_scale=0.8) fuses 0.8 of the update":
            _fused(factor=lambda alpha, rank, scale: alpha / rank),
        "the update was scaled by alpha, not alpha / rank": _fused(factor=lambda alpha, rank, scale: scale * alpha),
        "the update was scaled by rank / alpha; it is alpha / rank": _fused(
            factor=lambda alpha, rank, scale: scale * rank / alpha),
        "lora_scale multiplied W as well: it scales only the update, W stays whole": _fused(scale_weight=True),
        "the update is transposed: B A is (d_out, d_in), the shape of W, as it is": _fused(transposed=True),
        "fused_weight changed the weight it was given: return a new tensor and leave W as it was (the lecture "
        "compares the fused weight with W afterwards)": _fused(in_place=True),
    },
    hints=[
        "The fused weight is W plus the adapter's update, scaled twice: by the adapter's own alpha / rank, and by "
        "lora_scale. The rank is the number of rows of lora_A.",
        "B A has the shape of W, (d_out, d_in). Do not add into weight itself: build a new tensor.",
        "rank = lora_A.shape[0]; return weight + lora_scale * (alpha / rank) * (lora_B @ lora_A).",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_fuse_report,
)


# ---- exercise 2: the mix of several adapters ------------------------------------------------------

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
SMALL_UNET = {  # the tiny model's layout, smaller still: random weights, built in a moment
    "block_out_channels": (8, 16), "norm_num_groups": 4, "layers_per_block": 1, "sample_size": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12, "attention_head_dim": 2, "in_channels": 4, "out_channels": 4,
}


@lru_cache(maxsize=None)
def _small_unet():
    """A small diffusers U-Net with random weights; the cases copy it, so this one is never changed."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**SMALL_UNET).eval()


def _unet_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([20, 800]),
            torch.randn(2, 5, SMALL_UNET["cross_attention_dim"], generator=g))


def _matches(name, targets):
    return any(name == t or name.endswith("." + t) for t in targets)


def random_adapter(unet, targets, rank, seed) -> dict:
    """An adapter for `unet` as diffusers' save_lora_weights writes it: "unet.<layer>.lora_A.weight"
    (rank, d_in) and "unet.<layer>.lora_B.weight" (d_out, rank), random (a trained B is not zero)."""
    g = torch.Generator().manual_seed(seed)
    adapter = {}
    for name, layer in sorted(unet.named_modules(), key=lambda item: item[0]):
        if isinstance(layer, nn.Linear) and _matches(name, targets):
            adapter[f"unet.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.5
            adapter[f"unet.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.5
    return adapter


def peft_unet_with_adapters(adapters, weights):
    """A copy of the small U-Net with each adapter loaded by diffusers (adapter_0, adapter_1, ...) and
    mixed with `set_adapters(names, weights)`."""
    unet = copy.deepcopy(_small_unet())
    names = [f"adapter_{i}" for i in range(len(adapters))]
    with warnings.catch_warnings():  # peft's notice that a model holds several adapters: here it should
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        for name, adapter in zip(names, adapters):
            unet.load_lora_adapter(dict(adapter), prefix="unet", adapter_name=name)
    unet.set_adapters(names, list(weights))
    return unet


def mixed_update_reference(adapters, weights):
    """{layer: the change set_adapters makes to its weight}: for every layer peft adapted, the sum of its
    active adapters' delta weights, each already scaled by its weight (peft's get_delta_weight)."""
    from peft.tuners.lora import LoraLayer

    unet = peft_unet_with_adapters(adapters, weights)
    updates = {}
    with torch.no_grad():
        for name, layer in unet.named_modules():
            if isinstance(layer, LoraLayer):
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                updates[name] = sum(layer.get_delta_weight(a) for a in active).detach().clone()
    return updates


def _mix_report(mixed_update):
    """What a mixed_update function gives: the layers it names, its updates, and the small U-Net's output
    once every update is added to its layer's weight."""

    def report(adapters, weights, seed):
        updates = mixed_update(adapters, weights)
        if not isinstance(updates, dict):
            return {"type": f"{type(updates).__name__}; the exercise asks for a dict {{layer name: update}}"}
        updates = {name: (u.detach().clone() if isinstance(u, torch.Tensor) else u) for name, u in updates.items()}
        result = {"layer names": sorted(updates), "updates": updates}
        unet = copy.deepcopy(_small_unet())
        layers = dict(unet.named_modules())
        for name, update in sorted(updates.items()):
            layer = layers.get(name)
            if not isinstance(layer, nn.Linear):
                return {**result, "U-Net output": f"not run: {name!r} is not a Linear layer of the U-Net"}
            if not isinstance(update, torch.Tensor) or update.shape != layer.weight.shape:
                shape = tuple(update.shape) if isinstance(update, torch.Tensor) else type(update).__name__
                return {**result, "U-Net output": f"not run: the update of {name} is {shape}, its weight "
                                                  f"{tuple(layer.weight.shape)}"}
        with torch.no_grad():
            for name, update in updates.items():
                layers[name].weight += update
            latents, t, text = _unet_inputs(seed)
            result["U-Net output"] = unet(latents, t, encoder_hidden_states=text).sample
        return result

    return report


def _pairs(adapter, prefix="unet."):
    """{layer: (A, B)} of one adapter file."""
    pairs = {}
    for key, value in adapter.items():
        name, _, kind = key.removeprefix(prefix).rpartition(".lora_")
        pairs.setdefault(name, {})[kind[0]] = value
    return {name: (pair["A"], pair["B"]) for name, pair in pairs.items()}


def _mixed(weighted=lambda w: w, combine="sum", prefix="unet.", transposed=False):
    def mixed_update(adapters, weights):
        updates, counts = {}, {}
        per_adapter = [_pairs(adapter, prefix) for adapter in adapters]
        for pairs, weight in zip(per_adapter, weights):
            for name, (A, B) in pairs.items():
                update = weighted(weight) * (B @ A)
                if transposed:
                    update = update.T
                if combine == "last" or name not in updates:
                    updates[name] = update
                else:
                    updates[name] = updates[name] + update
                counts[name] = counts.get(name, 0) + 1
        if combine == "mean":
            updates = {name: u / len(adapters) for name, u in updates.items()}
        if combine == "shared":
            updates = {name: u for name, u in updates.items() if counts[name] == len(adapters)}
        return updates

    return mixed_update


def _mix_cases():
    unet = _small_unet()
    return [
        Case("two adapters of rank 4 on the four attention projections, weights 0.7 and 0.5",
             ([random_adapter(unet, ATTENTION, 4, 1), random_adapter(unet, ATTENTION, 4, 2)], [0.7, 0.5], 1)),
        Case("the second adapter adapts only the cross-attention's to_k and to_v; weights 1.0 and 0.6",
             ([random_adapter(unet, ATTENTION, 2, 3), random_adapter(unet, ("attn2.to_k", "attn2.to_v"), 2, 4)],
              [1.0, 0.6], 2)),
        Case("three adapters of ranks 1, 2 and 4; weights 0.3, -0.5 (a negative weight subtracts) and 1.2",
             ([random_adapter(unet, ATTENTION, 1, 5), random_adapter(unet, ("to_k", "to_v"), 2, 6),
               random_adapter(unet, ("to_q", "to_out.0"), 4, 7)], [0.3, -0.5, 1.2], 3)),
    ]


check_mixed_update = exercise_check(
    "mixed_update",
    mixed_update_reference,
    _mix_cases,
    mistakes={
        "the weights were left out: set_adapters multiplies each adapter's update by its weight":
            _mixed(weighted=lambda w: 1.0),
        "the updates were averaged: set_adapters adds them, each times its weight, and divides by nothing":
            _mixed(combine="mean"),
        "a layer that several adapters adapt got only the last adapter's update: add them all":
            _mixed(combine="last"),
        "each update was multiplied by its weight twice (once in A, once in B, say): the weight scales B A once":
            _mixed(weighted=lambda w: w * w),
        "a layer that only some of the adapters adapt was left out: it still gets their updates":
            _mixed(combine="shared"),
        "the layer names kept the file's prefix 'unet.': name a layer as unet.named_modules() does":
            _mixed(prefix=""),
        "the update is transposed: B A is (d_out, d_in), the shape of the layer's weight, as it is":
            _mixed(transposed=True),
    },
    hints=[
        "Each file holds, per layer, lora_A (rank, d_in) and lora_B (d_out, rank) under the keys "
        "'unet.<layer>.lora_A.weight' and 'unet.<layer>.lora_B.weight'. Group them by layer first.",
        "An adapter changes a layer's weight by B A (alpha = rank in these files, so no other factor). "
        "set_adapters multiplies each adapter's change by its weight and adds the changes of all adapters "
        "that adapt that layer.",
        "For each adapter and weight: for each layer in it, updates[layer] = updates.get(layer, 0) + weight * "
        "(B @ A), where layer is the key without 'unet.' and without '.lora_A.weight'.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_mix_report,
)


# ---- exercise 3: choosing a rank and a number of steps --------------------------------------------


def choose_setting_reference(runs, min_identity):
    """(rank, step) of the checkpoint with the lowest held-out loss among those whose identity is at
    least min_identity; a ValueError naming the best identity if none is."""
    if not runs:
        raise ValueError("runs is empty; give one dict of measurements per checkpoint")
    keeping = [run for run in runs if run["identity"] >= min_identity]
    if not keeping:
        best = max(runs, key=lambda run: run["identity"])
        raise ValueError(f"no checkpoint reaches identity {min_identity}%; the best is {best['identity']}% "
                         f"(rank {best['rank']}, step {best['step']})")
    best = min(keeping, key=lambda run: run["held-out loss"])
    return best["rank"], best["step"]


def _pick(key, keep_identity=True, strict=False, raise_if_none=True, earliest=False):
    def choose_setting(runs, min_identity):
        keeping = runs
        if keep_identity:
            keeping = [r for r in runs if (r["identity"] > min_identity if strict else r["identity"] >= min_identity)]
        if not keeping:
            if raise_if_none:
                raise ValueError("no checkpoint keeps the subject")
            keeping = runs
        if earliest:
            best = min(keeping, key=lambda r: (r["step"], r["rank"]))
        else:
            best = min(keeping, key=key)
        return best["rank"], best["step"]

    return choose_setting


def sweep_table(rows):
    """Runs as dicts from (rank, step, train loss, held-out loss, identity) tuples."""
    keys = ("rank", "step", "train loss", "held-out loss", "identity")
    return [dict(zip(keys, row)) for row in rows]


def _choose_cases():
    # Training loss falls all the way; held-out loss falls, then rises as the adapter learns the few
    # pictures by heart; identity (the share of samples that show the subject) comes after some steps.
    sweep = sweep_table([
        (1, 0, 0.061, 0.0650, 0.0), (1, 100, 0.050, 0.0530, 25.0), (1, 200, 0.046, 0.0480, 62.5),
        (1, 300, 0.043, 0.0470, 75.0), (1, 400, 0.041, 0.0475, 81.25),
        (4, 0, 0.061, 0.0650, 0.0), (4, 100, 0.046, 0.0480, 56.25), (4, 200, 0.039, 0.0445, 87.5),
        (4, 300, 0.034, 0.0435, 93.75), (4, 400, 0.030, 0.0490, 93.75),
        (16, 0, 0.061, 0.0650, 0.0), (16, 100, 0.042, 0.0425, 50.0), (16, 200, 0.033, 0.0460, 93.75),
        (16, 300, 0.026, 0.0530, 100.0), (16, 400, 0.021, 0.0600, 100.0),
    ])
    at_the_mark = sweep_table([
        (2, 50, 0.050, 0.0520, 50.0), (2, 100, 0.044, 0.0455, 70.0), (2, 150, 0.040, 0.0470, 80.0),
        (8, 50, 0.046, 0.0440, 60.0), (8, 100, 0.038, 0.0460, 75.0), (8, 150, 0.031, 0.0540, 90.0),
    ])
    never = sweep_table([(4, 50, 0.050, 0.0500, 12.5), (4, 100, 0.045, 0.0480, 37.5), (4, 150, 0.041, 0.0490, 50.0)])
    return [
        Case("three ranks, checkpoints every 100 steps, identity of at least 75%", (sweep, 75.0)),
        Case("a checkpoint with identity exactly at the mark of 75% counts", (at_the_mark, 75.0)),
        Case("no checkpoint reaches 75%: there is nothing to report yet", (never, 75.0)),
    ]


check_choose_setting = exercise_check(
    "choose_setting",
    choose_setting_reference,
    _choose_cases,
    mistakes={
        "that is the lowest training loss: it falls for as long as training runs, also while the adapter learns "
        "the few pictures by heart; the held-out loss is the one that turns": _pick(lambda r: r["train loss"]),
        "when no checkpoint keeps the subject, there is no setting to report: raise a ValueError that says so":
            _pick(lambda r: r["held-out loss"], raise_if_none=False),
        "the identity mark was ignored: the lowest held-out loss can come before the adapter shows the subject":
            _pick(lambda r: r["held-out loss"], keep_identity=False),
        "that is the highest identity: it keeps rising while the adapter overfits; among checkpoints that keep "
        "the subject, take the lowest held-out loss": _pick(lambda r: (-r["identity"], r["held-out loss"])),
        "a checkpoint exactly at the identity mark was left out: at least min_identity means >=":
            _pick(lambda r: r["held-out loss"], strict=True),
        "that is the first checkpoint that keeps the subject, not the one with the lowest held-out loss":
            _pick(None, earliest=True),
    },
    hints=[
        "Two steps: keep the checkpoints whose identity is at least min_identity; among them, take the one with "
        "the lowest held-out loss. Training loss plays no part.",
        "If no checkpoint is left after the first step, raise ValueError with a message that says the best "
        "identity measured.",
        "keeping = [r for r in runs if r['identity'] >= min_identity]; best = min(keeping, key=lambda r: "
        "r['held-out loss']); return best['rank'], best['step'].",
    ],
    solution=SOLUTION_NOTEBOOK,
)
