"""Small pieces shared by the training stages: seeding, EMA, checkpoint files, random states, image grids.

Pictures to tensors and back are `sdcourse.images`' (`images_to_tensor`, `to_uint8`).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch

from ..files import write_atomically


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int):
    torch.set_num_threads(n)


def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float, step: int):
    """One update of an exponential moving average, in place: each of ema_model's weights moves
    to decay * ema + (1 - decay) * w, with the model's weight w; its buffers (a norm's running
    statistics, say) are copied. step is the number of this update, 1 for the first: early in
    training the decay is ramped up, min(decay, (1 + step) / (10 + step)), so that the average
    does not remember the random initial weights for too long. (The capstone, lesson 14, has the
    learner write this.)"""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_p, p in zip(ema_model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(ema_model.buffers(), model.buffers()):
            ema_b.copy_(b)


class EMA:
    """Exponential moving average of a model's weights (`ema_update`): smoother than the last
    weights, it usually samples better.

    update_weights: the function that does one update, ema_update's arguments and contract
    (default `ema_update`; the capstone passes the learner's).
    """

    def __init__(self, model: torch.nn.Module, decay: float, update_weights=None):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0
        self.update_weights = update_weights or ema_update

    def update(self, model: torch.nn.Module):
        self.step += 1
        self.update_weights(self.model, model, self.decay, self.step)

    def state_dict(self):
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.step = state["step"]


def save_checkpoint(path: Path, **state):
    """Save atomically (write a temporary file, then rename), so an interrupt never leaves
    a half-written checkpoint behind."""
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path):
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state(generator=None):
    """The global random states, plus a stage's own generator (numpy or torch) if given, so a
    resumed run draws exactly the batches an uninterrupted one would."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state() if isinstance(generator, torch.Generator) else generator.bit_generator.state
    return state


def restore_generator(generator, state):
    """Put a stage's generator back where a checkpoint left it (no-op without one, or for older checkpoints)."""
    if generator is None or state is None or "generator" not in state.get("rng", {}):
        return
    saved = state["rng"]["generator"]
    if isinstance(generator, torch.Generator):
        generator.set_state(saved)
    else:
        generator.bit_generator.state = saved


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_grid(images: np.ndarray, path: Path, titles=None, columns: int = 8):
    """Save uint8 images (N, H, W, 3) as one PNG grid, optionally with a small title each. It draws
    on a figure of its own, outside pyplot, so a notebook's inline plots are left as they were."""
    from matplotlib.figure import Figure

    n = len(images)
    rows = (n + columns - 1) // columns
    fig = Figure(figsize=(columns * 1.6, rows * 1.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i][:34], fontsize=5)
    fig.tight_layout()
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=100, format="png"))


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction: str = "epsilon") -> torch.Tensor:
    """Each timestep's loss weight under "min-SNR" weighting (Hang et al. 2023): min(SNR, gamma) / SNR
    for a model that predicts the noise, min(SNR, gamma) / (SNR + 1) for one that predicts v.
    Nearly clean timesteps, which only polish details, count less; the noisy ones, where colour,
    shape and layout are decided, count fully. gamma = 0: every weight is 1 (plain squared error)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if not gamma:
        return torch.ones_like(snr)
    return snr.clamp(max=gamma) / (snr + 1 if prediction == "v_prediction" else snr)
