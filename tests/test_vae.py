"""The from-scratch VAE gives diffusers' AutoencoderKL numbers with diffusers' weights."""

import pytest
import torch
from diffusers import AutoencoderKL

from sdcourse.vae import VAE

SMALL = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
)
# three resolutions, two ResNets per block, 16 groups, no 1x1 quant convs, no mid attention
SMALL_VARIANT = dict(
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
    scaling_factor=0.5,
)
# the layout of Stable Diffusion 1.x's VAE
SD1_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
TOL = 1e-5


def build_pair(config, seed):
    torch.manual_seed(seed)
    reference = AutoencoderKL(**config).eval()
    ours = VAE.from_config(reference.config).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("config", [SMALL, SMALL_VARIANT], ids=["small", "variant"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_encode_decode_match_diffusers(config, seed):
    reference, ours = build_pair(config, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    images = torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1  # non-square, in [-1, 1]

    ref_dist = reference.encode(images).latent_dist
    dist = ours.encode(images)
    f = ours.downsample_factor
    assert dist.mean.shape == (2, 4, 32 // f, 48 // f)
    assert max_diff(dist.mean, ref_dist.mean) <= TOL
    assert max_diff(dist.logvar, ref_dist.logvar) <= TOL
    assert max_diff(dist.std, ref_dist.std) <= TOL
    torch.testing.assert_close(dist.kl(), ref_dist.kl(), rtol=1e-5, atol=1e-4)
    assert torch.equal(dist.mode(), dist.mean)

    latents = torch.randn(3, 4, 5, 7, generator=gen)  # odd, non-square latent grid
    decoded = ours.decode(latents)
    assert decoded.shape == (3, 3, 5 * f, 7 * f)
    assert max_diff(decoded, reference.decode(latents).sample) <= TOL

    assert max_diff(ours(images), reference(images).sample) <= TOL


@torch.no_grad()
def test_sample_matches_diffusers_with_same_generator():
    reference, ours = build_pair(SMALL, 3)
    images = torch.rand(2, 3, 48, 32) * 2 - 1
    ref_dist, dist = reference.encode(images).latent_dist, ours.encode(images)
    for seed in (0, 7):
        expected = ref_dist.sample(generator=torch.Generator().manual_seed(seed))
        got = dist.sample(generator=torch.Generator().manual_seed(seed))
        assert max_diff(got, expected) <= TOL
    # one generator per image
    expected = ref_dist.sample(generator=[torch.Generator().manual_seed(s) for s in (4, 5)])
    got = dist.sample(generator=[torch.Generator().manual_seed(s) for s in (4, 5)])
    assert max_diff(got, expected) <= TOL
    # a sample is the mean plus std-scaled noise, so it differs from the mode
    assert not torch.allclose(got, dist.mode())


@torch.no_grad()
def test_written_out_mid_block_attention_gives_the_same_numbers():
    reference, ours = build_pair(SMALL, 4)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    attn = ours.encoder.mid_block.attentions[0]
    attn.use_sdpa = False
    assert max_diff(ours.encode(images).mean, reference.encode(images).latent_dist.mean) <= TOL
    attn.store_probs = True
    ours.encode(images)
    # one head; every latent pixel (16 * 24 of them) attends to every other
    assert attn.last_probs.shape == (2, 1, 16 * 24, 16 * 24)


def test_logvar_is_clamped():
    from sdcourse.vae import DiagonalGaussian

    parameters = torch.zeros(1, 8, 2, 2)
    parameters[:, 4] = -100.0
    parameters[:, 5] = 100.0
    dist = DiagonalGaussian(parameters)
    assert dist.logvar[:, 0].eq(-30.0).all() and dist.logvar[:, 1].eq(20.0).all()
    assert torch.isfinite(dist.std).all() and (dist.std > 0).all()
    # KL of N(0, 1) to itself is 0
    assert DiagonalGaussian(torch.zeros(2, 8, 3, 3)).kl().abs().max() == 0


def test_config_and_scaling_factor():
    reference = AutoencoderKL(**SMALL)
    ours = VAE.from_config(reference.config)  # a FrozenDict
    assert ours.scaling_factor == 0.18215
    assert VAE.from_config(dict(SMALL_VARIANT)).scaling_factor == 0.5
    # fields only diffusers uses are ignored
    assert VAE.from_config(dict(SMALL, force_upcast=False, latents_mean=None)).downsample_factor == 2


def test_defaults_are_diffusers_defaults():
    """A field left out takes AutoencoderKL's default: the same network, the same numbers."""
    torch.manual_seed(0)
    reference = AutoencoderKL(**SMALL).eval()
    ours = VAE.from_config(SMALL).eval()
    ours.load_state_dict(reference.state_dict())
    assert ours.sample_size == reference.config.sample_size and ours.shift_factor is None
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert max_diff(ours(images), reference(images).sample) <= TOL


def test_sd1_layout_matches_diffusers_on_meta_device():
    with torch.device("meta"):
        reference = AutoencoderKL(**SD1_VAE)
        ours = VAE.from_config(reference.config)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(sorted(our_state)) == list(sorted(ref_state))
    for key, value in ref_state.items():
        assert our_state[key].shape == value.shape, key
        assert our_state[key].is_meta
    assert ours.downsample_factor == 8
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours.load_state_dict(ref_state, assign=True)


def test_wrong_channels_raise():
    ours = VAE.from_config(SMALL)
    with pytest.raises(ValueError, match=r"expected images with 3 channels, got 4"):
        ours.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"expected latents with 4 channels, got 3"):
        ours.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, channels, height, width\)"):
        ours.encode(torch.zeros(3, 32, 32))


def test_size_not_multiple_of_downsampling_factor_raises():
    with pytest.raises(ValueError, match=r"multiples of 2 .*got 33x48"):
        VAE.from_config(SMALL).encode(torch.zeros(1, 3, 33, 48))
    with pytest.raises(ValueError, match=r"multiples of 4 .*got 32x50"):
        VAE.from_config(SMALL_VARIANT).encode(torch.zeros(1, 3, 32, 50))


def test_unsupported_block_types_raise():
    with pytest.raises(ValueError, match=r"down_block_types\[1\]='AttnDownEncoderBlock2D' .*'DownEncoderBlock2D'"):
        VAE.from_config(dict(SMALL, down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D")))
    with pytest.raises(ValueError, match=r"up_block_types\[0\]='UpBlock2D' .*'UpDecoderBlock2D'"):
        VAE.from_config(dict(SMALL, up_block_types=("UpBlock2D", "UpDecoderBlock2D")))


def test_load_state_dict_lists_missing_and_unexpected_keys():
    reference = AutoencoderKL(**SMALL)
    ours = VAE.from_config(reference.config)
    state = reference.state_dict()
    state.pop("quant_conv.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): \['quant_conv.bias'\]") as error:
        ours.load_state_dict(state)
    assert "unexpected keys (1): ['decoder.extra.weight']" in str(error.value)
    # non-strict loading still works and reports the same keys
    result = ours.load_state_dict(state, strict=False)
    assert result.missing_keys == ["quant_conv.bias"] and result.unexpected_keys == ["decoder.extra.weight"]
    # a model without quant convs has no such keys
    with pytest.raises(RuntimeError, match=r"unexpected keys .*post_quant_conv.bias"):
        VAE.from_config(dict(SMALL, use_quant_conv=False, use_post_quant_conv=False)).load_state_dict(
            reference.state_dict()
        )
