"""Checks for lesson 02: noise schedules and the forward process."""

from __future__ import annotations

import torch

from ..schedules import SD_SCHEDULE, NoiseSchedule
from .core import Case, exercise_check

__all__ = ["check_add_noise", "check_compare_schedules", "check_predictor_mse_by_bin", "check_vae_compression"]

SOLUTION_NOTEBOOK = "solutions/02_noise_schedules.ipynb"  # hint() points here after the last hint

# The beta range of each named schedule in the exercises: DDPM's for linear, Stable Diffusion's
# for scaled_linear; the cosine schedule has no beta range.
SCHEDULE_BETAS = {
    "linear": {"beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {"beta_start": SD_SCHEDULE["beta_start"], "beta_end": SD_SCHEDULE["beta_end"]},
    "cosine": {},
}


# ---- warm-up: add_noise ------------------------------------------------------------------


def add_noise_reference(x0, noise, alpha_bar_t):
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise
    return alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise


def _add_noise_cases():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g)
    return [
        Case("alpha_bar_t = 0.9 (early: mostly image)", (x0, noise, torch.tensor(0.9))),
        Case("alpha_bar_t = 0.05 (late: mostly noise)", (x0, noise, torch.tensor(0.05))),
        Case("alpha_bar_t = 1 (no noise at all)", (x0, noise, torch.tensor(1.0))),
        Case("one alpha_bar per sample, shape (2, 1, 1, 1)", (x0, noise, torch.tensor([0.7, 0.2]).reshape(2, 1, 1, 1))),
    ]


check_add_noise = exercise_check(
    "add_noise",
    add_noise_reference,
    _add_noise_cases,
    mistakes={
        "the square roots are missing: the weights are sqrt(alpha_bar) and sqrt(1 - alpha_bar)": lambda x0, n, a: (
            a * x0 + (1 - a) * n
        ),
        "the two weights are swapped: sqrt(alpha_bar) scales the image, sqrt(1 - alpha_bar) the noise": lambda x0, n, a: (
            (1 - a).sqrt() * x0 + a.sqrt() * n
        ),
        "the noise weight was written 1 - sqrt(alpha_bar) instead of sqrt(1 - alpha_bar)": lambda x0, n, a: (
            a.sqrt() * x0 + (1 - a.sqrt()) * n
        ),
        "only the image term has its square root; the noise weight needs one too": lambda x0, n, a: (
            a.sqrt() * x0 + (1 - a) * n
        ),
        "alpha_bar where sqrt(alpha_bar) belongs: the image's weight needs its square root too": lambda x0, n, a: (
            a * x0 + (1 - a).sqrt() * n
        ),
        "the noise was added without its weight sqrt(1 - alpha_bar)": lambda x0, n, a: a.sqrt() * x0 + n,
    },
    hints=[
        "x_t is a weighted sum of the image and the noise. The weights keep "
        "the variance at 1: their squares add up to 1.",
        "alpha_bar_t is the share of the image's variance that is left, and 1 - alpha_bar_t "
        "the noise's share. Each weight is the square root of a share.",
        "alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise. Broadcasting "
        "handles an alpha_bar_t of shape (batch, 1, 1, 1).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 1: a schedule comparator ---------------------------------------------------


def _first_index(mask: torch.Tensor):
    """The first index where mask is True, or None when it never is."""
    hits = mask.nonzero()
    return int(hits[0]) if len(hits) else None


def _summary(alpha_bar: torch.Tensor) -> dict:
    snr = alpha_bar.double() / (1 - alpha_bar.double())
    return {
        "t_0db": _first_index(snr <= 1),  # SNR <= 1 is SNR <= 0 dB, i.e. alpha_bar <= 0.5
        "alpha_bar_mid": float(alpha_bar[len(alpha_bar) // 2]),
        "t_1pct": _first_index(alpha_bar < 0.01),
    }


def compare_schedules_reference(names, T=1000):
    return {name: _summary(NoiseSchedule(T, name, **SCHEDULE_BETAS[name]).alphas_cumprod) for name in names}


def _compare_with(summary_of, T_override=None):
    """A wrong comparator that summarizes each schedule with `summary_of(schedule)`."""

    def compare(names, T=1000):
        steps = T_override or T
        return {name: summary_of(NoiseSchedule(steps, name, **SCHEDULE_BETAS[name])) for name in names}

    return compare


def _shifted(alpha_bar, shift):
    summary = _summary(alpha_bar)
    for key in ("t_0db", "t_1pct"):
        if summary[key] is not None:
            summary[key] += shift
    return summary


def _summary_snr_as_alpha_bar(alpha_bar):
    # SNR taken as alpha_bar alone: it is <= 1 everywhere, so the "crossing" is at t = 0
    summary = _summary(alpha_bar)
    summary["t_0db"] = _first_index(alpha_bar <= 1)
    return summary


def _compare_cases():
    return [
        Case("linear and cosine, T = 1000", (["linear", "cosine"], 1000)),
        Case("Stable Diffusion's scaled_linear alone, T = 1000", (["scaled_linear"],), {"T": 1000}),
        Case("all three, T = 500", (["linear", "scaled_linear", "cosine"], 500)),
        Case("cosine, T = 51 (odd T)", (["cosine"], 51)),
    ]


check_compare_schedules = exercise_check(
    "compare_schedules",
    compare_schedules_reference,
    _compare_cases,
    mistakes={
        "alpha where alpha-bar belongs: the per-step alphas were used instead of their cumulative product": _compare_with(
            lambda s: _summary(s.alphas)
        ),
        "off-by-one: the crossings are one step late (t + 1); report the first t where the condition holds": _compare_with(
            lambda s: _shifted(s.alphas_cumprod, +1)
        ),
        "off-by-one: the crossings are one step early (t - 1), the last t before the condition holds": _compare_with(
            lambda s: _shifted(s.alphas_cumprod, -1)
        ),
        "the SNR is alpha_bar / (1 - alpha_bar), not alpha_bar alone (which is below 1 at every t)": _compare_with(
            lambda s: _summary_snr_as_alpha_bar(s.alphas_cumprod)
        ),
        "a missing square root in reverse: sqrt(alpha_bar) was compared where alpha_bar belongs": _compare_with(
            lambda s: _summary(s.alphas_cumprod.sqrt())
        ),
        "T was ignored: the schedules always have 1000 steps": _compare_with(lambda s: _summary(s.alphas_cumprod), 1000),
    },
    hints=[
        "Build each schedule with NoiseSchedule(T, name, **SCHEDULE_BETAS[name]). Its "
        "alphas_cumprod is the alpha-bar curve, one value per t.",
        "Both timesteps are conditions on that curve: the SNR at or below 1 for t_0db, alpha-bar below "
        "0.01 for t_1pct. first_t gives the first t where a boolean tensor is True.",
        "With alpha_bar = schedule.alphas_cumprod.double(): first_t(alpha_bar / (1 - alpha_bar) "
        "<= 1), float(alpha_bar[T // 2]) and first_t(alpha_bar < 0.01).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: a noise-predictor evaluator -----------------------------------------------


def _predictor_mse(x0, alphas_cumprod, num_bins=4, seed=0, *, noise_first=False, perfect_sqrt=True,
                   reduce="mean", square=True, bin_rounding=False, target="noise"):
    g = torch.Generator().manual_seed(seed)
    n, T = x0.shape[0], len(alphas_cumprod)
    if noise_first:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (n,), generator=g)
    else:
        t = torch.randint(0, T, (n,), generator=g)  # (n,) one timestep per sample
        noise = torch.randn(x0.shape, generator=g)  # (n, ...) the noise to predict
    guess = torch.randn(x0.shape, generator=g)  # the random predictor's output
    alpha_bar = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))  # (n, 1, ..., 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    if perfect_sqrt:
        perfect = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    else:
        perfect = (x_t - alpha_bar * x0) / (1 - alpha_bar)
    predictions = {"zero": torch.zeros_like(x_t), "random": guess, "perfect": perfect}
    if bin_rounding:
        bins = (t.double() * num_bins / T).round().long().clamp(max=num_bins - 1)
    else:
        bins = t * num_bins // T  # bin k holds t in [k T / num_bins, (k + 1) T / num_bins)
    result = {}
    goal = (1 - alpha_bar).sqrt() * noise if target == "scaled noise" else noise
    for name, prediction in predictions.items():
        error = prediction - goal
        error = (error**2 if square else error).flatten(1)
        per_sample = error.sum(1) if reduce == "sum" else error.mean(1)  # (n,)
        if reduce == "rmse":
            per_sample = per_sample.sqrt()
        result[name] = [float(per_sample[bins == k].mean()) for k in range(num_bins)]
    return result


def predictor_mse_by_bin_reference(x0, alphas_cumprod, num_bins=4, seed=0):
    return _predictor_mse(x0, alphas_cumprod, num_bins, seed)


def _mse_variant(**how):
    return lambda x0, alphas_cumprod, num_bins=4, seed=0: _predictor_mse(x0, alphas_cumprod, num_bins, seed, **how)


def _predictor_cases():
    g = torch.Generator().manual_seed(5)
    linear = NoiseSchedule(1000, "linear", **SCHEDULE_BETAS["linear"]).alphas_cumprod
    cosine = NoiseSchedule(200, "cosine").alphas_cumprod
    return [
        Case("64 samples of shape (3, 8, 8), linear T=1000, 4 bins, seed 0",
             (torch.rand(64, 3, 8, 8, generator=g) * 2 - 1, linear), {"num_bins": 4, "seed": 0}),
        Case("100 samples of shape (4, 4, 4), cosine T=200, 5 bins, seed 1",
             (torch.randn(100, 4, 4, 4, generator=g), cosine), {"num_bins": 5, "seed": 1}),
        Case("40 samples of shape (16,), linear T=1000, 2 bins, seed 7",
             (torch.rand(40, 16, generator=g), linear), {"num_bins": 2, "seed": 7}),
    ]


check_predictor_mse_by_bin = exercise_check(
    "predictor_mse_by_bin",
    predictor_mse_by_bin_reference,
    _predictor_cases,
    mistakes={
        "MSE without the mean: the squared errors were summed over each sample, not averaged": _mse_variant(reduce="sum"),
        "the predictions were scored against the scaled noise sqrt(1 - alpha_bar) noise; the target is the noise "
        "itself, as the lesson warns: that is why zero scores 1 at every t": _mse_variant(target="scaled noise"),
        "the errors were not squared before averaging": _mse_variant(square=False),
        "a square root too many: that is the RMSE, not the MSE": _mse_variant(reduce="rmse"),
        "the perfect predictor lost its square roots: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)": _mse_variant(
            perfect_sqrt=False
        ),
        "the random draws came in another order: draw the timesteps first, then the noise, then the random guess": _mse_variant(
            noise_first=True
        ),
        "the bin index was rounded instead of floored: bin = t * num_bins // T": _mse_variant(bin_rounding=True),
    },
    hints=[
        "Make one generator, g = torch.Generator().manual_seed(seed), and draw from it in the order "
        "given: t, then noise, then guess. Another order gives other numbers.",
        "Build x_t from x0 and noise, with each sample's alpha-bar reshaped to (n, 1, ..., 1) so that it "
        "broadcasts. The perfect predictor solves the same equation for the noise.",
        "Score each predictor with one MSE per sample: ((prediction - noise) ** 2).flatten(1).mean(1), shape (n,).",
        "perfect = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt(). With bins = t * num_bins // T, "
        "a predictor's list is [float(mse[bins == k].mean()) for k in range(num_bins)].",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: a VAE compression analyzer ------------------------------------------------


def vae_compression_reference(resolutions, factor=8, latent_channels=4, bytes_per_value=4):
    rows = []
    for size in resolutions:
        pixel_values = size * size * 3  # (3, H, W)
        latent_values = (size // factor) ** 2 * latent_channels  # (latent_channels, H/f, W/f)
        rows.append({
            "resolution": size,
            "pixel_values": pixel_values,
            "latent_values": latent_values,
            "ratio": pixel_values / latent_values,
            "bytes_saved": (pixel_values - latent_values) * bytes_per_value,
        })
    return rows


def _vae_variant(pixel_channels=3, latent_channels_fixed=None, per_area=False, fixed_bytes=None,
                 saved_is_latent=False, inverted=False):
    def analyze(resolutions, factor=8, latent_channels=4, bytes_per_value=4):
        channels = latent_channels_fixed or latent_channels
        width = fixed_bytes or bytes_per_value
        rows = []
        for size in resolutions:
            pixel_values = size * size * pixel_channels
            latent_values = size * size // factor * channels if per_area else (size // factor) ** 2 * channels
            rows.append({
                "resolution": size,
                "pixel_values": pixel_values,
                "latent_values": latent_values,
                "ratio": latent_values / pixel_values if inverted else pixel_values / latent_values,
                "bytes_saved": (latent_values if saved_is_latent else pixel_values - latent_values) * width,
            })
        return rows

    return analyze


def _vae_cases():
    return [
        Case("SD sizes 256, 512, 768, 1024 at float32", ([256, 512, 768, 1024],)),
        Case("512 px at float16 (2 bytes a value)", ([512],), {"bytes_per_value": 2}),
        Case("64 px, the course's tiny model", ([64],)),
        Case("a VAE with f=4 and 3 latent channels", ([256, 512],), {"factor": 4, "latent_channels": 3}),
    ]


check_vae_compression = exercise_check(
    "vae_compression",
    vae_compression_reference,
    _vae_cases,
    mistakes={
        "the latent was counted with 3 channels, like the image; SD's latent has 4": _vae_variant(latent_channels_fixed=3),
        "the factor f was applied to the area (H*W/f); it shrinks each side, so the area shrinks by f*f": _vae_variant(
            per_area=True
        ),
        "the ratio is upside down: it is pixel values / latent values": _vae_variant(inverted=True),
        "the memory saved is the pixel size minus the latent size, not the latent size": _vae_variant(saved_is_latent=True),
        "bytes_per_value was ignored: float32 (4 bytes) was always assumed": _vae_variant(fixed_bytes=4),
        "latent_channels was ignored: 4 channels were always assumed": _vae_variant(latent_channels_fixed=4),
        "the image was counted with 1 channel; an RGB image has 3": _vae_variant(pixel_channels=1),
    },
    hints=[
        "Count values first and turn them into bytes at the end. An s x s RGB picture holds 3 values per pixel.",
        "The VAE shrinks each side by factor, so the latent holds latent_channels * (s // factor) ** 2 values.",
        "pixel_values = 3 * s * s, latent_values = latent_channels * (s // factor) ** 2, ratio = "
        "pixel_values / latent_values and bytes_saved = (pixel_values - latent_values) * bytes_per_value.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
