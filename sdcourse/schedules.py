"""Noise schedules and the forward (noising) process of DDPM.

A schedule is a list of betas: beta_t is the variance of the noise added at step t.

    alpha_t     = 1 - beta_t
    alpha_bar_t = alpha_1 * alpha_2 * ... * alpha_t          (how much signal is left)
    x_t         = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise
    SNR(t)      = alpha_bar_t / (1 - alpha_bar_t)

Schedules are computed in float64 and stored as float32, the dtype diffusers uses.
The names and arguments mirror diffusers' `DDPMScheduler`, so `NoiseSchedule.from_config(
scheduler.config)` works. diffusers computes its schedules in float32, which differs from
float64 in the last bits; `compute_dtype=torch.float32` reproduces its numbers exactly (the
samplers use this, so that whole sampling trajectories match diffusers'). `spaced_timesteps` picks
the training timesteps a sampler visits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sdcourse.arguments import whole_number

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
# Stable Diffusion's training schedule (SD 1.x and 2.x): the one place the course writes it down.
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
ALIASES = {"squaredcos_cap_v2": "cosine"}  # diffusers' name for the cosine schedule


def cosine_alpha_bar(t: float, offset: float = 0.008) -> float:
    """Nichol & Dhariwal's alpha-bar at t in [0, 1]: cos^2(((t + s) / (1 + s)) * pi / 2)."""
    return math.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2


def make_betas(
    num_train_timesteps, beta_schedule, beta_start, beta_end, max_beta=0.999, dtype=torch.float64
) -> torch.Tensor:
    """Betas for one of BETA_SCHEDULES, computed in `dtype` (float64, or float32 as diffusers does)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        # beta_t evenly spaced from beta_start to beta_end (DDPM's original schedule)
        return torch.linspace(beta_start, beta_end, T, dtype=dtype)
    if beta_schedule == "scaled_linear":
        # sqrt(beta_t) evenly spaced, then squared (Stable Diffusion's schedule)
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=dtype) ** 2
    # cosine: beta_t = 1 - alpha_bar(t+1) / alpha_bar(t), clipped at max_beta so the last step is finite
    betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=dtype)


class NoiseSchedule:
    """betas, alphas and alphas_cumprod for T training steps, plus add_noise and snr.

    The defaults are Stable Diffusion's schedule (`SD_SCHEDULE`), so `NoiseSchedule()` is SD's.
    compute_dtype: the dtype betas and alpha_bar are computed in before being stored as float32;
    torch.float32 gives diffusers' numbers bit for bit, float64 (the default) is more accurate.
    """

    def __init__(
        self,
        num_train_timesteps=SD_SCHEDULE["num_train_timesteps"],
        beta_schedule=SD_SCHEDULE["beta_schedule"],
        beta_start=SD_SCHEDULE["beta_start"],
        beta_end=SD_SCHEDULE["beta_end"],
        compute_dtype=torch.float64,
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        name = ALIASES.get(beta_schedule, beta_schedule)
        if name not in BETA_SCHEDULES:
            allowed = ", ".join(BETA_SCHEDULES + tuple(ALIASES))
            raise ValueError(f"beta_schedule={beta_schedule!r} is unknown; allowed: {allowed}")
        for arg, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0 < value < 1:
                raise ValueError(f"{arg}={value!r} is outside the allowed range (0, 1)")
        if name != "cosine" and beta_start > beta_end:
            raise ValueError(f"beta_start={beta_start} must not exceed beta_end={beta_end}")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype!r}")

        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = name
        self.beta_start, self.beta_end = beta_start, beta_end
        self.compute_dtype = compute_dtype

        betas = make_betas(num_train_timesteps, name, beta_start, beta_end, dtype=compute_dtype)
        alphas = 1.0 - betas
        self.betas = betas.float()
        self.alphas = alphas.float()
        self.alphas_cumprod = torch.cumprod(alphas, dim=0).float()

    @classmethod
    def from_config(cls, config) -> "NoiseSchedule":
        """Build from a diffusers scheduler config (or any dict with the same keys)."""
        if config.get("trained_betas") is not None:
            raise ValueError("config sets trained_betas; NoiseSchedule builds betas from beta_schedule only")
        keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
        return cls(**{k: config[k] for k in keys if k in config})

    def __repr__(self):
        return (
            f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end}"
            + (")" if self.compute_dtype == torch.float64 else f", compute_dtype={self.compute_dtype})")
        )

    def _timesteps(self, timesteps) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex():
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        timesteps = timesteps.long()
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= self.num_train_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got values from "
                f"{int(timesteps.min())} to {int(timesteps.max())}"
            )
        return timesteps

    def add_noise(self, original, noise, timesteps) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, one t per sample.

        original, noise: (batch, ...) of the same shape; timesteps: (batch,) integers
        (or a single integer for the whole batch).
        """
        for name, value in (("original", original), ("noise", noise)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}"
                                + ("; convert it with torch.from_numpy(...)" if isinstance(value, np.ndarray) else ""))
        if not original.is_floating_point():
            raise ValueError(f"original must be a floating-point tensor (images in [-1, 1]), got dtype {original.dtype}")
        if original.shape != noise.shape:
            raise ValueError(
                f"noise must have the shape of original: original {tuple(original.shape)}, noise {tuple(noise.shape)}"
            )
        timesteps = self._timesteps(timesteps).to(original.device)
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, original.shape[0])):
            raise ValueError(
                f"timesteps must be one integer or one per sample ({original.shape[0]}), got shape {tuple(timesteps.shape)}"
            )
        alpha_bar = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps]
        # broadcast (batch,) over the remaining dimensions: (batch, 1, 1, 1)
        alpha_bar = alpha_bar.reshape(-1, *([1] * (original.ndim - 1)))
        return alpha_bar.sqrt() * original + (1 - alpha_bar).sqrt() * noise

    def snr(self, timesteps) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), as float64 for accuracy near t=0."""
        alpha_bar = self.alphas_cumprod.double()[self._timesteps(timesteps)]
        return alpha_bar / (1 - alpha_bar)


def check_num_inference_steps(num_inference_steps, num_train_timesteps) -> int:
    """Return num_inference_steps as an int, or raise a ValueError that says what is wrong."""
    steps = whole_number("num_inference_steps", num_inference_steps, minimum=1)  # any integer type
    if steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={steps} is more than num_train_timesteps={num_train_timesteps}: "
            "the model was trained on that many noise levels only"
        )
    return steps


def spaced_timesteps(n, num_train_timesteps, spacing, steps_offset, round_linspace=True) -> np.ndarray:
    """n training timesteps to visit, highest first, spaced as diffusers spaces them (float64 numpy).

    With T = num_train_timesteps:
        linspace: n points evenly spread over [0, T - 1], both ends included (rounded, unless
                  round_linspace is False as in the Euler samplers),
        leading:  0, T//n, 2 T//n, ...: starts at 0 and never reaches T - 1; then + steps_offset,
        trailing: T - 1, T - 1 - T/n, ... (rounded): ends near T - 1, reaches 0 only when n = T.
    """
    T = num_train_timesteps
    if spacing == "linspace":
        steps = np.linspace(0, T - 1, n)
        return (steps.round() if round_linspace else steps)[::-1].copy()
    if spacing == "leading":
        return (np.arange(n) * (T // n))[::-1].astype(np.float64) + steps_offset
    return np.round(np.arange(T, 0, -T / n)) - 1
