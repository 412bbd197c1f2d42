"""Classifier-free guidance: the formula, one batched model call, no guidance at scale <= 1."""

import math

import pytest
import torch

from sdcourse.guidance import classifier_free_guidance, guided_noise_prediction, uses_guidance


def test_the_formula():
    g = torch.Generator().manual_seed(0)
    eps_uncond, eps_cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for w in (0, 0.5, 1, 7.5):
        expected = eps_uncond + w * (eps_cond - eps_uncond)
        torch.testing.assert_close(classifier_free_guidance(eps_uncond, eps_cond, w), expected)
    torch.testing.assert_close(classifier_free_guidance(eps_uncond, eps_cond, 1.0), eps_cond)
    torch.testing.assert_close(classifier_free_guidance(eps_uncond, eps_cond, 0.0), eps_uncond)


@pytest.mark.parametrize("scale", [-0.5, -1, math.nan, "7.5", None])
def test_bad_guidance_scales_are_refused(scale):
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"guidance_scale must be a number"):
        classifier_free_guidance(x, x, scale)
    with pytest.raises(ValueError, match=r"guidance_scale must be a number"):
        guided_noise_prediction(lambda *args: x, x, 10, x, x, scale)
    with pytest.raises(ValueError, match=r"guidance_scale must be a number"):
        uses_guidance(scale)


def test_guidance_is_used_above_one_only():
    assert [uses_guidance(w) for w in (0, 0.5, 1, 1.0, 1.01, 7.5)] == [False, False, False, False, True, True]


class CountingDenoiser:
    """model(latents, t, context): a stand-in U-Net that records each call's batch size."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, latents, t, context):
        self.batch_sizes.append(latents.shape[0])
        # depends on latents, t and the context, one context per sample
        return latents * 0.5 + context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + float(t) / 1000


def inputs():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 77, 16, generator=g), torch.randn(2, 77, 16, generator=g)
    return latents, cond, uncond


def test_guidance_runs_the_two_passes_as_one_batched_call_uncond_first():
    model = CountingDenoiser()
    latents, cond, uncond = inputs()
    guided = guided_noise_prediction(model, latents, 500, cond, uncond, 7.5)
    assert model.batch_sizes == [4], "one call on the doubled batch"
    # the same as two separate passes combined by the formula
    eps_uncond, eps_cond = model(latents, 500, uncond), model(latents, 500, cond)
    torch.testing.assert_close(guided, classifier_free_guidance(eps_uncond, eps_cond, 7.5))


def test_a_negative_prompt_takes_the_unconditional_place():
    model = CountingDenoiser()
    latents, cond, negative = inputs()
    guided = guided_noise_prediction(model, latents, 500, cond, negative, 3.0)
    expected = model(latents, 500, negative) + 3.0 * (model(latents, 500, cond) - model(latents, 500, negative))
    torch.testing.assert_close(guided, expected)


@pytest.mark.parametrize("scale", [0, 0.5, 1])
def test_scales_up_to_one_run_the_conditional_pass_alone(scale):
    model = CountingDenoiser()
    latents, cond, uncond = inputs()
    for unconditional in (uncond, None):
        out = guided_noise_prediction(model, latents, 500, cond, unconditional, scale)
        torch.testing.assert_close(out, latents * 0.5 + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 0.5)
    assert model.batch_sizes == [2, 2]


def test_one_timestep_per_sample_is_repeated_for_both_halves():
    seen = []

    def model(latents, t, context):
        seen.append(t)
        return latents

    latents, cond, uncond = inputs()
    guided_noise_prediction(model, latents, torch.tensor([10, 20]), cond, uncond, 2.0)
    assert seen[0].tolist() == [10, 20, 10, 20]


def test_guidance_needs_an_unconditional_embedding_of_the_same_shape():
    latents, cond, uncond = inputs()
    with pytest.raises(ValueError, match=r"guidance_scale=7.5 > 1 needs uncond_context"):
        guided_noise_prediction(CountingDenoiser(), latents, 500, cond, None, 7.5)
    with pytest.raises(ValueError, match=r"uncond_context must have the shape of cond_context: uncond \(1, 77, 16\)"):
        guided_noise_prediction(CountingDenoiser(), latents, 500, cond, uncond[:1], 7.5)
