"""Checks for lesson 03: the U-Net, by its timestep embedding, its ResNet block (against diffusers') and its
numbers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..unet import timestep_embedding as _package_timestep_embedding
from .core import Case, exercise_check

__all__ = ["check_timestep_embedding", "check_resnet_block", "check_analyze_unet"]

SOLUTION_NOTEBOOK = "solutions/03_unet.ipynb"  # hint() points here after the last hint


# ---- warm-up: the sinusoidal timestep embedding ----------------------------------------------


def timestep_embedding_reference(t, dim, flip_sin_to_cos=True, freq_shift=0):
    # f_i = 10000 ** (-i / (half - freq_shift)), emb = [cos(t f), sin(t f)] (or sin first)
    return _package_timestep_embedding(t, dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift)


def _embedding_variant(*, order=None, sign=-1.0, n_freqs="half", divide_by="half-shift", interleave=False):
    """A wrong embedding. order: None follows flip_sin_to_cos, "inverted" does the opposite."""

    def embed(t, dim, flip_sin_to_cos=True, freq_shift=0):
        half = dim // 2
        count = dim if n_freqs == "dim" else half
        denominator = {"half-shift": half - freq_shift, "half": half, "dim": dim}[divide_by]
        i = torch.arange(count, dtype=torch.float32)
        freqs = torch.exp(sign * math.log(10000) * i / denominator)
        angles = t.float()[:, None] * freqs[None, :]
        cos_first = flip_sin_to_cos if order is None else not flip_sin_to_cos
        first, second = (angles.cos(), angles.sin()) if cos_first else (angles.sin(), angles.cos())
        if interleave:
            return torch.stack([first, second], dim=-1).flatten(1)
        return torch.cat([first, second], dim=-1)

    return embed


def _embedding_cases():
    g = torch.Generator().manual_seed(3)
    return [
        Case("t = [0, 1, 10, 999], dim = 8, Stable Diffusion's order", (torch.tensor([0, 1, 10, 999]), 8)),
        Case("5 random t, dim = 320 (SD 1.5's first block width)", (torch.randint(0, 1000, (5,), generator=g), 320)),
        Case("t = [3, 500], dim = 16, DDPM's convention: sin first, freq_shift = 1",
             (torch.tensor([3, 500]), 16), {"flip_sin_to_cos": False, "freq_shift": 1}),
        Case("float t = [0.5, 250.25], dim = 6, cos first, freq_shift = 1",
             (torch.tensor([0.5, 250.25]), 6), {"flip_sin_to_cos": True, "freq_shift": 1}),
    ]


check_timestep_embedding = exercise_check(
    "timestep_embedding",
    timestep_embedding_reference,
    _embedding_cases,
    mistakes={
        "sin and cos are in the wrong order: flip_sin_to_cos=True puts the cosines first": _embedding_variant(
            order="inverted"
        ),
        "the exponent lost its minus sign: the frequencies must fall from 1 to about 1/10000": _embedding_variant(
            sign=1.0
        ),
        "dim frequencies instead of dim // 2: the cos half and the sin half get dim // 2 each": _embedding_variant(
            n_freqs="dim"
        ),
        "freq_shift was ignored: the exponent is -ln(10000) i / (half - freq_shift)": _embedding_variant(
            divide_by="half"
        ),
        "the exponent was divided by dim instead of half - freq_shift": _embedding_variant(divide_by="dim"),
        "cos and sin were interleaved (cos, sin, cos, sin, ...); they come as two halves, concatenated": (
            _embedding_variant(interleave=True)
        ),
    },
    hints=[
        "Use half = dim // 2 frequencies. One half of the output is the cosine of "
        "t times each frequency, the other half the sine.",
        "The frequencies fall from 1 towards 1/10000: f_i = exp(-ln(10000) * i / (half - "
        "freq_shift)) for i = 0, ..., half - 1. torch.arange and math.log build them.",
        "With freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - freq_shift)), "
        "angles = t.float()[:, None] * freqs[None, :] has shape (batch, half). "
        "torch.cat([angles.cos(), angles.sin()], dim=-1) is SD's order; swap the two for the other.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the ResNet block, against diffusers' -----------------------------------------
#
# The learner writes a class; the check builds it, gives it the weights of a diffusers
# ResnetBlock2D (random, the same for every class tried), runs both and compares.


NOT_RUN = "not run: the parameter names and shapes must match first"


def parameter_report(module, reference, library, names):
    """How the parameters of `module` compare with those of `reference`, by name and shape, in one
    short line: the same, or which are missing, unexpected or of the wrong shape. `names` lists the
    layers that the exercise asks for; a mismatch ends with it."""
    for name, value in [("module", module), ("reference", reference)]:
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
    got = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    if got == expected:
        return f"the names and shapes of {library}"
    problems = []
    for word, keys, whole in [("missing", [k for k in expected if k not in got], expected),
                              ("unexpected", [k for k in got if k not in expected], got)]:
        if keys:
            problems.append(f"{word}: " + ", ".join(_by_layer(keys, whole)))
    wrong = [f"{key} {got[key]}, {library} {expected[key]}" for key in expected if key in got and got[key] != expected[key]]
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong))
    return " | ".join(problems) + f" (the layers: {names})"


def _by_layer(keys, all_keys):
    """`keys`, with a layer's name standing for all its tensors when they are all in `keys`."""
    shown = []
    for key in keys:
        layer = key.rpartition(".")[0]
        if layer and all(k in keys for k in all_keys if k.rpartition(".")[0] == layer):
            key = layer
        if key not in shown:
            shown.append(key)
    return shown


def run_with_weights(make_module, source, library, names, inputs, *, training=False, seed=0):
    """Build a module with `make_module()`, give it the weights of `source` and run it on `inputs`
    (its dtype is that of the first input). Returns what a check compares: the parameters, then the
    output's shape, dtype and values, so that a shape or dtype difference is reported as such."""
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        raise TypeError(f"inputs must be a tuple of tensors, the first giving the dtype; got {inputs!r:.80}")
    module = make_module()
    if not isinstance(module, nn.Module):
        raise TypeError(f"the class must make an nn.Module; it made a {type(module).__name__}")
    result = {"parameters": parameter_report(module, source, library, names)}
    if result["parameters"] != f"the names and shapes of {library}":
        return {**result, "output shape": NOT_RUN, "output dtype": NOT_RUN, "output": NOT_RUN}
    module.load_state_dict(source.state_dict())
    module.to(inputs[0].dtype).train(training)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws the same numbers for every class tried
        output = module(*inputs)
    if not isinstance(output, torch.Tensor):
        text = f"forward returned a {type(output).__name__}, not a tensor"
        return {**result, "output shape": text, "output dtype": text, "output": text}
    return {**result, "output shape": tuple(output.shape), "output dtype": str(output.dtype), "output": output}


def randomize(module, seed):
    """Random weights, the same for a given seed: PyTorch's usual start for weights, and norm
    scales and biases away from 1 and 0, so that forgetting one of them shows."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # a norm's scale
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # as PyTorch starts a Linear or Conv2d weight, from its fan-in
                bound = 1 / math.sqrt(p[0].numel())
                p.copy_((2 * torch.rand(p.shape, generator=g) - 1) * bound)
    return module


RESNET_LAYERS = "norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut"


def _check_block_arguments(in_channels, out_channels, temb_channels, groups, eps, dropout, output_scale_factor):
    for name, value in [("in_channels", in_channels), ("out_channels", out_channels),
                        ("temb_channels", temb_channels), ("groups", groups)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, channels in [("in_channels", in_channels), ("out_channels", out_channels)]:
        if channels % groups:
            raise ValueError(f"groups={groups} must divide {name}={channels}: GroupNorm splits the channels evenly")
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (number(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if not (number(dropout) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not (number(output_scale_factor) and output_scale_factor > 0):
        raise ValueError(f"output_scale_factor must be a positive number, got {output_scale_factor!r}")


def diffusers_resnet_block(in_channels, out_channels, temb_channels, groups=32, eps=1e-6, dropout=0.0,
                           output_scale_factor=1.0):
    """diffusers' ResnetBlock2D made with the exercise's arguments: the check's reference."""
    _check_block_arguments(in_channels, out_channels, temb_channels, groups, eps, dropout, output_scale_factor)
    from diffusers.models.resnet import ResnetBlock2D  # imported late: importing diffusers takes a moment

    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                         groups=groups, eps=eps, dropout=dropout, output_scale_factor=output_scale_factor)


def _block_report(cls):
    """What a ResNet block class does: build it, give it the weights of a diffusers block, run it."""
    if isinstance(cls, nn.Module):
        raise TypeError("pass the class itself, as in check_resnet_block(ResnetBlock2D), not a block made from it")
    if not callable(cls):
        raise TypeError(f"pass a class, as in check_resnet_block(ResnetBlock2D); got {type(cls).__name__}")

    def report(config, x, temb, training=False, seed=0):
        source = randomize(diffusers_resnet_block(**config), seed)
        return run_with_weights(lambda: cls(**config), source, "diffusers' ResnetBlock2D", RESNET_LAYERS,
                                (x, temb), training=training, seed=seed)

    return report


class _Block(nn.Module):
    """A plain ResNet block. The mistakes below are copies with one class attribute changed."""

    time = "after conv1"  # where the time embedding is added: "after conv1", "after norm2", "at the end", "nowhere"
    time_act = True  # SiLU on the time embedding before time_emb_proj
    time_proj = True  # the time embedding goes through time_emb_proj
    act = "silu"  # after each GroupNorm: "silu", "relu", "none"
    dropout_at = "before conv2"  # "before conv2", "after conv2", "nowhere", "always on"
    shortcut = "when channels change"  # "when channels change", "never", "always"
    scale = "divide"  # "divide", "multiply", "ignore", "h only"
    residual = True
    pass_eps = True
    float32 = False  # the output turned float32 whatever the inputs' dtype

    def __init__(self, in_channels, out_channels, temb_channels, groups=32, eps=1e-6, dropout=0.0,
                 output_scale_factor=1.0):
        super().__init__()
        eps = eps if self.pass_eps else 1e-5  # 1e-5: nn.GroupNorm's default
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        change = in_channels != out_channels
        if {"when channels change": change, "never": False, "always": True}[self.shortcut]:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.conv_shortcut = None
        self.output_scale_factor = output_scale_factor

    def _act(self, h):
        return {"silu": F.silu, "relu": F.relu, "none": lambda z: z}[self.act](h)

    def _drop(self, h, where):
        if self.dropout_at == "always on":
            return F.dropout(h, self.dropout.p) if where == "before conv2" else h  # F.dropout: training=True
        return self.dropout(h) if where == self.dropout_at else h

    def forward(self, x, temb):
        t = F.silu(temb) if self.time_act else temb
        t = (self.time_emb_proj(t) if self.time_proj else t)[:, :, None, None]  # (batch, out_channels, 1, 1)
        h = self.conv1(self._act(self.norm1(x)))
        if self.time == "after conv1":
            h = h + t
        h = self.norm2(h)
        if self.time == "after norm2":
            h = h + t
        h = self.conv2(self._drop(self._act(h), "before conv2"))
        h = self._drop(h, "after conv2")
        if self.time == "at the end":
            h = h + t
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        if not self.residual:
            shortcut = torch.zeros_like(h)
        s = self.output_scale_factor
        out = {"divide": (shortcut + h) / s, "multiply": (shortcut + h) * s, "ignore": shortcut + h,
               "h only": shortcut + h / s}[self.scale]
        return out.float() if self.float32 else out


def _block_variant(**how):
    return type("ResnetBlock2D", (_Block,), how)


def _block_case(label, in_channels, out_channels, temb_channels, groups, size, *, batch=2, eps=1e-6, dropout=0.0,
                output_scale_factor=1.0, training=False, x_scale=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    config = {"in_channels": in_channels, "out_channels": out_channels, "temb_channels": temb_channels,
              "groups": groups, "eps": eps, "dropout": dropout, "output_scale_factor": output_scale_factor}
    x = x_scale * torch.randn(batch, in_channels, *size, generator=g)
    temb = torch.randn(batch, temb_channels, generator=g)
    return Case(label, (config, x.to(dtype), temb.to(dtype)), {"training": training, "seed": seed})


def _block_cases():
    return [
        # the first case keeps temb_channels = out_channels, so that a block that skips time_emb_proj still runs
        _block_case("8 -> 8 channels, temb 8, 4 groups, 6x6 maps", 8, 8, 8, 4, (6, 6), seed=0),
        _block_case("8 -> 16 channels (a conv_shortcut), temb 12, 4 groups, 5x7 maps", 8, 16, 12, 4, (5, 7), seed=1),
        _block_case("16 -> 8 channels, output_scale_factor 2", 16, 8, 12, 2, (4, 4), output_scale_factor=2.0, seed=2),
        _block_case("small inputs (about 0.001), where GroupNorm's eps matters", 8, 8, 6, 4, (4, 4),
                    x_scale=1e-3, seed=3),
        _block_case("dropout 0.5 in eval mode: dropout does nothing", 8, 16, 8, 4, (4, 4), dropout=0.5, seed=4),
        _block_case("dropout 0.5 in training mode, the same random draws for both blocks", 8, 16, 8, 4, (4, 4),
                    dropout=0.5, training=True, seed=5),
        _block_case("SD's 32 groups: 32 -> 64 channels, temb 40, one 3x3 map", 32, 64, 40, 32, (3, 3), batch=1,
                    seed=6),
        _block_case("float64: 8 -> 12 channels, output_scale_factor 1.5", 8, 12, 10, 4, (3, 5), output_scale_factor=1.5,
                    dtype=torch.float64, seed=7),
    ]


check_resnet_block = exercise_check(
    "resnet_block",
    diffusers_resnet_block,
    _block_cases,
    mistakes={
        "no conv_shortcut: when in_channels != out_channels, x must go through a 1x1 conv to out_channels "
        "before it is added": _block_variant(shortcut="never"),
        "a conv_shortcut although the channels do not change: diffusers makes one only when in_channels != "
        "out_channels, and the shortcut is then x itself": _block_variant(shortcut="always"),
        "the time embedding was not added: project it with time_emb_proj and add it to h after conv1": _block_variant(
            time="nowhere"
        ),
        "the time embedding was added to h without time_emb_proj: project it to out_channels numbers first": (
            _block_variant(time_proj=False)
        ),
        "the time embedding was added after norm2; add it before the norm, right after conv1": _block_variant(
            time="after norm2"
        ),
        "the time embedding was added at the end; add it right after conv1": _block_variant(time="at the end"),
        "the time embedding went into time_emb_proj without SiLU: diffusers applies SiLU to it first": (
            _block_variant(time_act=False)
        ),
        "SiLU is missing after the GroupNorms: h = conv1(SiLU(norm1(x))), then conv2(SiLU(norm2(h)))": (
            _block_variant(act="none")
        ),
        "ReLU instead of SiLU: Stable Diffusion's blocks use SiLU, x * sigmoid(x)": _block_variant(act="relu"),
        "the shortcut was not added: the block returns shortcut(x) + h, not h alone": _block_variant(residual=False),
        "output_scale_factor was ignored: diffusers divides the sum shortcut(x) + h by it": _block_variant(
            scale="ignore"
        ),
        "the output was multiplied by output_scale_factor; diffusers divides by it": _block_variant(scale="multiply"),
        "only h was divided by output_scale_factor; divide the whole sum shortcut(x) + h": _block_variant(
            scale="h only"
        ),
        "eps was not given to the GroupNorms: nn.GroupNorm's default is 1e-5, and the block must use its eps "
        "argument": _block_variant(pass_eps=False),
        "dropout is missing: in training mode it acts after the second SiLU, before conv2": _block_variant(
            dropout_at="nowhere"
        ),
        "dropout in the wrong place: it goes after the second SiLU, before conv2, not after conv2": _block_variant(
            dropout_at="after conv2"
        ),
        "dropout stays on in eval mode: F.dropout needs training=self.training; nn.Dropout switches off "
        "by itself": _block_variant(dropout_at="always on"),
        "the output is float32 for float64 inputs: keep the inputs' dtype (a .float() or a tensor made in "
        "float32 changes it)": _block_variant(float32=True),
    },
    hints=[
        "In __init__, make the layers with diffusers' names: norm1 and norm2 are nn.GroupNorm(groups, channels, "
        "eps=eps), conv1 and conv2 are 3x3 nn.Conv2d with padding=1, time_emb_proj is an nn.Linear to "
        "out_channels, and conv_shortcut a 1x1 nn.Conv2d, only when the channels change (None otherwise).",
        "forward: h = conv1(SiLU(norm1(x))). The time embedding goes through SiLU, then time_emb_proj: "
        "(batch, out_channels). Add it to h as t[:, :, None, None], one number per channel for every pixel.",
        "Then h = conv2(dropout(SiLU(norm2(h)))) with dropout an nn.Dropout(dropout), and return "
        "(shortcut + h) / output_scale_factor, where shortcut is conv_shortcut(x), or x when there is none.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_block_report,
)


# ---- the U-Net analyzer ----------------------------------------------------------------------


def _conv(c_in, c_out, kernel, bias=True):
    """Parameters of a Conv2d: one kernel x kernel filter per (input, output) pair, plus a bias per output."""
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def _analyze(block_out_channels, layers_per_block=2, latent_size=64, *, bias=True, shortcut=True, skip_channels=True,
             up_extra=1, bytes_per_value=4, first_halving=0, mid_resnets=2, downsampled_skip=True):
    channels = list(block_out_channels)
    n, L = len(channels), layers_per_block

    def resnet(c_in, c_out):
        params = _conv(c_in, c_out, 3, bias) + _conv(c_out, c_out, 3, bias)  # conv1, conv2
        if shortcut and c_in != c_out:
            params += _conv(c_in, c_out, 1, bias)  # conv_shortcut
        return params

    levels = []
    for i, c in enumerate(channels):
        size = latent_size // 2 ** (i + first_halving)
        before = channels[i - 1] if i > 0 else channels[0]  # channels of the level above (conv_in's at the top)
        below = channels[i + 1] if i < n - 1 else channels[-1]  # channels arriving from below (the mid block's at the bottom)
        down = sum(resnet(before if k == 0 else c, c) for k in range(L))
        up_skips = ([c] * L + [before])[: L + up_extra]  # the last skip used here came from the level above
        up = 0
        for k, skip in enumerate(up_skips):
            x_channels = below if k == 0 else c
            up += resnet(x_channels + (skip if skip_channels else 0), c)
        stored = c * L + (before if downsampled_skip else 0)  # channels of the skips kept at this resolution
        levels.append({
            "resolution": size,
            "channels": c,
            "down_conv_params": down,
            "up_conv_params": up,
            "feature_map_bytes": c * size * size * bytes_per_value,
            "skip_bytes": stored * size * size * bytes_per_value,
        })
    mid = mid_resnets * resnet(channels[-1], channels[-1])
    return {  # totals first, so that a failure report shows them before it is cut short
        "total_conv_params": sum(lv["down_conv_params"] + lv["up_conv_params"] for lv in levels) + mid,
        "total_skip_bytes": sum(lv["skip_bytes"] for lv in levels),
        "mid_conv_params": mid,
        "levels": levels,
    }


def analyze_unet_reference(block_out_channels, layers_per_block=2, latent_size=64):
    return _analyze(block_out_channels, layers_per_block, latent_size)


def _analyzer_variant(**how):
    return lambda block_out_channels, layers_per_block=2, latent_size=64: _analyze(
        block_out_channels, layers_per_block, latent_size, **how
    )


def _analyzer_cases():
    return [
        Case("[64, 128, 256], 2 layers per block, 64x64 latents", ([64, 128, 256],)),
        Case("[32, 64, 128, 256], 2 layers per block, 64x64 latents", ([32, 64, 128, 256], 2, 64)),
        Case("SD 1.5: [320, 640, 1280, 1280], 2 layers, 64x64 latents", ([320, 640, 1280, 1280],),
             {"layers_per_block": 2, "latent_size": 64}),
        Case("[16, 32], 1 layer per block, 16x16 latents", ([16, 32], 1, 16)),
        Case("[8, 8, 24], 3 layers per block, 32x32 latents", ([8, 8, 24],), {"layers_per_block": 3, "latent_size": 32}),
    ]


check_analyze_unet = exercise_check(
    "analyze_unet",
    analyze_unet_reference,
    _analyzer_cases,
    mistakes={
        "the skip connection's channels were left out of the up ResNets' input: they take x and the skip, concatenated": (
            _analyzer_variant(skip_channels=False)
        ),
        "the convolutions were counted without their biases: a k x k conv has c_in c_out k^2 + c_out parameters": (
            _analyzer_variant(bias=False)
        ),
        "the 1x1 shortcut conv is missing: a ResNet whose channels change needs one": _analyzer_variant(shortcut=False),
        "the up path got layers_per_block ResNets per level; it has layers_per_block + 1, one more than the down path": (
            _analyzer_variant(up_extra=0)
        ),
        "the memory was counted at float16 (2 bytes a value); float32 takes 4": _analyzer_variant(bytes_per_value=2),
        "off-by-one in the resolutions: level 0 works at the full latent size, level i at latent_size / 2**i": (
            _analyzer_variant(first_halving=1)
        ),
        "only one mid-block ResNet was counted; the mid block has two (ResNet, transformer, ResNet)": _analyzer_variant(
            mid_resnets=1
        ),
        "skip_bytes misses one map per level: the output of conv_in (level 0) or of the halving above (other levels)": (
            _analyzer_variant(downsampled_skip=False)
        ),
    },
    hints=[
        "Write a helper resnet_params(a, b) first, with conv_params: two 3x3 convolutions, plus a "
        "1x1 shortcut when a and b differ. Every count is a sum of these.",
        "At level i, name the neighbours: c_above is the channels of the level before (c_0 at level "
        "0), c_below those of the level after (the last level's at the bottom).",
        "Down: resnet_params(c_above, c) once, then resnet_params(c, c) L - 1 times. Up: L + 1 ResNets from x "
        "plus skip channels, x = [c_below, c, ..., c] and skip = [c, ..., c, c_above].",
        "With r = latent_size // 2**i: feature_map_bytes = c * r * r * 4 and skip_bytes = sum(skip) "
        "* r * r * 4. The mid block is 2 * resnet_params(c_last, c_last).",
    ],
    solution=SOLUTION_NOTEBOOK,
)
