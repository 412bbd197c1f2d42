"""Checks for lesson 12: teaching the model a subject (textual inversion's masked rows, DreamBooth's
prior-preservation loss, and how close a fine-tuned model's pictures come to its training pictures)."""

from __future__ import annotations

import torch

from .core import Case, exercise_check

__all__ = ["check_train_new_rows", "check_prior_preservation_loss", "check_nearest_training_distance"]

SOLUTION_NOTEBOOK = "solutions/12_personalization.ipynb"


# ---- exercise 1: only the new word's rows train -----------------------------------------------


def _train_rows(rows, trained_ids, loss_fn, steps, lr, *, mask_gradient=True, weight_decay=0.0, invert=False,
                restore=False, mask_values=False, zero_grad=True):
    """The reference (all defaults) and, with one switch changed, each mistake."""
    rows = torch.nn.Parameter(rows.detach().clone())
    mask = torch.zeros(rows.shape[0], 1)
    mask[list(trained_ids)] = 1
    if invert:
        mask = 1 - mask
    if mask_gradient:
        rows.register_hook(lambda gradient: gradient * mask)
    start = rows.detach().clone()
    optimizer = torch.optim.AdamW([rows], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        if zero_grad:
            optimizer.zero_grad()
        loss_fn(rows * mask if mask_values else rows).backward()
        optimizer.step()
        if restore:
            with torch.no_grad():
                rows[mask[:, 0] == 0] = start[mask[:, 0] == 0]
    return rows.detach()


def _mistake(**switches):
    return lambda rows, trained_ids, loss_fn, steps, lr: _train_rows(rows, trained_ids, loss_fn, steps, lr, **switches)


class _Loss:
    """A loss that reaches many rows and mixes them, as a text encoder mixes a caption's words: the
    squared distance of the mean of the rows `ids` (a caption's token ids) from a target, plus a
    little of each row's own distance from its target. A class, so that a check's copy of a case
    is a copy of it too."""

    def __init__(self, ids, targets):
        self.ids, self.targets = ids, targets

    def __call__(self, rows):
        words = rows[self.ids]
        return (words.mean(0) - self.targets.mean(0)).pow(2).sum() + 0.1 * (words - self.targets).pow(2).sum()


def _rows_cases():
    g = torch.Generator().manual_seed(12)
    cases = []
    for label, vocab, dim, trained, ids in (("one new row (the last) of 10", 10, 4, [9], [0, 3, 9, 3, 5]),
                                            ("two new rows of 16", 16, 6, [14, 15], [1, 14, 2, 15, 7, 1])):
        rows = torch.randn(vocab, dim, generator=g)
        loss = _Loss(torch.tensor(ids), torch.randn(len(ids), dim, generator=g))
        cases.append(Case(label, (rows, trained, loss, 4, 0.1)))
    return cases


check_train_new_rows = exercise_check(
    "train_new_rows",
    _train_rows,
    _rows_cases,
    mistakes={
        "every row the loss reaches moved: multiply the gradient of the rows by a mask that is 1 on trained_ids "
        "and 0 elsewhere (rows.register_hook), so that only those rows learn": _mistake(mask_gradient=False),
        "the other rows still moved a little, although their gradient was zero: AdamW's default weight decay "
        "(0.01) shrinks every row at every step; create it with weight_decay=0": _mistake(weight_decay=0.01),
        "the trained rows were restored and every other row learned: the mask is 1 on the rows that train, "
        "0 elsewhere": _mistake(invert=True),
        "the other rows are right, but the trained rows shrank by weight decay too: with AdamW's default "
        "weight_decay, restoring the others is not enough; set weight_decay=0": _mistake(mask_gradient=False,
                                                                                          weight_decay=0.01,
                                                                                          restore=True),
        "the mask multiplied the rows themselves, so the loss saw zeros in place of the other words: it "
        "multiplies their gradient": _mistake(mask_values=True),
        "the gradients piled up from step to step: call optimizer.zero_grad() before each backward pass":
            _mistake(zero_grad=False),
    },
    hints=[
        "Make rows a trainable nn.Parameter, and before training give it a hook that multiplies its gradient "
        "by a (rows, 1) mask: 1 on trained_ids, 0 elsewhere.",
        "The optimizer is torch.optim.AdamW([rows], lr=lr, weight_decay=0.0): with the default decay, rows "
        "whose gradient is zero still shrink a little at every step.",
        "Each step: optimizer.zero_grad(), loss_fn(rows).backward(), optimizer.step(). Return rows.detach().",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the prior-preservation loss ---------------------------------------------------


def _prior_loss(per_picture, is_prior, prior_loss_weight):
    is_prior = is_prior.bool()
    return per_picture[~is_prior].mean() + prior_loss_weight * per_picture[is_prior].mean()


def _prior_cases():
    g = torch.Generator().manual_seed(21)
    cases = []
    for label, n_subject, n_prior, weight in (("2 subject and 2 class pictures, lambda 1", 2, 2, 1.0),
                                              ("1 subject and 3 class pictures, lambda 0.5", 1, 3, 0.5),
                                              ("3 subject and 5 class pictures, lambda 2", 3, 5, 2.0)):
        per_picture = torch.rand(n_subject + n_prior, generator=g) * 4
        order = torch.randperm(n_subject + n_prior, generator=g)  # class pictures need not come last
        is_prior = (torch.arange(n_subject + n_prior) >= n_subject)[order]
        cases.append(Case(label, (per_picture, is_prior, weight)))
    return cases


check_prior_preservation_loss = exercise_check(
    "prior_preservation_loss",
    _prior_loss,
    _prior_cases,
    mistakes={
        "one mean over the whole batch: the paper's loss is the subject pictures' mean plus lambda times the "
        "class pictures' mean, so lambda does not depend on how many of each a batch holds":
            lambda per, prior, w: per.mean(),
        "lambda weighed the subject pictures, not the class pictures (or the groups are swapped: is_prior is "
        "True for the class pictures)": lambda per, prior, w: w * per[~prior.bool()].mean() + per[prior.bool()].mean(),
        "sums, not means: each part is the mean over its own pictures":
            lambda per, prior, w: per[~prior.bool()].sum() + w * per[prior.bool()].sum(),
        "lambda weighed the whole batch's mean: it multiplies the class pictures' part only":
            lambda per, prior, w: per[~prior.bool()].mean() + w * per.mean(),
    },
    hints=[
        "Split the batch with is_prior: per_picture[~is_prior] are the subject's pictures, "
        "per_picture[is_prior] the class pictures the model drew itself.",
        "Take the mean of each part separately, then add: subject mean + prior_loss_weight * class mean.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: does the model redraw its training pictures? ---------------------------------


def _nearest_distance(pictures, training):
    a = pictures.reshape(len(pictures), -1).float()
    b = training.reshape(len(training), -1).float()
    distances = torch.cdist(a, b) / a.shape[1] ** 0.5  # RMS distance of every pair
    return distances.min(dim=1).values


def _nearest_cases():
    g = torch.Generator().manual_seed(3)
    training = torch.rand(5, 8, 8, 3, generator=g)
    copies = training[[2, 0, 4]] + 0.01 * torch.randn(3, 8, 8, 3, generator=g)  # nearly redrawn
    fresh = torch.rand(4, 8, 8, 3, generator=g)
    return [Case("pictures close to three training pictures", (copies, training)),
            Case("pictures unlike any training picture", (fresh, training)),
            Case("a mix of both, pictures of another size", (torch.cat([fresh[:2], copies[:1]])[:, :6, :6],
                                                              training[:, :6, :6]))]


check_nearest_training_distance = exercise_check(
    "nearest_training_distance",
    _nearest_distance,
    _nearest_cases,
    mistakes={
        "the distance to the mean training picture: a model that redraws one training picture is near that "
        "picture, not near their average; take each picture's smallest distance over the training pictures":
            lambda p, t: _nearest_distance(p, t.mean(0, keepdim=True)),
        "the largest distance, not the smallest: the question is how near the closest training picture is":
            lambda p, t: (torch.cdist(p.reshape(len(p), -1).float(), t.reshape(len(t), -1).float())
                          / p[0].numel() ** 0.5).max(1).values,
        "the summed squared difference, not its root mean square: divide by the number of values, then take "
        "the square root, so the distance is on the pictures' 0..1 scale":
            lambda p, t: (torch.cdist(p.reshape(len(p), -1).float(), t.reshape(len(t), -1).float()) ** 2).min(1).values,
        "the distance was not divided by the square root of the number of values (RMS distance)":
            lambda p, t: torch.cdist(p.reshape(len(p), -1).float(), t.reshape(len(t), -1).float()).min(1).values,
    },
    hints=[
        "Flatten each picture to one row of numbers. torch.cdist(a, b) gives the distance of every picture "
        "(rows of a) to every training picture (rows of b).",
        "Picture x_i's answer is the smallest, over the training pictures t_j, of sqrt(mean((x_i - t_j)**2)), "
        "the mean over one picture's values. With cdist: divide each distance by the square root of the number "
        "of values in one picture, then take each picture's smallest, .min(dim=1).values.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
