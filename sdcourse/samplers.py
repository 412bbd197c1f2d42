"""Samplers: the loop that turns noise into a picture, one step at a time.

Each sampler is written from scratch and reproduces a diffusers scheduler, its "twin":

    DDPMSampler                DDPMScheduler
    DDIMSampler                DDIMScheduler                     (eta in [0, 1])
    EulerSampler               EulerDiscreteScheduler
    EulerAncestralSampler      EulerAncestralDiscreteScheduler
    DPMSolverMultistepSampler  DPMSolverMultistepScheduler       (DPM-Solver++ 2M)
    PLMSSampler                PNDMScheduler                     (skip_prk_steps=True, SD 1.x's default)

They all have the interface diffusers' pipelines use:

    sampler = EulerSampler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(30)
    x = torch.randn(shape, generator=g) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        eps = unet(sampler.scale_model_input(x, t), t, context)
        x = sampler.step(eps, t, x, generator=g)
        # sampler.last_x0 is the clean image the model sees at this step

Notation. alpha_bar_t (`alphas_cumprod[t]`) is how much signal is left at training step t:

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps

The network predicts one of: eps ("epsilon"), x_0 ("sample"), or
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 ("v_prediction"). Either way the sampler
first turns it into a guess of x_0 (`last_x0`), then moves x_t a little towards it.
Euler and DPM-Solver use the noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)
instead of t: x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps.

Each sampler works on its own variable, sample = alpha x_0 + sigma eps (x_t itself for DDPM, DDIM
and DPM-Solver; x = x_0 + sigma eps for Euler). `predicted_x0` turns any prediction into x_0 in
that variable, and `sampler.add_noise` (as diffusers' schedulers have it) goes the other way.

Where diffusers does something surprising (DDIM's step size, Euler's starting noise with
"leading" timesteps, PLMS's first step, which calls the network twice), the sampler does the
same and says so: to check a sampler against its twin, it must match the twin exactly.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from sdcourse.arguments import probability
from sdcourse.schedules import NoiseSchedule, check_num_inference_steps, spaced_timesteps
from sdcourse.weights import read_config

# Config fields that belong to other diffusers schedulers. diffusers keeps them in the config
# when it builds one scheduler from another's config (Stable Diffusion ships a PNDMScheduler
# config, so `EulerDiscreteScheduler.from_config(pipe.scheduler.config).config` still holds
# them). A twin that does not have such a field ignores it, so it cannot change any result.
CARRIED_FIELDS = ("skip_prk_steps", "set_alpha_to_one", "clip_sample")

# The schedule fields every twin reads, with diffusers' defaults.
SCHEDULE_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
SPACINGS = ("leading", "trailing", "linspace")

# Fields every twin has, for features the course does not implement: only the default is accepted.
FIXED_EVERYWHERE = {"trained_betas": (None,), "rescale_betas_zero_snr": (False,)}
THRESHOLDING = {"thresholding": (False,), "dynamic_thresholding_ratio": (0.995,), "sample_max_value": (1.0,)}
# Euler and DPM-Solver: sigma schedules other than the training one
OTHER_SIGMAS = {"use_karras_sigmas": (False,), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,)}


def randn_like_diffusers(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise, drawn the way diffusers' `randn_tensor` draws it.

    The same generator then gives the same numbers as diffusers: a CPU generator draws on the
    CPU (the noise is then moved to `device`); a list of generators draws one sample of shape
    (1, ...) from each, in batch order.
    """
    device = torch.device(device or "cpu")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: give one per sample")
        first = generator[0]
        draw_on = "cpu" if first.device.type == "cpu" else device
        noise = [torch.randn((1, *shape[1:]), generator=g, device=draw_on, dtype=dtype) for g in generator]
        return torch.cat(noise).to(device)
    draw_on = "cpu" if generator is not None and generator.device.type == "cpu" else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)


def predicted_x0(prediction_type, model_output, sample, alpha, sigma, variance=1.0):
    """The model's guess of x_0, from its output at `sample` = alpha x_0 + sigma eps.

    variance = alpha^2 + sigma^2 (1 for x_t; sigma^2 + 1 for Euler's x = x_0 + sigma eps). The v
    a model predicts belongs to the sample scaled to variance 1 (x_t): v = (alpha eps - sigma x_0) / sqrt(variance).
        epsilon:      x_0 = (sample - sigma eps) / alpha
        sample:       x_0 is the output
        v_prediction: x_0 = alpha sample / variance - sigma / sqrt(variance) v     (x_t: alpha x_t - sigma v)
    Each form is the twin's own arithmetic, so the result equals diffusers' to the last bit.
    """
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "sample":
        return model_output
    return alpha * sample / variance - sigma / variance**0.5 * model_output


def predicted_eps(prediction_type, model_output, sample, alpha, sigma):
    """The noise eps that goes with the model's output at x_t = alpha x_0 + sigma eps (alpha^2 + sigma^2 = 1).

        epsilon:      eps is the output
        sample:       eps = (x_t - alpha x_0) / sigma
        v_prediction: eps = alpha v + sigma x_t
    """
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    return alpha * model_output + sigma * sample


class Sampler:
    """What all samplers share: reading a config, the training schedule, and the timesteps.

    A subclass sets
        DEFAULTS: the config fields it reads, with its twin's defaults,
        CHOICES:  the accepted values of the fields among DEFAULTS that take one of a few,
        FIXED:    its twin's fields for features it does not implement (only the default works).
    """

    twin = ""  # the diffusers scheduler this sampler reproduces
    twin_settings: dict = {}  # config values the twin must have to be this sampler (PLMS: no PRK steps)
    DEFAULTS: dict = {}
    CHOICES: dict = {}
    FIXED: dict = {}
    init_noise_sigma = 1.0  # the starting noise is init_noise_sigma * N(0, 1)

    def __init__(self, **config):
        """Keyword arguments are the twin's config fields; missing ones take the twin's defaults."""
        name = type(self).__name__
        carried = tuple(f for f in CARRIED_FIELDS if f not in self.DEFAULTS and f not in self.FIXED)
        self.config = read_config(config, name, used=self.DEFAULTS, fixed=self.FIXED, bookkeeping=carried)
        for field, accepted in self.CHOICES.items():
            if self.config[field] not in accepted:
                allowed = " or ".join(repr(value) for value in accepted)
                raise ValueError(f"{name} config: {field}={self.config[field]!r} is not supported (only {allowed})")
        c = self.config
        self.num_train_timesteps = c["num_train_timesteps"]
        # The training schedule, computed in float32 like diffusers' schedulers, so every number
        # below is the twin's to the last bit.
        self.schedule = NoiseSchedule(
            c["num_train_timesteps"], c["beta_schedule"], c["beta_start"], c["beta_end"], compute_dtype=torch.float32
        )
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.num_inference_steps = None
        self.timesteps = None
        self.last_x0 = None  # the x_0 predicted by the last step

    @classmethod
    def from_config(cls, config, **overrides):
        """Build from the config of the diffusers twin (a dict or `scheduler.config`).

        The course's one rule for configs applies (`sdcourse.weights.read_config`): an unknown
        field, or a field for a feature this sampler lacks set away from its default, is an error.
        """
        return cls(**{**dict(config), **overrides})

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"

    def set_timesteps(self, num_inference_steps, device=None):
        """Choose the num_inference_steps timesteps to visit (`self.timesteps`, highest first)."""
        steps = check_num_inference_steps(num_inference_steps, self.num_train_timesteps)
        timesteps = self._make_timesteps(steps)
        self.num_inference_steps = steps
        self.timesteps = timesteps.to(device)
        self.last_x0 = None
        self._start()

    def _make_timesteps(self, n) -> torch.Tensor:
        """The timesteps for n steps (samplers that work in sigmas also set self.sigmas here)."""
        c = self.config
        return torch.from_numpy(spaced_timesteps(n, c["num_train_timesteps"], c["timestep_spacing"], c["steps_offset"]))

    def _start(self):
        """Reset what a sampler remembers between steps (subclasses that remember something)."""

    def _check_ready(self):
        if self.timesteps is None:
            raise RuntimeError(f"call set_timesteps(num_inference_steps) before using the {type(self).__name__}")

    def _position(self, t) -> int:
        """Where timestep t is in self.timesteps."""
        self._check_ready()
        t = t.item() if isinstance(t, torch.Tensor) and t.numel() == 1 else t
        found = (self.timesteps.cpu() == t).nonzero() if isinstance(t, numbers.Real) else []
        if len(found) == 0:
            first, last = self.timesteps[0].item(), self.timesteps[-1].item()
            raise ValueError(
                f"timestep {t} is not one of this sampler's {len(self.timesteps)} timesteps ({first} down to {last})"
            )
        return int(found[0])

    def _check_step(self, model_output, t, sample) -> int:
        """Check a step's inputs against the schedule set; returns t's place in `timesteps`."""
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch tensor, got {type(value).__name__}")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has "
                             f"{tuple(sample.shape)}: the model's prediction must have the sample's shape")
        return self._position(t)

    def scale_model_input(self, sample, t):
        """The network's input at timestep t: the sample itself (Euler samplers rescale it)."""
        return sample


class AlphaBarSampler(Sampler):
    """DDPM and DDIM: they work on x_t itself and read alpha_bar at each timestep, which must
    therefore be one the model was trained on. With clip_sample they clamp x_0 to
    [-clip_sample_range, clip_sample_range] (pixel models)."""

    DEFAULTS = {
        **SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }
    CHOICES = {"prediction_type": ("epsilon", "v_prediction", "sample"), "timestep_spacing": SPACINGS}

    def _make_timesteps(self, n):
        timesteps = super()._make_timesteps(n).long()
        if timesteps.max() > self.num_train_timesteps - 1:
            c = self.config
            raise ValueError(
                f"num_inference_steps={n} with timestep_spacing={c['timestep_spacing']!r} and steps_offset="
                f"{c['steps_offset']} would start at timestep {timesteps.max().item():g}, past the last one the "
                f"model was trained on ({self.num_train_timesteps - 1}); use fewer steps, or timestep_spacing="
                "'trailing'"
            )
        return timesteps

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """The forward process, as the twin's `add_noise`: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

        timesteps: training timesteps (integers), one per sample or one for all. This is the
        training schedule's `add_noise`, which casts alpha_bar to the samples' dtype first.
        """
        return self.schedule.add_noise(original_samples, noise, timesteps)

    @staticmethod
    def _scales(alpha_bar):
        """alpha and sigma of x_t = alpha x_0 + sigma eps: sqrt(alpha_bar) and sqrt(1 - alpha_bar)."""
        return alpha_bar**0.5, (1 - alpha_bar) ** 0.5

    def _clipped_x0(self, model_output, sample, alpha_bar):
        """The model's x_0 at x_t = `sample`, clipped if the config says so; it becomes `last_x0`."""
        c = self.config
        x0 = predicted_x0(c["prediction_type"], model_output, sample, *self._scales(alpha_bar))
        if c["clip_sample"]:
            x0 = x0.clamp(-c["clip_sample_range"], c["clip_sample_range"])
        self.last_x0 = x0
        return x0


class DDPMSampler(AlphaBarSampler):
    """DDPM (Ho et al., 2020): each step samples x_s from q(x_s | x_t, x_0), the model's x_0 plugged in.

    With s the timestep after t in `timesteps` (alpha_bar_s = 1 after the last one):
        alpha   = alpha_bar_t / alpha_bar_s,   beta = 1 - alpha       (one jump from s to t)
        mean    = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) * x_0
                + sqrt(alpha) (1 - alpha_bar_s) / (1 - alpha_bar_t) * x_t
        var     = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta         ("fixed_small" variance)
        x_s     = mean + sqrt(var) * noise                             (no noise at t = 0)
    """

    twin = "DDPMScheduler"
    FIXED = {**FIXED_EVERYWHERE, **THRESHOLDING, "variance_type": ("fixed_small",)}

    def step(self, model_output, t, sample, generator=None):
        """x_{t} -> x_{s}, the sample at the next timestep. Sets `last_x0`."""
        i = self._check_step(model_output, t, sample)
        t = int(self.timesteps[i])
        s = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_s = self.alphas_cumprod[s] if s >= 0 else torch.tensor(1.0)
        x0 = self._clipped_x0(model_output, sample, alpha_bar_t)

        alpha = alpha_bar_t / alpha_bar_s
        beta = 1 - alpha
        # mean = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) x_0 + sqrt(alpha) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
        x0_weight = (alpha_bar_s**0.5 * beta) / (1 - alpha_bar_t)
        xt_weight = alpha**0.5 * (1 - alpha_bar_s) / (1 - alpha_bar_t)
        mean = x0_weight * x0 + xt_weight * sample
        if t == 0:
            return mean
        # var = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta, kept above 0 for the square root
        var = torch.clamp((1 - alpha_bar_s) / (1 - alpha_bar_t) * beta, min=1e-20)
        noise = randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype)
        return mean + var**0.5 * noise


class DDIMSampler(AlphaBarSampler):
    """DDIM (Song et al., 2021): jump from x_t straight to x_s, keeping the predicted noise.

        x_0, eps = the model's guesses at t
        sigma    = eta * sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s))
        x_s      = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma * noise
    eta = 0 adds no noise (deterministic); eta = 1 adds as much as DDPM does.
    After the last timestep alpha_bar_s is 1 (set_alpha_to_one=True) or alpha_bar_0 (False, SD's).

    Like diffusers, s = t - num_train_timesteps // num_inference_steps whatever the spacing:
    with "linspace" or "trailing" timesteps, s is then not exactly the next timestep.
    """

    twin = "DDIMScheduler"
    DEFAULTS = {**AlphaBarSampler.DEFAULTS, "set_alpha_to_one": True}
    FIXED = {**FIXED_EVERYWHERE, **THRESHOLDING}

    def __init__(self, eta=0.0, **config):
        """eta: the default amount of fresh noise per step (see `step`), 0 for plain DDIM."""
        super().__init__(**config)
        self.eta = check_eta(eta)
        self.final_alpha_bar = torch.tensor(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def step(self, model_output, t, sample, eta=None, generator=None):
        """x_t -> x_s, with eta in [0, 1] (None: the sampler's `eta`). Sets `last_x0`."""
        t = int(self.timesteps[self._check_step(model_output, t, sample)])
        eta = self.eta if eta is None else check_eta(eta)
        s = t - self.num_train_timesteps // self.num_inference_steps
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_s = self.alphas_cumprod[s] if s >= 0 else self.final_alpha_bar
        x0 = self._clipped_x0(model_output, sample, alpha_bar_t)
        # the noise the model sees, from its own x_0 (before clipping, as diffusers does)
        eps = predicted_eps(self.config["prediction_type"], model_output, sample, *self._scales(alpha_bar_t))

        # sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_s))
        sigma = eta * ((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)) ** 0.5
        # x_s = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s - sigma^2) eps  (+ sigma noise)
        prev = alpha_bar_s**0.5 * x0 + (1 - alpha_bar_s - sigma**2) ** 0.5 * eps
        if eta > 0:
            noise = randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + sigma * noise
        return prev


def check_eta(eta) -> float:
    """Return eta as a float, or raise a ValueError unless it is a number in [0, 1]."""
    return probability("eta", eta, meaning="0: plain DDIM, 1: as much noise as DDPM")


class SigmaSampler(Sampler):
    """Samplers that work in noise levels sigma (Euler, Euler ancestral, DPM-Solver).

    `sigmas` holds sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) at each timestep (interpolated
    where a timestep is fractional, as Euler's "linspace" ones are), then a last one: 0 (the clean
    image) or, with final_sigmas_type "sigma_min", the smallest training sigma. These samplers
    count their steps (`step_index`) instead of looking each timestep up, as their twins do. A
    subclass says what its variable is made of: `_scales(sigma)` gives alpha and sigma in
    alpha x_0 + sigma eps.
    """

    def __init__(self, **config):
        super().__init__(**config)
        self.sigmas = None
        self.step_index = None  # which step comes next

    def _sigma_table(self, timesteps: np.ndarray) -> torch.Tensor:
        """The sigmas at `timesteps`, then the last one (float32, as the twins store them)."""
        all_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()  # every training t
        sigmas = np.interp(timesteps, np.arange(len(all_sigmas)), all_sigmas)
        last = 0.0 if self.config.get("final_sigmas_type", "zero") == "zero" else all_sigmas[0]
        return torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))

    def _start(self):
        self.step_index = None

    def _index(self, t) -> int:
        """The step t is: found on the first step, counted afterwards; t must be the next timestep."""
        if self.step_index is None:
            self.step_index = self._position(t)
        i, n = self.step_index, len(self.timesteps)
        if i == n:
            raise ValueError(f"the {n} steps of this sampler's schedule are all done; call set_timesteps to "
                             "sample again")
        if self._position(t) != i:
            raise ValueError(f"timestep {float(t):g} is not the next one of the schedule: step {i + 1} of {n} is at "
                             f"t = {self.timesteps[i].item():g}; call set_timesteps to start again")
        return i

    def _check_step(self, model_output, t, sample) -> int:
        super()._check_step(model_output, t, sample)
        return self._index(t)

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """The forward process, as the twin's `add_noise`: alpha x_0 + sigma noise in this sampler's variable.

        timesteps: one per sample or one for all, each one of `self.timesteps`; its sigma is cast
        to the samples' dtype first.
        """
        positions = [self._position(t) for t in torch.as_tensor(timesteps).reshape(-1)]
        sigma = self.sigmas.to(original_samples.device, original_samples.dtype)[positions]
        alpha, sigma = self._scales(sigma.reshape(-1, *[1] * (original_samples.ndim - 1)))
        return alpha * original_samples + sigma * noise


class EulerSampler(SigmaSampler):
    """Euler's method on the sampling ODE, in noise levels sigma (Karras et al., 2022).

    Work with x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps. As sigma falls, x moves along
        dx / dsigma = (x - x_0) / sigma                  (= eps, the predicted noise)
    and one Euler step from sigma to the next noise level sigma_next is
        x_next = x + (sigma_next - sigma) * (x - x_0) / sigma
    The network was trained on x_t = x / sqrt(sigma^2 + 1): `scale_model_input` does that division.
    The starting noise is sigma_max N(0, 1); for "leading" timesteps diffusers uses
    sqrt(sigma_max^2 + 1) instead, and so does this sampler.
    """

    twin = "EulerDiscreteScheduler"
    DEFAULTS = {
        **SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
    }
    CHOICES = {
        "prediction_type": ("epsilon", "v_prediction", "sample"),
        "timestep_spacing": SPACINGS,
        "final_sigmas_type": ("zero", "sigma_min"),
    }
    FIXED = {
        **FIXED_EVERYWHERE,
        **OTHER_SIGMAS,
        "interpolation_type": ("linear",),
        "sigma_min": (None,),
        "sigma_max": (None,),
        "timestep_type": ("discrete",),
    }

    def _make_timesteps(self, n):
        c = self.config
        timesteps = spaced_timesteps(n, c["num_train_timesteps"], c["timestep_spacing"], c["steps_offset"], False)
        timesteps = timesteps.astype(np.float32)
        self.sigmas = self._sigma_table(timesteps)
        return torch.from_numpy(timesteps)

    @property
    def init_noise_sigma(self):
        self._check_ready()
        sigma_max = self.sigmas.max()
        return sigma_max if self.config["timestep_spacing"] in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5

    @staticmethod
    def _scales(sigma):
        return 1.0, sigma  # x = x_0 + sigma eps

    def scale_model_input(self, sample, t):
        """x_t = x / sqrt(sigma^2 + 1): the network sees inputs of the scale it was trained on."""
        sigma = self.sigmas[self._index(t)]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(self, model_output, t, sample, generator=None):
        """x at sigma -> x at sigma_next (generator is unused: Euler adds no noise). Sets `last_x0`."""
        i = self._check_step(model_output, t, sample)
        return self._euler_step(model_output, sample, i, self.sigmas[i + 1]).to(model_output.dtype)

    def _euler_step(self, model_output, sample, i, sigma_to):
        """x at sigmas[i] -> x at sigma_to along dx/dsigma = (x - x_0) / sigma, in float32 as diffusers
        steps. Sets `last_x0` and counts the step."""
        sigma = self.sigmas[i]
        x = sample.to(torch.float32)
        alpha, sigma_x = self._scales(sigma)
        x0 = predicted_x0(self.config["prediction_type"], model_output, x, alpha, sigma_x, variance=sigma**2 + 1)
        self.last_x0 = x0
        self.step_index = i + 1
        derivative = (x - x0) / sigma  # dx/dsigma
        return x + derivative * (sigma_to - sigma)


class EulerAncestralSampler(EulerSampler):
    """Euler ancestral: an Euler step down to a lower noise level, then fresh noise back up.

    Going from sigma to sigma_next, split sigma_next^2 = sigma_down^2 + sigma_up^2 with
        sigma_up   = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
        sigma_down = sqrt(sigma_next^2 - sigma_up^2)
        x_next     = x + (sigma_down - sigma) * (x - x_0) / sigma  +  sigma_up * noise
    It draws noise at every step, the last one too (where sigma_up = 0), as diffusers does.
    """

    twin = "EulerAncestralDiscreteScheduler"
    DEFAULTS = {**SCHEDULE_DEFAULTS, "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0}
    CHOICES = {"prediction_type": ("epsilon", "v_prediction"), "timestep_spacing": SPACINGS}
    FIXED = FIXED_EVERYWHERE

    def step(self, model_output, t, sample, generator=None):
        """x at sigma -> x at sigma_next, with fresh noise from `generator`. Sets `last_x0`."""
        i = self._check_step(model_output, t, sample)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        prev = self._euler_step(model_output, sample, i, sigma_down)
        noise = randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype)
        return (prev + noise * sigma_up).to(model_output.dtype)


class DPMSolverMultistepSampler(SigmaSampler):
    """DPM-Solver++ 2M (Lu et al., 2022): a second-order solver that reuses the last step's x_0.

    Each noise level sigma gives alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha, and the
    log signal-to-noise ratio lambda = log(alpha) - log(sigma_t). From s (now) to t (next), with
    h = lambda_t - lambda_s:
        first order (= DDIM):  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x_0
        second order:          x_0 is replaced by D = x_0 + (x_0 - x_0_prev) / (2 r),
                               r = h_prev / h, x_0_prev the previous step's x_0 and h_prev its h.
    The first step has no previous x_0 and is first order. So is the last step when
    final_sigmas_type is "zero" (x_t is then exactly x_0), when euler_at_final is set, or when
    lower_order_final is set and there are fewer than 15 steps.
    """

    twin = "DPMSolverMultistepScheduler"
    DEFAULTS = {
        **SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "solver_order": 2,
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
    }
    CHOICES = {
        "prediction_type": ("epsilon", "v_prediction", "sample"),
        "timestep_spacing": SPACINGS,
        "solver_order": (1, 2),
        "final_sigmas_type": ("zero", "sigma_min"),
    }
    FIXED = {
        **FIXED_EVERYWHERE,
        **THRESHOLDING,
        **OTHER_SIGMAS,
        "algorithm_type": ("dpmsolver++",),
        "solver_type": ("midpoint",),
        "use_lu_lambdas": (False,),
        "use_flow_sigmas": (False,),
        "flow_shift": (1.0,),
        "lambda_min_clipped": (-math.inf,),
        "variance_type": (None,),
        "use_dynamic_shifting": (False,),
        "time_shift_type": ("exponential",),
    }

    def __init__(self, **config):
        super().__init__(**config)
        self.previous_x0 = None

    def _make_timesteps(self, n):
        c = self.config
        T = c["num_train_timesteps"]
        # DPM-Solver spaces n + 1 points and drops the last (t = 0) for "linspace" and "leading"
        if c["timestep_spacing"] == "linspace":
            timesteps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif c["timestep_spacing"] == "leading":
            timesteps = (np.arange(n + 1) * (T // (n + 1)))[::-1][:-1] + c["steps_offset"]
        else:
            timesteps = spaced_timesteps(n, T, "trailing", 0)
        self.sigmas = self._sigma_table(timesteps)
        return torch.from_numpy(timesteps.astype(np.int64))

    def _start(self):
        super()._start()
        self.previous_x0 = None

    @staticmethod
    def _scales(sigma):
        alpha = 1 / ((sigma**2 + 1) ** 0.5)  # sqrt(alpha_bar)
        return alpha, sigma * alpha  # and sqrt(1 - alpha_bar): x_t = alpha x_0 + sigma_t eps

    def _log_snr(self, sigma):
        """lambda = log(alpha) - log(sigma_t), the log signal-to-noise ratio at noise level sigma."""
        alpha, sigma_t = self._scales(sigma)
        return torch.log(alpha) - torch.log(sigma_t)

    def step(self, model_output, t, sample, generator=None):
        """x_s -> x_t, the next timestep (generator is unused: no noise). Sets `last_x0`."""
        i, n, c = self._check_step(model_output, t, sample), len(self.timesteps), self.config

        alpha_s, sigma_s = self._scales(self.sigmas[i])
        alpha_t, sigma_t = self._scales(self.sigmas[i + 1])
        x0 = predicted_x0(c["prediction_type"], model_output, sample, alpha_s, sigma_s)
        self.last_x0 = x0

        x = sample.to(torch.float32)
        lambda_s = self._log_snr(self.sigmas[i])
        h = self._log_snr(self.sigmas[i + 1]) - lambda_s
        plain_last = c["euler_at_final"] or c["final_sigmas_type"] == "zero" or (c["lower_order_final"] and n < 15)
        first_order = c["solver_order"] == 1 or self.previous_x0 is None or (i == n - 1 and plain_last)
        if first_order:
            # x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x_0
            prev = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        else:
            r = (lambda_s - self._log_snr(self.sigmas[i - 1])) / h  # h_prev / h
            D1 = (1.0 / r) * (x0 - self.previous_x0)  # x_0's change per unit of h
            # x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) (x_0 + D1 / 2)
            prev = (
                (sigma_t / sigma_s) * x
                - (alpha_t * (torch.exp(-h) - 1.0)) * x0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            )
        self.previous_x0 = x0
        self.step_index = i + 1
        return prev.to(model_output.dtype)


# Adams-Bashforth weights: with k noise predictions eps_1 (newest) ... eps_k, the multistep
# prediction is sum_j w_j eps_j. They extrapolate the polynomial through the last k predictions
# over the coming step; each row adds up to 1, so a constant prediction stays as it is.
ADAMS_BASHFORTH_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class PLMSSampler(AlphaBarSampler):
    """PLMS, the pseudo linear multistep method (Liu et al., 2022): DDIM steps, fed a noise
    prediction extrapolated from the last few, as Adams-Bashforth does.

    Every step moves x_t to x_s with the DDIM formula (eta = 0), s = t - num_train_timesteps //
    num_inference_steps:
        x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x_s = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) eps
    but eps is not the network's last output alone. With e_1 the newest prediction, e_2 the one
    before and so on, the step uses (`ADAMS_BASHFORTH_WEIGHTS`)
        1 known:  e_1                          3 known:  (23 e_1 - 16 e_2 + 5 e_3) / 12
        2 known:  (3 e_1 - e_2) / 2            4 known:  (55 e_1 - 59 e_2 + 37 e_3 - 9 e_4) / 24
    The first step has nothing to extrapolate from, so it is Heun-like and calls the network
    TWICE: call 1 at t_1 takes a plain DDIM step to t_2 and remembers x at t_1; call 2 at t_2
    goes back and redoes the step from the remembered x, with the mean of both predictions.
    The second call's prediction is used for that step only; the history holds call 1's.
    So `timesteps` repeats t_2: for 12 steps of SD's schedule (1000 training steps, "leading",
    steps_offset=1) it is 914, 831, 831, 748, ..., 1, 13 network calls for 12 steps. Each call
    is one `step`, and a pipeline's loop over `timesteps` needs nothing special.

    The sampler counts its calls, as diffusers' PNDMScheduler does: the second call of a run
    always redoes the step from t + num_train_timesteps // num_inference_steps down to its own t.
    After the last timestep alpha_bar_s is alpha_bar_0 (set_alpha_to_one=False, SD's) or 1.
    This is the twin with skip_prk_steps=True only (PNDM's Runge-Kutta warm-up is not written
    here), which is this sampler's default; diffusers' default is False.
    """

    twin = "PNDMScheduler"
    twin_settings = {"skip_prk_steps": True}
    DEFAULTS = {
        **SCHEDULE_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
    }
    CHOICES = {"prediction_type": ("epsilon", "v_prediction"), "timestep_spacing": SPACINGS,
               "skip_prk_steps": (True,)}
    FIXED = {"trained_betas": (None,)}

    def __init__(self, **config):
        super().__init__(**config)
        self.final_alpha_bar = torch.tensor(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._start()

    def _make_timesteps(self, n):
        spaced = super()._make_timesteps(n)  # t_1 > t_2 > ... > t_n
        # the first step calls the network at t_1, then again at t_2: t_2 appears twice
        return torch.cat([spaced[:1], spaced[1:2], spaced[1:]])

    def _start(self):
        self.calls = 0  # how many steps were taken since set_timesteps
        self.predictions = []  # the model outputs the extrapolation uses, oldest first (4 at most)
        self.first_sample = None  # x at the first timestep, for the second call to start again from

    def step(self, model_output, t, sample, generator=None):
        """One network call's step: x_t -> x_s (see the class). generator is unused: no noise.

        Sets `last_x0`, the x_0 of the prediction the step used."""
        t = int(self.timesteps[self._check_step(model_output, t, sample)])
        jump = self.num_train_timesteps // self.num_inference_steps
        if self.calls == 1:
            # the first step again, from the same start, with the mean of its two predictions
            start, t, s = self.first_sample, t + jump, t
            combined = (model_output + self.predictions[-1]) / 2
        else:
            start, s = sample, t - jump
            self.predictions = [*self.predictions[-3:], model_output]
            if self.calls == 0:
                self.first_sample = sample
            newest_first = self.predictions[::-1]
            weights = ADAMS_BASHFORTH_WEIGHTS[len(newest_first)]
            combined = sum(w * e for w, e in zip(weights, newest_first))
        self.calls += 1
        return self._ddim_step(combined, start, t, s)

    def _ddim_step(self, model_output, sample, t, s):
        """x_t -> x_s with eta = 0, from a model output (eps or v) at x_t. Sets `last_x0`.

        Put x_0 into x_s = sqrt(a_s) x_0 + sqrt(1 - a_s) eps (a = alpha_bar) and it reads
            x_s = sqrt(a_s / a_t) x_t + (sqrt(1 - a_s) - sqrt(a_s (1 - a_t) / a_t)) eps
        For a short jump (a_s close to a_t) the two terms of eps's weight nearly cancel, and
        their difference loses digits. Multiplied and divided by their sum, the weight becomes
            (a_t - a_s) / (a_t sqrt(1 - a_s) + sqrt(a_t a_s (1 - a_t)))
        (the PNDM paper's form), where the only subtraction, a_t - a_s, is exact in floating
        point for such close numbers. The step does not go through x_0, whose division by the
        small sqrt(a_t) of the noisiest timesteps would magnify rounding; x_0 is only reported.
        """
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_s = self.alphas_cumprod[s] if s >= 0 else self.final_alpha_bar
        alpha_t, sigma_t = self._scales(alpha_bar_t)
        eps = predicted_eps(self.config["prediction_type"], model_output, sample, alpha_t, sigma_t)
        self.last_x0 = (sample - sigma_t * eps) / alpha_t
        eps_weight = (alpha_bar_t - alpha_bar_s) / (
            alpha_bar_t * (1 - alpha_bar_s) ** 0.5 + (alpha_bar_t * alpha_bar_s * (1 - alpha_bar_t)) ** 0.5
        )
        return (alpha_bar_s / alpha_bar_t) ** 0.5 * sample + eps_weight * eps


SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_a": EulerAncestralSampler,
    "dpm++2m": DPMSolverMultistepSampler,
    "plms": PLMSSampler,
}


def make_sampler(name, config=None, **overrides) -> Sampler:
    """The sampler called `name` (a key of SAMPLERS), built from any diffusers scheduler's config.

    config: a dict or `scheduler.config`, of this sampler's twin or of another scheduler (a
    pipeline's PNDM or DDIM config, say); None gives the twin's defaults. Fields the twin does
    not have (DDIM's `clip_sample_range` for Euler) are dropped, and so are the fields the other
    scheduler only had at its own default (diffusers lists them in `_use_default_values`): they
    take this sampler's default. That is what diffusers' `from_config` does when it builds one
    scheduler from another's config. `Sampler.from_config`, for the twin's own config, keeps
    the strict rule: there an unknown field is an error.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    config = dict(config or {})
    known = {*cls.DEFAULTS, *cls.FIXED, *CARRIED_FIELDS} - set(config.get("_use_default_values", ()))
    config = {key: value for key, value in config.items() if key in known}
    return cls.from_config(config, **overrides)
