"""The from-scratch U-Net against diffusers' UNet2DConditionModel: same weights, same numbers."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding

from sdcourse.unet import SD15_UNET_CONFIG, UNet, timestep_embedding

# diffusers' own tiny test U-Net (tests/models/unets/test_models_unet_2d_condition.py), two groups per norm.
TINY = {
    "block_out_channels": (4, 8),
    "norm_num_groups": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 8,
    "attention_head_dim": 2,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "sample_size": 8,
}
# The mirror order: attention at the low resolution only.
TINY_MIRROR = {
    **TINY,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}
# SD 2.x style: Linear projections, heads per block, two transformer layers, DDPM-style sinusoid.
SD2_STYLE = {
    "block_out_channels": (8, 16, 16),
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12,
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": True,
    "transformer_layers_per_block": 2,
    "layers_per_block": 1,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "sample_size": 8,
}


def make_pair(config, seed):
    """A diffusers U-Net with random weights, and ours with the same weights."""
    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        # move every weight off its default (norms at 1 and 0 would hide mistakes)
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = UNet.from_config(reference.config).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def inputs(config, batch=3, height=8, width=16, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.get("in_channels", 4), height, width, generator=g)
    text = torch.randn(batch, tokens, config["cross_attention_dim"], generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    return sample, timesteps, text


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("config", [TINY, TINY_MIRROR], ids=["crossattn-first", "crossattn-last"])
@pytest.mark.parametrize("layers_per_block", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_parity(config, layers_per_block, seed):
    config = {**config, "layers_per_block": layers_per_block}
    reference, ours = make_pair(config, seed)
    sample, timesteps, text = inputs(config, seed=seed)
    with torch.no_grad():
        expected = reference(sample, timesteps, text).sample
        got = ours(sample, timesteps, text)
    assert got.shape == expected.shape == sample.shape
    assert max_diff(got, expected) <= 1e-5


def test_timestep_forms():
    reference, ours = make_pair(TINY, 0)
    sample, _, text = inputs(TINY, batch=2)
    with torch.no_grad():
        expected = reference(sample, 250, text).sample
        for t in (250, torch.tensor(250), torch.tensor([250, 250]), torch.tensor([250])):
            assert max_diff(ours(sample, t, text), expected) <= 1e-5
        # a float timestep (e.g. from a continuous-time sampler)
        assert max_diff(ours(sample, 250.5, text), reference(sample, 250.5, text).sample) <= 1e-5


def test_sd2_style_parity():
    for seed in (0, 1):
        reference, ours = make_pair(SD2_STYLE, seed)
        sample, timesteps, text = inputs(SD2_STYLE, batch=2, height=8, width=16, seed=seed)
        with torch.no_grad():
            expected = reference(sample, timesteps, text).sample
            got = ours(sample, timesteps, text)
        assert max_diff(got, expected) <= 1e-5
    # the Linear projections really are Linear layers
    assert isinstance(ours.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    # attention_head_dim is the number of heads: 2 heads of width 4 in the first block
    attn = ours.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert attn.heads == 2 and attn.to_q.out_features == 8


@pytest.mark.parametrize("flip,shift,dim", [(True, 0, 32), (False, 1, 32), (True, 1, 33)])
def test_timestep_embedding(flip, shift, dim):
    t = torch.tensor([0, 1, 17, 999])
    expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_embedding(t, dim, flip, shift), expected)


def test_written_out_attention_equals_sdpa():
    _, ours = make_pair(SD2_STYLE, 3)
    sample, timesteps, text = inputs(SD2_STYLE, batch=2)
    with torch.no_grad():
        fused = ours(sample, timesteps, text)
        ours.use_sdpa = False
        assert not any(m.use_sdpa for n, m in ours.named_modules() if n.endswith(("attn1", "attn2")))
        written_out = ours(sample, timesteps, text)
    assert max_diff(fused, written_out) <= 1e-5


def test_store_attention_probs():
    _, ours = make_pair(TINY, 0)
    sample, timesteps, text = inputs(TINY, batch=2, height=8, width=16, tokens=5)
    with torch.no_grad():
        plain = ours(sample, timesteps, text)
        ours.store_attention_probs(True)
        stored = ours(sample, timesteps, text)
    assert max_diff(plain, stored) <= 1e-5
    probs = ours.attention_probs()
    # cross-attention only: down block 0, the mid block, up block 1 (two layers)
    assert set(probs) == {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    }
    p = probs["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert p.shape == (2, 2, 8 * 16, 5)  # (batch, heads, pixels, text tokens)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 8 * 16))
    spatial = ours.attention_probs(spatial=True)
    assert spatial["mid_block.attentions.0.transformer_blocks.0.attn2"].shape == (2, 2, 4, 8, 5)
    ours.store_attention_probs(False)
    assert ours.attention_probs() == {}


def test_sd15_on_meta_device():
    with torch.device("meta"):
        ours = UNet.from_config(SD15_UNET_CONFIG)
        reference = UNet2DConditionModel(**SD15_UNET_CONFIG)
    assert all(p.device.type == "meta" for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    assert sum(p.numel() for p in reference.parameters()) == 859_520_964
    ours_shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    reference_shapes = [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    assert ours_shapes == reference_shapes  # same keys, same shapes, same order


def test_sd15_config_round_trip():
    with torch.device("meta"):
        reference = UNet2DConditionModel(**SD15_UNET_CONFIG)
        ours = UNet.from_config(reference.config)  # a FrozenDict with every field and private keys
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964


# ---- errors


def test_wrong_latent_channels():
    _, ours = make_pair(TINY, 0)
    _, timesteps, text = inputs(TINY)
    with pytest.raises(ValueError, match=r"sample has 3 channels, but this U-Net expects in_channels=4"):
        ours(torch.randn(3, 3, 8, 16), timesteps, text)


def test_wrong_text_width():
    _, ours = make_pair(TINY, 0)
    sample, timesteps, _ = inputs(TINY)
    with pytest.raises(ValueError, match=r"width 768.*cross_attention_dim=8"):
        ours(sample, timesteps, torch.randn(3, 77, 768))


def test_latent_size_not_divisible():
    _, ours = make_pair(SD2_STYLE, 0)  # two downsamplers: sizes must be multiples of 4
    _, timesteps, text = inputs(SD2_STYLE)
    with pytest.raises(ValueError, match=r"divisible by 4.*got 8x10"):
        ours(torch.randn(3, 4, 8, 10), timesteps, text)


def test_wrong_number_of_timesteps():
    _, ours = make_pair(TINY, 0)
    sample, _, text = inputs(TINY, batch=3)
    with pytest.raises(ValueError, match=r"timestep has 2 values.*batch=3"):
        ours(sample, torch.tensor([1, 2]), text)


def test_missing_keys_listed():
    reference, ours = make_pair(TINY, 0)
    state = reference.state_dict()
    del state["conv_in.weight"]
    del state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(2\)") as info:
        ours.load_state_dict(state)
    assert "conv_in.weight" in str(info.value)
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight" in str(info.value)
    ours.load_state_dict(state, strict=False)  # non-strict still loads the rest


def test_unexpected_keys_listed():
    reference, ours = make_pair(TINY, 0)
    state = reference.state_dict()
    state["time_embedding.cond_proj.weight"] = torch.zeros(16, 4)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): \['time_embedding\.cond_proj\.weight'\]"):
        ours.load_state_dict(state)


def test_shape_mismatch_listed():
    reference, ours = make_pair(TINY, 0)
    state = reference.state_dict()
    state["conv_out.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"conv_out\.bias: checkpoint \(3,\), model \(4,\)"):
        ours.load_state_dict(state)


def test_unsupported_block_type():
    config = {**TINY, "down_block_types": ("CrossAttnDownBlock2D", "AttnDownBlock2D")}
    with pytest.raises(ValueError, match=r"down_block_types\[1\]='AttnDownBlock2D' .*'CrossAttnDownBlock2D', 'DownBlock2D'"):
        UNet.from_config(config)


def test_unsupported_feature():
    with pytest.raises(ValueError, match=r"class_embed_type='timestep' is not supported"):
        UNet.from_config({**TINY, "class_embed_type": "timestep"})


def test_num_attention_heads_wins():
    # diffusers refuses `num_attention_heads` for this model; here it simply sets the heads
    ours = UNet.from_config({**TINY, "num_attention_heads": 4, "attention_head_dim": 99})
    attn = ours.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.heads == 4 and attn.to_q.out_features == 4
