"""The variational autoencoder (VAE) of Stable Diffusion, written from scratch.

Stable Diffusion does not denoise pixels. The VAE's encoder squeezes an image
(batch, 3, H, W) with values in [-1, 1] into latents (batch, 4, H/8, W/8), the diffusion
model works on those latents, and the decoder turns the final latents back into pixels.

    image --encoder--> (mean, logvar) --sample--> z --decoder--> image

The encoder does not output one latent but a diagonal Gaussian: a mean and a log-variance
per latent value. Training samples z from it (the "V" in VAE, with a small KL penalty
pulling it towards N(0, 1)); Stable Diffusion mostly uses the mean or one sample.

Both halves are made of the same few parts:
- ResNet blocks: GroupNorm -> SiLU -> 3x3 conv, twice, plus a skip connection,
- downsampling (encoder): a stride-2 3x3 conv, after padding one pixel on the right and
  bottom only,
- upsampling (decoder): nearest-neighbour 2x enlargement, then a 3x3 conv,
- a middle block: ResNet, one single-head self-attention over all pixels, ResNet.

Parameter names are the ones diffusers' `AutoencoderKL` uses, so its weights load directly:

    vae = VAE.from_config(diffusers_vae.config)
    vae.load_state_dict(diffusers_vae.state_dict())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdcourse.attention import Attention
from sdcourse.weights import check_state_dict

ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu, "mish": F.mish}
CONFIG_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
)
GROUP_NORM_EPS = 1e-6


def _old_attention_names(missing, unexpected):
    if any(k.endswith((".query.weight", ".proj_attn.weight")) for k in unexpected):
        return (
            "(query/key/value/proj_attn are the old names of the mid-block attention used by the original "
            "Stable Diffusion checkpoints; diffusers renames them to to_q/to_k/to_v/to_out.0)"
        )
    return None


class DiagonalGaussian:
    """A Gaussian with a separate mean and variance for every latent value.

    Built from the encoder's output (batch, 2 * latent_channels, h, w): the first half of the
    channels is the mean, the second half the log-variance.
    """

    def __init__(self, parameters):
        self.parameters = parameters
        # (batch, 2 * latent, h, w) -> two (batch, latent, h, w)
        self.mean, logvar = parameters.chunk(2, dim=1)
        # clamp so that exp() can neither overflow nor give a zero variance
        self.logvar = logvar.clamp(-30.0, 20.0)
        # std = exp(logvar / 2), var = exp(logvar)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator=None):
        """z = mean + std * eps with eps ~ N(0, 1) (the reparameterisation trick).

        `generator` may be one torch.Generator, or a list of them, one per image. The noise is
        drawn on the generator's device, then moved to the latents' device.
        """
        shape, device, dtype = self.mean.shape, self.mean.device, self.mean.dtype
        if isinstance(generator, (list, tuple)):
            if len(generator) != shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} latents")
            eps = torch.cat(
                [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
            ).to(device)
        else:
            noise_device = generator.device if generator is not None else device
            eps = torch.randn(shape, generator=generator, device=noise_device, dtype=dtype).to(device)
        # z = mu + sigma * eps
        return self.mean + self.std * eps

    def mode(self):
        """The most likely latent: the mean."""
        return self.mean

    def kl(self):
        """KL(N(mean, var) || N(0, 1)), summed over channels and pixels: one number per image."""
        # KL = 1/2 * sum(mean^2 + var - 1 - log var)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


class ResnetBlock(nn.Module):
    """Two (GroupNorm -> activation -> 3x3 conv) steps plus a skip connection."""

    def __init__(self, in_channels, out_channels, groups, act_fn="silu"):
        super().__init__()
        self.act = ACTIVATIONS[act_fn]
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=GROUP_NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # a 1x1 conv makes the skip connection the right width when the channels change
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):  # (batch, in_channels, h, w)
        # h = conv1(act(norm1(x)))
        h = self.conv1(self.act(self.norm1(x)))  # (batch, out_channels, h, w)
        # h = conv2(act(norm2(h)))
        h = self.conv2(self.act(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        # out = skip(x) + h
        return skip + h  # (batch, out_channels, h, w)


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 conv.

    The conv has no padding of its own: one row of zeros is added at the bottom and one column
    on the right only. (Original Stable Diffusion code; the weights were trained that way.)
    """

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):  # (batch, channels, h, w)
        # pad (left, right, top, bottom) = (0, 1, 0, 1)
        x = F.pad(x, (0, 1, 0, 1))  # (batch, channels, h + 1, w + 1)
        return self.conv(x)  # (batch, channels, h / 2, w / 2)


class Upsample(nn.Module):
    """Double height and width: repeat every pixel 2x2 (nearest neighbour), then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):  # (batch, channels, h, w)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (batch, channels, 2h, 2w)
        return self.conv(x)


class VAEAttention(Attention):
    """Single-head self-attention over all pixels, with a GroupNorm in front and a residual.

    Every pixel is a token whose features are its channels:
        out = x + to_out(attention(GroupNorm(x)))
    """

    def __init__(self, channels, groups):
        super().__init__(channels, heads=1, head_dim=channels, bias=True, out_bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)

    def forward(self, x):  # (batch, channels, h, w)
        batch, channels, height, width = x.shape
        h = self.group_norm(x)
        tokens = h.view(batch, channels, height * width).transpose(1, 2)  # (batch, h * w, channels)
        # softmax(Q K^T / sqrt(channels)) V, then the output projection
        out = super().forward(tokens)  # (batch, h * w, channels)
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        # residual connection
        return x + out


class DownEncoderBlock(nn.Module):
    """`layers` ResNet blocks, then (except in the last block) a downsampling step."""

    def __init__(self, in_channels, out_channels, layers, groups, act_fn, add_downsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(out_channels if i else in_channels, out_channels, groups, act_fn) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if add_downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock(nn.Module):
    """`layers` ResNet blocks, then (except in the last block) an upsampling step."""

    def __init__(self, in_channels, out_channels, layers, groups, act_fn, add_upsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(out_channels if i else in_channels, out_channels, groups, act_fn) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """ResNet -> self-attention -> ResNet, at the lowest resolution."""

    def __init__(self, channels, groups, act_fn, add_attention=True):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, act_fn) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, groups) if add_attention else None])

    def forward(self, x):  # (batch, channels, h, w)
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Image (batch, in_channels, H, W) -> Gaussian parameters (batch, 2 * latent, H/f, W/f)."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups, act_fn,
                 mid_attention):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, out_ch in enumerate(block_out_channels):
            in_ch = block_out_channels[max(i - 1, 0)]
            is_last = i == len(block_out_channels) - 1
            self.down_blocks.append(DownEncoderBlock(in_ch, out_ch, layers_per_block, groups, act_fn, not is_last))
        self.mid_block = MidBlock(block_out_channels[-1], groups, act_fn, mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[-1], eps=GROUP_NORM_EPS)
        self.conv_act = nn.SiLU()  # always SiLU here, whatever act_fn says (as in diffusers)
        # twice the latent channels: a mean and a log-variance for each
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x):  # (batch, in_channels, H, W)
        x = self.conv_in(x)  # (batch, c0, H, W)
        for block in self.down_blocks:
            x = block(x)  # halves H and W in every block but the last
        x = self.mid_block(x)  # (batch, c_last, H/f, W/f)
        x = self.conv_act(self.conv_norm_out(x))
        return self.conv_out(x)  # (batch, 2 * latent, H/f, W/f)


class Decoder(nn.Module):
    """Latents (batch, latent, h, w) -> image (batch, out_channels, h*f, w*f).

    Mirrors the encoder, with one more ResNet block per resolution.
    """

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, groups, act_fn,
                 mid_attention):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = MidBlock(reversed_channels[0], groups, act_fn, mid_attention)
        self.up_blocks = nn.ModuleList()
        for i, out_ch in enumerate(reversed_channels):
            in_ch = reversed_channels[max(i - 1, 0)]
            is_last = i == len(reversed_channels) - 1
            self.up_blocks.append(UpDecoderBlock(in_ch, out_ch, layers_per_block + 1, groups, act_fn, not is_last))
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[0], eps=GROUP_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z):  # (batch, latent, h, w)
        x = self.conv_in(z)  # (batch, c_last, h, w)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)  # doubles h and w in every block but the last
        x = self.conv_act(self.conv_norm_out(x))  # (batch, c0, h*f, w*f)
        return self.conv_out(x)  # (batch, out_channels, h*f, w*f)


class VAE(nn.Module):
    """Stable Diffusion's autoencoder (diffusers' `AutoencoderKL`), from scratch.

    `encode(images)` gives a `DiagonalGaussian`; `decode(latents)` gives images.
    Images are (batch, in_channels, H, W) with values in [-1, 1]; H and W must be multiples of
    `downsample_factor` (8 for Stable Diffusion: 512x512 pixels <-> 64x64 latents).

    `scaling_factor` (0.18215 for SD 1.x) exists because the raw latents are not unit-variance:
    SD 1.x latents have a standard deviation of about 5.5. The diffusion model adds N(0, 1)
    noise and its noise schedule assumes the clean signal has roughly unit variance too, so
    latents are multiplied by this constant (about 1 / std of latents measured on training
    images) before diffusion, and divided by it before decoding:

        latents = vae.encode(images).sample() * vae.scaling_factor
        images = vae.decode(latents / vae.scaling_factor)

    `shift_factor` (None for SD 1.x; used by later models) is kept from the config for the same
    purpose: latents = (z - shift_factor) * scaling_factor.
    """

    def __init__(
        self,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(64,),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.18215,
        shift_factor=None,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        for kind, types, allowed in (
            ("down_block_types", down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", up_block_types, "UpDecoderBlock2D"),
        ):
            if any(t != allowed for t in types):
                raise ValueError(f"{kind}: only {allowed!r} blocks are supported, got {list(types)}")
            if len(types) != len(block_out_channels):
                raise ValueError(
                    f"{kind} has {len(types)} entries but block_out_channels has {len(block_out_channels)}"
                )
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.block_out_channels = block_out_channels
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

        self.encoder = Encoder(
            in_channels, latent_channels, block_out_channels, layers_per_block, norm_num_groups, act_fn,
            mid_block_add_attention,
        )
        self.decoder = Decoder(
            latent_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups, act_fn,
            mid_block_add_attention,
        )
        # 1x1 convs between the encoder/decoder and the latents (kept for weight compatibility)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config):
        """Build from diffusers' `AutoencoderKL.config` (or a plain dict with the same fields).

        Fields that only matter to diffusers (force_upcast, latents_mean, ...) are ignored.
        """
        config = dict(config)
        return cls(**{key: config[key] for key in CONFIG_KEYS if key in config})

    @property
    def downsample_factor(self):
        """How many pixels one latent covers along each side: 2 per downsampling step."""
        return 2 ** (len(self.block_out_channels) - 1)

    def encode(self, x):
        """Images (batch, in_channels, H, W) -> DiagonalGaussian over (batch, latent, H/f, W/f)."""
        if x.ndim != 4:
            raise ValueError(
                f"expected images of shape (batch, channels, height, width), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images with {self.in_channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        f = self.downsample_factor
        height, width = x.shape[-2:]
        if height % f or width % f:
            raise ValueError(
                f"image height and width must be multiples of {f} (the VAE's downsampling factor), "
                f"got {height}x{width}"
            )
        h = self.encoder(x)  # (batch, 2 * latent, H/f, W/f)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussian(h)

    def decode(self, z):
        """Latents (batch, latent, h, w) -> images (batch, out_channels, h*f, w*f)."""
        if z.ndim != 4:
            raise ValueError(
                f"expected latents of shape (batch, channels, height, width), got shape {tuple(z.shape)}"
            )
        if z.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents with {self.latent_channels} channels, got {z.shape[1]} (shape {tuple(z.shape)})"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x, sample_posterior=False, generator=None):
        """Reconstruct images: encode, take the mean (or a sample), decode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Like nn.Module.load_state_dict, but with strict=True the error lists the mismatched keys."""
        check_state_dict(self, state_dict, strict, hint=_old_attention_names)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
