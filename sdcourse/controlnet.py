"""ControlNet (Zhang, Rao & Agrawala, 2023), from scratch, weight-compatible with diffusers.

A ControlNet steers a frozen U-Net with a picture: an outline, a pose, a depth map. It is a
trainable copy of the U-Net's first half (conv_in, the time embedding, the down blocks and the
mid block) that also reads the control picture, and whose every output goes through a 1x1
convolution initialised to zero (a "zero convolution") before it is added to the U-Net:

    control picture (batch, 3, H, W) in [0, 1]
      -> controlnet_cond_embedding: small convolutions down to the latent grid (H/8, W/8)
    x = conv_in(latents) + that embedding
    x -> down blocks -> mid block, keeping every intermediate result (the U-Net's skips)
    down residual i = controlnet_down_blocks[i](skip i) * scale     one per skip of the U-Net
    mid residual    = controlnet_mid_block(mid output) * scale

    noise = unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)

The U-Net adds residual i to its skip i and the mid residual to its mid block's output. Since the
zero convolutions start at zero, a new ControlNet (`ControlNet.from_unet`) changes nothing at
first: training grows the control from zero without ever disturbing the U-Net it starts from.

The down path and mid block are the U-Net's own (`sdcourse.unet`), so their weights copy over
one for one. Every parameter has the name it has in diffusers' `ControlNetModel`:

    controlnet = ControlNet.from_config(diffusers_controlnet.config)
    controlnet.load_state_dict(diffusers_controlnet.state_dict())

This file also prepares control pictures for a pipeline (`control_images_to_tensor`), and warns
about pictures that look wrong for an outline ControlNet (`control_picture_warnings`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sdcourse.arguments import choice, flag, real_number
from sdcourse.images import eight_bit_picture
from sdcourse.unet import (
    DOWN_BLOCK_TYPES,
    Levels,
    MidBlock,
    TimestepEmbedding,
    UNet,
    block_config,
    check_inputs,
    down_path,
    embed_time,
    run_down_blocks,
    set_sdpa,
)
from sdcourse.weights import ConfigRule, check_state_dict

# How this ControlNet reads a config of diffusers' ControlNetModel (the rule of sdcourse.weights).
# Every other field (`mid_block_type`, `class_embed_type`, `addition_embed_type`, ... for features
# SD 1.x / 2.x ControlNets do not use) must keep diffusers' default.
CONFIG_RULE = ConfigRule(
    network="ControlNet",
    library_class="diffusers.ControlNetModel",
    used=(
        "in_channels", "conditioning_channels", "flip_sin_to_cos", "freq_shift", "down_block_types",
        "block_out_channels", "layers_per_block", "norm_num_groups", "norm_eps", "cross_attention_dim",
        "transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "use_linear_projection",
        "controlnet_conditioning_channel_order", "conditioning_embedding_out_channels", "global_pool_conditions",
    ),
    bookkeeping=("upcast_attention",),
    per_block=("transformer_layers_per_block", "attention_head_dim"),
)

CHANNEL_ORDERS = ("rgb", "bgr")


def zero_conv(channels) -> nn.Conv2d:
    """A 1x1 convolution with every weight and bias 0: its output is 0 until training moves it."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditioningEmbedding(nn.Module):
    """The control picture -> features on the latent grid (diffusers' ControlNetConditioningEmbedding).

        conv_in                       3x3, conditioning_channels -> channels[0], then SiLU
        blocks, for each next level:  3x3 conv, SiLU, 3x3 conv of stride 2 (halves H and W), SiLU
        conv_out                      3x3, channels[-1] -> the U-Net's first width; starts at zero

    With channels (16, 32, 96, 256) the picture is halved 3 times: 512x512 -> 64x64, the latent size.
    """

    def __init__(self, conditioning_channels, channels, out_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for here, there in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(here, here, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(here, there, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # zero: a new ControlNet does not yet see the picture
        nn.init.zeros_(self.conv_out.bias)
        self.downsample_factor = 2 ** (len(channels) - 1)

    def forward(self, picture):  # (batch, conditioning_channels, H, W)
        x = F.silu(self.conv_in(picture))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)  # (batch, out_channels, H / factor, W / factor)


class ControlNet(nn.Module):
    """A ControlNet for the course's U-Net. Build it with `ControlNet.from_config` (a diffusers
    ControlNetModel config), `ControlNet.from_unet` (a new one, copying a U-Net) or
    `load_controlnet` (a diffusers ControlNetModel or its folder).

    `forward(sample, timestep, encoder_hidden_states, controlnet_cond)` returns
    (down_block_res_samples, mid_block_res_sample): the residuals the U-Net adds.
    """

    kind = "ControlNet"  # in messages

    def __init__(self, config=None, use_sdpa=True):
        """config: a diffusers ControlNetModel config (a dict or `controlnet.config`); None: diffusers' defaults."""
        super().__init__()
        self.config = cfg = self._read_config({} if config is None else config)
        self.in_channels = cfg["in_channels"]
        self.conditioning_channels = cfg["conditioning_channels"]
        self.cross_attention_dim = cfg["cross_attention_dim"]
        self.flip_sin_to_cos = cfg["flip_sin_to_cos"]
        self.freq_shift = cfg["freq_shift"]
        self.channel_order = cfg["controlnet_conditioning_channel_order"]
        self.global_pool_conditions = cfg["global_pool_conditions"]
        levels = Levels.from_config(cfg)
        channels = levels.channels
        n = len(channels)

        # the U-Net's first half: the same layers, built the same way (registered in diffusers' order,
        # so that a seeded build draws the same random numbers for the conditioning embedding)
        self.conv_in = nn.Conv2d(self.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], channels[0] * 4)
        self.controlnet_cond_embedding = ConditioningEmbedding(
            self.conditioning_channels, list(cfg["conditioning_embedding_out_channels"]), channels[0])
        blocks = block_config(cfg)
        self.down_blocks = down_path(cfg["down_block_types"], levels, blocks)

        # one zero convolution per skip of the U-Net: conv_in's output, then each level's layers
        # and (all but the last level) its downsampler
        skip_channels = [channels[0]]
        for i, width in enumerate(channels):
            skip_channels += [width] * (levels.layers[i] + (i < n - 1))
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(width) for width in skip_channels])
        self.controlnet_mid_block = zero_conv(channels[-1])
        self.mid_block = MidBlock(channels[-1], levels.heads[-1], levels.transformer_layers[-1], blocks)
        self.num_downsamplers = n - 1
        self.use_sdpa = use_sdpa

    @classmethod
    def from_config(cls, config, use_sdpa=True):
        """Build from a diffusers ControlNetModel config (a dict or `controlnet.config`), with
        diffusers' meaning of every field (`attention_head_dim` is the number of heads, as in the
        U-Net). Fields for features SD 1.x / 2.x ControlNets do not use must keep their default."""
        return cls(config, use_sdpa=use_sdpa)

    @staticmethod
    def _read_config(config):
        cfg = CONFIG_RULE.read(config)
        types = list(cfg["down_block_types"])
        for i, block_type in enumerate(types):
            choice(f"down_block_types[{i}]", block_type, DOWN_BLOCK_TYPES)
        if len(types) != len(cfg["block_out_channels"]):
            raise ValueError(f"down_block_types has {len(types)} entries, but block_out_channels has "
                             f"{len(cfg['block_out_channels'])}")
        if not cfg["conditioning_embedding_out_channels"]:
            raise ValueError("conditioning_embedding_out_channels must list at least one width, got "
                             f"{cfg['conditioning_embedding_out_channels']!r}")
        choice("controlnet_conditioning_channel_order", cfg["controlnet_conditioning_channel_order"], CHANNEL_ORDERS)
        return cfg

    @classmethod
    def from_unet(cls, unet, conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256),
                  use_sdpa=True):
        """A new ControlNet for `unet` (the course's UNet, or a diffusers UNet2DConditionModel), as
        diffusers' `ControlNetModel.from_unet` makes one: the U-Net's conv_in, time embedding, down
        blocks and mid block copied weight for weight, the zero convolutions and the conditioning
        embedding's last convolution at zero, the conditioning embedding's other convolutions random.
        Under the same torch seed those random weights are the ones diffusers draws.
        """
        if isinstance(unet, UNet):
            cfg = unet.config
        elif type(unet).__name__ == "UNet2DConditionModel":
            cfg = UNet._read_config(unet.config)  # the course's reading of its config
        else:
            raise ValueError(f"unet must be a U-Net (sdcourse.unet.UNet or diffusers' UNet2DConditionModel), "
                             f"got {type(unet).__name__}")
        layers = sorted(set(Levels.from_config(cfg).layers))
        if len(layers) > 1:
            raise ValueError(f"this U-Net has layers_per_block={list(cfg['layers_per_block'])}, one per level; a "
                             "ControlNet (like diffusers' ControlNetModel) has one number of layers for every level")
        if cfg["conv_in_kernel"] != 3:
            raise ValueError(f"this U-Net has conv_in_kernel={cfg['conv_in_kernel']}; a ControlNet's conv_in is 3x3")
        config = {key: cfg[key] for key in (
            "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "block_out_channels", "norm_num_groups",
            "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
            "num_attention_heads", "use_linear_projection")}
        config.update(layers_per_block=layers[0], conditioning_channels=conditioning_channels,
                      conditioning_embedding_out_channels=list(conditioning_embedding_out_channels))
        parameter = next(unet.parameters())
        controlnet = cls(config, use_sdpa=use_sdpa).to(parameter.device, parameter.dtype)
        weights = unet.state_dict()  # the same names in both U-Nets
        for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            prefix = part + "."
            getattr(controlnet, part).load_state_dict(
                {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)})
        return controlnet

    # ---- switches and checks

    @property
    def use_sdpa(self):
        return self._use_sdpa

    @use_sdpa.setter
    def use_sdpa(self, enabled):
        """True: torch's fused scaled_dot_product_attention. False: the written-out softmax(QK^T/sqrt(d))V."""
        self._use_sdpa = bool(enabled)
        set_sdpa(self, self._use_sdpa)

    @property
    def downsample_factor(self) -> int:
        """How many picture pixels make one latent pixel, for this ControlNet: the control picture
        must be this many times the latents' height and width (8 for every SD ControlNet)."""
        return self.controlnet_cond_embedding.downsample_factor

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's load_state_dict, with an error listing the missing/unexpected/mismatched keys."""
        check_state_dict(self, state_dict, strict, hint=_unet_weights_hint)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _check_control(self, controlnet_cond, sample):
        if not torch.is_tensor(controlnet_cond) or controlnet_cond.ndim != 4:
            got = tuple(controlnet_cond.shape) if torch.is_tensor(controlnet_cond) else type(controlnet_cond).__name__
            raise ValueError(f"controlnet_cond must be a tensor (batch, {self.conditioning_channels}, height, width), "
                             f"got {got}")
        batch, channels, height, width = controlnet_cond.shape
        if channels != self.conditioning_channels:
            raise ValueError(f"controlnet_cond has {channels} channels, but this ControlNet reads "
                             f"conditioning_channels={self.conditioning_channels}")
        if batch != sample.shape[0]:
            raise ValueError(f"controlnet_cond has batch {batch}, but sample has batch {sample.shape[0]}")
        f = self.downsample_factor
        if (height, width) != (sample.shape[2] * f, sample.shape[3] * f):
            raise ValueError(
                f"controlnet_cond is {height}x{width}, but this ControlNet needs {f} times the size of sample "
                f"({sample.shape[2]}x{sample.shape[3]}): {sample.shape[2] * f}x{sample.shape[3] * f}")

    def embed_control(self, controlnet_cond):
        """The control picture (batch, conditioning_channels, H, W) in [0, 1] -> its features on the
        latent grid (batch, channels[0], H / 8, W / 8). They do not change from step to step: a
        pipeline computes them once and passes them to every step as `control_embedding`."""
        if self.channel_order == "bgr":
            controlnet_cond = controlnet_cond.flip(1)  # the picture's channels as the ControlNet was trained on
        return self.controlnet_cond_embedding(controlnet_cond)

    # ---- forward

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond=None, conditioning_scale=1.0,
                guess_mode=False, *, control_embedding=None):
        """sample: the U-Net's input (batch, in_channels, h, w); timestep: a number or (batch,);
        encoder_hidden_states: (batch, tokens, cross_attention_dim); controlnet_cond: the control
        picture (batch, conditioning_channels, h * 8, w * 8) in [0, 1]; conditioning_scale: a
        number every residual is multiplied by.
        control_embedding: instead of controlnet_cond, `embed_control(controlnet_cond)` computed before.

        guess_mode: the residuals are scaled from 0.1 (the first skip, high resolution) up to 1
        (the mid block) on a log scale, times conditioning_scale: the ControlNet then shapes the
        picture mostly through the coarse levels, enough for it to be recognised with no prompt.

        Returns (down_block_res_samples, mid_block_res_sample), as diffusers' ControlNetModel with
        return_dict=False: a list with one tensor per skip of the U-Net, and one tensor.
        """
        check_inputs(self, sample, encoder_hidden_states)
        if (controlnet_cond is None) == (control_embedding is None):
            raise ValueError("give the control picture as controlnet_cond, or its embed_control() as "
                             "control_embedding: one of the two")
        if control_embedding is None:
            self._check_control(controlnet_cond, sample)
            control_embedding = self.embed_control(controlnet_cond)
        else:
            expected = (sample.shape[0], self.conv_in.out_channels, *sample.shape[2:])
            if tuple(control_embedding.shape) != expected:
                raise ValueError(f"control_embedding must have the shape {expected} (embed_control of a picture "
                                 f"{self.downsample_factor} times the size of sample), got "
                                 f"{tuple(control_embedding.shape)}")
        scale = real_number("conditioning_scale", conditioning_scale)
        guess_mode = flag("guess_mode", guess_mode)

        # 1. time, as in the U-Net
        temb = embed_time(self, timestep, sample)
        # 2. the latents and the control picture meet: both on the latent grid, channels[0] wide
        x = self.conv_in(sample) + control_embedding
        # 3. the U-Net's down path and mid block, keeping what the U-Net keeps for its skips
        x, skips = run_down_blocks(self.down_blocks, x, temb, encoder_hidden_states)
        x = self.mid_block(x, temb, encoder_hidden_states)
        # 4. the zero convolutions
        down = [zero(skip) for zero, skip in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(x)
        # 5. scale
        if guess_mode and not self.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * scale  # 0.1 ... 1, times scale
            down = [residual * s for residual, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [residual * scale for residual in down]
            mid = mid * scale
        if self.global_pool_conditions:  # one value per channel, spread over the whole picture
            down = [residual.mean(dim=(2, 3), keepdim=True) for residual in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return down, mid


def _unet_weights_hint(missing, unexpected):
    if any(key.startswith(("up_blocks.", "conv_out.")) for key in unexpected):
        return ("these look like a whole U-Net's weights: a new ControlNet copies them with ControlNet.from_unet(unet)")
    return None


def check_fits(controlnet: ControlNet, unet: UNet) -> None:
    """A ValueError unless `controlnet` was made for `unet`: its conv_in, time embedding, down blocks
    and mid block must have the U-Net's layers, shape for shape. Names the first that does not fit."""
    theirs = {name: tuple(p.shape) for name, p in unet.named_parameters()}
    ours = {name: tuple(p.shape) for name, p in controlnet.named_parameters()}
    shared = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
    for name, shape in ours.items():
        if name.startswith(shared) and theirs.get(name) != shape:
            if name not in theirs:
                raise ValueError(f"this ControlNet was made for another U-Net: the U-Net has no layer {name} "
                                 f"(the ControlNet's is {shape})")
            raise ValueError(f"this ControlNet was made for another U-Net: its layer {name} is {shape}, the "
                             f"U-Net's is {theirs[name]}")
    for name, shape in theirs.items():
        if name.startswith(shared) and name not in ours:
            raise ValueError(f"this ControlNet was made for another U-Net: it has no layer {name} (the U-Net's is "
                             f"{shape})")


def load_controlnet(source, use_sdpa=True) -> ControlNet:
    """The course's ControlNet holding a diffusers ControlNetModel's weights.

    source: a diffusers ControlNetModel, or a folder it was saved to (`controlnet.save_pretrained`:
    config.json and the weights), read offline. The result is on the model's device and dtype
    (a folder: the CPU, float32).
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a ControlNet folder: it has no config.json (save one with "
                             "controlnet.save_pretrained(folder))")
        from diffusers import ControlNetModel  # imported on first use: loading diffusers takes seconds

        source = ControlNetModel.from_pretrained(str(folder), local_files_only=True)
    if type(source).__name__ == "MultiControlNetModel":
        raise ValueError("this is a MultiControlNetModel (several ControlNets); the course's pipeline takes one "
                         "ControlNet at a time")
    if not (hasattr(source, "config") and hasattr(source, "state_dict")):
        raise ValueError(f"source must be a diffusers ControlNetModel or a folder, got {type(source).__name__}")
    controlnet = ControlNet.from_config(source.config, use_sdpa=use_sdpa)
    controlnet.load_state_dict(source.state_dict())
    parameter = next(source.parameters())
    return controlnet.to(parameter.device, parameter.dtype)


# ----------------------------------------------------------------------------
# Control pictures


def _read_array(item, name, torch_layout):
    """One picture or a batch, as a float32 tensor (k, C, H, W) in [0, 1]. torch_layout: channels first."""
    array = item.detach().cpu() if torch.is_tensor(item) else torch.from_numpy(np.asarray(item))
    if array.dtype == torch.bool:
        array = array.float()
    elif not array.is_floating_point():
        low, high = (array.min().item(), array.max().item()) if array.numel() else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(f"{name} holds whole numbers from {low} to {high}; a picture's must be 0..255 "
                             "(or give floats in [0, 1])")
        array = array.float() / 255
    else:
        array = array.float()
        if array.numel() and not (torch.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ValueError(f"{name} holds floats from {array.min().item():g} to {array.max().item():g}; a control "
                             "picture's floats must lie in [0, 1] (0 black, 1 white)")
    layout = "(channels, height, width)" if torch_layout else "(height, width, channels)"
    if array.ndim == 2:  # one grey picture
        array = array[None, None]
    elif array.ndim == 3:
        array = array[None] if torch_layout else array.permute(2, 0, 1)[None]
    elif array.ndim == 4:
        array = array if torch_layout else array.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"{name} has shape {tuple(array.shape)}; a picture is (height, width) or {layout}, a "
                         f"batch one more dimension in front")
    return array


def read_control_images(image, conditioning_channels=3) -> list:
    """The control picture(s) as a list of single pictures: PIL images (8-bit, `eight_bit_picture`)
    and float32 tensors (1, C, H, W) in [0, 1].

    image: a PIL image, a numpy array (H, W), (H, W, C) or a batch (N, H, W, C), a tensor (H, W),
    (C, H, W) or (N, C, H, W), or a list of single pictures. Arrays and tensors hold floats in
    [0, 1], bools, or whole numbers 0..255. One channel is grey: it is repeated to the ControlNet's
    channels, as a grey PIL picture is made RGB.
    """
    name = "image (the control picture)"
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"{name} must be a picture or a non-empty list of pictures, got an empty list")
    pictures = []
    for i, item in enumerate(items):
        label = f"{name}[{i}]" if isinstance(image, (list, tuple)) else name
        if isinstance(item, Image.Image):
            pictures.append(eight_bit_picture(item, label))
            continue
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{label} must be a PIL image, a numpy array or a torch tensor, got {type(item).__name__}")
        batch = _read_array(item, label, torch_layout=torch.is_tensor(item))
        if isinstance(image, (list, tuple)) and len(batch) > 1:
            raise ValueError(f"{label} is a batch of {len(batch)} pictures; give a list of single pictures, or one batch")
        channels = batch.shape[1]
        if channels == 1 and conditioning_channels != 1:
            batch = batch.expand(-1, conditioning_channels, -1, -1)
        elif channels != conditioning_channels:
            layout = "(channels, height, width)" if torch.is_tensor(item) else "(height, width, channels)"
            raise ValueError(f"{label} has {channels} channels, but this ControlNet reads {conditioning_channels} "
                             f"(its conditioning_channels); a picture is read as {layout}")
        pictures.extend(batch[j : j + 1] for j in range(len(batch)))
    if conditioning_channels not in (1, 3) and any(isinstance(p, Image.Image) for p in pictures):
        raise ValueError(f"this ControlNet reads {conditioning_channels} channels; a PIL picture has 1 or 3: give "
                         "the control as a numpy array or tensor")
    return pictures


def picture_size(picture) -> tuple[int, int]:
    """(height, width) of a PIL picture or a (1, C, H, W) tensor."""
    if isinstance(picture, Image.Image):
        return picture.height, picture.width
    return tuple(picture.shape[-2:])


def control_images_to_tensor(pictures, height, width, conditioning_channels=3) -> torch.Tensor:
    """Pictures from `read_control_images` -> (k, C, height, width) float32 in [0, 1], as diffusers'
    ControlNet pipelines prepare them: PIL pictures resized with the Lanczos filter, then made RGB,
    then x / 255; arrays and tensors resized to the nearest pixel. No [-1, 1] here: a ControlNet
    reads its picture in [0, 1]."""
    out = []
    for picture in pictures:
        if isinstance(picture, Image.Image):
            picture = picture.resize((width, height), resample=Image.Resampling.LANCZOS)
            picture = picture.convert("RGB" if conditioning_channels == 3 else "L")
            array = np.array(picture).astype(np.float32) / 255.0
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            out.append(torch.from_numpy(array)[None])
        else:
            out.append(F.interpolate(picture, size=(height, width)))  # nearest pixel
    return torch.cat(out)


def control_picture_warnings(pixels) -> list[str]:
    """What looks wrong in control pictures (k, C, H, W) in [0, 1] for an outline ControlNet
    (edges, scribbles, lines: white lines on black), one sentence per picture that does:

    - mostly white (more than half its pixels bright): an outline drawn in black on white, which
      needs inverting, or a mask covering most of the picture;
    - a filled mask: its white part is solid, on average thicker than 1/12 of the picture's side
      (and than 4 pixels), where an outline's lines are thin. The thickness of a white part is
      2 x its pixels / its pixels at its edge: the width of a line, about the radius of a disc.
    Another kind of ControlNet (depth, segmentation) may want such pictures: these are warnings.
    """
    notes = []
    for i, picture in enumerate(pixels.float()):
        white = picture.mean(dim=0) > 0.5  # (H, W)
        share = white.float().mean().item()
        label = f"image[{i}] (the control picture)" if len(pixels) > 1 else "image (the control picture)"
        if share > 0.5:
            notes.append(f"{label} is mostly white ({share:.0%} of its pixels are bright): an outline ControlNet "
                         "expects white lines on black; invert it (255 - picture) if its lines are dark, or take "
                         "the edges of a filled mask")
            continue
        if share == 0:
            continue
        # white pixels with a non-white 4-neighbour (outside the picture counts as black)
        padded = F.pad(white[None, None].float(), (1, 1, 1, 1))[0, 0]
        inner = (padded[:-2, 1:-1] * padded[2:, 1:-1] * padded[1:-1, :-2] * padded[1:-1, 2:]).bool()
        edge = (white & ~inner).sum().item()
        thickness = 2 * white.sum().item() / max(edge, 1)
        limit = max(4.0, min(white.shape) / 12)
        if thickness > limit:
            notes.append(f"{label} looks like a filled mask: its white part is solid, about {thickness:.0f} pixels "
                         f"thick ({share:.0%} of the picture), where an outline's lines are thin; an outline "
                         "ControlNet expects the edges only (an edge map of the mask)")
    return notes
