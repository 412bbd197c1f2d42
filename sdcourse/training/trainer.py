"""One training loop for every stage of the build, the longer U-Net run and the judge.

A stage says only what is particular to it:

    model           the torch module that is trained, checkpointed and returned
    loss(model, batch) -> a loss tensor, or (loss, {"name": value}) to show values on the bar
    next_batch()    draws the next batch (a tensor, or a tuple/list/dict of tensors);
                    it draws from `generator`, whose state goes into every checkpoint
    settings        `TrainSettings`: steps, learning rate and its schedule, clipping, EMA

`Trainer` does the rest, the same way for every stage: the AdamW optimizer, the learning
rate at each step (linear warm-up, then constant or a half cosine), gradient clipping, an
exponential moving average (EMA) of the weights, checkpoints (written atomically, every
`checkpoint_every` steps and at the end), resuming from the last checkpoint, and the
progress bar.

It runs on Hugging Face `accelerate`. In a plain `python` process it trains on one device
(the CPU here). Started with `accelerate launch --num_processes N`, every process runs the
same code: each takes its share of every batch, the gradients are averaged across them, and
only the main process writes checkpoints. `mixed_precision="bf16"` (or "fp16") computes the
loss in half precision on GPUs; the weights stay float32.

    trainer = Trainer(model, loss, next_batch, TrainSettings(steps=1000, lr=1e-3, warmup=50),
                      generator=gen, checkpoint="runs/toy/ckpt.pt", name="toy")
    model = trainer.fit()  # run it again after an interrupt: it resumes from the checkpoint
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, slice_tensors
from tqdm.auto import tqdm

from .common import EMA, load_checkpoint, restore_generator, rng_state, save_checkpoint, set_rng_state
from .config import ADDED_SETTINGS

# The settings a resumed run may change: how long it runs (its steps, and the warm-up some
# stages derive from them), how often it saves, and the precision of its arithmetic. A
# checkpoint made with any other setting different (a learning rate, a batch or model size,
# the data) is refused, with a message that names the setting.
MAY_CHANGE_ON_RESUME = ("steps", "warmup", "checkpoint_every", "mixed_precision")

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainSettings:
    steps: int
    lr: float
    schedule: str = "cosine"  # after warm-up: "cosine" (down to lr * final_lr_fraction) or "constant"
    warmup: int = 0  # steps of linear warm-up from lr / warmup to lr
    final_lr_fraction: float = 0.0  # cosine only: the learning rate at the last step, as a fraction of lr
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    clip_grad_norm: float | None = 1.0  # None: no clipping
    ema_decay: float | None = None  # None: no EMA
    checkpoint_every: int = 0  # 0: only at the end
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
        if self.steps < 0 or self.warmup < 0 or self.checkpoint_every < 0:
            raise ValueError(f"steps={self.steps}, warmup={self.warmup} and checkpoint_every="
                             f"{self.checkpoint_every} must not be negative")


def learning_rate(settings: TrainSettings, step: int) -> float:
    """The learning rate for `step` (counted from 0)."""
    s = settings
    if s.schedule == "constant":
        return s.lr * min(1.0, (step + 1) / max(1, s.warmup))
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)  # 0 -> 1 over the steps after warm-up
    f = s.final_lr_fraction
    return s.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t)))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, or made with different settings."""


def check_resumable(saved: dict | None, asked: dict, path: Path, name: str):
    """Refuse to resume when a setting outside MAY_CHANGE_ON_RESUME differs from the checkpoint's.

    `saved` is None for checkpoints written before settings were recorded: those are trusted.
    A setting added since (config.ADDED_SETTINGS) counts as the value such checkpoints were made with.
    """
    if saved is None:
        return
    saved, asked = _plain(saved), _plain(asked)
    saved = {**{key: value for key, value in ADDED_SETTINGS.items() if key in asked}, **saved}
    missing = "(not set)"
    changed = [f"{key}: the checkpoint has {saved.get(key, missing)!r}, this run asks for {asked.get(key, missing)!r}"
               for key in sorted(set(saved) | set(asked))
               if key not in MAY_CHANGE_ON_RESUME and saved.get(key, missing) != asked.get(key, missing)]
    if changed:
        raise CheckpointError(
            f"{name}: cannot resume from {path}, which was made with other settings:\n  " + "\n  ".join(changed)
            + f"\nRun with the checkpoint's settings, or delete {path} to restart this stage. "
            f"Only these may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)}."
        )


def _plain(value):
    """Tuples as lists, so that settings compare equal however they were stored."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _ModelWithLoss(torch.nn.Module):
    """The model and its loss as one module. accelerate wraps this module's forward (for
    several processes, and for mixed precision), so the whole loss is covered, whichever
    of the model's methods the loss calls."""

    def __init__(self, model, loss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        return self.loss(self.model, batch)


class Trainer:
    """Trains `model` by minimizing `loss(model, next_batch())`; see the module's docstring.

    params: the parameters to train (default: those of `model` that require gradients), or
        groups of them, {"params": [...], "lr_scale": x}: a group learns at x times settings.lr.
    generator: the numpy or torch generator `next_batch` draws from (saved in checkpoints).
    checkpoint: the checkpoint file; None trains without checkpoints (and cannot resume).
    record: the stage's own settings (model sizes, data, loss weights) that a resumed run
        must share, stored in each checkpoint next to `settings`.
    after_step(trainer, step): called on the main process after each step (step counts from 1),
        e.g. to save sample pictures.
    save_trained_only: checkpoints hold only the trained parameters (a LoRA adapter's few
        thousand numbers, not the billion of the model it adapts).
    ema_update: the function that does one EMA update (`common.ema_update`'s arguments and
        contract; default that one). The capstone passes the learner's.
    """

    def __init__(self, model, loss, next_batch, settings: TrainSettings, *, params=None, generator=None,
                 checkpoint=None, name: str = "training", record: dict | None = None, progress: bool = True,
                 after_step=None, save_trained_only: bool = False, ema_update=None):
        self.settings = settings
        self.name = name
        self.next_batch = next_batch
        self.generator = generator
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.record = {**asdict(settings), **(record or {})}
        self.progress = progress
        self.after_step = after_step
        self.save_trained_only = save_trained_only
        self.accelerator = Accelerator(mixed_precision=settings.mixed_precision)
        params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        groups = [{**group, "params": list(group["params"]), "lr_scale": group.get("lr_scale", 1.0)} for group in groups]
        self.params = [p for group in groups for p in group["params"]]
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay,
                                      betas=tuple(settings.betas))
        self.wrapped, self.optimizer = self.accelerator.prepare(_ModelWithLoss(model, loss), optimizer)
        self.ema = EMA(self.model, settings.ema_decay, ema_update) if settings.ema_decay is not None else None
        self.step = 0

    @property
    def model(self):
        """The trained model itself, without accelerate's wrapping."""
        return self.accelerator.unwrap_model(self.wrapped).model

    def fit(self):
        """Train from the last checkpoint (if any) to `settings.steps`. Returns the model, in eval mode,
        on the CPU."""
        self.step = self.resume()
        steps = self.settings.steps
        main = self.accelerator.is_main_process
        bar = tqdm(range(self.step, steps), desc=self.name, initial=self.step, total=steps, mininterval=2,
                   disable=not (self.progress and main))
        self.train_mode()
        running = None
        for step in bar:
            loss, shown = self.training_step(step)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{float(v):.3g}" for k, v in shown.items()})
            self.step = step + 1
            every = self.settings.checkpoint_every
            if self.step == steps or (every and self.step % every == 0):
                self.save()
            if self.after_step is not None and main:
                self.after_step(self, self.step)
        self.accelerator.wait_for_everyone()
        # The course samples and measures on the CPU: the model (and its EMA) go back there.
        if self.ema is not None:
            self.ema.model.cpu()
        return self.model.cpu().eval()

    def train_mode(self):
        """Put the parts of the model that hold trained parameters in training mode, and the
        frozen parts in eval mode (they compute as at inference). A part without parameters
        (dropout, an activation) follows the part it belongs to."""
        trained = {id(p) for p in self.params}

        def set_mode(module, parent_training):
            own = list(module.parameters())
            module.training = any(id(p) in trained for p in own) if own else parent_training
            for child in module.children():
                set_mode(child, module.training)

        set_mode(self.model, True)

    def training_step(self, step: int):
        """One optimizer step at the learning rate of `step`. Returns (loss as a float, values to show)."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.settings, step) * group.get("lr_scale", 1.0)  # older checkpoints lack it
        self.optimizer.zero_grad(set_to_none=True)
        out = self.wrapped(self._share(self.next_batch()))
        loss, shown = out if isinstance(out, tuple) else (out, {})
        self.accelerator.backward(loss)
        if self.settings.clip_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.settings.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.item(), shown

    def _share(self, batch):
        """This process's share of a batch (all of it in a single process), on its device."""
        n = self.accelerator.num_processes
        if n > 1:
            batch = slice_tensors(batch, slice(self.accelerator.process_index, None, n))
        return send_to_device(batch, self.accelerator.device)

    def save(self):
        """Write the checkpoint (main process only; atomically, so an interrupt never leaves half a file)."""
        if self.checkpoint is None or not self.accelerator.is_main_process:
            return
        state = {"model": self.model_state(), "opt": self.optimizer.state_dict(), "step": self.step,
                 "rng": rng_state(self.generator), "settings": self.record}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        save_checkpoint(self.checkpoint, **state)

    def model_state(self) -> dict:
        """What a checkpoint keeps of the model: everything, or with save_trained_only the trained part."""
        if not self.save_trained_only:
            return self.model.state_dict()
        trained = {id(p) for p in self.params}
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if id(p) in trained}

    def load_model_state(self, state: dict):
        if not self.save_trained_only:
            self.model.load_state_dict(state)
            return
        mine = dict(self.model.named_parameters())
        expected = {name for name, p in mine.items() if any(p is q for q in self.params)}
        if set(state) != expected:
            raise KeyError(f"the checkpoint trains other parameters ({len(state)} saved, {len(expected)} here)")
        with torch.no_grad():
            for name, value in state.items():
                mine[name].copy_(value)

    def resume(self) -> int:
        """Load the checkpoint, if there is one; returns the step it reached (0 without one)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        try:
            state = load_checkpoint(self.checkpoint)
            saved_settings, step = state.get("settings"), int(state["step"])
        except Exception as error:
            raise self._damaged(error) from error
        check_resumable(saved_settings, self.record, self.checkpoint, self.name)
        try:
            self.load_model_state(state["model"])
            self.optimizer.load_state_dict(state["opt"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            if self.accelerator.scaler is not None and "scaler" in state:
                self.accelerator.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            restore_generator(self.generator, state)
        except Exception as error:
            raise self._damaged(error) from error
        return step

    def _damaged(self, error) -> CheckpointError:
        return CheckpointError(f"{self.name}: the checkpoint {self.checkpoint} is damaged or unreadable "
                               f"({type(error).__name__}: {error}). "
                               "Delete it to restart this stage from its beginning.")
