"""The exercises that build real pieces: the VAE's KL term (lesson 01), one training step of
the U-Net (lesson 04) and the Euler and DPM-Solver++ 2M steps (lesson 06), checked against
diffusers. Each check passes answers written the ways a learner may write them, and fails each mistake it diagnoses, naming it. The lesson 02 and 04
checks also name the mistakes their lessons warn about."""

import pytest
import torch
import torch.nn.functional as F

from sdcourse.checks import (
    check_add_noise,
    check_diffusion_loss,
    check_dpm_solver_2m_step,
    check_euler_step,
    check_kl_divergence,
    check_predictor_mse_by_bin,
    check_training_step,
)
from sdcourse.checks.lesson01 import kl_divergence_reference
from sdcourse.checks.lesson04 import TINY_UNET, training_step_reference


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The U-Net steps are tiny: one thread is faster than two on a busy machine."""


def fails_with(check, fn, message):
    result = check(fn, verbose=False)
    assert not result, f"the check passed a mistake: {message}"
    cause = next(line for line in result.report.splitlines() if "likely cause: " in line)
    assert message in cause, result.report
    return result.report


# ---- lesson 01: the KL term ----------------------------------------------------------------


def kl(mean, logvar):
    logvar = logvar.clamp(-30.0, 20.0)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))


def kl_written_the_other_way(mean, logvar):
    logvar = torch.clamp(logvar, min=-30, max=20)
    return -0.5 * torch.sum(1 + logvar - mean**2 - torch.exp(logvar), dim=[1, 2, 3])


@pytest.mark.parametrize("answer", [kl, kl_written_the_other_way])
def test_kl_check_passes_a_correct_answer(answer):
    assert check_kl_divergence(answer, verbose=False)


def _kl_terms(mean, logvar):
    logvar = logvar.clamp(-30.0, 20.0)
    return mean.pow(2) + logvar.exp() - 1.0 - logvar


KL_MISTAKES = [
    ("mean", lambda m, lv: 0.5 * _kl_terms(m, lv).mean(dim=(1, 2, 3)), "averaged, not summed"),
    ("no half", lambda m, lv: _kl_terms(m, lv).sum(dim=(1, 2, 3)), "the factor 1/2 is missing"),
    ("std", lambda m, lv: 0.5 * (m**2 + (0.5 * lv.clamp(-30, 20)).exp() - 1 - lv.clamp(-30, 20)).sum(dim=(1, 2, 3)),
     "the standard deviation exp(logvar / 2) was used"),
    ("no clamp", lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)), "logvar was not clamped"),
    ("batch summed", lambda m, lv: 0.5 * _kl_terms(m, lv).sum(), "the sum also ran over the batch"),
    ("keepdim", lambda m, lv: 0.5 * _kl_terms(m, lv).sum(dim=(1, 2, 3), keepdim=True), "the sum kept its dimensions"),
    ("no minus one", lambda m, lv: 0.5 * (m**2 + lv.clamp(-30, 20).exp() - lv.clamp(-30, 20)).sum(dim=(1, 2, 3)),
     "the - 1 inside the sum is missing"),
    ("float64", lambda m, lv: kl(m, lv).double(), "the result is float64 for float32 inputs"),
    ("float32", lambda m, lv: kl(m, lv).float(), "the result was cast to float32"),
    ("another shape", lambda m, lv: kl(m, lv)[None], "the result has the wrong shape"),
    ("another dtype", lambda m, lv: kl(m, lv).half(), "the result has the wrong dtype"),
]


@pytest.mark.parametrize("name, answer, message", KL_MISTAKES, ids=[m[0] for m in KL_MISTAKES])
def test_kl_check_names_each_mistake(name, answer, message):
    fails_with(check_kl_divergence, answer, message)


def test_kl_check_reports_the_ratio_and_the_shapes():
    report = fails_with(check_kl_divergence, KL_MISTAKES[0][1], "averaged, not summed")
    assert "256 for a (4, 8, 8) latent" in report
    report = fails_with(check_kl_divergence, KL_MISTAKES[4][1], "the sum also ran over the batch")
    assert "expected: Tensor of shape (3,)" in report and "got:      Tensor of shape ()" in report


def test_kl_reference_is_diffusers_kl_on_the_cases():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    for case in check_kl_divergence.cases():
        mean, logvar = case.args
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()
        assert torch.equal(kl_divergence_reference(mean, logvar), expected)
        torch.testing.assert_close(kl(mean, logvar), expected, rtol=1e-5, atol=1e-3)
    shapes = [tuple(case.args[0].shape[1:]) for case in check_kl_divergence.cases()]
    assert (4, 8, 8) in shapes and (4, 64, 64) in shapes, "the tiny model's latents and SD's"
    assert any((case.args[1] < -30).any() and (case.args[1] > 20).any() for case in check_kl_divergence.cases())


@pytest.mark.parametrize(
    "mean, logvar, error, words",
    [
        (torch.zeros(4, 8, 8), torch.zeros(4, 8, 8), ValueError, "mean must be a 4-d tensor"),
        (torch.zeros(1, 4, 8, 8), [0.0], ValueError, "logvar must be a 4-d tensor (batch, channels, height, width); got list"),
        (torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4), ValueError, "got (1, 4, 8, 8) and (1, 4, 4, 4)"),
    ],
)
def test_kl_reference_refuses_bad_input(mean, logvar, error, words):
    with pytest.raises(error) as raised:
        kl_divergence_reference(mean, logvar)
    assert words in str(raised.value)


# ---- lesson 04: one training step ----------------------------------------------------------


def step(unet, latents, context, scheduler, optimizer, generator, *, goal="noise", reduction="mean", draw="right",
         order="t first", zero=True, backward=True, update=True, clip=True, item=True):
    """A training step as a learner writes it; the keywords make it wrong in one way."""
    batch, T = latents.shape[0], scheduler.config.num_train_timesteps
    low, high, size = {"right": (0, T, batch), "1..T": (1, T + 1, batch), "1000": (0, 1000, batch),
                       "one t": (0, T, 1)}[draw]
    if order == "t first":
        t = torch.randint(low, high, (size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
    else:
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(low, high, (size,), generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    prediction = unet(noisy, t, encoder_hidden_states=context).sample
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = {"noise": noise, "noisy": noisy, "clean": latents, "scaled": (1 - alpha_bar) ** 0.5 * noise}[goal]
    loss = F.mse_loss(prediction, target, reduction=reduction)
    if zero:
        optimizer.zero_grad()
    if backward:
        loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(unet.parameters(), max_norm=1.0)
    if update:
        optimizer.step()
    return loss.item() if item else loss


def step_zeroing_at_the_end(unet, latents, context, scheduler, optimizer, generator):
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    prediction = unet(sample=scheduler.add_noise(latents, noise, t), timestep=t, encoder_hidden_states=context)[0]
    loss = ((prediction - noise) ** 2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("answer", [step, step_zeroing_at_the_end, training_step_reference])
def test_training_step_check_passes_a_correct_answer(answer):
    assert check_training_step(answer, verbose=False)


def wrong(**how):
    return lambda *args: step(*args, **how)


STEP_MISTAKES = [
    ("noisy target", wrong(goal="noisy"), "scored against the noisy latent"),
    ("scaled noise target", wrong(goal="scaled"), "scored against the scaled noise sqrt(1 - alpha_bar) noise"),
    ("clean target", wrong(goal="clean"), "scored against the clean latent"),
    ("sum", wrong(reduction="sum"), "the squared errors were summed, not averaged"),
    ("t from 1 to T", wrong(draw="1..T"), "the timesteps were drawn from 1 to T"),
    ("t below 1000", wrong(draw="1000"), "the timesteps were drawn from [0, 1000) whatever the schedule"),
    ("one t", wrong(draw="one t"), "one timestep for the whole batch"),
    ("noise first", wrong(order="noise first"), "the draws came in another order"),
    ("no optimizer step", wrong(update=False), "the weights did not change"),
    ("no backward", wrong(backward=False), "the weights did not change"),
    ("no clipping", wrong(clip=False), "the gradients were not clipped to norm 1"),
    ("no zero_grad", wrong(zero=False), "the gradients were never zeroed"),
    ("a tensor returned", wrong(item=False), "the loss was returned as a tensor"),
]


@pytest.mark.parametrize("name, answer, message", STEP_MISTAKES, ids=[m[0] for m in STEP_MISTAKES])
def test_training_step_check_names_each_mistake(name, answer, message):
    fails_with(check_training_step, answer, message)


def test_training_step_reports_what_differs():
    report = fails_with(check_training_step, wrong(reduction="sum"), "the squared errors were summed")
    assert "first difference at ['loss']" in report
    report = fails_with(check_training_step, wrong(zero=False), "the gradients were never zeroed")
    assert "first difference at ['weights after two steps']" in report
    report = fails_with(check_training_step, wrong(update=False), "the weights did not change")
    assert "first difference at ['weights changed']" in report
    report = fails_with(check_training_step, wrong(draw="1000"), "[0, 1000) whatever the schedule")
    assert "first difference at ['timesteps']" in report


def test_training_step_cases_use_a_tiny_diffusers_unet_whose_clipping_matters():
    from diffusers import UNet2DConditionModel

    cases = check_training_step.cases()
    assert all(isinstance(case.args[0], UNet2DConditionModel) for case in cases)
    unet, latents, context = cases[0].args[:3]
    assert list(unet.config.block_out_channels) == list(TINY_UNET["block_out_channels"])
    unet(latents, torch.tensor([500, 500]), encoder_hidden_states=context).sample.pow(2).mean().backward()
    assert torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0) > 1.0


def test_training_step_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_training_step(step, verbose=False)
    assert torch.equal(torch.rand(3), expected)


def test_training_step_reference_refuses_bad_input():
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(**TINY_UNET)
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.1)
    latents, context, scheduler = torch.zeros(2, 4, 8, 8), torch.zeros(2, 5, 8), DDPMScheduler()
    generator = torch.Generator()
    bad = [
        ((unet, latents[0], context, scheduler, optimizer, generator), "latents must be a 4-d tensor"),
        ((unet, latents, context[:1], scheduler, optimizer, generator),
         "context must be a tensor (batch, tokens, width) with batch 2, like latents; got shape (1, 5, 8)"),
        ((unet, latents, context, "ddpm", optimizer, generator), "scheduler must be a diffusers scheduler"),
        ((unet, latents, context, scheduler, None, generator), "optimizer must be a torch.optim.Optimizer; got NoneType"),
        ((unet, latents, context, scheduler, optimizer, 0), "generator must be a torch.Generator; got int"),
        ((None, latents, context, scheduler, optimizer, generator), "unet must be a torch.nn.Module"),
    ]
    for args, words in bad:
        with pytest.raises((TypeError, ValueError)) as raised:
            training_step_reference(*args)
        assert words in str(raised.value)


# ---- lessons 02 and 04: the mistakes the lessons warn about --------------------------------


def test_add_noise_check_names_alpha_bar_in_place_of_its_root():
    fails_with(check_add_noise, lambda x0, noise, a: a * x0 + (1 - a).sqrt() * noise,
               "alpha_bar where sqrt(alpha_bar) belongs")


def test_predictor_check_names_the_scaled_noise_as_target():
    def scored_against_scaled_noise(x0, alphas_cumprod, num_bins=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        n, T = x0.shape[0], len(alphas_cumprod)
        t = torch.randint(0, T, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        guess = torch.randn(x0.shape, generator=g)
        alpha_bar = alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        perfect = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        bins = t * num_bins // T
        result = {}
        for name, prediction in {"zero": torch.zeros_like(x_t), "random": guess, "perfect": perfect}.items():
            mse = ((prediction - (1 - alpha_bar).sqrt() * noise) ** 2).flatten(1).mean(1)
            result[name] = [float(mse[bins == k].mean()) for k in range(num_bins)]
        return result

    fails_with(check_predictor_mse_by_bin, scored_against_scaled_noise, "scored against the scaled noise")


def test_diffusion_loss_check_names_the_scaled_noise_as_target():
    def scored_against_scaled_noise(model_fn, x0, noise, timesteps, schedule):
        alpha_bar = schedule.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        return (model_fn(x_t, timesteps) - (1 - alpha_bar).sqrt() * noise).pow(2).mean()

    fails_with(check_diffusion_loss, scored_against_scaled_noise, "compared with the scaled noise")


# ---- lesson 06: the Euler and DPM-Solver++ 2M steps of the sampling ODE ------------------------


def euler_step(x, eps, sigma, sigma_next):
    return x + (sigma_next - sigma) * eps


def euler_step_through_x0(x, eps, sigma, sigma_next):
    x0 = x - sigma * eps  # DDIM's way: the clean guess, noised again to sigma_next
    return x0 + sigma_next * eps


def dpm_solver_2m_step(x, x0, x0_prev, sigma_prev, sigma, sigma_next):
    if x0_prev is None or sigma_next == 0:
        guess = x0
    else:
        r = torch.log(sigma_prev / sigma) / torch.log(sigma / sigma_next)
        guess = x0 + (x0 - x0_prev) / (2 * r)
    return sigma_next / sigma * x + (1 - sigma_next / sigma) * guess


def dpm_solver_2m_step_in_lambdas(x, x0, x0_prev, sigma_prev, sigma, sigma_next):
    """Written with lambda = -log(sigma) and exp, as the paper writes it."""
    if sigma_next == 0:
        return x0
    lam, lam_next = -torch.log(sigma), -torch.log(sigma_next)
    h = lam_next - lam
    guess = x0
    if x0_prev is not None:
        h_prev = lam - (-torch.log(sigma_prev))
        guess = (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
    return torch.exp(-h) * x + (1 - torch.exp(-h)) * guess


@pytest.mark.parametrize("answer", [euler_step, euler_step_through_x0])
def test_euler_step_check_passes_correct_answers(answer):
    assert check_euler_step(answer, verbose=False)


@pytest.mark.parametrize("answer", [dpm_solver_2m_step, dpm_solver_2m_step_in_lambdas])
def test_dpm_solver_2m_step_check_passes_correct_answers(answer):
    assert check_dpm_solver_2m_step(answer, verbose=False)


@pytest.mark.parametrize("check", [check_euler_step, check_dpm_solver_2m_step], ids=["euler", "dpm_solver_2m"])
def test_the_ode_step_checks_name_each_mistake(check):
    for cause, mistake in check.mistakes.items():
        fails_with(check, mistake, cause)


def test_a_first_order_dpm_step_is_ddims_and_eulers():
    """With no x0_prev, DPM-Solver++'s step in sigma space is the Euler step with eps = (x - x0) / sigma."""
    for case in check_dpm_solver_2m_step.cases():
        x, x0, x0_prev, sigma_prev, sigma, sigma_next = case.args
        if x0_prev is None:
            expected = euler_step(x, (x - x0) / sigma, sigma, sigma_next)
            torch.testing.assert_close(check_dpm_solver_2m_step.reference(*case.args), expected, atol=1e-4, rtol=1e-4)
            return
    raise AssertionError("no first-step case")
