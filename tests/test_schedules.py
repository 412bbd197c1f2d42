"""NoiseSchedule equals diffusers' DDPMScheduler, and says clearly what is wrong with bad input."""

import pytest
import torch
from diffusers import DDPMScheduler

from sdcourse.schedules import NoiseSchedule

# name: the DDPMScheduler arguments (DDPM's linear range, Stable Diffusion's scaled_linear, cosine)
CONFIGS = {
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}


def pair(name, T=1000):
    library = DDPMScheduler(num_train_timesteps=T, **CONFIGS[name])
    return NoiseSchedule.from_config(library.config), library


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("T", [1000, 50])
def test_betas_and_alphas_cumprod_equal_diffusers(name, T):
    ours, library = pair(name, T)
    assert ours.betas.dtype == library.betas.dtype == torch.float32
    torch.testing.assert_close(ours.betas, library.betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas, library.alphas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod, library.alphas_cumprod, atol=1e-6, rtol=0)


def inputs_in_minus_one_one(T=1000):
    g = torch.Generator().manual_seed(0)
    original = torch.rand(T, 3, 8, 8, generator=g) * 2 - 1  # one image in [-1, 1] per timestep
    noise = torch.rand(T, 3, 8, 8, generator=g) * 2 - 1
    return original, noise, torch.arange(T)


@pytest.mark.parametrize("name", CONFIGS)
def test_add_noise_equals_diffusers(name):
    ours, library = pair(name)
    original, noise, timesteps = inputs_in_minus_one_one()
    diff = (ours.add_noise(original, noise, timesteps) - library.add_noise(original, noise, timesteps)).abs()
    diff = diff.flatten(1).amax(1)  # (1000,) the largest difference at each timestep
    assert diff[20:].max() < 1e-6
    # Below t = 20, 1 - alpha_bar is ~1e-4 and sqrt(1 - alpha_bar) magnifies the one-float32-step
    # difference between diffusers' float32 cumprod and our float64 one (6e-8) about 50 times.
    assert diff.max() < 3e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_add_noise_equals_diffusers_given_the_same_alphas_cumprod(name):
    ours, library = pair(name)
    ours.alphas_cumprod = library.alphas_cumprod.clone()
    original, noise, timesteps = inputs_in_minus_one_one()
    expected = library.add_noise(original, noise, timesteps)
    torch.testing.assert_close(ours.add_noise(original, noise, timesteps), expected, atol=1e-6, rtol=0)


def test_add_noise_accepts_one_timestep_for_the_whole_batch():
    schedule = NoiseSchedule()
    original, noise = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    one = schedule.add_noise(original, noise, 10)
    per_sample = schedule.add_noise(original, noise, torch.tensor([10, 10, 10]))
    torch.testing.assert_close(one, per_sample)
    torch.testing.assert_close(one, torch.full((3, 2, 2), schedule.alphas_cumprod[10].sqrt().item()))


def test_from_config_reads_a_ddpm_config_and_a_plain_dict():
    library = DDPMScheduler(num_train_timesteps=500, **CONFIGS["scaled_linear"])
    schedule = NoiseSchedule.from_config(library.config)
    assert (schedule.num_train_timesteps, schedule.beta_schedule) == (500, "scaled_linear")
    assert (schedule.beta_start, schedule.beta_end) == (0.00085, 0.012)
    assert NoiseSchedule.from_config({"beta_schedule": "squaredcos_cap_v2"}).beta_schedule == "cosine"


def test_snr_values():
    schedule = NoiseSchedule(1000, "linear", beta_start=0.0001, beta_end=0.02)
    alpha_bar = schedule.alphas_cumprod.double()
    t = torch.tensor([0, 259, 999])
    torch.testing.assert_close(schedule.snr(t), alpha_bar[t] / (1 - alpha_bar[t]))
    assert schedule.snr(t).dtype == torch.float64
    # at t = 0 only beta_0 = 1e-4 of noise was added: SNR = (1 - 1e-4) / 1e-4, about 40 dB
    assert schedule.snr(0).item() == pytest.approx(9999, rel=1e-3)
    assert torch.all(schedule.snr(torch.arange(1000)).diff() < 0), "the SNR must fall at every step"


def zero_db_crossing(schedule):
    """The first t with SNR <= 1 (0 dB), i.e. alpha_bar <= 0.5."""
    return int((schedule.snr(torch.arange(schedule.num_train_timesteps)) <= 1).nonzero()[0])


@pytest.mark.parametrize("name, crossing", [("linear", 259), ("cosine", 496), ("scaled_linear", 354)])
def test_zero_db_crossings(name, crossing):
    ours, _ = pair(name)
    assert zero_db_crossing(ours) == crossing


def test_the_default_is_stable_diffusions_schedule():
    schedule = NoiseSchedule()
    assert (schedule.beta_schedule, schedule.beta_start, schedule.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert zero_db_crossing(schedule) == 354


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match=r"beta_schedule='sqrt_linear'.*allowed: linear, scaled_linear, cosine"):
        NoiseSchedule(beta_schedule="sqrt_linear")


@pytest.mark.parametrize("arg, value", [("beta_start", 0.0), ("beta_start", -0.1), ("beta_end", 1.0), ("beta_end", 1.5)])
def test_beta_outside_zero_one(arg, value):
    with pytest.raises(ValueError, match=rf"{arg}={value}.*\(0, 1\)"):
        NoiseSchedule(**{arg: value})


def test_beta_start_above_beta_end():
    with pytest.raises(ValueError, match=r"beta_start=0.02 must not exceed beta_end=0.01"):
        NoiseSchedule(beta_start=0.02, beta_end=0.01)


@pytest.mark.parametrize("T", [1, 0, 1000.0])
def test_num_train_timesteps_must_be_an_integer_of_at_least_two(T):
    with pytest.raises(ValueError, match=rf"num_train_timesteps must be an integer >= 2, got {T!r}"):
        NoiseSchedule(num_train_timesteps=T)


@pytest.mark.parametrize("timesteps, low, high", [(torch.tensor([0, 1000]), 0, 1000), (torch.tensor([-1, 5]), -1, 5), (1000, 1000, 1000)])
def test_timesteps_out_of_range(timesteps, low, high):
    schedule = NoiseSchedule()
    x = torch.zeros(2, 3)
    message = rf"timesteps must lie in \[0, 999\], got values from {low} to {high}"
    with pytest.raises(ValueError, match=message):
        schedule.add_noise(x, x, timesteps)
    with pytest.raises(ValueError, match=message):
        schedule.snr(timesteps)


def test_timesteps_must_be_integers():
    with pytest.raises(ValueError, match=r"timesteps must be integers, got dtype torch.float32"):
        NoiseSchedule().snr(torch.tensor([1.5]))


def test_noise_and_original_shapes_must_match():
    with pytest.raises(ValueError, match=r"noise must have the shape of original: original \(2, 3\), noise \(2, 4\)"):
        NoiseSchedule().add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]))


def test_one_timestep_per_sample():
    with pytest.raises(ValueError, match=r"timesteps must be one integer or one per sample \(2\), got shape \(3,\)"):
        NoiseSchedule().add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1, 2, 3]))


def test_integer_images_are_refused():
    schedule = NoiseSchedule()
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"original must be a floating-point tensor.*torch.uint8"):
        schedule.add_noise(images, torch.zeros_like(images), torch.tensor([1, 2]))


def test_trained_betas_in_a_config_are_refused():
    with pytest.raises(ValueError, match="trained_betas"):
        NoiseSchedule.from_config({"beta_schedule": "linear", "trained_betas": [0.1, 0.2]})
