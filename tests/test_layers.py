"""The shared layers against diffusers' own, and the one config rule of all three networks."""

import importlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.resnet import Downsample2D as DiffusersDownsample
from diffusers.models.resnet import ResnetBlock2D as DiffusersResnetBlock
from diffusers.models.resnet import Upsample2D as DiffusersUpsample
from transformers import CLIPTextConfig

from sdcourse import layers, weights
from sdcourse.text_encoder import SelfAttention, TextEncoder
from sdcourse.unet import UNet
from sdcourse.vae import VAE

TINY_SD = Path(__file__).resolve().parents[1] / "sdcourse" / "assets" / "tiny-sd"


def jiggled(module, seed=0):
    """Random weights, biases and norm scales too, so a missing term cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return module.eval()


def load_same(ours, theirs):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval()


@pytest.mark.parametrize(
    "temb_channels, eps, in_channels, out_channels",
    [(64, 1e-5, 16, 32), (64, 1e-5, 32, 32), (None, 1e-6, 16, 32), (None, 1e-6, 32, 32)],
)
def test_resnet_block_with_and_without_timestep_matches_diffusers(temb_channels, eps, in_channels, out_channels):
    theirs = jiggled(DiffusersResnetBlock(in_channels=in_channels, out_channels=out_channels,
                                          temb_channels=temb_channels, groups=8, eps=eps))
    config = layers.BlockConfig(norm_groups=8, norm_eps=eps, temb_channels=temb_channels)
    ours = load_same(layers.ResnetBlock2D(in_channels, out_channels, config), theirs)
    x = torch.randn(2, in_channels, 8, 8)
    temb = torch.randn(2, temb_channels) if temb_channels else None
    torch.testing.assert_close(ours(x, temb), theirs(x, temb), rtol=1e-5, atol=1e-5)


def test_resnet_block_with_timestep_refuses_to_run_without_one():
    block = layers.ResnetBlock2D(8, 8, layers.BlockConfig(norm_groups=4, temb_channels=16))
    with pytest.raises(ValueError, match="pass temb"):
        block(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize("padding", [0, 1])
def test_downsample_matches_diffusers(padding):
    theirs = jiggled(DiffusersDownsample(16, use_conv=True, padding=padding, name="op"))
    ours = load_same(layers.Downsample2D(16, padding=padding), theirs)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x).shape == (2, 16, 4, 4)


def test_upsample_matches_diffusers():
    theirs = jiggled(DiffusersUpsample(16, use_conv=True))
    ours = load_same(layers.Upsample2D(16), theirs)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))


def test_block_config_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match=r"act_fn must be one of .*got 'tanh'"):
        layers.BlockConfig(act_fn="tanh")


def test_diffusers_and_transformers_attention_share_one_computation():
    """The U-Net's Attention and the text encoder's SelfAttention differ only in parameter names."""
    diffusers_named = jiggled(layers.Attention(16, heads=4, head_dim=4, bias=True))
    transformers_named = SelfAttention(16, heads=4)
    for theirs, ours in [("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out.0", "out_proj")]:
        transformers_named.get_submodule(ours).load_state_dict(diffusers_named.get_submodule(theirs).state_dict())
    assert isinstance(diffusers_named, layers.MultiHeadAttention)
    assert isinstance(transformers_named, layers.MultiHeadAttention)
    x = torch.randn(2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(transformers_named(x, mask), diffusers_named(x, mask=mask))


def test_written_out_attention_and_stored_probabilities_agree_with_sdpa():
    attention = jiggled(layers.Attention(16, context_dim=8, heads=2, head_dim=8))
    x, context = torch.randn(1, 6, 16), torch.randn(1, 3, 8)
    fused = attention(x, context)
    attention.use_sdpa = False
    torch.testing.assert_close(attention(x, context), fused)
    attention.store_probs = True
    torch.testing.assert_close(attention(x, context), fused)
    assert attention.last_probs.shape == (1, 2, 6, 3)
    torch.testing.assert_close(attention.last_probs.sum(-1), torch.ones(1, 2, 6))


# ---- The one config rule: used fields are read, fixed fields keep their default, bookkeeping
# ---- fields are ignored, and an unknown field is an error naming it. The same for all three.

SMALL_UNET = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                  cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8, sample_size=8)
SMALL_VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4)
SMALL_TEXT = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=77)
NETWORKS = [("U-Net", UNet, SMALL_UNET), ("VAE", VAE, SMALL_VAE), ("text encoder", TextEncoder, SMALL_TEXT)]


@pytest.mark.parametrize("name, network, config", NETWORKS)
def test_every_network_refuses_an_unknown_config_field(name, network, config):
    with pytest.raises(ValueError, match=rf"{name} config: unknown fields \['colour_space'\]"):
        network.from_config(dict(config, colour_space="rgb"))


@pytest.mark.parametrize(
    "name, network, config, field, value",
    [("U-Net", UNet, SMALL_UNET, "class_embed_type", "timestep"),
     ("VAE", VAE, SMALL_VAE, "latents_mean", [0.0] * 4),
     ("text encoder", TextEncoder, SMALL_TEXT, "attention_dropout", 0.1)],
)
def test_every_network_refuses_a_feature_it_does_not_implement(name, network, config, field, value):
    with pytest.raises(ValueError, match=rf"{name} config: {field}=.* is not supported by this {name}"):
        network.from_config(dict(config, **{field: value}))


def test_every_network_accepts_its_librarys_full_config():
    """A library's own config, every bookkeeping field included, builds the same network."""
    unet = UNet2DConditionModel(**SMALL_UNET)
    assert UNet.from_config(unet.config).state_dict().keys() == unet.state_dict().keys()
    vae = AutoencoderKL(**SMALL_VAE)
    assert VAE.from_config(vae.config).state_dict().keys() == vae.state_dict().keys()
    text_config = CLIPTextConfig(**SMALL_TEXT)
    assert TextEncoder.from_config(text_config).hidden_size == 16


@pytest.mark.parametrize("part, network", [("unet", UNet), ("vae", VAE), ("text_encoder", TextEncoder)])
def test_the_shipped_model_configs_follow_the_rule(part, network):
    config = json.loads((TINY_SD / part / "config.json").read_text())
    network.from_config(config)


@pytest.mark.parametrize("name, network, config", NETWORKS)
def test_every_other_field_of_the_library_is_fixed_at_its_default(name, network, config):
    """The fields a network neither uses nor ignores come from the library: each of them, set off
    its default, is refused by name; left at its default, it is accepted."""
    rule = importlib.import_module(network.__module__).CONFIG_RULE
    defaults, library_bookkeeping = weights.library_fields(rule.library_class)
    fixed = [f for f in defaults if f not in rule.used and f not in rule.bookkeeping
             and f not in library_bookkeeping and not f.startswith("_")]
    assert fixed, "every network has features it does not implement"
    for field in fixed:
        network.from_config(dict(config, **{field: defaults[field]}))
        with pytest.raises(ValueError, match=rf"{name} config: {field}=.* is not supported"):
            network.from_config(dict(config, **{field: "something else"}))


def test_text_encoder_accepts_what_older_transformers_wrote():
    """Generation settings, transformers 4's fields and the old `dropout` at 0 are accepted."""
    old = dict(SMALL_TEXT, num_beams=1, max_length=20, torchscript=False, torch_dtype="float32", dropout=0.0,
               tie_word_embeddings=True, architectures=["CLIPTextModel"], transformers_version="4.21.0")
    assert TextEncoder.from_config(old).hidden_size == 16
    with pytest.raises(ValueError, match=r"text encoder config: dropout=0.1 is not supported"):
        TextEncoder.from_config(dict(old, dropout=0.1))


@pytest.mark.parametrize(
    "network, config, field, value, allowed",
    [(UNet, SMALL_UNET, "layers_per_block", "1", r"a whole number or a list of them, one per block, like the default 2"),
     (UNet, SMALL_UNET, "in_channels", [4], r"a whole number, like the default 4"),
     (UNet, SMALL_UNET, "block_out_channels", 32, r"a list like the default \[320, 640, 1280, 1280\]"),
     (UNet, SMALL_UNET, "norm_eps", "1e-5", r"a number, like the default 1e-05"),
     (VAE, SMALL_VAE, "layers_per_block", [1, 1], r"a whole number, like the default 1"),
     (VAE, SMALL_VAE, "use_quant_conv", 1, r"true or false, like the default True"),
     (VAE, SMALL_VAE, "block_out_channels", ["8", "16"], r"a list like the default \[64\]"),
     (TextEncoder, SMALL_TEXT, "hidden_size", 16.0, r"a whole number, like the default 512"),
     (TextEncoder, SMALL_TEXT, "hidden_act", None, r"a text in quotes, like the default 'quick_gelu'")],
)
def test_a_config_value_of_the_wrong_kind_is_refused_naming_the_field_and_what_it_must_be(network, config, field,
                                                                                          value, allowed):
    name = importlib.import_module(network.__module__).CONFIG_RULE.network
    with pytest.raises(ValueError, match=rf"{name} config: {field}={value!r}; it must be ".replace("[", r"\[") + allowed):
        network.from_config(dict(config, **{field: value}))


def test_per_block_fields_take_a_list_and_numbers_take_ints():
    unet = UNet.from_config(dict(SMALL_UNET, layers_per_block=[1, 2], attention_head_dim=[2, 4], norm_eps=0))
    assert len(unet.down_blocks[1].resnets) == 2
