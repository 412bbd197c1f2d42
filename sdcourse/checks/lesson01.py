"""Checks for lesson 01: latent space and the VAE."""

from __future__ import annotations

import torch

from .core import Case, exercise_check, values_close

__all__ = [
    "check_latent_shape", "check_scaling_factor_from_latents", "check_sample_latent", "check_kl_divergence",
    "check_reconstruction_psnr",
]

SOLUTION_NOTEBOOK = "solutions/01_latent_space.ipynb"  # hint() points here after the last hint


# ---- exercise 1: the latent's shape ------------------------------------------------------

def latent_shape_reference(height, width, factor=8, channels=4):
    if height % factor or width % factor:
        raise ValueError(f"{height}x{width} is not a multiple of {factor}")
    return (channels, height // factor, width // factor)


def _shape_variant(order="chw", area=False, check="both", fixed_channels=None, swap=False):
    def shape(height, width, factor=8, channels=4):
        if check in ("both", "height") and height % factor:
            raise ValueError("height")
        if check == "both" and width % factor:
            raise ValueError("width")
        step = factor * factor if area else factor
        h, w = (width // step, height // step) if swap else (height // step, width // step)
        c = fixed_channels or channels
        return (c, h, w) if order == "chw" else (h, w, c)

    return shape


def _latent_shape_cases():
    return [
        Case("SD 1.x at 768 high x 512 wide", (768, 512)),
        Case("the tiny model, 64 x 64", (64, 64)),
        Case("f=16 with 16 channels, 1024 x 512", (1024, 512), {"factor": 16, "channels": 16}),
        Case("height 65 is not a multiple of 8", (65, 64)),
        Case("width 500 is not a multiple of 8", (512, 500)),
    ]


check_latent_shape = exercise_check(
    "latent_shape",
    latent_shape_reference,
    _latent_shape_cases,
    mistakes={
        "height and width are swapped: the shape is (channels, height / f, width / f)": _shape_variant(swap=True),
        "channels last: PyTorch keeps channels first, (channels, height / f, width / f)": _shape_variant(order="hwc"),
        "each side was divided by f * f; f shrinks each side once (the area shrinks by f * f)": _shape_variant(area=True),
        "channels was ignored: 4 channels were always used": _shape_variant(fixed_channels=4),
        "only the height was checked; the width must be a multiple of the factor too": _shape_variant(check="height"),
        "a size that is not a multiple of the factor was rounded down; it must raise ValueError": _shape_variant(
            check="none"
        ),
    },
    hints=[
        "The VAE shrinks each side by the same factor. The latent's channels are its "
        "own: they have nothing to do with the picture's 3 colours.",
        "A side can be encoded only when dividing it by factor leaves no remainder. Test "
        "height % factor and width % factor before anything else.",
        'For a bad side, raise ValueError(f"height={height} is not a multiple of {factor}") (the same for '
        "width); otherwise return (channels, height // factor, width // factor).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the scaling factor ------------------------------------------------------


def scaling_factor_from_latents_reference(latents):
    # one number for the whole batch: 1 / std over every value
    return 1.0 / latents.std().item()


def _per_channel_average(latents):
    return 1.0 / latents.std(dim=(0, 2, 3)).mean().item()


def _scaling_cases():
    g = torch.Generator().manual_seed(1)
    offsets = torch.tensor([0.8, -0.5, 0.1, 1.5]).reshape(1, 4, 1, 1)
    widths = torch.tensor([5.0, 3.0, 7.0, 4.0]).reshape(1, 4, 1, 1)
    return [
        Case("SD-like raw latents, std about 5.5, shape (16, 4, 32, 32)",
             (torch.randn(16, 4, 32, 32, generator=g) * 5.5 + 0.3,)),
        Case("channels with different means and spreads, shape (8, 4, 32, 32)",
             (torch.randn(8, 4, 32, 32, generator=g) * widths + offsets,)),
        Case("small latents, std about 0.5, shape (64, 4, 8, 8)", (torch.randn(64, 4, 8, 8, generator=g) * 0.5,)),
    ]


check_scaling_factor_from_latents = exercise_check(
    "scaling_factor_from_latents",
    scaling_factor_from_latents_reference,
    _scaling_cases,
    mistakes={
        "that is the std itself; the factor is 1 / std, so that scaled latents have std 1": lambda z: z.std().item(),
        "that is 1 / variance; the factor divides by the standard deviation, sqrt(variance)": lambda z: (
            1.0 / z.var().item()
        ),
        "one factor per channel: SD uses a single number for the whole latent": lambda z: 1.0 / z.std(dim=(0, 2, 3)),
        "the std was taken per channel and averaged; take it over all values at once": _per_channel_average,
        "1 / mean(|z|) is not 1 / std; use the standard deviation": lambda z: 1.0 / z.abs().mean().item(),
        "1 / max(|z|) squeezes latents into [-1, 1]; the factor is 1 / std": lambda z: 1.0 / z.abs().max().item(),
    },
    hints=[
        "Multiplying values by a number s multiplies their standard deviation by s. "
        "Which s turns the latents' standard deviation into 1?",
        "Take one standard deviation over every value at once (batch, channels and positions), not one per channel.",
        "latents.std() is that number as a 0-d tensor, and .item() makes it a "
        "Python float: return 1.0 / latents.std().item().",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: a sample from the encoder's Gaussian ---------------------------------------


def sample_latent_reference(mean, logvar, noise):
    # z = mean + exp(logvar / 2) * noise
    return mean + torch.exp(0.5 * logvar) * noise


def _sample_cases():
    g = torch.Generator().manual_seed(3)
    shape = (2, 4, 8, 8)
    mean = torch.randn(shape, generator=g) * 2
    logvar = torch.rand(shape, generator=g) * 5 - 4  # in [-4, 1]
    noise = torch.randn(shape, generator=g)
    return [
        Case("mean and logvar of shape (2, 4, 8, 8), logvar in [-4, 1]", (mean, logvar, noise)),
        Case("logvar = -2 everywhere (std = e^-1)", (mean, torch.full(shape, -2.0), noise)),
        Case("logvar = 0 (std 1)", (mean, torch.zeros(shape), noise)),
    ]


check_sample_latent = exercise_check(
    "sample_latent",
    sample_latent_reference,
    _sample_cases,
    mistakes={
        "exp(logvar) is the variance; the noise is scaled by the std, exp(logvar / 2)": lambda m, lv, n: (
            m + torch.exp(lv) * n
        ),
        "logvar is a log: the std is exp(logvar / 2), not logvar itself": lambda m, lv, n: m + lv * n,
        "the noise was ignored: that is the mode (the mean), not a sample": lambda m, lv, n: m,
        "the std was added instead of multiplying the noise: z = mean + std * noise": lambda m, lv, n: (
            m + torch.exp(0.5 * lv) + n
        ),
        "a minus sign too many: the std is exp(+logvar / 2)": lambda m, lv, n: m + torch.exp(-0.5 * lv) * n,
    },
    hints=[
        "A draw from a Gaussian with mean mu and standard deviation sigma is mu plus sigma times a "
        "standard normal draw. The standard normal draw is the noise you are given.",
        "logvar is the log of the variance, not sigma. Undo the log, then "
        "take the square root; both fit in one exp.",
        "sigma = torch.exp(0.5 * logvar), and the sample is mean + sigma * noise.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 4: the KL term of the VAE's loss -------------------------------------------------


def kl_divergence_reference(mean, logvar):
    """diffusers' `DiagonalGaussianDistribution.kl()` for the Gaussians given by `mean` and `logvar`,
    both of shape (batch, channels, height, width): one KL to N(0, I) per latent, shape (batch,)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    for name, value in (("mean", mean), ("logvar", logvar)):
        if not isinstance(value, torch.Tensor) or value.ndim != 4:
            got = f"a {value.ndim}-d tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a 4-d tensor (batch, channels, height, width); got {got}")
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar must have the same shape; got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    # the encoder's output holds mean and logvar stacked along the channels
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()


def _kl(mean, logvar, *, reduce="sum", half=0.5, spread="var", clamp=True, dims=(1, 2, 3), minus_one=True):
    if clamp:
        logvar = logvar.clamp(-30.0, 20.0)
    spread_term = logvar.exp() if spread == "var" else (0.5 * logvar).exp()
    terms = mean.pow(2) + spread_term - (1.0 if minus_one else 0.0) - logvar
    return half * (terms.mean(dim=dims) if reduce == "mean" else terms.sum(dim=dims))


def _kl_variant(**how):
    return lambda mean, logvar: _kl(mean, logvar, **how)


class _Unlike:
    """Stands for "a tensor whose shape (or dtype) is not the reference's": a mistake that any wrong
    shape (or dtype) matches, so that the report names it even when no other mistake does."""

    def __init__(self, what, reference):
        self.what = what
        self.value = tuple(reference.shape) if what == "shape" else reference.dtype

    def matches(self, got):
        if not isinstance(got, torch.Tensor):
            return False
        return (tuple(got.shape) if self.what == "shape" else got.dtype) != self.value

    def __repr__(self):
        return f"any {self.what} but {self.value}"


def _same_tensor(got, expected):
    """Close values, and the same shape and dtype."""
    if isinstance(expected, _Unlike):
        return expected.matches(got) or (isinstance(got, _Unlike) and vars(got) == vars(expected))
    if isinstance(got, _Unlike):
        return False
    both_tensors = isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
    if both_tensors and (got.shape != expected.shape or got.dtype != expected.dtype):
        return False
    return values_close(got, expected)


def _kl_cases():
    g = torch.Generator().manual_seed(5)

    def gaussians(shape, spread=1.0, dtype=torch.float32):
        mean = torch.randn(shape, generator=g, dtype=dtype) * spread
        logvar = torch.rand(shape, generator=g, dtype=dtype) * 6 - 5  # in [-5, 1]
        return mean, logvar

    extreme_mean, extreme_logvar = gaussians((2, 4, 8, 8))
    extreme_logvar[0, :, :4] = -40.0  # below the clamp's -30: sigma would be e^-20
    extreme_logvar[1, :, 4:] = 25.0  # above the clamp's 20
    return [
        Case("3 latents of the tiny model, shape (3, 4, 8, 8)", gaussians((3, 4, 8, 8), 2.0)),
        Case("2 SD-sized latents, shape (2, 4, 64, 64)", gaussians((2, 4, 64, 64))),
        Case("one latent that is already N(0, I): mean 0, logvar 0", (torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))),
        Case("logvar beyond [-30, 20] in places, shape (2, 4, 8, 8)", (extreme_mean, extreme_logvar)),
        Case("float64, 4 latents of shape (16, 4, 4)", gaussians((4, 16, 4, 4), 1.5, torch.float64)),
    ]


check_kl_divergence = exercise_check(
    "kl_divergence",
    kl_divergence_reference,
    _kl_cases,
    mistakes={
        "the terms were averaged, not summed, over each latent: the KL is a sum, and the mean is smaller by "
        "channels x height x width (256 for a (4, 8, 8) latent)": _kl_variant(reduce="mean"),
        "the factor 1/2 is missing: the result is twice the KL": _kl_variant(half=1.0),
        "the standard deviation exp(logvar / 2) was used where the variance exp(logvar) belongs": _kl_variant(
            spread="std"
        ),
        "logvar was not clamped to [-30, 20] first, as diffusers clamps it": _kl_variant(clamp=False),
        "the sum also ran over the batch: return one KL per latent, shape (batch,)": _kl_variant(dims=(0, 1, 2, 3)),
        "the sum kept its dimensions: return shape (batch,), not (batch, 1, 1, 1)": lambda mean, logvar: (
            _kl(mean, logvar).reshape(-1, 1, 1, 1)
        ),
        "the - 1 inside the sum is missing: a Gaussian equal to N(0, I) must score 0": _kl_variant(minus_one=False),
        "the result is float64 for float32 inputs: keep the inputs' dtype": lambda mean, logvar: (
            _kl(mean.double(), logvar.double())
        ),
        "the result was cast to float32: keep the inputs' dtype (float64 here)": lambda mean, logvar: (
            _kl(mean.float(), logvar.float())
        ),
        "the result has the wrong shape: one KL per latent, shape (batch,), summed over channels, height "
        "and width": lambda mean, logvar: _Unlike("shape", kl_divergence_reference(mean, logvar)),
        "the result has the wrong dtype: keep the inputs' dtype": lambda mean, logvar: (
            _Unlike("dtype", kl_divergence_reference(mean, logvar))
        ),
    },
    hints=[
        "For one value, the KL from N(mu, sigma^2) to N(0, 1) is (mu^2 + sigma^2 - 1 - log sigma^2) / 2. "
        "The KL of a latent adds up those of its values.",
        "Clamp logvar to [-30, 20] before anything else, as diffusers does when it builds the distribution; "
        "the variance is then logvar.exp().",
        "0.5 * (mean.pow(2) + var - 1 - logvar).sum(dim=(1, 2, 3)): the batch axis stays, so the shape is (batch,).",
    ],
    solution=SOLUTION_NOTEBOOK,
    compare=_same_tensor,
)


# ---- exercise 5: PSNR of a reconstruction ---------------------------------------------------


def reconstruction_psnr_reference(reconstruction, original):
    # images in [-1, 1] -> [0, 1]; MSE per image; PSNR = 10 log10(1 / MSE)
    mse = ((reconstruction - original) / 2).pow(2).flatten(1).mean(1)  # (batch,)
    return 10 * torch.log10(1.0 / mse)


def _psnr_with(scale=2.0, log=torch.log10, factor=10.0, reduce="mean", per_image=True):
    def psnr(reconstruction, original):
        error = ((reconstruction - original) / scale).pow(2).flatten(1)
        mse = error.sum(1) if reduce == "sum" else error.mean(1)
        if not per_image:
            mse = error.mean()
        return factor * log(1.0 / mse)

    return psnr


def _psnr_cases():
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    noisy = (images + torch.randn(images.shape, generator=g) * torch.tensor([0.02, 0.1, 0.3]).reshape(3, 1, 1, 1))
    flat = torch.zeros(2, 3, 8, 8)
    return [
        Case("3 images of 3 x 16 x 16 with three noise levels", (noisy, images)),
        Case("grey images off by 0.1 everywhere", (flat + 0.1, flat)),
        Case("one image of 3 x 64 x 64, off by 0.5 in one corner",
             (torch.nn.functional.pad(torch.full((1, 3, 8, 8), 0.5), (0, 56, 0, 56)), torch.zeros(1, 3, 64, 64))),
    ]


check_reconstruction_psnr = exercise_check(
    "reconstruction_psnr",
    reconstruction_psnr_reference,
    _psnr_cases,
    mistakes={
        "the [-1, 1] range was not taken into account: halve the differences (or use a peak of 2) first": _psnr_with(
            scale=1.0
        ),
        "natural log instead of log10: decibels use log10": _psnr_with(log=torch.log),
        "20 log10 goes with the RMSE; with the MSE it is 10 log10": _psnr_with(factor=20.0),
        "the squared errors were summed, not averaged, over each image": _psnr_with(reduce="sum"),
        "one PSNR for the whole batch; the exercise wants one per image": _psnr_with(per_image=False),
    },
    hints=[
        "PSNR compares the mean squared error with the square of the largest possible value. On "
        "the [0, 1] scale that value is 1, so the PSNR is 10 log10(1 / MSE).",
        "The pictures are in [-1, 1], a range twice as wide as [0, 1]: halve the differences before squaring them.",
        "Keep one MSE per picture: after squaring, .flatten(1).mean(1) averages over "
        "everything but the batch axis and leaves shape (batch,).",
        "mse = ((reconstruction - original) / 2).pow(2).flatten(1).mean(1), then return 10 * torch.log10(1 / mse).",
    ],
    solution=SOLUTION_NOTEBOOK,
)
