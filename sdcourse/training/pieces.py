"""The three pieces of the build that the capstone (lesson 14) has the learner write, and what
the build expects of each:

    training_loss(unet, batch, empty_context, scheduler, caption_dropout, min_snr_gamma)
        -> the batch's loss, a 0-d float tensor that carries gradients
    ema_update(ema_model, model, decay, step)
        -> None; it moves ema_model's weights toward model's, in place
    encode_latents(vae, images, batch_size)
        -> the pictures' latents, scaled: a float tensor (N, latent channels, H / 8, W / 8)

The course's own are `train_unet.training_loss`, `common.ema_update` and the latents stage's
cache (`train_unet.load_or_cache_latents`, which keeps each picture's latent distribution, from
which every step draws, where encode_latents keeps its mean).

`build_model.main(arguments, training_loss=..., ...)` builds with the pieces it is given and the
course's own for the rest, and says which it uses. Each given piece first runs on one batch
(the `try_...` functions below), so that one returning the wrong kind of result is refused with
a `PieceError` naming the piece, what it returned and what the build expects, before any
training time is spent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..images import images_to_tensor

PIECE_NAMES = ("training_loss", "ema_update", "encode_latents")


class PieceError(ValueError):
    """A learner's piece of the build returned what the build cannot use."""


@dataclass(frozen=True)
class BuildPieces:
    """The learner's pieces of the build; None where the build uses the course's own."""

    training_loss: Callable | None = None
    ema_update: Callable | None = None
    encode_latents: Callable | None = None

    def __post_init__(self):
        for name in PIECE_NAMES:
            piece = getattr(self, name)
            if piece is not None and not callable(piece):
                raise TypeError(f"{name} must be a function (or None for the course's own); got {describe(piece)}")

    @property
    def given(self) -> tuple:
        """The names of the pieces given, in PIECE_NAMES' order."""
        return tuple(name for name in PIECE_NAMES if getattr(self, name) is not None)

    def announce(self, say=print):
        """Say which piece is whose. Says nothing when none is given: that is the course's build,
        as the command line runs it."""
        if not self.given:
            return
        for name in PIECE_NAMES:
            piece = getattr(self, name)
            if piece is None:
                say(f"{name}: none given, so the build uses the course's own")
            else:
                say(f"{name}: the function given, {getattr(piece, '__name__', type(piece).__name__)}")


def describe(value) -> str:
    """What a piece returned, in a few words: its type, and a tensor's dtype and shape."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype.startswith('int') else 'a'} {dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a numpy array ({value.dtype}) of shape {value.shape}"
    if value is None:
        return "None"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} model"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a Python number, {value:.6g}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:60] + ' ...'}"


LOSS_EXPECTED = "the batch's loss as one number that carries gradients: a 0-d float tensor, shape ()"


def try_training_loss(loss, batch):
    """Run the build's loss (`loss(batch)`, which calls the learner's training_loss) on one batch,
    and refuse its result unless it is what the trainer can call backward on."""
    result = loss(batch)
    if not isinstance(result, torch.Tensor) or not result.is_floating_point() or result.ndim != 0:
        problem = describe(result)
    elif not result.requires_grad:
        problem = (f"{describe(result)} without gradients (made under torch.no_grad(), detached, or rebuilt from a "
                   "Python number)")
    elif not torch.isfinite(result):
        problem = f"{describe(result)} holding {result.item()}"
    else:
        return
    raise PieceError(f"training_loss returned {problem} on the build's first batch; the build expects "
                     f"{LOSS_EXPECTED}. Nothing was trained.")


def try_ema_update(ema_update, model: torch.nn.Module, decay: float):
    """Run the learner's ema_update once on copies of `model`, and refuse it unless it leaves every
    weight of the EMA copy with the model's shape and dtype and returns None (the build keeps the
    EMA model it passed, so a new one returned would never be used)."""
    ema_model, trained = copy.deepcopy(model), copy.deepcopy(model)
    returned = ema_update(ema_model, trained, decay, 1)
    if returned is not None and returned is not ema_model:
        raise PieceError(f"ema_update returned {describe(returned)}; the build expects it to change ema_model's "
                         "weights in place and return None (the build keeps ema_model, not what ema_update returns). "
                         "Nothing was trained.")
    after = ema_model.state_dict()
    for name, before in model.state_dict().items():
        now = after.get(name)
        if now is None or now.shape != before.shape or now.dtype != before.dtype:
            got = "no longer holds it" if now is None else f"left it {describe(now)}"
            raise PieceError(f"ema_update changed the EMA model's {name}: it {got}; the build expects every weight to "
                             f"keep the model's shape and dtype, {describe(before)}. Nothing was trained.")


def latents_problem(result, count: int, latent_shape: tuple) -> str | None:
    """How encode_latents' result for `count` pictures fails the build, or None."""
    expected = (count, *latent_shape)
    if not isinstance(result, torch.Tensor) or not result.is_floating_point() or tuple(result.shape) != expected:
        return f"{describe(result)}; the build expects a float tensor of shape {expected}, one latent per picture"
    if result.requires_grad:
        return (f"{describe(result)} that carries gradients; the build expects latents without them (encode under "
                "torch.no_grad(): over the whole set, the gradients' records would fill the memory)")
    return None


def encode_training_set(encode_latents, vae, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """The scaled latents of every picture, by the learner's encode_latents: first on one batch and
    one picture more (a full batch and a partial one), then on the whole set. Refused with a
    PieceError, naming what it returned, when either result is not one float latent per picture."""
    with torch.no_grad():
        latent_shape = tuple(vae.encode(images_to_tensor(images[:1])).latent_dist.mean.shape[1:])
    for pictures, when in ((images[: batch_size + 1], "on the build's first batch and one picture more"),
                           (images, "on the whole training set")):
        result = encode_latents(vae, pictures, batch_size)
        problem = latents_problem(result, len(pictures), latent_shape)
        if problem:
            raise PieceError(f"encode_latents, given {len(pictures)} pictures in batches of {batch_size} ({when}), "
                             f"returned {problem}. Nothing was trained.")
    return result.float()
