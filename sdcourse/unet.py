"""The Stable Diffusion U-Net, from scratch, weight-compatible with diffusers.

The U-Net predicts the noise in a latent image, given the timestep and the text:

    noise_pred = unet(latents, t, text_embeddings)
    latents:         (batch, 4, height/8, width/8)   e.g. (1, 4, 64, 64) for a 512x512 image
    t:               a number, or one per sample
    text_embeddings: (batch, 77, cross_attention_dim)  from the CLIP text encoder

Layout (SD 1.5, channels per level 320, 640, 1280, 1280):

    conv_in                                  4 -> 320 channels
    down_blocks  (ResNet + Transformer) x 2, then halve height and width; 4 levels
    mid_block    ResNet, Transformer, ResNet at the lowest resolution
    up_blocks    mirror of the down path; each ResNet also takes a skip connection
    conv_norm_out, SiLU, conv_out            320 -> 4 channels

The timestep enters every ResNet block (as a per-channel bias), the text enters every
Transformer block (as the keys and values of cross-attention).

The ResNet blocks, the resampling and the attention core come from `sdcourse.layers`, shared
with the VAE and the text encoder; this file wires them into the U and adds what only the
U-Net has: the timestep embedding and the transformer blocks. Every block reads the settings
it shares with the others from one `BlockConfig`, and each level's own sizes from a `Level`.
The first half of the U (conv_in, the time embedding, the down blocks, the mid block) is built and
run by functions that the ControlNet (`sdcourse.controlnet`), a copy of that half, uses too.

Every parameter has the same name as in diffusers' `UNet2DConditionModel`, so

    unet = UNet.from_config(diffusers_unet.config)
    unet.load_state_dict(diffusers_unet.state_dict())

works with no conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sdcourse.layers import Attention, BlockConfig, Downsample2D, MultiHeadAttention, ResnetBlock2D, Upsample2D
from sdcourse.arguments import whole_number
from sdcourse.weights import ConfigRule, check_block_types, check_state_dict

# The U-Net of Stable Diffusion 1.5 (the `unet/config.json` of the model repository).
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # the number of heads (see `UNet.from_config`)
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "use_linear_projection": False,
}

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


# ----------------------------------------------------------------------------
# Timestep


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0, max_period=10000):
    """Sinusoidal embedding of the timesteps, as in the Transformer's positions.

    timesteps: (batch,) integers or floats.  Returns (batch, dim), float32.
    With half = dim // 2, frequency i (i = 0 .. half-1) is
        f_i = max_period ** (-i / (half - freq_shift))
    and the embedding is [sin(t f), cos(t f)], or [cos(t f), sin(t f)] with `flip_sin_to_cos`.
    Stable Diffusion uses flip_sin_to_cos=True, freq_shift=0; the original DDPM code used
    sin first and freq_shift=1. The weights only work with the order they were trained with.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    # f_i = exp(-ln(max_period) * i / (half - freq_shift))
    freqs = torch.exp(-math.log(max_period) * i / (half - freq_shift))  # (half,)
    angles = timesteps[:, None].float() * freqs[None, :]  # (batch, half)
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (batch, 2 * half)
    else:
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))  # an odd dim gets a zero in the last place
    return emb


class TimestepEmbedding(nn.Module):
    """The MLP on top of the sinusoid: Linear, SiLU, Linear."""

    def __init__(self, in_dim, time_embed_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x):  # (batch, in_dim)
        # emb = W2 SiLU(W1 x + b1) + b2
        return self.linear_2(F.silu(self.linear_1(x)))  # (batch, time_embed_dim)


# ----------------------------------------------------------------------------
# Transformer


class GEGLU(nn.Module):
    """GEGLU(x) = (x W + b) * GELU(x V + c): one Linear computes both halves."""

    def __init__(self, dim, inner_dim):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, x):  # (batch, tokens, dim)
        value, gate = self.proj(x).chunk(2, dim=-1)  # each (batch, tokens, inner_dim)
        # GEGLU(x) = value * GELU(gate), GELU(z) = z * Phi(z) (exact, not the tanh approximation)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width, then a Linear back. `net` is indexed like diffusers' (0, 1, 2)."""

    def __init__(self, dim, mult=4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(0.0), nn.Linear(inner_dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, feed-forward; each pre-norm and residual.

        x = x + attn1(LayerNorm(x))                  pixels look at pixels
        x = x + attn2(LayerNorm(x), text)            pixels (Q) look at text tokens (K, V)
        x = x + ff(LayerNorm(x))
    """

    def __init__(self, dim, heads, head_dim, cross_attention_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim, heads=heads, head_dim=head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        # x: (batch, pixels, dim), context: (batch, text_tokens, cross_attention_dim)
        # x = x + SelfAttention(LayerNorm(x))
        x = x + self.attn1(self.norm1(x))
        # x = x + CrossAttention(Q = LayerNorm(x), K = V = text)
        x = x + self.attn2(self.norm2(x), context)
        # x = x + FeedForward(LayerNorm(x))
        x = x + self.ff(self.norm3(x))
        return x  # (batch, pixels, dim)


class Transformer2D(nn.Module):
    """Runs transformer blocks on an image, each pixel a token.

        h = proj_in(GroupNorm(x))               1x1 conv (SD 1.x) or Linear (SD 2.x); same maths
        h = blocks(h as (batch, pixels, inner_dim), text)
        out = x + proj_out(h)
    """

    def __init__(self, channels, heads, config: BlockConfig, num_layers=1):
        super().__init__()
        head_dim = channels // heads
        inner_dim = heads * head_dim
        self.use_linear_projection = config.use_linear_projection
        # diffusers fixes this GroupNorm's eps at 1e-6, whatever the config's norm_eps.
        self.norm = nn.GroupNorm(config.norm_groups, channels, eps=1e-6)
        if self.use_linear_projection:
            self.proj_in = nn.Linear(channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, heads, head_dim, config.cross_attention_dim) for _ in range(num_layers)]
        )
        if self.use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)
        self.spatial_size = None  # (height, width) of the last input, to reshape attention maps

    def forward(self, x, context):
        batch, channels, height, width = x.shape  # (batch, channels, height, width)
        self.spatial_size = (height, width)
        residual = x
        # h = proj_in(GroupNorm(x))
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)  # (batch, inner_dim, height, width)
        # one token per pixel, row by row
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, -1)  # (batch, pixels, inner_dim)
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()  # (batch, inner_dim, h, w)
        if not self.use_linear_projection:
            h = self.proj_out(h)  # (batch, channels, height, width)
        # out = x + proj_out(h)
        return residual + h



# ----------------------------------------------------------------------------
# U-Net blocks


@dataclass(frozen=True)
class Level:
    """One level of the U: what its down block (or its mirror, the up block) is made of.

    in_channels -> out_channels through `num_layers` ResNet blocks, each followed by a
    Transformer2D of `heads` heads and `transformer_layers` layers when `attention` is set;
    `resample`: halve (down path) or double (up path) the size at the end of the level.
    """

    in_channels: int
    out_channels: int
    num_layers: int
    heads: int
    transformer_layers: int
    attention: bool
    resample: bool


def transformers_for(level: Level, channels: int, config: BlockConfig):
    """One Transformer2D per ResNet of a level with attention, else None (a plain level)."""
    if not level.attention:
        return None
    return nn.ModuleList(
        [Transformer2D(channels, level.heads, config, level.transformer_layers) for _ in range(level.num_layers)]
    )


class DownBlock(nn.Module):
    """One level of the down path: `num_layers` x (ResNet [+ Transformer]), then [Downsample].

    With attention this is diffusers' CrossAttnDownBlock2D, without it DownBlock2D.
    Returns the output and the list of skip tensors (one per layer, plus one after downsampling).
    """

    def __init__(self, level: Level, config: BlockConfig):
        super().__init__()
        out_channels = level.out_channels
        # (attentions are registered first only so that state_dict keys come in diffusers' order)
        self.attentions = transformers_for(level, out_channels, config)
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(level.in_channels if i == 0 else out_channels, out_channels, config)
             for i in range(level.num_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if level.resample else None

    def forward(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """The bottom of the U: ResNet, Transformer, ResNet (diffusers' UNetMidBlock2DCrossAttn)."""

    def __init__(self, channels, heads, transformer_layers, config: BlockConfig):
        super().__init__()
        self.attentions = nn.ModuleList([Transformer2D(channels, heads, config, transformer_layers)])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, config) for _ in range(2)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """One level of the up path: `num_layers` x (concat skip, ResNet [+ Transformer]), then [Upsample].

    With attention this is diffusers' CrossAttnUpBlock2D, without it UpBlock2D. Skips are
    consumed last-in first-out: the last tensor saved on the way down is the first used here.
    `level.in_channels` is the width of the level above's skips; `prev_channels` the width of
    what comes up from the level below.
    """

    def __init__(self, level: Level, prev_channels, config: BlockConfig):
        super().__init__()
        out_channels = level.out_channels
        self.attentions = transformers_for(level, out_channels, config)
        resnets = []
        for i in range(level.num_layers):
            # channels coming up from below (first layer) or from the previous layer of this block
            resnet_in = prev_channels if i == 0 else out_channels
            # channels of the skip tensor: the last skip of this level comes from the level above
            skip = level.in_channels if i == level.num_layers - 1 else out_channels
            resnets.append(ResnetBlock2D(resnet_in + skip, out_channels, config))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if level.resample else None

    def forward(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)  # (batch, channels + skip_channels, h, w)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x

# ----------------------------------------------------------------------------
# Config


# How this U-Net reads a config of diffusers' UNet2DConditionModel (see sdcourse.weights): the
# fields it uses, and one that cannot change its numbers: `upcast_attention` computes attention in
# float32 when the weights are float16. Every other field of diffusers' U-Net (`class_embed_type`,
# `addition_embed_type`, ... for features SD 1.x / 2.x do not use) must keep diffusers' default.
CONFIG_RULE = ConfigRule(
    network="U-Net",
    library_class="diffusers.UNet2DConditionModel",
    used=(
        "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
        "down_block_types", "up_block_types", "block_out_channels", "layers_per_block", "norm_num_groups",
        "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
        "num_attention_heads", "use_linear_projection", "conv_in_kernel", "conv_out_kernel",
    ),
    bookkeeping=("upcast_attention",),
    also_accepted={"mid_block_only_cross_attention": (False,)},  # False and the default None mean the same
    per_block=("layers_per_block", "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim"),
)


def _per_block(value, n, name):
    """An int (the same for every block) or a list of n ints, one per block."""
    if not isinstance(value, (list, tuple)):
        return [whole_number(name, value)] * n
    if len(value) != n:
        raise ValueError(f"{name} must be an int or a list of {n} ints (one per block), got {list(value)}")
    return [whole_number(f"{name}[{i}]", v) for i, v in enumerate(value)]


# ----------------------------------------------------------------------------
# The down path: what the U-Net shares with its ControlNet (sdcourse.controlnet)


@dataclass(frozen=True)
class Levels:
    """The sizes of the U's levels, one entry per level, as a config gives them."""

    channels: list
    layers: list
    heads: list
    transformer_layers: list

    @classmethod
    def from_config(cls, cfg):
        channels = list(cfg["block_out_channels"])
        n = len(channels)
        # diffusers' naming quirk: in SD configs `attention_head_dim` holds the NUMBER OF HEADS
        # (8 for SD 1.x; [5, 10, 20, 20] for SD 2.x), not the width of a head. Each head is
        # channels // heads wide (320 // 8 = 40 in SD 1.5's first block; 64 everywhere in SD 2.x).
        # The name was a mistake kept for compatibility; `num_attention_heads`, when set, wins.
        return cls(
            channels=channels,
            layers=_per_block(cfg["layers_per_block"], n, "layers_per_block"),
            heads=_per_block(cfg["num_attention_heads"] or cfg["attention_head_dim"], n, "attention_head_dim"),
            transformer_layers=_per_block(cfg["transformer_layers_per_block"], n, "transformer_layers_per_block"),
        )


def block_config(cfg) -> BlockConfig:
    """The settings every block shares; the timestep embedding is 4 x the first level's channels wide."""
    return BlockConfig(
        norm_groups=cfg["norm_num_groups"], norm_eps=cfg["norm_eps"], temb_channels=cfg["block_out_channels"][0] * 4,
        cross_attention_dim=cfg["cross_attention_dim"], use_linear_projection=cfg["use_linear_projection"],
    )


def down_path(block_types, levels: Levels, blocks: BlockConfig) -> nn.ModuleList:
    """The down blocks: level i goes from channels[i-1] to channels[i]; all but the last halve the size."""
    channels, n = levels.channels, len(levels.channels)
    down_blocks = nn.ModuleList()
    for i, block_type in enumerate(block_types):
        level = Level(channels[max(i - 1, 0)], channels[i], levels.layers[i], levels.heads[i],
                      levels.transformer_layers[i], attention=block_type == "CrossAttnDownBlock2D", resample=i < n - 1)
        down_blocks.append(DownBlock(level, blocks))
    return down_blocks


def run_down_blocks(down_blocks, x, temb, context):
    """x through every down block; returns the result and every intermediate one (the skips),
    x itself first."""
    skips = [x]
    for block in down_blocks:
        x, block_skips = block(x, temb, context)
        skips.extend(block_skips)
    return x, skips


def batch_timesteps(timestep, sample):
    """A number, or a tensor of one value or one per sample -> (batch,) timesteps on sample's device."""
    batch = sample.shape[0]
    if not torch.is_tensor(timestep):
        dtype = torch.float32 if isinstance(timestep, float) else torch.int64
        timestep = torch.tensor([timestep], dtype=dtype)
    timestep = timestep.to(sample.device).reshape(-1)  # (1,) or (batch,)
    if timestep.shape[0] not in (1, batch):
        raise ValueError(
            f"timestep has {timestep.shape[0]} values, expected one or one per sample (batch={batch})"
        )
    return timestep.expand(batch)  # (batch,)


def embed_time(network, timestep, sample):
    """t -> sinusoid (batch, channels[0]) -> the network's MLP -> temb (batch, 4 channels[0])."""
    t = batch_timesteps(timestep, sample)
    t_emb = timestep_embedding(t, network.conv_in.out_channels, network.flip_sin_to_cos, network.freq_shift)
    return network.time_embedding(t_emb.to(sample.dtype))


def check_inputs(network, sample, encoder_hidden_states):
    """The shapes a U-Net or a ControlNet (`network.kind`) takes: sample (batch, in_channels, h, w)
    with h and w divisible by 2 ** num_downsamplers, text (batch, tokens, cross_attention_dim)."""
    kind = network.kind
    if sample.ndim != 4:
        raise ValueError(f"sample must be (batch, channels, height, width), got shape {tuple(sample.shape)}")
    if sample.shape[1] != network.in_channels:
        raise ValueError(
            f"sample has {sample.shape[1]} channels, but this {kind} expects in_channels={network.in_channels}"
        )
    factor = 2 ** network.num_downsamplers
    height, width = sample.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"sample height and width must be divisible by {factor} (the {kind} halves them "
            f"{network.num_downsamplers} times), got {height}x{width}"
        )
    if encoder_hidden_states.ndim != 3:
        raise ValueError(
            "encoder_hidden_states must be (batch, tokens, cross_attention_dim), "
            f"got shape {tuple(encoder_hidden_states.shape)}"
        )
    if encoder_hidden_states.shape[-1] != network.cross_attention_dim:
        raise ValueError(
            f"encoder_hidden_states has width {encoder_hidden_states.shape[-1]}, but this {kind} expects "
            f"cross_attention_dim={network.cross_attention_dim}"
        )
    if encoder_hidden_states.shape[0] != sample.shape[0]:
        raise ValueError(
            f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, "
            f"but sample has batch {sample.shape[0]}"
        )


def set_sdpa(network, enabled):
    """Every attention layer of `network`: True, torch's fused scaled_dot_product_attention;
    False, the written-out softmax(QK^T/sqrt(d))V."""
    for module in network.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_sdpa = bool(enabled)


# ----------------------------------------------------------------------------
# The U-Net


class UNet(nn.Module):
    """The conditional U-Net of Stable Diffusion 1.x / 2.x. Build it with `UNet.from_config`.

    `forward(sample, timestep, encoder_hidden_states)` returns the predicted noise (or v),
    a tensor shaped like `sample`. A ControlNet's outputs (`sdcourse.controlnet`) join in as
    `down_block_additional_residuals` and `mid_block_additional_residual`.
    """

    kind = "U-Net"  # in messages

    def __init__(self, config=None, use_sdpa=True):
        """config: a diffusers UNet2DConditionModel config (a dict or `unet.config`); None: diffusers' defaults."""
        super().__init__()
        self.config = cfg = self._read_config({} if config is None else config)
        self.in_channels = cfg["in_channels"]
        self.out_channels = cfg["out_channels"]
        self.cross_attention_dim = cfg["cross_attention_dim"]
        self.sample_size = cfg["sample_size"]
        self.flip_sin_to_cos = cfg["flip_sin_to_cos"]
        self.freq_shift = cfg["freq_shift"]
        self.center_input_sample = cfg["center_input_sample"]
        levels = Levels.from_config(cfg)  # channels, layers, heads and transformer layers per level
        channels, layers, heads, transformer_layers = (
            levels.channels, levels.layers, levels.heads, levels.transformer_layers)
        n = len(channels)

        # input: latents -> first block's channels
        self.conv_in = nn.Conv2d(self.in_channels, channels[0], cfg["conv_in_kernel"],
                                 padding=(cfg["conv_in_kernel"] - 1) // 2)

        # time: sinusoid of width channels[0], then an MLP to 4 x channels[0]
        time_embed_dim = channels[0] * 4
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)

        # every block shares these settings
        blocks = block_config(cfg)

        # down path: level i goes from channels[i-1] to channels[i]; all but the last halve the size
        self.down_blocks = down_path(cfg["down_block_types"], levels, blocks)

        # bottom (up_blocks is registered before it only so that state_dict keys come in diffusers' order)
        self.up_blocks = nn.ModuleList()
        self.mid_block = MidBlock(channels[-1], heads[-1], transformer_layers[-1], blocks)

        # up path: the mirror image, with one more layer per level (to consume the extra skip)
        rev_channels, rev_layers = channels[::-1], layers[::-1]
        rev_heads, rev_transformer_layers = heads[::-1], transformer_layers[::-1]
        for i, block_type in enumerate(cfg["up_block_types"]):
            level = Level(rev_channels[min(i + 1, n - 1)], rev_channels[i], rev_layers[i] + 1, rev_heads[i],
                          rev_transformer_layers[i], attention=block_type == "CrossAttnUpBlock2D",
                          resample=i < n - 1)
            self.up_blocks.append(UpBlock(level, prev_channels=rev_channels[max(i - 1, 0)], config=blocks))
        self.num_downsamplers = n - 1

        # output: back to latent channels
        self.conv_norm_out = nn.GroupNorm(blocks.norm_groups, channels[0], eps=blocks.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], self.out_channels, cfg["conv_out_kernel"],
                                  padding=(cfg["conv_out_kernel"] - 1) // 2)

        self.use_sdpa = use_sdpa

    @classmethod
    def from_config(cls, config, use_sdpa=True):
        """Build from a diffusers UNet2DConditionModel config (a dict or `unet.config`).

        Fields keep diffusers' meaning, including its naming quirk: `attention_head_dim` is the
        number of attention heads per block (an int or one per block), not their width.
        Fields for features SD 1.x / 2.x do not use must keep their default, and an unknown
        field is an error (the course's one rule for configs, `sdcourse.weights`).
        """
        return cls(config, use_sdpa=use_sdpa)

    @staticmethod
    def _read_config(config):
        cfg = CONFIG_RULE.read(config)
        check_block_types(cfg, down=DOWN_BLOCK_TYPES, up=UP_BLOCK_TYPES)
        if cfg["norm_num_groups"] is None:
            raise ValueError("norm_num_groups=None is not supported by this U-Net")
        if not isinstance(cfg["cross_attention_dim"], int):
            dims = list(cfg["cross_attention_dim"])
            if len(set(dims)) != 1:
                raise ValueError(f"cross_attention_dim must be one int, got {dims}")
            cfg["cross_attention_dim"] = dims[0]
        return cfg

    # ---- switches

    @property
    def use_sdpa(self):
        return self._use_sdpa

    @use_sdpa.setter
    def use_sdpa(self, enabled):
        """True: torch's fused scaled_dot_product_attention. False: the written-out softmax(QK^T/sqrt(d))V."""
        self._use_sdpa = bool(enabled)
        set_sdpa(self, self._use_sdpa)

    def store_attention_probs(self, enabled=True, self_attention=False):
        """Keep the attention probabilities of every cross-attention layer (attn2) at each forward.

        With `self_attention=True` also the self-attention layers (attn1): large, (pixels x pixels).
        Storing uses the written-out attention (SDPA does not return probabilities).
        Read them with `attention_probs()`.
        """
        for name, module in self.named_modules():
            if isinstance(module, MultiHeadAttention):
                is_cross = name.endswith("attn2")
                module.store_probs = enabled and (is_cross or self_attention)
                if not module.store_probs:
                    module.last_probs = None

    def attention_probs(self, spatial=False):
        """{layer name: probabilities} of the last forward, for the layers that store them.

        Each is (batch, heads, pixels, key_tokens), pixels in row order; with `spatial=True`
        (batch, heads, height, width, key_tokens). Names look like
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2".
        """
        probs = {}
        for name, module in self.named_modules():
            if isinstance(module, Transformer2D):
                for sub_name, sub in module.named_modules():
                    if isinstance(sub, MultiHeadAttention) and sub.store_probs and sub.last_probs is not None:
                        p = sub.last_probs
                        if spatial:
                            height, width = module.spatial_size
                            p = p.reshape(p.shape[0], p.shape[1], height, width, p.shape[-1])
                        probs[f"{name}.{sub_name}"] = p
        return probs

    # ---- checks

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's load_state_dict, with an error listing the missing/unexpected/mismatched keys."""
        check_state_dict(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- forward

    def forward(self, sample, timestep, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None):
        """sample: (batch, in_channels, height, width), timestep: number or (batch,),
        encoder_hidden_states: (batch, tokens, cross_attention_dim). Returns (batch, out_channels, height, width).

        down_block_additional_residuals, mid_block_additional_residual: a ControlNet's outputs, both
        or neither: one tensor per skip connection, added to it, and one added to the mid block's output.
        """
        check_inputs(self, sample, encoder_hidden_states)
        controlled = _given_both(down_block_additional_residuals, mid_block_additional_residual)
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time: t -> sinusoid (batch, channels[0]) -> MLP (batch, 4 channels[0])
        temb = embed_time(self, timestep, sample)

        # 2. down: keep every intermediate result for the skip connections
        x = self.conv_in(sample)  # (batch, channels[0], height, width)
        x, skips = run_down_blocks(self.down_blocks, x, temb, encoder_hidden_states)
        if controlled:  # a ControlNet's residual joins each skip (not the x going on to the mid block)
            _check_residuals(down_block_additional_residuals, skips, "down_block_additional_residuals")
            skips = [skip + residual for skip, residual in zip(skips, down_block_additional_residuals)]

        # 3. bottom: (batch, channels[-1], height / 2**(n-1), width / 2**(n-1))
        x = self.mid_block(x, temb, encoder_hidden_states)
        if controlled:
            _check_residuals([mid_block_additional_residual], [x], "mid_block_additional_residual")
            x = x + mid_block_additional_residual

        # 4. up: each block pops as many skips as it has ResNets
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)

        # 5. out
        x = self.conv_out(F.silu(self.conv_norm_out(x)))  # (batch, out_channels, height, width)
        return x


def _given_both(down, mid) -> bool:
    """Whether a ControlNet's residuals were given: both (True) or neither (False), else a ValueError."""
    if down is None and mid is None:
        return False
    if mid is None:
        raise ValueError("down_block_additional_residuals was given without mid_block_additional_residual: a "
                         "ControlNet's outputs come as both (down_block_res_samples, mid_block_res_sample), or neither")
    if down is None:
        raise ValueError("mid_block_additional_residual was given without down_block_additional_residuals: a "
                         "ControlNet's outputs come as both (down_block_res_samples, mid_block_res_sample), or neither")
    if not isinstance(down, (list, tuple)):
        raise ValueError("down_block_additional_residuals must be a list of tensors, one per skip connection, "
                         f"got {type(down).__name__}")
    return True


def _check_residuals(residuals, targets, name):
    """One residual per target tensor, each of its target's shape (no silent broadcasting)."""
    if len(residuals) != len(targets):
        raise ValueError(f"{name} has {len(residuals)} tensors, but this U-Net has {len(targets)} skip connections: "
                         "was the ControlNet made for another U-Net?")
    for i, (residual, target) in enumerate(zip(residuals, targets)):
        label = f"{name}[{i}]" if len(targets) > 1 else name
        if not torch.is_tensor(residual) or residual.shape != target.shape:
            got = tuple(residual.shape) if torch.is_tensor(residual) else type(residual).__name__
            raise ValueError(f"{label} must have the shape {tuple(target.shape)} of what it is added to, got {got}")
