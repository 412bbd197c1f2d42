"""LoRA from scratch: a small trainable update beside a frozen Linear layer.

A Linear layer computes y = W x with W of shape (d_out, d_in). LoRA leaves W frozen and
learns a low-rank change to it:

    y = W x + (alpha / r) * B A x        A: (r, d_in), random;  B: (d_out, r), zero at first

With r = 4 on a 768 x 768 matrix that is 4 * (768 + 768) = 6,144 trainable numbers instead of
589,824. B starts at zero, so B A = 0 and training starts exactly at the base model; A starts
random, so the gradient of B is not zero and training can move.

    names = inject_lora(unet, rank=4, alpha=4)   # wraps to_q, to_k, to_v, to_out.0
    ... train the parameters with "lora" in their names ...
    merge_lora(unet)                             # W <- W + (alpha / r) B A: no extra cost
    save_lora(unet, "my-lora")                   # diffusers loads it: pipe.load_lora_weights("my-lora")

A convolution gets the same update in the shape of a convolution (`LoRAConv2d`, as peft adapts
the ResNet blocks' "conv1" and "conv2"): A is a convolution down to r channels with the base's
kernel, B a 1x1 convolution back up.

The layer names are diffusers' (the course's own U-Net uses the same names), and the
adapter is saved in the format diffusers' `save_lora_weights` writes, so one adapter works
with the from-scratch U-Net, with diffusers and with peft.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdcourse.arguments import real_number, whole_number

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers writes and looks for


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus the low-rank update (alpha / rank) * scale * B A.

    base: the layer to adapt (frozen here). rank: r, from 1 to min(d_in, d_out).
    alpha: the update is multiplied by alpha / rank (default alpha = rank, a factor of 1).
    `scale` (default 1) multiplies the update once more, at run time: 0 switches it off.
    A starts as peft's does (Kaiming-uniform), B at zero.
    Its state_dict holds W without the update, merged or not, so that it loads into any model
    with the same LoRA layers; loading one leaves the layer unmerged (the same outputs).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        d_out, d_in = base.weight.shape
        rank = check_rank(rank, d_in, d_out)
        alpha = rank if alpha is None else real_number("alpha", alpha, 0, low_open=True,
                                                       meaning="the update is scaled by alpha / rank")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale, self.merged = rank, float(alpha), 1.0, False
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, **factory))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation, as peft
        self.register_state_dict_post_hook(_save_unmerged)

    @property
    def scaling(self) -> float:
        """The factor in front of B A: (alpha / rank) * scale."""
        return self.alpha / self.rank * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The change LoRA makes to W, (d_out, d_in): scaling * B A."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        y = self.base(x)
        if self.merged or self.scaling == 0:
            return y
        # x A^T B^T: two thin matrix products, never the full d_out x d_in matrix
        return y + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    @torch.no_grad()
    def merge(self):
        """W <- W + scaling * B A: the same outputs, with no extra work per call."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Undo `merge`: W <- W - scaling * B A."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, merged={self.merged}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.unmerge()  # the state dict's W is unmerged (_save_unmerged); base loads it after this
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LoRAConv2d(LoRALinear):
    """A frozen `nn.Conv2d` plus its low-rank update, as peft adapts a convolution: A is a
    convolution with the base's kernel, stride and padding from d_in channels down to r, and B a
    1x1 convolution from r up to d_out:

        y = conv(x, W) + scaling * conv1x1(conv(x, A), B)     A: (r, d_in, kh, kw);  B: (d_out, r, 1, 1)

    The change to W is B A, contracted over r: (d_out, d_in, kh, kw). Everything else (alpha,
    scale, merge, state dicts) is `LoRALinear`'s. Grouped convolutions are refused.
    """

    def __init__(self, base: nn.Conv2d, rank: int = 4, alpha: float | None = None):
        nn.Module.__init__(self)
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"base must be an nn.Conv2d, got {type(base).__name__}")
        if base.groups != 1:
            raise ValueError(f"base has groups={base.groups}; LoRA here adapts ungrouped convolutions only")
        d_out, d_in, kh, kw = base.weight.shape
        rank = check_rank(rank, d_in * kh * kw, d_out)
        alpha = rank if alpha is None else real_number("alpha", alpha, 0, low_open=True,
                                                       meaning="the update is scaled by alpha / rank")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale, self.merged = rank, float(alpha), 1.0, False
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, kh, kw, **factory))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, 1, 1, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Conv2d's own initialisation, as peft
        self.register_state_dict_post_hook(_save_unmerged)

    def delta_weight(self) -> torch.Tensor:
        """The change LoRA makes to W, (d_out, d_in, kh, kw): scaling * B A over r."""
        return self.scaling * torch.einsum("or,rikl->oikl", self.lora_B[:, :, 0, 0], self.lora_A)

    def forward(self, x):
        y = self.base(x)
        if self.merged or self.scaling == 0:
            return y
        conv = self.base
        down = F.conv2d(x, self.lora_A, None, conv.stride, conv.padding, conv.dilation)  # (batch, r, H', W')
        return y + self.scaling * F.conv2d(down, self.lora_B)


LORA_CLASSES = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}  # the layers LoRA adapts here, and how


def _save_unmerged(layer: LoRALinear, state_dict, prefix, local_metadata):
    """A merged layer's state dict gets W, not W + scaling * B A: loaded beside A and B into a fresh
    LoRA layer, the update must not count twice."""
    if layer.merged:
        state_dict[prefix + "base.weight"] = layer.base.weight.detach() - layer.delta_weight()


def check_rank(rank, d_in: int, d_out: int) -> int:
    """rank as an int, from 1 to the smaller side of a d_out x d_in layer."""
    rank = whole_number("rank", rank)
    if not 1 <= rank <= min(d_in, d_out):
        raise ValueError(f"rank={rank}; for a {d_out} x {d_in} layer it must be from 1 to {min(d_in, d_out)} "
                         "(a larger rank is no longer low-rank: train the layer itself)")
    return rank


def target_names(targets, name: str = "targets") -> tuple[str, ...]:
    """The layer names a LoRA targets, as a tuple: one string is one name ("to_q", not its letters)."""
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{name} must name at least one layer, such as {list(DEFAULT_TARGETS)}; got {targets!r}")
    return tuple(targets)


def matches_target(name: str, target: str) -> bool:
    """peft's rule: a target names a layer by the end of its full name ("to_q" matches
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")."""
    return name == target or name.endswith("." + target)


def linear_layer_endings(module: nn.Module) -> list[str]:
    """The ends of the names of `module`'s Linear layers ("to_q", "to_out.0"): what a target can name."""
    endings = set()
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            parts = name.split(".")
            endings.add(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return sorted(endings)


def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers in `module` (on Linear layers and convolutions), by name."""
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, LoRALinear)}


def _replace(module: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)


def inject_lora(module: nn.Module, target_modules=DEFAULT_TARGETS, rank: int = 4, alpha: float | None = 4) -> list[str]:
    """Wrap every Linear layer of `module` whose name ends with one of `target_modules` in a
    `LoRALinear` (and every such convolution in a `LoRAConv2d`, as peft adapts "conv1", "conv2"). Everything else in `module` is frozen; only the LoRA parameters (named
    "...lora_A", "...lora_B") train. Returns the names of the wrapped layers.

    Works on diffusers' UNet2DConditionModel and on the course's U-Net (the same names).
    """
    target_modules = target_names(target_modules, "target_modules")
    _refuse_second_adapter(module)
    chosen = {name: layer for name, layer in module.named_modules()
              if name and any(matches_target(name, target) for target in target_modules)}
    not_adapted = sorted(name for name, layer in chosen.items() if type(layer) not in LORA_CLASSES)
    if not_adapted:
        raise ValueError(f"target_modules {list(target_modules)} also match layers that are neither nn.Linear nor "
                         f"nn.Conv2d, e.g. {not_adapted[0]} ({type(chosen[not_adapted[0]]).__name__}); LoRA here "
                         "adapts Linear layers and convolutions only")
    missing = [t for t in target_modules if not any(matches_target(name, t) for name in chosen)]
    if missing:
        raise ValueError(f"target_modules {missing} match no layer of this {type(module).__name__}; its Linear "
                         f"layers end in: {', '.join(linear_layer_endings(module))}")
    for layer in chosen.values():  # a rank too large for any layer is refused before the model changes
        d_out, d_in = layer.weight.shape[0], layer.weight[0].numel()  # a convolution's d_in: channels x kernel
        check_rank(rank, d_in, d_out)
    wrapped = {name: LORA_CLASSES[type(layer)](layer, rank, alpha) for name, layer in chosen.items()}
    for p in module.parameters():
        p.requires_grad_(False)
    for name, layer in wrapped.items():
        _replace(module, name, layer)
    return sorted(chosen)


def _existing_lora_layers(module) -> dict[str, LoRALinear]:
    layers = lora_layers(module)
    if not layers:
        raise ValueError(f"this {type(module).__name__} has no LoRA layers; add them with inject_lora or load_lora")
    return layers


def _refuse_second_adapter(module):
    if lora_layers(module):
        raise ValueError(f"this {type(module).__name__} already has LoRA layers ({len(lora_layers(module))}); "
                         "load a fresh model to add another adapter")


def merge_lora(module: nn.Module):
    """Fold every LoRA update into its base weight (W <- W + scaling * B A)."""
    for layer in _existing_lora_layers(module).values():
        layer.merge()


def unmerge_lora(module: nn.Module):
    """Take every merged LoRA update out of its base weight again."""
    for layer in _existing_lora_layers(module).values():
        layer.unmerge()


def set_lora_scale(module: nn.Module, scale: float):
    """Multiply every LoRA update by `scale` (0: the base model; 1: the trained adapter).
    Merged layers are re-merged at the new scale."""
    scale = real_number("scale", scale, meaning="0 switches LoRA off, 1 is as trained")
    for layer in _existing_lora_layers(module).values():
        merged = layer.merged
        layer.unmerge()
        layer.scale = float(scale)
        if merged:
            layer.merge()


def export_lora(module: nn.Module, prefix: str = "unet") -> dict[str, torch.Tensor]:
    """The adapter as diffusers' `save_lora_weights` writes it: "unet.<layer>.lora_A.weight" (r, d_in)
    and "unet.<layer>.lora_B.weight" (d_out, r).

    A state dict carries no alpha, and diffusers then takes alpha = rank (a factor of 1). So
    alpha / rank is folded into B here: the loaded adapter gives exactly this model's outputs,
    whatever alpha it trained with. The run-time `scale` is not folded in.
    """
    adapter = {}
    for name, layer in _existing_lora_layers(module).items():
        adapter[f"{prefix}.{name}.lora_A.weight"] = layer.lora_A.detach().clone().contiguous()
        adapter[f"{prefix}.{name}.lora_B.weight"] = (layer.lora_B.detach() * (layer.alpha / layer.rank)).contiguous()
    return adapter


def save_lora(module: nn.Module, folder: str | os.PathLike) -> Path:
    """Write `export_lora(module)` to folder/pytorch_lora_weights.safetensors (created if need be);
    `pipe.load_lora_weights(folder)` loads it. Returns the file's path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"folder={str(folder)!r} is a file; give a folder to write {LORA_FILE} into")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LORA_FILE
    save_file(export_lora(module), str(path), metadata={"format": "pt"})
    return path


# The pipeline parts an adapter file may hold layers of, by their key prefix.
PIPELINE_PARTS = ("unet", "text_encoder", "text_encoder_2")


def read_adapter(source) -> dict[str, torch.Tensor]:
    """An adapter state dict from a dict, a .safetensors file, or a folder holding LORA_FILE."""
    from safetensors.torch import load_file

    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {str(path)!r}: expected a folder holding {LORA_FILE}, "
                                "or the .safetensors file itself")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several error types for a damaged file
        raise ValueError(f"the adapter file {path} cannot be read ({error}): it is truncated or not a "
                         "safetensors file; save the adapter again (save_lora, or train_lora --out)") from None


def load_lora(module: nn.Module, source, prefix: str = "unet") -> list[str]:
    """Add the adapter in `source` (a folder, a file, or a state dict as `export_lora` gives)
    to `module`: each named layer becomes a LoRALinear with the adapter's A and B. The
    adapter's alpha is already folded in (alpha = rank). Returns the adapted layers' names.

    A file may hold adapters for several parts of a pipeline, as diffusers writes them
    ("unet.…" and "text_encoder.…"): only `prefix`'s are loaded here, and each other part's
    loads into that part with its own prefix. An adapter made for another model is refused,
    naming the first layer that does not fit.
    """
    _refuse_second_adapter(module)
    adapter = read_adapter(source)
    pairs = {}
    for key, value in adapter.items():
        part = key.split(".", 1)[0]
        if part != prefix and part in PIPELINE_PARTS:
            continue  # another part's adapter
        name, _, kind = key.removeprefix(prefix + ".").rpartition(".lora_")
        if kind not in ("A.weight", "B.weight") or part != prefix:
            raise ValueError(f"adapter key {key!r} is not '{prefix}.<layer>.lora_A.weight' or '.lora_B.weight'")
        pairs.setdefault(name, {})[kind[0]] = value
    if not pairs:
        held = sorted({key.split(".", 1)[0] for key in adapter})
        raise ValueError(f"the adapter holds no '{prefix}.' layers, only {', '.join(held) or 'nothing'}: load it "
                         "into that part, with prefix= its name")
    layers = dict(module.named_modules())
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"the adapter has lora_{next(iter(pair))} but not both A and B for layer {name}")
        base = layers.get(name)
        if type(base) not in LORA_CLASSES:
            found = "is missing" if base is None else f"is a {type(base).__name__}, not a Linear or Conv2d layer"
            raise ValueError(f"the adapter was made for another model: layer {name} {found} in this "
                             f"{type(module).__name__}")
        d_out, d_in, *kernel = base.weight.shape
        rank = pair["A"].shape[0]
        ones = (1,) * len(kernel)
        if pair["A"].shape != (rank, d_in, *kernel) or pair["B"].shape != (d_out, rank, *ones):
            raise ValueError(f"the adapter was made for another model: layer {name} is "
                             f"{' x '.join(map(str, base.weight.shape))} here, but the adapter's A is "
                             f"{tuple(pair['A'].shape)} and B {tuple(pair['B'].shape)}")
        if not all(m.is_floating_point() and torch.isfinite(m).all() for m in pair.values()):
            where = "" if isinstance(source, dict) else f" in {str(source)!r}"
            raise ValueError(f"the adapter{where} is damaged: layer {name}'s lora_A or lora_B holds NaN, infinite "
                             "or non-float numbers (did its training diverge?)")
    for p in module.parameters():
        p.requires_grad_(False)
    for name, pair in pairs.items():
        layer = LORA_CLASSES[type(layers[name])](layers[name], rank=pair["A"].shape[0])
        with torch.no_grad():
            layer.lora_A.copy_(pair["A"])
            layer.lora_B.copy_(pair["B"])
        _replace(module, name, layer)
    return sorted(pairs)


def lora_parameter_count(module: nn.Module) -> int:
    """How many numbers the LoRA layers train."""
    return sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in lora_layers(module).values())
