"""The variational autoencoder (VAE) of Stable Diffusion, written from scratch.

Stable Diffusion does not denoise pixels. The VAE's encoder squeezes an image
(batch, 3, H, W) with values in [-1, 1] into latents (batch, 4, H/8, W/8), the diffusion
model works on those latents, and the decoder turns the final latents back into pixels.

    image --encoder--> (mean, logvar) --sample--> z --decoder--> image

The encoder does not output one latent but a diagonal Gaussian: a mean and a log-variance
per latent value. Training samples z from it (the "V" in VAE, with a small KL penalty
pulling it towards N(0, 1)); Stable Diffusion mostly uses the mean or one sample.

Both halves are wired from the layers of `sdcourse.layers`, the same as the U-Net's:
- ResNet blocks: GroupNorm -> SiLU -> 3x3 conv, twice, plus a skip connection (no timestep),
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
from torch import nn

from sdcourse.layers import Attention, BlockConfig, Downsample2D, ResnetBlock2D, Upsample2D
from sdcourse.weights import ConfigRule, check_block_types, check_state_dict

# How this VAE reads a config of diffusers' AutoencoderKL (see sdcourse.weights): it uses every
# field but three. `force_upcast` only decides whether diffusers decodes float16 latents in
# float32; `latents_mean` / `latents_std` normalise the latents of later models (SDXL and on),
# which SD 1.x / 2.x leave unset, so they must keep their default None.
CONFIG_RULE = ConfigRule(
    network="VAE",
    library_class="diffusers.AutoencoderKL",
    used=(
        "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
        "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
        "shift_factor", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
    ),
    bookkeeping=("force_upcast",),
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


class VAEAttention(Attention):
    """Single-head self-attention over all pixels, with a GroupNorm in front and a residual.

    Every pixel is a token whose features are its channels:
        out = x + to_out(attention(GroupNorm(x)))
    """

    def __init__(self, channels, config: BlockConfig):
        super().__init__(channels, heads=1, head_dim=channels, bias=True, out_bias=True)
        self.group_norm = nn.GroupNorm(config.norm_groups, channels, eps=config.norm_eps)

    def forward(self, x):  # (batch, channels, h, w)
        batch, channels, height, width = x.shape
        h = self.group_norm(x)
        tokens = h.view(batch, channels, height * width).transpose(1, 2)  # (batch, h * w, channels)
        # softmax(Q K^T / sqrt(channels)) V, then the output projection
        out = super().forward(tokens)  # (batch, h * w, channels)
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        # residual connection
        return x + out


class ResnetStack(nn.Module):
    """`num_layers` ResNet blocks, then an optional 2x resampling.

    resample="down" is diffusers' DownEncoderBlock2D (the encoder), "up" its UpDecoderBlock2D
    (the decoder), None the last block of either, which keeps the size.
    """

    def __init__(self, in_channels, out_channels, num_layers, config: BlockConfig, resample=None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, config) for i in range(num_layers)]
        )
        # the VAE's downsampling pads on the right and bottom only (padding=0; see Downsample2D)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if resample == "down" else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if resample == "up" else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for resampler in (self.downsamplers, self.upsamplers):
            if resampler is not None:
                x = resampler[0](x)
        return x


class MidBlock(nn.Module):
    """ResNet -> self-attention -> ResNet, at the lowest resolution."""

    def __init__(self, channels, config: BlockConfig, add_attention=True):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, config) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, config) if add_attention else None])

    def forward(self, x):  # (batch, channels, h, w)
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Image (batch, in_channels, H, W) -> Gaussian parameters (batch, 2 * latent, H/f, W/f)."""

    def __init__(self, in_channels, latent_channels, channels, layers_per_block, mid_attention, config: BlockConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, out_ch in enumerate(channels):
            is_last = i == len(channels) - 1
            self.down_blocks.append(ResnetStack(channels[max(i - 1, 0)], out_ch, layers_per_block, config,
                                                resample=None if is_last else "down"))
        self.mid_block = MidBlock(channels[-1], config, mid_attention)
        self.conv_norm_out = nn.GroupNorm(config.norm_groups, channels[-1], eps=config.norm_eps)
        self.conv_act = nn.SiLU()  # always SiLU here, whatever act_fn says (as in diffusers)
        # twice the latent channels: a mean and a log-variance for each
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)

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

    def __init__(self, latent_channels, out_channels, channels, layers_per_block, mid_attention, config: BlockConfig):
        super().__init__()
        reversed_channels = list(reversed(channels))
        self.conv_in = nn.Conv2d(latent_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = MidBlock(reversed_channels[0], config, mid_attention)
        self.up_blocks = nn.ModuleList()
        for i, out_ch in enumerate(reversed_channels):
            is_last = i == len(reversed_channels) - 1
            self.up_blocks.append(ResnetStack(reversed_channels[max(i - 1, 0)], out_ch, layers_per_block + 1, config,
                                              resample=None if is_last else "up"))
        self.conv_norm_out = nn.GroupNorm(config.norm_groups, channels[0], eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

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

    def __init__(self, config=None):
        """config: a diffusers AutoencoderKL config (a dict or `vae.config`); None: diffusers' defaults."""
        super().__init__()
        self.config = cfg = CONFIG_RULE.read({} if config is None else config)
        check_block_types(cfg, down=("DownEncoderBlock2D",), up=("UpDecoderBlock2D",))
        self.in_channels, self.out_channels = cfg["in_channels"], cfg["out_channels"]
        self.latent_channels = latent = cfg["latent_channels"]
        self.block_out_channels = channels = tuple(cfg["block_out_channels"])
        self.sample_size = cfg["sample_size"]
        self.scaling_factor, self.shift_factor = cfg["scaling_factor"], cfg["shift_factor"]

        # every block shares these settings; diffusers fixes the VAE's GroupNorm eps at 1e-6
        blocks = BlockConfig(norm_groups=cfg["norm_num_groups"], norm_eps=GROUP_NORM_EPS, act_fn=cfg["act_fn"])
        layers, mid_attention = cfg["layers_per_block"], cfg["mid_block_add_attention"]
        self.encoder = Encoder(self.in_channels, latent, channels, layers, mid_attention, blocks)
        self.decoder = Decoder(latent, self.out_channels, channels, layers, mid_attention, blocks)
        # 1x1 convs between the encoder/decoder and the latents (kept for weight compatibility)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if cfg["use_post_quant_conv"] else None

    @classmethod
    def from_config(cls, config):
        """Build from diffusers' `AutoencoderKL.config` (or a plain dict with the same fields).

        The course's one rule for configs applies (`sdcourse.weights`): every field is read but
        `force_upcast` (float16 only, ignored) and the latent normalisation of later models (it
        must stay unset); an unknown field is an error.
        """
        return cls(config)

    @property
    def downsample_factor(self):
        """How many pixels one latent covers along each side: 2 per downsampling step."""
        return 2 ** (len(self.block_out_channels) - 1)

    @staticmethod
    def _check_batch(x, what, channels):
        """Raise a ValueError unless x is (batch, channels, height, width)."""
        if x.ndim != 4:
            raise ValueError(f"expected {what} of shape (batch, channels, height, width), got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"expected {what} with {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")

    def encode(self, x):
        """Images (batch, in_channels, H, W) -> DiagonalGaussian over (batch, latent, H/f, W/f)."""
        self._check_batch(x, "images", self.in_channels)
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
        self._check_batch(z, "latents", self.latent_channels)
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
