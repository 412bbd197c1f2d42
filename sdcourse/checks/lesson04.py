"""Checks for lesson 04: training a denoiser."""

from __future__ import annotations

import math

import torch

from ..schedules import SD_SCHEDULE, NoiseSchedule
from .core import Case, exercise_check, values_close

__all__ = [
    "check_diffusion_loss", "check_drop_captions", "check_loss_by_timestep_bin", "check_min_snr_weight",
    "check_training_step",
]

SOLUTION_NOTEBOOK = "solutions/04_training.ipynb"  # hint() points here after the last hint


# ---- exercise 1: the noise-prediction loss -------------------------------------------------


def _loss(model_fn, x0, noise, timesteps, schedule, *, weights="alpha_bar", roots=True, swap=False, target="noise",
          absolute=False):
    table = schedule.alphas_cumprod if weights == "alpha_bar" else schedule.alphas
    a = table[timesteps].reshape(-1, *[1] * (x0.ndim - 1))  # (batch, 1, 1, 1)
    keep, add = (a.sqrt(), (1 - a).sqrt()) if roots else (a, 1 - a)
    if swap:
        keep, add = add, keep
    x_t = keep * x0 + add * noise  # x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise
    prediction = model_fn(x_t, timesteps)
    goal = {"noise": noise, "x0": x0, "x_t": x_t, "scaled noise": add * noise}[target]
    error = prediction - goal
    return error.abs().mean() if absolute else error.pow(2).mean()


def diffusion_loss_reference(model_fn, x0, noise, timesteps, schedule):
    return _loss(model_fn, x0, noise, timesteps, schedule)


def _loss_variant(**how):
    return lambda model_fn, x0, noise, timesteps, schedule: _loss(model_fn, x0, noise, timesteps, schedule, **how)


class _TinyDenoiser:
    """A fixed, deterministic stand-in for the U-Net: a 1x1 convolution plus a timestep term."""

    def __init__(self, channels, seed):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g) / math.sqrt(channels)
        self.bias = torch.randn(channels, generator=g) * 0.1

    def __call__(self, x_t, timesteps):
        out = torch.einsum("oc,bc...->bo...", self.weight, x_t)
        scale = (timesteps.float() / 1000).reshape(-1, *[1] * (x_t.ndim - 1))
        return out + scale * self.bias.reshape(1, -1, *[1] * (x_t.ndim - 2))


def _diffusion_loss_cases():
    g = torch.Generator().manual_seed(4)
    sd = NoiseSchedule(**SD_SCHEDULE)
    linear = NoiseSchedule(1000, "linear", 0.0001, 0.02)
    x0 = torch.rand(6, 4, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 50, 200, 500, 800, 999])
    small_x0, small_noise = torch.randn(3, 3, 5, 5, generator=g), torch.randn(3, 3, 5, 5, generator=g)
    return [
        Case("a fixed 1x1-conv denoiser, 6 latents (4, 8, 8), SD schedule", (_TinyDenoiser(4, 0), x0, noise, t, sd)),
        Case("the identity 'denoiser' (predicts x_t), SD schedule", (lambda x_t, t: x_t, x0, noise, t, sd)),
        Case("a fixed denoiser, 3 samples (3, 5, 5), linear schedule, t = 10, 300, 700",
             (_TinyDenoiser(3, 1), small_x0, small_noise, torch.tensor([10, 300, 700]), linear)),
    ]


check_diffusion_loss = exercise_check(
    "diffusion_loss",
    diffusion_loss_reference,
    _diffusion_loss_cases,
    mistakes={
        "the target is the noise, not the clean latent x0: this is an epsilon-prediction model": _loss_variant(
            target="x0"
        ),
        "the prediction was compared with x_t, the model's input; the target is the noise added to it": _loss_variant(
            target="x_t"
        ),
        "the prediction was compared with the scaled noise sqrt(1 - alpha_bar) noise; the target is the noise "
        "itself, with variance 1 at every t, as the lesson warns": _loss_variant(target="scaled noise"),
        "the square roots are missing: x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise": _loss_variant(
            roots=False
        ),
        "the per-step alpha_t was used where the cumulative alpha-bar (alphas_cumprod) belongs": _loss_variant(
            weights="alpha"
        ),
        "the two weights are swapped: sqrt(alpha_bar) scales x0, sqrt(1 - alpha_bar) the noise": _loss_variant(
            swap=True
        ),
        "the error was not squared: that is the mean absolute error, not the MSE": _loss_variant(absolute=True),
    },
    hints=[
        "Two steps: noise x0 into x_t with the forward equation, then ask the "
        "model for the noise and measure how far off it is.",
        "schedule.alphas_cumprod[timesteps] gives one alpha-bar per sample, shape (batch,). "
        "Reshape it to (batch, 1, 1, 1) so that it broadcasts against x0.",
        "x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, and the loss "
        "is (model_fn(x_t, timesteps) - noise).pow(2).mean().",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: caption dropout ------------------------------------------------------------


def _drop(captions, p, generator, *, keep_prob=False, one_draw=False, empty="", in_place=False):
    n = len(captions)
    draws = torch.rand(1 if one_draw else n, generator=generator).expand(n)
    drop = (draws >= p) if keep_prob else (draws < p)  # (n,) True where the caption is dropped
    out = [empty if d else c for c, d in zip(captions, drop.tolist())]
    if in_place:
        captions[:] = out
        return None
    return out


def drop_captions_reference(captions, p, generator):
    return _drop(captions, p, generator)


def _drop_variant(**how):
    return lambda captions, p, generator: _drop(captions, p, generator, **how)


def _drop_cases():
    words = ["a red circle", "a blue square", "a green triangle", "a small yellow circle in the top left",
             "a white square on a black background", "a purple triangle", "an orange circle", "a black square"]
    return [
        Case("8 captions, p = 0.5, seed 0", (list(words), 0.5, torch.Generator().manual_seed(0))),
        Case("40 captions, p = 0.1, seed 3", (words * 5, 0.1, torch.Generator().manual_seed(3))),
        Case("8 captions, p = 0.3, seed 11", (list(words), 0.3, torch.Generator().manual_seed(11))),
        Case("16 captions, p = 0 (keep every caption), seed 1", (words * 2, 0.0, torch.Generator().manual_seed(1))),
    ]


check_drop_captions = exercise_check(
    "drop_captions",
    drop_captions_reference,
    _drop_cases,
    mistakes={
        "the test is reversed: a caption is dropped when its draw is below p, so that p of them go": _drop_variant(
            keep_prob=True
        ),
        "one draw decided the whole batch; each caption needs its own draw": _drop_variant(one_draw=True),
        'a dropped caption becomes the empty prompt "", not None': _drop_variant(empty=None),
        'a dropped caption becomes the empty prompt "", not the end-of-text token written out': _drop_variant(
            empty="<|endoftext|>"
        ),
        "the list was changed in place and nothing was returned; return a new list": _drop_variant(in_place=True),
    },
    hints=[
        "Every caption gets its own random number, and all of them come from the generator you are given.",
        "draws = torch.rand(len(captions), generator=generator). Caption i is dropped when draws[i] < p.",
        'Build the new list from zip(captions, draws.tolist()): "" where '
        "the draw is below p, the caption elsewhere.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: the loss by timestep bin ---------------------------------------------------


def _by_bin(timesteps, losses, num_bins, T, *, rounding=False, reduce="mean", wrong_index=False):
    if wrong_index:
        bins = timesteps // num_bins
    elif rounding:
        bins = (timesteps.double() * num_bins / T).round().long()
    else:
        bins = timesteps * num_bins // T  # bin k holds t in [k T / num_bins, (k + 1) T / num_bins)
    result = []
    for k in range(num_bins):
        chosen = losses[bins == k]
        if len(chosen) == 0:
            result.append(float("nan"))
        elif reduce == "sum":
            result.append(float(chosen.sum()))
        else:
            result.append(float(chosen.mean()))
    return result


def loss_by_timestep_bin_reference(timesteps, losses, num_bins, T=1000):
    return _by_bin(timesteps, losses, num_bins, T)


def _bin_variant(**how):
    return lambda timesteps, losses, num_bins, T=1000: _by_bin(timesteps, losses, num_bins, T, **how)


def _bin_cases():
    g = torch.Generator().manual_seed(8)
    t = torch.randint(0, 1000, (200,), generator=g)
    losses = torch.rand(200, generator=g) * (1 - t / 1000) + 0.05
    few_t = torch.tensor([0, 99, 100, 199, 250, 251, 399])
    return [
        Case("200 losses, T = 1000, 4 bins", (t, losses, 4)),
        Case("200 losses, T = 1000, 10 bins", (t, losses, 10), {"T": 1000}),
        Case("7 losses, T = 400, 4 bins (edges included)", (few_t, torch.arange(7.0) + 1, 4), {"T": 400}),
        Case("3 losses, T = 1000, 5 bins (some bins empty: nan)",
             (torch.tensor([10, 15, 990]), torch.tensor([0.9, 0.7, 0.1]), 5)),
    ]


check_loss_by_timestep_bin = exercise_check(
    "loss_by_timestep_bin",
    loss_by_timestep_bin_reference,
    _bin_cases,
    mistakes={
        "the bin index was rounded instead of floored: bin = t * num_bins // T": _bin_variant(rounding=True),
        "the losses in a bin were summed; the figure is their mean": _bin_variant(reduce="sum"),
        "t // num_bins is not the bin: it is t * num_bins // T": _bin_variant(wrong_index=True),
    },
    hints=[
        "First give every example its bin number, all at once with tensor "
        "arithmetic; then go through the bins one at a time.",
        "bins = timesteps * num_bins // T. Integer division puts t in bin k "
        "when k T / num_bins <= t < (k + 1) T / num_bins.",
        "With bins = timesteps * num_bins // T: for each k, chosen = losses[bins == k]; append "
        'float(chosen.mean()) if len(chosen) else float("nan").',
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 4: min-SNR weighting --------------------------------------------------------


def _min_snr(timesteps, alphas_cumprod, gamma, *, use="min", divide=True, snr_is_alpha_bar=False):
    alpha_bar = alphas_cumprod.double()[timesteps]
    snr = alpha_bar if snr_is_alpha_bar else alpha_bar / (1 - alpha_bar)  # SNR(t) = alpha_bar / (1 - alpha_bar)
    capped = snr.clamp(max=gamma) if use == "min" else snr.clamp(min=gamma)
    return capped / snr if divide else capped


def min_snr_weight_reference(timesteps, alphas_cumprod, gamma=5.0):
    return _min_snr(timesteps, alphas_cumprod, gamma)


def _snr_variant(**how):
    return lambda timesteps, alphas_cumprod, gamma=5.0: _min_snr(timesteps, alphas_cumprod, gamma, **how)


def _snr_cases():
    sd = NoiseSchedule(**SD_SCHEDULE).alphas_cumprod
    cosine = NoiseSchedule(200, "cosine").alphas_cumprod
    return [
        Case("SD schedule, t = 0, 100, 354, 600, 999, gamma 5", (torch.tensor([0, 100, 354, 600, 999]), sd)),
        Case("SD schedule, every 50th t, gamma 1", (torch.arange(0, 1000, 50), sd), {"gamma": 1.0}),
        Case("cosine T = 200, t = 0, 20, 100, 199, gamma 5", (torch.tensor([0, 20, 100, 199]), cosine), {"gamma": 5.0}),
    ]


check_min_snr_weight = exercise_check(
    "min_snr_weight",
    min_snr_weight_reference,
    _snr_cases,
    mistakes={
        "max where min belongs: the weight caps the SNR at gamma, min(SNR, gamma) / SNR": _snr_variant(use="max"),
        "min(SNR, gamma) was not divided by the SNR; the weight is min(SNR, gamma) / SNR": _snr_variant(divide=False),
        "the SNR is alpha_bar / (1 - alpha_bar), not alpha_bar alone": _snr_variant(snr_is_alpha_bar=True),
    },
    hints=[
        "Start from the SNR at each timestep. The weight leaves an example alone where its SNR "
        "is at most gamma, and scales it down where the SNR is larger.",
        "Look alpha-bar up in float64, alphas_cumprod.double()[timesteps]; then snr = alpha_bar / (1 - alpha_bar).",
        "With snr = alpha_bar / (1 - alpha_bar) in float64, min(SNR, gamma) is snr.clamp(max=gamma), and the weight "
        "is snr.clamp(max=gamma) / snr.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 5: one training step of the U-Net ------------------------------------------------

# A diffusers U-Net of the course's design, small enough for a check: attention at 8 x 8 and
# 4 x 4, two groups per norm (diffusers' own tiny test U-Net).
TINY_UNET = dict(
    block_out_channels=(4, 8), norm_num_groups=2, layers_per_block=1, sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4, out_channels=4, cross_attention_dim=8, attention_head_dim=2,
)
MAX_GRAD_NORM = 1.0  # the lesson's training loop clips the gradients to norm 1


def training_step_reference(unet, latents, context, scheduler, optimizer, generator):
    """One step of the lesson's training loop; returns the loss as a Python float.

    latents: clean latents z_0, (batch, 4, h, w); context: text embeddings, (batch, tokens, width);
    scheduler: a diffusers DDPMScheduler; optimizer: one that trains `unet`'s parameters.
    """
    return _step(unet, latents, context, scheduler, optimizer, generator)


def _step(unet, latents, context, scheduler, optimizer, generator, *, target="noise", reduce="mean", zero=True,
          apply=True, clip=True, t_range="right", noise_first=False, one_t=False, as_float=True):
    _check_step_inputs(unet, latents, context, scheduler, optimizer, generator)
    batch, T = latents.shape[0], scheduler.config.num_train_timesteps
    low, high = {"right": (0, T), "one to T": (1, T + 1), "1000": (0, 1000)}[t_range]

    def draw_t():
        return torch.randint(low, high, (1 if one_t else batch,), generator=generator)  # (batch,)

    if zero:
        optimizer.zero_grad()
    if noise_first:
        noise = torch.randn(latents.shape, generator=generator)
        t = draw_t()
    else:
        t = draw_t()
        noise = torch.randn(latents.shape, generator=generator)  # epsilon ~ N(0, I), (batch, 4, h, w)
    noisy = scheduler.add_noise(latents, noise, t)  # sqrt(ab_t) z_0 + sqrt(1 - ab_t) epsilon
    prediction = unet(noisy, t, encoder_hidden_states=context).sample
    alpha_bar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    goal = {"noise": noise, "noisy": noisy, "clean": latents, "scaled noise": (1 - alpha_bar).sqrt() * noise}[target]
    squared = (prediction - goal).pow(2)
    loss = squared.sum() if reduce == "sum" else squared.mean()
    if apply:
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    return loss.item() if as_float else loss


def _check_step_inputs(unet, latents, context, scheduler, optimizer, generator):
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"unet must be a torch.nn.Module (a UNet2DConditionModel); got {type(unet).__name__}")
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        got = f"a {latents.ndim}-d tensor" if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be a 4-d tensor (batch, channels, height, width); got {got}")
    if not isinstance(context, torch.Tensor) or context.ndim != 3 or len(context) != len(latents):
        got = f"shape {tuple(context.shape)}" if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context must be a tensor (batch, tokens, width) with batch {len(latents)}, like latents; "
                         f"got {got}")
    if not hasattr(scheduler, "add_noise") or "num_train_timesteps" not in getattr(scheduler, "config", {}):
        raise TypeError(f"scheduler must be a diffusers scheduler such as DDPMScheduler; got {type(scheduler).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")


def _step_variant(**how):
    return lambda unet, latents, context, scheduler, optimizer, generator: _step(
        unet, latents, context, scheduler, optimizer, generator, **how
    )


class _TimestepsOutOfRange(Exception):
    pass


def _two_steps(step_fn):
    """Run `step_fn` twice on a copy of a tiny U-Net, with a fresh optimizer and generator, and report
    the timesteps of the first step, both losses and the weights after each step."""

    def run(unet, latents, context, schedule, optimizer_settings, seed):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(**schedule)
        T = scheduler.config.num_train_timesteps
        seen = []  # the timesteps given to add_noise and to the U-Net, in order

        def watch(timesteps):
            seen.append(torch.as_tensor(timesteps).detach().clone())
            if seen[-1].numel() and (seen[-1].min() < 0 or seen[-1].max() >= T):
                raise _TimestepsOutOfRange()

        add_noise = scheduler.add_noise

        def watched_add_noise(original, noise, timesteps):
            watch(timesteps)
            return add_noise(original, noise, timesteps)

        scheduler.add_noise = watched_add_noise
        unet.register_forward_pre_hook(
            lambda module, args, kwargs: watch(args[1] if len(args) > 1 else kwargs.get("timestep")), with_kwargs=True
        )
        kind, settings = optimizer_settings
        optimizer = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}[kind](unet.parameters(), **settings)
        generator = torch.Generator().manual_seed(seed)
        start = _weights(unet)
        result = dict.fromkeys(["timesteps", "loss", "loss is a Python float", "weights changed",
                                "weights after one step", "loss of a second step", "weights after two steps"])
        try:
            loss = step_fn(unet, latents, context, scheduler, optimizer, generator)
            result["timesteps"] = seen[0] if seen else None
            result["loss"] = _number(loss)
            result["loss is a Python float"] = isinstance(loss, float)
            result["weights after one step"] = _weights(unet)
            result["weights changed"] = any(
                not torch.equal(start[name], value) for name, value in result["weights after one step"].items()
            )
            second = step_fn(unet, latents, context, scheduler, optimizer, generator)
            result["loss of a second step"] = _number(second)
            result["weights after two steps"] = _weights(unet)
        except _TimestepsOutOfRange:
            result["timesteps"] = seen[-1]
        return result

    return run


def _number(loss):
    """A returned loss as a float, whether a float or a 0-d tensor; anything else as it is."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return float(loss) if isinstance(loss, (float, int)) else loss


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same_step(got, expected):
    return values_close(got, expected, atol=1e-6, rtol=1e-5)


def _step_cases():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**TINY_UNET)
        with torch.no_grad():
            for p in unet.parameters():  # off their defaults, with gradients of norm about 2 to 5
                p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(6)
    latents, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    sd = dict(SD_SCHEDULE)
    short = {**SD_SCHEDULE, "num_train_timesteps": 10}
    return [
        Case("2 latents (4, 8, 8), SD schedule, SGD lr 0.1, seed 0",
             (unet, latents, context, sd, ("SGD", {"lr": 0.1}), 0)),
        Case("4 latents (4, 8, 8), a 10-step schedule, SGD lr 0.1, seed 1",
             (unet, latents.repeat(2, 1, 1, 1), context.repeat(2, 1, 1), short, ("SGD", {"lr": 0.1}), 1)),
        Case("2 latents (4, 8, 8), SD schedule, AdamW lr 1e-3 and weight decay 0.01 as in the lesson, seed 2",
             (unet, latents, context, sd, ("AdamW", {"lr": 1e-3, "weight_decay": 0.01}), 2)),
    ]


check_training_step = exercise_check(
    "training_step",
    training_step_reference,
    _step_cases,
    mistakes={
        "the prediction was scored against the noisy latent, the U-Net's input; the target is the noise": (
            _step_variant(target="noisy")
        ),
        "the prediction was scored against the scaled noise sqrt(1 - alpha_bar) noise; the target is the noise "
        "itself, with variance 1 at every t, as the lesson warns": _step_variant(target="scaled noise"),
        "the prediction was scored against the clean latent; this U-Net predicts the noise": _step_variant(
            target="clean"
        ),
        "the squared errors were summed, not averaged: the loss is larger by the number of values in the batch "
        "(batch x 4 x 8 x 8 here)": _step_variant(reduce="sum"),
        "the timesteps were drawn from 1 to T; they lie in [0, T), torch.randint(0, T, ...) with "
        "T = scheduler.config.num_train_timesteps": _step_variant(t_range="one to T"),
        "the timesteps were drawn from [0, 1000) whatever the schedule; use scheduler.config.num_train_timesteps": (
            _step_variant(t_range="1000")
        ),
        "one timestep for the whole batch: each latent draws its own": _step_variant(one_t=True),
        "the draws came in another order: the timesteps first, then the noise": _step_variant(noise_first=True),
        "the weights did not change: call loss.backward(), then optimizer.step()": _step_variant(apply=False),
        "the gradients were not clipped to norm 1, as the lesson's loop does": _step_variant(clip=False),
        "the gradients were never zeroed, so the second step also applied the first step's gradients: call "
        "optimizer.zero_grad() in every step": _step_variant(zero=False),
        "the loss was returned as a tensor: return a Python float, loss.item()": _step_variant(as_float=False),
    },
    hints=[
        "The step is the lesson's training loop without the loop: draw, noise, predict, score, then update "
        "the weights. Draw the timesteps before the noise, both from generator.",
        "t = torch.randint(0, T, (batch,), generator=generator) with T = scheduler.config.num_train_timesteps, then "
        "noise = torch.randn(latents.shape, generator=generator); scheduler.add_noise(latents, noise, t) is z_t.",
        "loss = (unet(z_t, t, encoder_hidden_states=context).sample - noise).pow(2).mean().",
        "optimizer.zero_grad(), loss.backward(), torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0), "
        "optimizer.step(), and return loss.item().",
    ],
    solution=SOLUTION_NOTEBOOK,
    compare=_same_step,
    prepare=_two_steps,
)
