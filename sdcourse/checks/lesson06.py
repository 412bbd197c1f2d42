"""Checks for lesson 06: sampling from scratch (the DDPM and DDIM steps, DDIM's error by step
count, and two steps of the sampling ODE: Euler's and DPM-Solver++ 2M's)."""

from __future__ import annotations

from unittest import mock

import torch

from ..schedules import NoiseSchedule
from .core import Case, exercise_check

__all__ = [
    "check_ddpm_step",
    "check_ddim_step",
    "check_gaussian_eps",
    "check_ddim_gaussian_error",
    "check_euler_step",
    "check_dpm_solver_2m_step",
]

SOLUTION_NOTEBOOK = "solutions/06_sampling.ipynb"  # hint() points here after the last hint


def _alpha_bar(alphas_cumprod, t):
    """alpha-bar at timestep t; a negative t means "after the last step", where alpha-bar is 1."""
    return alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def _x0_from_eps(eps, x_t, alpha_bar_t):
    # x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    return (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()


def _schedules():
    sd = NoiseSchedule().alphas_cumprod  # Stable Diffusion's scaled_linear, T = 1000
    linear = NoiseSchedule(1000, "linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod
    return sd, linear


def _tensors(seed, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    eps, x_t, noise = (torch.randn(shape, generator=g) for _ in range(3))
    return eps, x_t, noise


# ---- exercise 1: a DDPM step ---------------------------------------------------------------


def ddpm_step_reference(eps, t, x_t, prev_t, alphas_cumprod, noise):
    """diffusers' DDPMScheduler.step on the same inputs, with the case's schedule and noise."""
    from diffusers import DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    scheduler = DDPMScheduler(num_train_timesteps=len(alphas_cumprod), clip_sample=False)
    scheduler.alphas_cumprod = alphas_cumprod.clone()  # the case's schedule
    scheduler.set_timesteps(timesteps=[t, prev_t] if prev_t >= 0 else [t])  # so that t is followed by prev_t
    # diffusers draws its noise inside step(): hand it the case's noise instead, so both sides use the same
    with mock.patch.object(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: noise.clone()):
        return scheduler.step(eps, t, x_t).prev_sample


def _ddpm(eps, t, x_t, prev_t, alphas_cumprod, noise, *, one_step_alpha=False, alpha_is_alpha_bar=False,
          add_noise=True, sqrt_var=True, large_var=False, negative_index=False, x0_sqrt=True):
    """The DDPM step, or one of its plausible mistakes."""
    ab_t = alphas_cumprod[t]
    ab_prev = alphas_cumprod[prev_t] if negative_index else _alpha_bar(alphas_cumprod, prev_t)
    if x0_sqrt:
        x0 = _x0_from_eps(eps, x_t, ab_t)
    else:
        x0 = (x_t - (1 - ab_t) * eps) / ab_t
    alpha = ab_t / ab_prev  # one jump from prev_t to t
    if one_step_alpha:
        alpha = ab_t / _alpha_bar(alphas_cumprod, t - 1)
    if alpha_is_alpha_bar:
        alpha = ab_t
    beta = 1 - alpha
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t
    var = beta if large_var else (1 - ab_prev) / (1 - ab_t) * beta
    if not add_noise:
        return mean
    return mean + (var.sqrt() if sqrt_var else var) * noise


def _ddpm_variant(**how):
    return lambda eps, t, x_t, prev_t, alphas_cumprod, noise: _ddpm(eps, t, x_t, prev_t, alphas_cumprod, noise, **how)


def _ddpm_cases():
    sd, linear = _schedules()
    eps, x_t, noise = _tensors(0)
    return [
        Case("SD schedule, 50 steps: t = 981 -> 961", (eps, 981, x_t, 961, sd, noise)),
        Case("SD schedule, 1000 steps: t = 500 -> 499", (eps, 500, x_t, 499, sd, noise)),
        Case("SD schedule, 10 steps: t = 401 -> 301", (eps, 401, x_t, 301, sd, noise)),
        Case("the last step: t = 1 -> the clean image (prev_t = -1)", (eps, 1, x_t, -1, sd, noise)),
        Case("DDPM's linear schedule, 20 steps: t = 950 -> 900", (eps, 950, x_t, 900, linear, noise)),
    ]


check_ddpm_step = exercise_check(
    "ddpm_step",
    ddpm_step_reference,
    _ddpm_cases,
    mistakes={
        "the one-step alpha_t was used; when steps are skipped the step's alpha is alpha_bar_t / alpha_bar_prev": (
            _ddpm_variant(one_step_alpha=True)
        ),
        "alpha-bar where alpha belongs: the step's alpha is alpha_bar_t / alpha_bar_prev, not alpha_bar_t": (
            _ddpm_variant(alpha_is_alpha_bar=True)
        ),
        "the noise term is missing: add sqrt(variance) * noise to the posterior mean": _ddpm_variant(add_noise=False),
        "the variance was not square-rooted: the noise is scaled by its standard deviation": _ddpm_variant(sqrt_var=False),
        "the variance is beta, DDPM's 'large' choice; diffusers uses the posterior's (1 - ab_prev) / (1 - ab_t) beta": (
            _ddpm_variant(large_var=True)
        ),
        "prev_t = -1 indexed alphas_cumprod[-1], the noisiest entry; after the last step alpha-bar is 1": (
            _ddpm_variant(negative_index=True)
        ),
        "the predicted x_0 lost its square roots: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)": _ddpm_variant(x0_sqrt=False),
    },
    hints=[
        "Two stages: first turn eps into the model's guess of x_0, then sample x_prev from the posterior "
        "q(x_prev | x_t, x_0) with that guess plugged in.",
        "Between prev_t and t the process takes one jump with alpha = alpha_bar_t / alpha_bar_prev and beta = 1 - alpha. "
        "After the last step (prev_t < 0) alpha_bar_prev is 1: do not index alphas_cumprod with -1.",
        "x0 = (x_t - sqrt(1 - ab_t) * eps) / sqrt(ab_t); "
        "mean = sqrt(ab_prev) * beta / (1 - ab_t) * x0 + sqrt(alpha) * (1 - ab_prev) / (1 - ab_t) * x_t, "
        "var = (1 - ab_prev) / (1 - ab_t) * beta, and x_prev = mean + var.sqrt() * noise.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: a DDIM step ---------------------------------------------------------------


def ddim_step_reference(eps, t, x_t, prev_t, alphas_cumprod, eta=0.0, noise=None):
    """diffusers' DDIMScheduler.step on the same inputs, with the case's schedule and noise."""
    from diffusers import DDIMScheduler

    T = len(alphas_cumprod)
    scheduler = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True)
    scheduler.alphas_cumprod = alphas_cumprod.clone()  # the case's schedule
    # diffusers' DDIM steps from t to t - T // num_inference_steps: choose the count that lands on prev_t
    steps = T // (t - prev_t) if prev_t >= 0 else T // (t + 1)
    scheduler.set_timesteps(steps)
    lands = t - T // steps
    assert lands == prev_t or (prev_t < 0 and lands < 0), f"no step count goes from {t} to {prev_t}"
    return scheduler.step(eps, t, x_t, eta=eta, variance_noise=noise).prev_sample


def _ddim(eps, t, x_t, prev_t, alphas_cumprod, eta=0.0, noise=None, *, add_noise=True, subtract_var=True,
          use_eta=True, one_step_beta=False, negative_index=False, x0_sqrt=True, level_of_t=False):
    """The DDIM step, or one of its plausible mistakes."""
    ab_t = alphas_cumprod[t]
    ab_prev = alphas_cumprod[prev_t] if negative_index else _alpha_bar(alphas_cumprod, prev_t)
    if level_of_t:
        ab_prev = ab_t
    x0 = _x0_from_eps(eps, x_t, ab_t) if x0_sqrt else (x_t - (1 - ab_t) * eps) / ab_t
    beta = 1 - ab_t / _alpha_bar(alphas_cumprod, t - 1) if one_step_beta else 1 - ab_t / ab_prev
    sigma = (eta if use_eta else 1.0) * ((1 - ab_prev) / (1 - ab_t) * beta).sqrt()
    eps_weight = (1 - ab_prev - sigma**2).sqrt() if subtract_var else (1 - ab_prev).sqrt()
    x_prev = ab_prev.sqrt() * x0 + eps_weight * eps
    if add_noise and noise is not None and sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def _ddim_variant(**how):
    def step(eps, t, x_t, prev_t, alphas_cumprod, eta=0.0, noise=None):
        return _ddim(eps, t, x_t, prev_t, alphas_cumprod, eta, noise, **how)

    return step


def _ddim_cases():
    sd, linear = _schedules()
    eps, x_t, noise = _tensors(1)
    return [
        Case("SD schedule, 50 steps, eta = 0: t = 981 -> 961", (eps, 981, x_t, 961, sd), {"eta": 0.0}),
        Case("SD schedule, 10 steps, eta = 0: t = 901 -> 801", (eps, 901, x_t, 801, sd), {"eta": 0.0}),
        Case("SD schedule, 50 steps, eta = 1 (as much noise as DDPM): t = 501 -> 481", (eps, 501, x_t, 481, sd),
             {"eta": 1.0, "noise": noise}),
        Case("SD schedule, 20 steps, eta = 0.5: t = 300 -> 250", (eps, 300, x_t, 250, sd), {"eta": 0.5, "noise": noise}),
        Case("the last step, eta = 0: t = 1 -> the clean image (prev_t = -1)", (eps, 1, x_t, -1, sd), {"eta": 0.0}),
        Case("DDPM's linear schedule, 1000 steps, eta = 1: t = 10 -> 9", (eps, 10, x_t, 9, linear),
             {"eta": 1.0, "noise": noise}),
    ]


check_ddim_step = exercise_check(
    "ddim_step",
    ddim_step_reference,
    _ddim_cases,
    mistakes={
        "the noise term is missing: with eta > 0, add sigma * noise": _ddim_variant(add_noise=False),
        "sigma^2 was not taken out of the noise direction: its weight is sqrt(1 - ab_prev - sigma^2)": (
            _ddim_variant(subtract_var=False)
        ),
        "eta was left out of sigma: sigma = eta * sqrt(posterior variance)": _ddim_variant(use_eta=False),
        "sigma used the one-step beta_t; across a jump it is 1 - alpha_bar_t / alpha_bar_prev": (
            _ddim_variant(one_step_beta=True)
        ),
        "prev_t = -1 indexed alphas_cumprod[-1], the noisiest entry; after the last step alpha-bar is 1": (
            _ddim_variant(negative_index=True)
        ),
        "the predicted x_0 lost its square roots: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)": _ddim_variant(x0_sqrt=False),
        "x_0 and eps were put back together at the level of t: the jump goes to the alpha-bar of prev_t": (
            _ddim_variant(level_of_t=True)
        ),
    },
    hints=[
        "DDIM takes the model's guesses of x_0 and of the noise, and puts them back together at the noise "
        "level of prev_t, plus a little fresh noise when eta > 0.",
        "sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)): the DDPM posterior's standard "
        "deviation times eta. As in the DDPM step, alpha-bar after the last step is 1.",
        "x_prev = sqrt(ab_prev) * x0 + sqrt(1 - ab_prev - sigma**2) * eps, plus sigma * noise when eta > 0, "
        "with x0 = (x_t - sqrt(1 - ab_t) * eps) / sqrt(ab_t).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: the ideal noise predictor for Gaussian data -------------------------------


def gaussian_eps_reference(x_t, alpha_bar, mu, s):
    # x_0 ~ N(mu, s^2 I):  E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)
    return (1 - alpha_bar).sqrt() * (x_t - alpha_bar.sqrt() * mu) / (alpha_bar * s**2 + 1 - alpha_bar)


def _gaussian_variant(centre="full", denominator="variance", numerator=True):
    def predict(x_t, alpha_bar, mu, s):
        a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        centred = {"full": x_t - a * mu, "none": x_t, "no_sqrt": x_t - alpha_bar * mu}[centre]
        if denominator == "variance":
            spread = a**2 * s**2 + b**2
        elif denominator == "std":
            spread = (a**2 * s**2 + b**2).sqrt()
        elif denominator == "unweighted":
            spread = torch.as_tensor(s**2 + 1.0)
        else:  # x_0 taken as exactly mu: solve x_t = a mu + b eps for eps
            return (x_t - a * mu) / b
        return (b if numerator else 1.0) * centred / spread

    return predict


def _gaussian_cases():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, generator=g, dtype=torch.float64)
    return [
        Case("mu = 0.5, s = 0.5, alpha_bar = 0.3", (x, torch.tensor(0.3, dtype=torch.float64), 0.5, 0.5)),
        Case("mu = -1, s = 0.2, alpha_bar = 0.9 (little noise)", (x, torch.tensor(0.9, dtype=torch.float64), -1.0, 0.2)),
        Case("mu = 2, s = 1.5, alpha_bar = 0.01 (almost all noise)", (x, torch.tensor(0.01, dtype=torch.float64), 2.0, 1.5)),
        Case("one alpha_bar per row, shape (4, 1)", (x.reshape(4, 16), torch.tensor([[0.1], [0.4], [0.7], [0.95]],
             dtype=torch.float64), 0.3, 0.7)),
    ]


check_gaussian_eps = exercise_check(
    "gaussian_eps",
    gaussian_eps_reference,
    _gaussian_cases,
    mistakes={
        "x_0 was replaced by its mean mu, which ignores the data's spread s": _gaussian_variant(denominator="exact_mu"),
        "the mean of x_t was not taken away: it is sqrt(alpha_bar) mu, not 0": _gaussian_variant(centre="none"),
        "the mean of x_t lost its square root: it is sqrt(alpha_bar) mu": _gaussian_variant(centre="no_sqrt"),
        "divided by the standard deviation of x_t; the regression slope divides by its variance": (
            _gaussian_variant(denominator="std")
        ),
        "the variance of x_t is alpha_bar s^2 + (1 - alpha_bar), each part weighted, not s^2 + 1": (
            _gaussian_variant(denominator="unweighted")
        ),
        "the covariance of eps with x_t is sqrt(1 - alpha_bar), and it is missing": _gaussian_variant(numerator=False),
    },
    hints=[
        "Per coordinate, x_t = a x_0 + b eps with a = sqrt(alpha_bar) and b = sqrt(1 - alpha_bar). eps and x_t "
        "are jointly Gaussian, so E[eps | x_t] is a straight line in x_t: a regression.",
        "The slope of a regression of eps on x_t is Cov(eps, x_t) / Var(x_t), and the line passes through "
        "the means (0 for eps, a mu for x_t).",
        "Cov(eps, x_t) = b and Var(x_t) = a**2 * s**2 + b**2, so the answer is b * (x_t - a * mu) / (a**2 * s**2 + b**2).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 4: the DDIM step estimator -----------------------------------------------------


def _exact_endpoint(x_T, mu, s, alpha_bar_T, std="variance"):
    # the exact ODE keeps (x_t - mean_t) / std_t fixed: x_0 = mu + s (x_T - sqrt(ab_T) mu) / sqrt(ab_T s^2 + 1 - ab_T)
    if std == "added":
        std_T = alpha_bar_T.sqrt() * s + (1 - alpha_bar_T).sqrt()
    else:
        std_T = (alpha_bar_T * s**2 + 1 - alpha_bar_T).sqrt()
    centre = mu if std == "no_sqrt_mean" else alpha_bar_T.sqrt() * mu
    return mu + s * (x_T - centre) / std_T


def _ddim_gaussian(num_steps, x_T, mu, s, alphas_cumprod, *, final_step=True, reduce="rms", target="exact",
                   endpoint="variance"):
    from ..samplers import DDIMSampler

    T = len(alphas_cumprod)
    sampler = DDIMSampler(num_train_timesteps=T, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    sampler.alphas_cumprod = alphas_cumprod  # the case's schedule
    sampler.set_timesteps(num_steps)
    timesteps = [int(t) for t in sampler.timesteps]
    x = x_T
    for i, t in enumerate(timesteps):
        if not final_step and i == len(timesteps) - 1:
            break
        x = sampler.step(gaussian_eps_reference(x, alphas_cumprod[t].double(), mu, s), t, x)
    exact = _exact_endpoint(x_T, mu, s, alphas_cumprod[T - 1].double(), endpoint) if target == "exact" else mu
    squared = ((x - exact) ** 2).mean()
    return float(squared if reduce == "mse" else squared.sqrt())


def ddim_gaussian_error_reference(num_steps, x_T, mu, s, alphas_cumprod):
    return _ddim_gaussian(num_steps, x_T, mu, s, alphas_cumprod)


def _estimator_variant(**how):
    def estimate(num_steps, x_T, mu, s, alphas_cumprod):
        return _ddim_gaussian(num_steps, x_T, mu, s, alphas_cumprod, **how)

    return estimate


def _estimator_cases():
    sd, _ = _schedules()
    z = torch.randn(2048, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def start(mu, s):  # x_T drawn from the noised data at t = T - 1
        ab = sd[-1].double()
        return ab.sqrt() * mu + (ab * s**2 + 1 - ab).sqrt() * z

    return [
        Case("5 steps, mu = 0.5, s = 0.5", (5, start(0.5, 0.5), 0.5, 0.5, sd)),
        Case("50 steps, mu = 0, s = 1", (50, start(0.0, 1.0), 0.0, 1.0, sd)),
        Case("20 steps, mu = -1, s = 0.2", (20, start(-1.0, 0.2), -1.0, 0.2, sd)),
        Case("200 steps, mu = 2, s = 0.7", (200, start(2.0, 0.7), 2.0, 0.7, sd)),
    ]


check_ddim_gaussian_error = exercise_check(
    "ddim_gaussian_error",
    ddim_gaussian_error_reference,
    _estimator_cases,
    mistakes={
        "the loop stopped one step early: the last step goes from the last timestep to the clean image": (
            _estimator_variant(final_step=False)
        ),
        "that is the mean squared error; the error asked for is its square root (RMS)": _estimator_variant(reduce="mse"),
        "the samples were compared with mu; compare each with its own exact endpoint": _estimator_variant(target="mu"),
        "the exact endpoint added standard deviations; variances add: sqrt(ab_T s^2 + 1 - ab_T)": (
            _estimator_variant(endpoint="added")
        ),
        "the mean of x_T is sqrt(alpha_bar_T) mu, not mu, in the exact endpoint": _estimator_variant(endpoint="no_sqrt_mean"),
    },
    hints=[
        "Three parts: run DDIM (eta = 0) from x_T through trailing_timesteps(num_steps), asking gaussian_eps for "
        "the noise at each step; compute where the exact process would have ended; compare the two.",
        "Each step goes from a timestep to the next one in the list, and the last goes to prev_t = -1, the clean "
        "image. Use alphas_cumprod[t] for alpha_bar at timestep t.",
        "The exact endpoint keeps x_T's place in its distribution: x_exact = mu + s * (x_T - sqrt(ab_T) * mu) / "
        "sqrt(ab_T * s**2 + 1 - ab_T) with ab_T = alphas_cumprod[-1]. Return float(((x - x_exact) ** 2).mean().sqrt()).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercises 5 and 6: steps of the sampling ODE in sigma space ---------------------------------
#
# Both work on x = x_0 + sigma eps (x_t / sqrt(alpha_bar_t)). The cases are steps of the course's
# samplers on Stable Diffusion's schedule; building them also checks that each sampler's step equals
# its diffusers twin's on that case, so the reference is both.


def _sd_sampler(cls, num_steps, **changes):
    from ..schedules import SD_SCHEDULE

    sampler = cls(**SD_SCHEDULE, **changes)
    sampler.set_timesteps(num_steps)
    return sampler


def _twin_of(sampler):
    import diffusers

    twin = getattr(diffusers, sampler.twin).from_config(sampler.config)
    twin.set_timesteps(sampler.num_inference_steps)
    return twin


def _euler_sampler_step(x, eps, num_steps, index):
    """EulerSampler's step `index` of `num_steps` (a fresh sampler finds its place from the timestep)."""
    from ..samplers import EulerSampler

    sampler = _sd_sampler(EulerSampler, num_steps)
    return sampler.step(eps, sampler.timesteps[index], x), sampler


_ODE_STEP_COUNTS = (10, 25)  # the cases' runs: SD's schedule in 10 and in 25 steps


def _find_step(cls, sigma, sigma_next, sigma_prev=None):
    """(num_steps, index) of the step of one of the cases' runs of `cls` that goes from sigma to
    sigma_next (after sigma_prev, where given)."""
    for num_steps in _ODE_STEP_COUNTS:
        sigmas = [float(s) for s in _sd_sampler(cls, num_steps).sigmas]
        for index in range(num_steps):
            here = sigmas[index] == float(sigma) and sigmas[index + 1] == float(sigma_next)
            before = sigma_prev is None or (index > 0 and sigmas[index - 1] == float(sigma_prev))
            if here and before:
                return num_steps, index
    raise ValueError(f"no case's schedule steps from sigma={float(sigma)} to sigma_next={float(sigma_next)}")


def euler_step_reference(x, eps, sigma, sigma_next):
    """The course's EulerSampler, on the step of one of the cases' schedules that goes from sigma to sigma_next."""
    from ..samplers import EulerSampler

    return _euler_sampler_step(x, eps, *_find_step(EulerSampler, sigma, sigma_next))[0]


def _euler_cases():
    from ..samplers import EulerSampler

    g = torch.Generator().manual_seed(5)
    cases = []
    for num_steps, index, what in [(10, 0, "the first step, from sigma_max"), (10, 4, "a middle step"),
                                   (25, 12, "a middle step"), (10, 9, "the last step, to sigma = 0")]:
        sigmas = _sd_sampler(EulerSampler, num_steps).sigmas
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        eps = torch.randn(2, 4, 8, 8, generator=g)
        x = torch.randn(2, 4, 8, 8, generator=g) * (sigma**2 + 1) ** 0.5  # x = x_0 + sigma eps has about this size
        mine, sampler = _euler_sampler_step(x, eps, num_steps, index)
        twin = _twin_of(sampler)
        twin.scale_model_input(x, twin.timesteps[index])  # diffusers' Euler finds its step here
        theirs = twin.step(eps, twin.timesteps[index], x).prev_sample
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5), "EulerSampler no longer equals its twin"
        label = f"SD schedule, {num_steps} steps, {what}: sigma = {float(sigma):.4g} -> {float(sigma_next):.4g}"
        cases.append(Case(label, (x, eps, sigma, sigma_next)))
    return cases


def _euler_variant(how):
    def step(x, eps, sigma, sigma_next):
        if how == "backwards":
            return x + (sigma - sigma_next) * eps
        if how == "to_clean":
            return x - sigma * eps
        if how == "scaled_input":
            return x / (sigma**2 + 1) ** 0.5 + (sigma_next - sigma) * eps
        return x + (sigma_next**2 - sigma**2) * eps  # how == "variance"

    return step


check_euler_step = exercise_check(
    "euler_step",
    euler_step_reference,
    _euler_cases,
    mistakes={
        "the step points the wrong way: sigma falls, so x changes by (sigma_next - sigma) * eps": _euler_variant("backwards"),
        "the step went all the way to the clean image; it stops at sigma_next": _euler_variant("to_clean"),
        "x was scaled as the network's input is; the ODE moves x = x_0 + sigma eps itself": (
            _euler_variant("scaled_input")
        ),
        "the step was taken in sigma^2; the ODE's time is sigma itself": _euler_variant("variance"),
    },
    hints=[
        "Along x = x_0 + sigma eps, with x_0 and eps held fixed, x changes by eps for every unit of sigma: "
        "dx/dsigma = eps. Euler's method follows that slope for one step.",
        "The step goes from sigma to sigma_next, which is smaller: the change in sigma is negative.",
        "x_next = x + (sigma_next - sigma) * eps.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


def _dpm_sampler_step(x, x0, x0_prev, num_steps, index):
    """DPMSolverMultistepSampler's step `index`, fed x_0 itself (prediction_type "sample") and, before
    it, the step that predicted x0_prev; in sigma space: x_t = x / sqrt(sigma^2 + 1)."""
    from ..samplers import DPMSolverMultistepSampler

    sampler = _sd_sampler(DPMSolverMultistepSampler, num_steps, prediction_type="sample")
    if x0_prev is not None:
        sampler.step(x0_prev, sampler.timesteps[index - 1], torch.zeros_like(x))  # it remembers x0_prev
    sigma, sigma_next = sampler.sigmas[index], sampler.sigmas[index + 1]
    x_next_t = sampler.step(x0, sampler.timesteps[index], x / (sigma**2 + 1) ** 0.5)
    return x_next_t * (sigma_next**2 + 1) ** 0.5, sampler


def dpm_solver_2m_step_reference(x, x0, x0_prev, sigma_prev, sigma, sigma_next):
    """The course's DPMSolverMultistepSampler on the step of one of the cases' schedules from sigma to
    sigma_next (after sigma_prev), in sigma space."""
    from ..samplers import DPMSolverMultistepSampler

    return _dpm_sampler_step(x, x0, x0_prev, *_find_step(DPMSolverMultistepSampler, sigma, sigma_next, sigma_prev))[0]


def _dpm_cases():
    from ..samplers import DPMSolverMultistepSampler

    g = torch.Generator().manual_seed(6)
    cases = []
    for num_steps, index, what in [(10, 0, "the first step: no x0_prev yet"), (10, 1, "the second step"),
                                   (25, 7, "a middle step"), (25, 20, "a late step"),
                                   (10, 9, "the last step, to sigma = 0")]:
        sigmas = _sd_sampler(DPMSolverMultistepSampler, num_steps).sigmas
        sigma_prev = sigmas[index - 1] if index > 0 else None
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        x0 = torch.randn(2, 4, 8, 8, generator=g).clamp(-2, 2)
        x0_prev = x0 + 0.3 * torch.randn(2, 4, 8, 8, generator=g) if index > 0 else None  # close to x0, not equal
        x = x0 + sigma * torch.randn(2, 4, 8, 8, generator=g)
        mine, sampler = _dpm_sampler_step(x, x0, x0_prev, num_steps, index)
        twin = _twin_of(sampler)
        alpha = 1 / (sigma**2 + 1) ** 0.5
        if x0_prev is not None:
            twin.step(x0_prev, twin.timesteps[index - 1], torch.zeros_like(x))
        else:
            twin.set_begin_index(index)
        theirs = twin.step(x0, twin.timesteps[index], x * alpha).prev_sample * (sigma_next**2 + 1) ** 0.5
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4), "DPMSolverMultistepSampler no longer equals its twin"
        label = (f"SD schedule, {num_steps} steps, {what}: sigma = {float(sigma):.4g} -> {float(sigma_next):.4g}"
                 + (f" (after {float(sigma_prev):.4g})" if sigma_prev is not None else ""))
        cases.append(Case(label, (x, x0, x0_prev, sigma_prev, sigma, sigma_next)))
    return cases


def _dpm_variant(how):
    def step(x, x0, x0_prev, sigma_prev, sigma, sigma_next):
        if sigma_next == 0 and how != "corrected_last":
            return x0
        if x0_prev is None or how == "first_order":
            corrected = x0
        else:
            h = torch.log(sigma / sigma_next)
            h_prev = torch.log(sigma_prev / sigma)
            if how == "sigma_steps":
                h, h_prev = sigma - sigma_next, sigma_prev - sigma
            r = h / h_prev if how == "r_upside_down" else h_prev / h
            half = 1.0 if how == "no_half" else 0.5
            change = x0_prev - x0 if how == "sign" else x0 - x0_prev
            corrected = x0 + half / r * change
        ratio = sigma_next / sigma
        return ratio * x + (1 - ratio) * corrected

    return step


check_dpm_solver_2m_step = exercise_check(
    "dpm_solver_2m_step",
    dpm_solver_2m_step_reference,
    _dpm_cases,
    mistakes={
        "no second-order correction: after the first step D = x0 + (x0 - x0_prev) / (2 r), not x0 alone": (
            _dpm_variant("first_order")
        ),
        "r is upside down: r = h_prev / h, the last step's log-sigma change over this one's": (
            _dpm_variant("r_upside_down")
        ),
        "the correction lost its 1/2: D = x0 + (x0 - x0_prev) / (2 r)": _dpm_variant("no_half"),
        "the steps were measured in sigma; DPM-Solver measures them in log sigma, h = log(sigma / sigma_next)": (
            _dpm_variant("sigma_steps")
        ),
        "the correction points backwards: x_0 keeps changing the way it went, x0 - x0_prev": _dpm_variant("sign"),
        "the last step (sigma_next = 0) was corrected; there h is infinite and the step lands on x0 itself": (
            _dpm_variant("corrected_last")
        ),
    },
    hints=[
        "With x_0 held fixed, x = x_0 + sigma eps shrinks towards x_0 in proportion to sigma: from sigma to "
        "sigma_next, x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) x_0. That is DDIM, the first "
        "order step. The second order replaces x_0 by a better guess D of x_0 over the step.",
        "Measure steps in log sigma: h = log(sigma / sigma_next) for this step, h_prev = log(sigma_prev / sigma) "
        "for the last one, and r = h_prev / h. On the first step (x0_prev is None) and the last (sigma_next = 0) "
        "use D = x0.",
        "D = x0 + (x0 - x0_prev) / (2 * r), and x_next = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * D.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
