"""Every sampler equals its diffusers twin: timesteps, single steps, whole trajectories; and bad
input gets a clear error."""

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from sdcourse.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerAncestralSampler,
    EulerSampler,
    PLMSSampler,
    make_sampler,
    predicted_eps,
    predicted_x0,
)
from sdcourse.schedules import SD_SCHEDULE, NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")

TWINS = {
    DDPMSampler: DDPMScheduler,
    DDIMSampler: DDIMScheduler,
    EulerSampler: EulerDiscreteScheduler,
    EulerAncestralSampler: EulerAncestralDiscreteScheduler,
    DPMSolverMultistepSampler: DPMSolverMultistepScheduler,
    PLMSSampler: PNDMScheduler,
}
STOCHASTIC = (DDPMSampler, EulerAncestralSampler)  # and DDIM with eta > 0
# What a twin must be told beyond its defaults: PLMS is PNDM without its Runge-Kutta warm-up
TWIN_CHANGES = {PLMSSampler: {"skip_prk_steps": True}}


def sd_config(cls, **changes):
    """Stable Diffusion's sampling config, limited to the fields the twin has."""
    config = {**SD_SCHEDULE, "steps_offset": 1}
    if cls in (DDPMSampler, DDIMSampler):
        config["clip_sample"] = False
    if cls is DDIMSampler:
        config["set_alpha_to_one"] = False
    return {**config, **TWIN_CHANGES.get(cls, {}), **changes}


def config_grid():
    """(sampler class, config) pairs: the twin's defaults, SD's config, and SD's with each
    spacing, each prediction type, a cosine schedule and the sampler's own options changed."""
    grid = []
    for cls in TWINS:
        configs = {"defaults": TWIN_CHANGES.get(cls, {}), "sd": sd_config(cls), "cosine": sd_config(cls, beta_schedule="squaredcos_cap_v2")}
        for spacing in ("leading", "trailing", "linspace"):
            configs[spacing] = sd_config(cls, timestep_spacing=spacing)
        for prediction in cls.CHOICES["prediction_type"]:
            configs[prediction] = sd_config(cls, prediction_type=prediction, timestep_spacing="trailing")
        if cls in (DDPMSampler, DDIMSampler):
            configs["clipped"] = sd_config(cls, clip_sample=True, clip_sample_range=0.5)
        if cls is DDIMSampler:
            configs["alpha_to_one"] = sd_config(cls, set_alpha_to_one=True)
        if cls in (EulerSampler, DPMSolverMultistepSampler):
            configs["sigma_min"] = sd_config(cls, final_sigmas_type="sigma_min")
        if cls is DPMSolverMultistepSampler:
            configs["first_order"] = sd_config(cls, solver_order=1)
            configs["no_lower_order_final"] = sd_config(cls, final_sigmas_type="sigma_min", lower_order_final=False)
            configs["euler_at_final"] = sd_config(cls, final_sigmas_type="sigma_min", euler_at_final=True)
        grid += [pytest.param(cls, config, id=f"{cls.__name__}-{name}") for name, config in configs.items()]
    return grid


def pair(cls, config):
    library = TWINS[cls](**config)
    return cls.from_config(library.config), library


def denoiser(x, t):
    """A small deterministic stand-in for the U-Net: a smooth function of (x, t) of size ~1."""
    t = float(t)
    return torch.tanh(x * (0.3 + t / 2000)) + 0.1 * torch.sin(3 * x.flip(1) + t / 100)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def step_arguments(sampler, generator, eta):
    """eta for DDIM; the generator for every sampler but PLMS, whose twin takes none (it adds no noise)."""
    extra = {"eta": eta} if isinstance(sampler, (DDIMSampler, DDIMScheduler)) else {}
    if "generator" in inspect.signature(sampler.step).parameters and not isinstance(sampler, PNDMScheduler):
        extra["generator"] = generator
    return extra


def step_both(ours, library, model_output, t, sample, seed, eta):
    """One step of each from the same inputs and the same seed."""
    mine = ours.step(model_output, t, sample, **step_arguments(ours, seeded(seed), eta))
    theirs = library.step(model_output, t, sample, **step_arguments(library, seeded(seed), eta))
    return mine, theirs


def library_x0(library, output):
    """The twin's x_0 of the step; None for PNDM, which does not report one (see
    test_plms_first_step_is_ddims_and_reports_its_x0)."""
    if isinstance(library, DPMSolverMultistepScheduler):
        return library.model_outputs[-1]  # DPM-Solver++ keeps its x_0 predictions there
    if isinstance(library, PNDMScheduler):
        return None
    return output.pred_original_sample


@pytest.mark.parametrize("cls, config", config_grid())
def test_timesteps_and_input_scaling_equal_diffusers(cls, config):
    ours, library = pair(cls, config)
    for n in (1, 4, 10, 25, 50, 999):
        ours.set_timesteps(n)
        library.set_timesteps(n)
        assert ours.timesteps.dtype == library.timesteps.dtype, n
        assert torch.equal(ours.timesteps, library.timesteps), n
        if hasattr(ours, "sigmas"):
            assert torch.equal(ours.sigmas, library.sigmas), n
        assert torch.equal(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(library.init_noise_sigma)), n
        x = torch.randn(1, 4, 8, 8, generator=seeded(n))
        t = library.timesteps[n // 2]
        torch.testing.assert_close(ours.scale_model_input(x, t), library.scale_model_input(x, t), atol=0, rtol=0)


@pytest.mark.parametrize("cls, config", config_grid())
def test_one_step_equals_diffusers(cls, config):
    n = 10
    for eta in (0.0, 0.5, 1.0) if cls is DDIMSampler else (None,):
        for i in (0, 3, n - 1):  # the first step, one in the middle, the last
            ours, library = pair(cls, config)
            ours.set_timesteps(n)
            library.set_timesteps(n)
            t = library.timesteps[i]
            sigma = float(library.sigmas[i]) if hasattr(library, "sigmas") and cls is not DDPMSampler else 1.0
            sample = torch.randn(2, 4, 8, 8, generator=seeded(i)) * max(sigma, 1.0)
            model_output = torch.randn(2, 4, 8, 8, generator=seeded(100 + i))
            library.scale_model_input(sample, t)  # the Euler samplers find their step here
            ours.scale_model_input(sample, t)
            mine, theirs = step_both(ours, library, model_output, t, sample, seed=i, eta=eta)
            scale = max(1.0, theirs.prev_sample.abs().max().item())
            assert (mine - theirs.prev_sample).abs().max() <= 1e-6 * scale, (eta, i)
            if library_x0(library, theirs) is not None:
                assert (ours.last_x0 - library_x0(library, theirs)).abs().max() <= 1e-6 * scale, (eta, i)


def run(sampler, n, eta, seed=0, diffusers_output=False):
    """A whole sampling loop with `denoiser`; returns the final sample and every predicted x_0."""
    sampler.set_timesteps(n)
    generator = seeded(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator) * sampler.init_noise_sigma
    extra = step_arguments(sampler, generator, eta)
    x0s = []
    for t in sampler.timesteps:
        model_output = denoiser(sampler.scale_model_input(x, t), t)
        if diffusers_output:
            output = sampler.step(model_output, t, x, **extra)
            x = output.prev_sample
            x0s.append(library_x0(sampler, output))
        else:
            x = sampler.step(model_output, t, x, **extra)
            x0s.append(sampler.last_x0)
    return x, x0s


def relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("cls, config", config_grid())
def test_a_whole_trajectory_equals_diffusers(cls, config):
    for n, eta in [(10, 0.0), (25, 0.0)] + ([(10, 1.0), (25, 0.3)] if cls is DDIMSampler else []):
        ours, library = pair(cls, config)
        mine, my_x0s = run(ours, n, eta)
        theirs, their_x0s = run(library, n, eta, diffusers_output=True)
        assert relative_difference(mine, theirs) <= 1e-4, (n, eta)
        for step, (x0, expected) in enumerate(zip(my_x0s, their_x0s)):
            if expected is not None:
                assert relative_difference(x0, expected) <= 1e-4, (n, eta, step)


@pytest.mark.parametrize("cls", STOCHASTIC + (DDIMSampler,))
def test_stochastic_samplers_draw_the_noise_diffusers_draws(cls):
    """Same seed, same noise: a different seed changes the result, and a list of generators
    (one per sample) is used the way diffusers uses it."""
    ours, library = pair(cls, sd_config(cls))
    eta = 1.0
    mine, _ = run(ours, 10, eta, seed=0)
    assert relative_difference(mine, run(library, 10, eta, seed=0, diffusers_output=True)[0]) <= 1e-4
    assert relative_difference(run(ours, 10, eta, seed=1)[0], mine) > 1e-2

    ours.set_timesteps(10)
    library.set_timesteps(10)
    t = library.timesteps[2]
    sample, model_output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    extra = {"eta": eta} if cls is DDIMSampler else {}
    library.scale_model_input(sample, t)
    ours.scale_model_input(sample, t)
    mine = ours.step(model_output, t, sample, generator=[seeded(5), seeded(6)], **extra)
    theirs = library.step(model_output, t, sample, generator=[seeded(5), seeded(6)], **extra).prev_sample
    assert (mine - theirs).abs().max() <= 1e-6


ADD_NOISE_CONFIGS = [
    pytest.param(cls, config, id=f"{cls.__name__}-{name}")
    for cls in TWINS
    for name, config in {
        "sd": sd_config(cls),
        "trailing": sd_config(cls, timestep_spacing="trailing"),
        "linspace": sd_config(cls, timestep_spacing="linspace"),
        "sigma_min": sd_config(cls, final_sigmas_type="sigma_min") if "final_sigmas_type" in cls.DEFAULTS else None,
    }.items()
    if config is not None
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cls, config", ADD_NOISE_CONFIGS)
def test_add_noise_equals_diffusers(cls, config, dtype):
    """One timestep per sample, or one for the whole batch, at any of the sampler's timesteps: the
    twin's add_noise to the last bit, in the samples' dtype."""
    ours, library = pair(cls, config)
    n = 10
    ours.set_timesteps(n)
    library.set_timesteps(n)
    x0 = torch.randn(n, 4, 8, 8, generator=seeded(0)).to(dtype)
    noise = torch.randn(n, 4, 8, 8, generator=seeded(1)).to(dtype)
    shuffled = library.timesteps[torch.randperm(n, generator=seeded(2))]
    for timesteps in (shuffled, library.timesteps[3:4], library.timesteps[-1:]):
        mine, theirs = ours.add_noise(x0, noise, timesteps), library.add_noise(x0, noise, timesteps)
        assert mine.dtype == theirs.dtype == dtype
        assert torch.equal(mine, theirs), timesteps


def add_noise_by_index(sampler, x0, noise, index):
    """The pipeline's forward process before the samplers had add_noise: the reference."""
    if isinstance(sampler, (EulerSampler, DPMSolverMultistepSampler)):
        sigma = sampler.sigmas.to(x0.device, x0.dtype)[index]
        if isinstance(sampler, EulerSampler):
            return x0 + noise * sigma
        alpha = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha
        return alpha * x0 + sigma_t * noise
    alpha_bar = sampler.alphas_cumprod.to(x0.device, x0.dtype)[int(sampler.timesteps[index])]
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cls, config", ADD_NOISE_CONFIGS)
def test_add_noise_at_a_step_equals_the_pipelines_former_formula(cls, config, dtype):
    sampler = cls.from_config(config)
    sampler.set_timesteps(25)
    x0 = torch.randn(2, 4, 8, 8, generator=seeded(0)).to(dtype)
    noise = torch.randn(2, 4, 8, 8, generator=seeded(1)).to(dtype)
    for index in range(25):
        noised = sampler.add_noise(x0, noise, sampler.timesteps[index : index + 1])
        assert torch.equal(noised, add_noise_by_index(sampler, x0, noise, index)), index


@pytest.mark.parametrize("cls", [EulerSampler, EulerAncestralSampler, DPMSolverMultistepSampler])
def test_add_noise_in_sigmas_needs_one_of_the_samplers_timesteps(cls):
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(RuntimeError, match=r"call set_timesteps"):
        cls().add_noise(x, x, torch.tensor([999]))
    sampler = cls()
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep 3 is not one of this sampler's 10 timesteps"):
        sampler.add_noise(x, x, torch.tensor([3]))


def test_x0_eps_and_v_convert_into_each_other():
    """x_0 back from each kind of prediction, in x_t (alpha^2 + sigma^2 = 1) and in Euler's
    x = x_0 + sigma eps; and eps back from each, in x_t."""
    x0, eps = torch.randn(2, 4, 8, 8, generator=seeded(0)), torch.randn(2, 4, 8, 8, generator=seeded(1))
    for sigma_euler in (0.1, 1.0, 14.6):
        sigma_euler = torch.tensor(sigma_euler)
        alpha_t, sigma_t = 1 / (sigma_euler**2 + 1) ** 0.5, sigma_euler / (sigma_euler**2 + 1) ** 0.5
        v = alpha_t * eps - sigma_t * x0
        outputs = {"epsilon": eps, "sample": x0, "v_prediction": v}
        x_t, x = alpha_t * x0 + sigma_t * eps, x0 + sigma_euler * eps
        for kind, output in outputs.items():
            torch.testing.assert_close(predicted_x0(kind, output, x_t, alpha_t, sigma_t), x0, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(predicted_eps(kind, output, x_t, alpha_t, sigma_t), eps, atol=1e-4, rtol=1e-4)
            euler = predicted_x0(kind, output, x, 1.0, sigma_euler, variance=sigma_euler**2 + 1)
            torch.testing.assert_close(euler, x0, atol=1e-4, rtol=1e-4)


def assert_each_step_equals_the_twins(cls, changes, n):
    """Fed the twin's own sample at every call of an n-step run, each step of `cls` (SD's config
    with `changes`) equals the twin's, to float32 rounding of the sample's size."""
    ours, library = pair(cls, sd_config(cls, **changes))
    ours.set_timesteps(n)
    library.set_timesteps(n)
    x = torch.randn(2, 4, 8, 8, generator=seeded(n))
    for t in library.timesteps:
        model_output = denoiser(x, t)
        expected = library.step(model_output, t, x).prev_sample
        assert (ours.step(model_output, t, x) - expected).abs().max() <= 1e-6 * max(1.0, expected.abs().max().item())
        x = expected


DPM_HISTORY = {
    "sd": {},
    "sigma_min": {"final_sigmas_type": "sigma_min"},
    "sigma_min_no_lower_order_final": {"final_sigmas_type": "sigma_min", "lower_order_final": False},
    "sigma_min_euler_at_final": {"final_sigmas_type": "sigma_min", "euler_at_final": True},
    "v_prediction": {"prediction_type": "v_prediction"},
}


@pytest.mark.parametrize("n", [2, 5, 14, 15, 20])
@pytest.mark.parametrize("changes", DPM_HISTORY.values(), ids=DPM_HISTORY.keys())
def test_dpm_solver_steps_equal_diffusers_across_its_history(n, changes):
    """Fed diffusers' own sample at every step, each step of DPM-Solver++ 2M (the first-order
    first step, the second-order steps that use the previous x_0, and the final step, first
    or second order) equals the twin's."""
    assert_each_step_equals_the_twins(DPMSolverMultistepSampler, changes, n)


def test_dpm_solver_second_order_steps_differ_from_first_order_ones():
    """The history matters: after the first step, 2M and first-order DPM-Solver++ part ways."""
    second, _ = run(DPMSolverMultistepSampler(**sd_config(DPMSolverMultistepSampler)), 10, None)
    first, _ = run(DPMSolverMultistepSampler(**sd_config(DPMSolverMultistepSampler, solver_order=1)), 10, None)
    assert relative_difference(second, first) > 1e-3


PLMS_CONFIGS = {
    "sd": {},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "v_prediction": {"prediction_type": "v_prediction"},
    "alpha_to_one": {"set_alpha_to_one": True},
}


def test_plms_repeats_the_second_timestep_for_its_two_call_first_step():
    """SD's schedule with 12 steps: 13 U-Net calls, 831 twice, as diffusers' PNDMScheduler has them."""
    ours, library = pair(PLMSSampler, sd_config(PLMSSampler))
    ours.set_timesteps(12)
    library.set_timesteps(12)
    assert ours.timesteps.tolist() == [914, 831, 831] + list(range(748, 0, -83))
    assert torch.equal(ours.timesteps, library.timesteps)
    ours.set_timesteps(1)
    assert ours.timesteps.tolist() == [1]  # one step: one call, nothing to redo


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 12])
@pytest.mark.parametrize("changes", PLMS_CONFIGS.values(), ids=PLMS_CONFIGS.keys())
def test_plms_steps_equal_diffusers_across_its_history(n, changes):
    """Fed diffusers' own sample at every call, each call of PLMS equals PNDMScheduler's: the
    first step's two calls, then the multistep ones with 2, 3 and 4 predictions."""
    assert_each_step_equals_the_twins(PLMSSampler, changes, n)


def test_plms_first_step_is_ddims_and_reports_its_x0():
    """Call 1 is a DDIM step with the network's prediction; call 2 redoes it from the same start
    with the mean of both predictions. DDIM (eta 0) says what each should give, x_0 included."""
    ours = PLMSSampler(**sd_config(PLMSSampler))
    ddim = DDIMScheduler(**sd_config(DDIMSampler))
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    first, second = ours.timesteps[0], ours.timesteps[1]
    start = torch.randn(2, 4, 8, 8, generator=seeded(0))
    eps_1, eps_2 = denoiser(start, first), torch.randn(2, 4, 8, 8, generator=seeded(1))

    moved = ours.step(eps_1, first, start)
    expected = ddim.step(eps_1, first, start)
    torch.testing.assert_close(moved, expected.prev_sample, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.last_x0, expected.pred_original_sample, atol=1e-6, rtol=1e-6)

    redone = ours.step(eps_2, second, moved)  # `moved` is not used: the step starts again from `start`
    expected = ddim.step((eps_1 + eps_2) / 2, first, start)
    torch.testing.assert_close(redone, expected.prev_sample, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.last_x0, expected.pred_original_sample, atol=1e-6, rtol=1e-6)


def test_plms_multistep_predictions_differ_from_ddims():
    """The history matters: PLMS and DDIM part ways after the first step."""
    plms, _ = run(PLMSSampler(**sd_config(PLMSSampler)), 10, None)
    ddim, _ = run(DDIMSampler(**sd_config(DDIMSampler)), 10, 0.0)
    assert relative_difference(plms, ddim) > 1e-3


def test_plms_refuses_a_timestep_outside_its_schedule():
    sampler = PLMSSampler(**sd_config(PLMSSampler))
    sampler.set_timesteps(12)
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"timestep 900 is not one of this sampler's 13 timesteps \(914 down to 1\)"):
        sampler.step(x, 900, x)


def test_the_sd_pipeline_config_carried_over_by_diffusers_is_accepted():
    """SD 1.x ships a PNDMScheduler config; diffusers keeps its extra fields (skip_prk_steps,
    set_alpha_to_one, clip_sample) when it builds another scheduler from it."""
    shipped = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        **SD_SCHEDULE,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }
    pndm = PNDMScheduler.from_config(shipped)
    for name, cls in SAMPLERS.items():
        library = TWINS[cls].from_config(pndm.config)
        for sampler in (cls.from_config(library.config), make_sampler(name, library.config)):
            sampler.set_timesteps(20)
            library.set_timesteps(20)
            assert torch.equal(sampler.timesteps, library.timesteps), name


def test_from_config_takes_a_dict_and_fills_in_the_twins_defaults():
    sampler = DDIMSampler.from_config({"beta_schedule": "scaled_linear"})
    assert sampler.config["timestep_spacing"] == DDIMScheduler().config.timestep_spacing == "leading"
    assert sampler.config["beta_schedule"] == "scaled_linear"
    assert DDIMSampler.from_config({}, eta=0.5).eta == 0.5
    torch.testing.assert_close(sampler.alphas_cumprod, DDIMScheduler(beta_schedule="scaled_linear").alphas_cumprod)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_samplers_schedule_is_diffusers_to_the_last_bit(beta_schedule):
    """NoiseSchedule(compute_dtype=torch.float32), which the samplers use, computes as diffusers does."""
    library = DDIMScheduler(beta_schedule=beta_schedule)
    sampler = DDIMSampler.from_config(library.config)
    assert torch.equal(sampler.schedule.betas, library.betas)
    assert torch.equal(sampler.alphas_cumprod, library.alphas_cumprod)
    with pytest.raises(ValueError, match=r"compute_dtype must be torch.float32 or torch.float64, got torch.float16"):
        NoiseSchedule(compute_dtype=torch.float16)


def test_make_sampler_builds_each_sampler_and_refuses_unknown_names():
    for name, cls in SAMPLERS.items():
        assert type(make_sampler(name, sd_config(cls))) is cls
    known = r"known samplers: ddpm, ddim, euler, euler_a, dpm\+\+2m, plms"
    with pytest.raises(ValueError, match=rf"unknown sampler 'pndm'; {known}"):
        make_sampler("pndm")


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("source", [DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler])
def test_make_sampler_takes_another_schedulers_config_as_diffusers_does(name, source):
    """Switching samplers on a pipeline: fields the twin lacks (clip_sample_range,
    thresholding, solver_order, ...) are dropped, as diffusers' from_config drops them."""
    other = source(**SD_SCHEDULE, steps_offset=1).config
    sampler = make_sampler(name, other)
    library = TWINS[type(sampler)].from_config(other, **TWIN_CHANGES.get(type(sampler), {}))
    sampler.set_timesteps(20)
    library.set_timesteps(20)
    assert torch.equal(sampler.timesteps.to(library.timesteps.dtype), library.timesteps)
    with pytest.raises(ValueError, match="unknown fields"):  # asked for by name, a wrong field is still an error
        make_sampler(name, other, clip_sampel=True)


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler])
def test_a_leading_spacing_that_would_pass_the_last_timestep_is_refused(cls):
    """SD's steps_offset=1 with "leading" spacing and 1000 steps would start at timestep 1000
    (diffusers' DDPM and DDIM schedulers then fail with an IndexError in their first step)."""
    sampler = cls(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading")
    with pytest.raises(ValueError, match=r"num_inference_steps=1000 .* timestep 1000, past .* \(999\)"):
        sampler.set_timesteps(1000)
    sampler.set_timesteps(500)
    assert sampler.timesteps[0] == 999


# Bad configs: each field for a missing feature, an unknown field, and unsupported values.
@pytest.mark.parametrize(
    "cls, changes, message",
    [
        (DDPMSampler, {"thresholding": True}, r"thresholding=True is not supported .*only False"),
        (DDPMSampler, {"variance_type": "fixed_large"}, r"variance_type='fixed_large' .*only 'fixed_small'"),
        (DDIMSampler, {"trained_betas": [0.1, 0.2]}, r"trained_betas=\[0.1, 0.2\] is not supported"),
        (DDIMSampler, {"rescale_betas_zero_snr": True}, r"rescale_betas_zero_snr=True"),
        (DDIMSampler, {"dynamic_thresholding_ratio": 0.9}, r"dynamic_thresholding_ratio=0.9"),
        (EulerSampler, {"use_karras_sigmas": True}, r"use_karras_sigmas=True is not supported"),
        (EulerSampler, {"interpolation_type": "log_linear"}, r"interpolation_type='log_linear'"),
        (EulerSampler, {"timestep_type": "continuous"}, r"timestep_type='continuous'"),
        (DPMSolverMultistepSampler, {"algorithm_type": "sde-dpmsolver++"}, r"algorithm_type=.*only 'dpmsolver\+\+'"),
        (DPMSolverMultistepSampler, {"solver_type": "heun"}, r"solver_type='heun'"),
        (DPMSolverMultistepSampler, {"lambda_min_clipped": -5.1}, r"lambda_min_clipped=-5.1"),
        (DPMSolverMultistepSampler, {"solver_order": 3}, r"solver_order=3 is not supported \(only 1 or 2\)"),
        (DDIMSampler, {"timestep_spacing": "even"}, r"timestep_spacing='even' .*'leading' or 'trailing' or 'linspace'"),
        (EulerAncestralSampler, {"prediction_type": "sample"}, r"prediction_type='sample' .*only 'epsilon' or 'v_"),
        (EulerSampler, {"final_sigmas_type": "one"}, r"final_sigmas_type='one'"),
        (DDIMSampler, {"beta_schedule": "sigmoid"}, r"beta_schedule='sigmoid' is unknown"),
        (PLMSSampler, {"skip_prk_steps": False}, r"PLMSSampler config: skip_prk_steps=False is not supported \(only True\)"),
        (PLMSSampler, {"prediction_type": "sample"}, r"prediction_type='sample' .*only 'epsilon' or 'v_prediction'"),
        (PLMSSampler, {"trained_betas": [0.1]}, r"trained_betas=\[0.1\] is not supported"),
        (PLMSSampler, {"clip_sample_range": 2.0}, r"PLMSSampler config: unknown fields \['clip_sample_range'\]"),
        (DDIMSampler, {"use_karras_sigmas": False}, r"DDIMSampler config: unknown fields \['use_karras_sigmas'\]"),
        (EulerAncestralSampler, {"clip_sample_range": 2.0}, r"unknown fields \['clip_sample_range'\]"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(cls, changes, message):
    with pytest.raises(ValueError, match=message):
        cls.from_config({**sd_config(cls), **changes})


def test_fields_for_missing_features_are_accepted_at_their_defaults():
    for cls, twin in TWINS.items():
        cls.from_config(twin(**TWIN_CHANGES.get(cls, {})).config)  # every field present, at the twin's default


@pytest.mark.parametrize("cls", TWINS)
@pytest.mark.parametrize("steps", [0, -3, 2.5, 10.0, "10", None, True])
def test_num_inference_steps_must_be_a_positive_integer(cls, steps):
    with pytest.raises(ValueError, match=r"num_inference_steps must be (an integer|at least 1), got"):
        cls().set_timesteps(steps)


@pytest.mark.parametrize("cls", TWINS)
def test_num_inference_steps_may_be_any_integer_type_up_to_num_train_timesteps(cls):
    sampler = cls(num_train_timesteps=100)
    for steps in (np.int64(10), torch.tensor(10), 100):
        sampler.set_timesteps(steps)
        assert sampler.num_inference_steps == int(steps)
    with pytest.raises(ValueError, match=r"num_inference_steps=101 is more than num_train_timesteps=100"):
        sampler.set_timesteps(101)


@pytest.mark.parametrize("eta", [-0.1, 1.5, math.nan, "0.5", True])
def test_eta_must_lie_in_zero_one(eta):
    sampler = DDIMSampler()
    sampler.set_timesteps(10)
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        sampler.step(x, sampler.timesteps[0], x, eta=eta)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        DDIMSampler(eta=eta)


@pytest.mark.parametrize("cls", TWINS)
def test_step_before_set_timesteps_is_an_error(cls):
    x = torch.zeros(1, 4, 8, 8)
    message = rf"call set_timesteps\(num_inference_steps\) before using the {cls.__name__}"
    with pytest.raises(RuntimeError, match=message):
        cls().step(x, 999, x)


def test_euler_needs_set_timesteps_before_its_starting_noise():
    with pytest.raises(RuntimeError, match=r"call set_timesteps"):
        _ = EulerSampler().init_noise_sigma


@pytest.mark.parametrize("cls", [DDPMSampler, EulerSampler, DPMSolverMultistepSampler])
def test_a_timestep_that_is_not_in_the_schedule_is_an_error(cls):
    sampler = cls()
    sampler.set_timesteps(10)
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"timestep 3 is not one of this sampler's 10 timesteps"):
        sampler.step(x, 3, x)


def test_set_timesteps_starts_over():
    """A second set_timesteps forgets the step count and DPM-Solver's and PLMS's history."""
    for cls in (EulerSampler, DPMSolverMultistepSampler, PLMSSampler):
        sampler = cls(**sd_config(cls))
        first, _ = run(sampler, 10, None)
        again, _ = run(sampler, 10, None)
        assert torch.equal(first, again)


@pytest.mark.parametrize("cls", TWINS)
def test_a_model_output_of_another_shape_than_the_sample_is_an_error(cls):
    sampler = cls()
    sampler.set_timesteps(3)
    with pytest.raises(ValueError, match=r"model_output has shape \(1, 4, 4, 4\) but sample has \(1, 4, 8, 8\)"):
        sampler.step(torch.zeros(1, 4, 4, 4), sampler.timesteps[0], torch.zeros(1, 4, 8, 8))


def test_ddim_refuses_a_timestep_that_is_not_in_its_schedule():
    sampler = DDIMSampler()
    sampler.set_timesteps(3)  # 666, 333, 0
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"timestep 999 is not one of this sampler's 3 timesteps"):
        sampler.step(x, 999, x)


@pytest.mark.parametrize("cls", [EulerSampler, EulerAncestralSampler, DPMSolverMultistepSampler])
def test_a_step_past_the_schedule_or_out_of_order_is_an_error(cls):
    sampler = cls()
    sampler.set_timesteps(3)
    x = torch.zeros(1, 4, 8, 8)
    sampler.step(x, sampler.timesteps[0], x)
    with pytest.raises(ValueError, match=r"is not the next one of the schedule: step 2 of 3"):
        sampler.step(x, sampler.timesteps[0], x)
    for t in sampler.timesteps[1:]:
        sampler.step(x, t, x)
    with pytest.raises(ValueError, match=r"the 3 steps of this sampler's schedule are all done"):
        sampler.step(x, sampler.timesteps[-1], x)
