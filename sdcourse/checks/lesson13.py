"""Checks for lesson 13: ControlNet (a zero convolution's output and gradients, the residuals
added into the U-Net, and a control picture made from a filled mask)."""

from __future__ import annotations

import numpy as np
import torch

from .core import Case, exercise_check

__all__ = ["check_zero_conv_gradients", "check_add_residuals", "check_outline_from_mask"]

SOLUTION_NOTEBOOK = "solutions/13_controlnet.ipynb"


# ---- exercise 1: a zero convolution, forward and backward --------------------------------------


def _zero_conv_gradients(x, upstream):
    """Autograd through a real 1x1 convolution whose weight and bias are zero."""
    conv = torch.nn.Conv2d(x.shape[1], upstream.shape[1], kernel_size=1)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    out = conv(x)
    out.backward(upstream)
    return {"output": out.detach(), "weight_grad": conv.weight.grad[:, :, 0, 0].clone(),
            "bias_grad": conv.bias.grad.clone()}


def _zero_conv_cases():
    g = torch.Generator().manual_seed(13)
    return [Case(f"batch {b}, {c_in} channels in, {c_out} out, {h}x{w}",
                 (torch.randn(b, c_in, h, w, generator=g), torch.randn(b, c_out, h, w, generator=g)))
            for b, c_in, c_out, h, w in ((1, 3, 3, 2, 2), (2, 4, 6, 3, 5), (3, 8, 2, 4, 4))]


def _gradients_by_hand(x, upstream, weight=None, bias=None):
    weight = torch.einsum("bohw,bihw->oi", upstream, x) if weight is None else weight
    bias = upstream.sum((0, 2, 3)) if bias is None else bias
    return {"output": torch.zeros_like(upstream), "weight_grad": weight, "bias_grad": bias}


check_zero_conv_gradients = exercise_check(
    "zero_conv_gradients",
    _zero_conv_gradients,
    _zero_conv_cases,
    mistakes={
        "the weight's gradient is zero because the weight is: dL/dW is the upstream gradient times the "
        "convolution's input, and the input is not zero": lambda x, u: _gradients_by_hand(
            x, u, weight=torch.zeros(u.shape[1], x.shape[1])),
        "the weight's gradient is (in, out); a convolution's weight is (out channels, in channels)":
            lambda x, u: _gradients_by_hand(x, u, weight=torch.einsum("bohw,bihw->io", u, x)),
        "the gradient of the first picture only: sum over the batch and over every pixel":
            lambda x, u: _gradients_by_hand(x, u, weight=torch.einsum("ohw,ihw->oi", u[0], x[0]),
                                            bias=u[0].sum((1, 2))),
        "a mean, not a sum: the loss's gradient reaches the weight from every picture and pixel in full":
            lambda x, u: _gradients_by_hand(x, u, weight=torch.einsum("bohw,bihw->oi", u, x) / u[:, 0].numel(),
                                            bias=u.mean((0, 2, 3))),
        "the bias's gradient is zero: it is the upstream gradient summed over the batch and the pixels":
            lambda x, u: _gradients_by_hand(x, u, bias=torch.zeros(u.shape[1])),
    },
    hints=[
        "The output is zeros of the upstream gradient's shape: every output is 0 * x + 0.",
        "A 1x1 convolution is a Linear layer applied at every pixel: out[b, o, h, w] = sum_i W[o, i] x[b, i, h, w] + "
        "bias[o]. So dL/dW[o, i] sums upstream[b, o, h, w] * x[b, i, h, w] over b, h and w.",
        "weight_grad = torch.einsum('bohw,bihw->oi', upstream, x); bias_grad = upstream.sum((0, 2, 3)).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the residuals, added where the U-Net keeps its skips --------------------------


def _add_residuals(skips, mid, down_residuals, mid_residual):
    if len(down_residuals) != len(skips):
        raise ValueError(f"down_residuals: {len(down_residuals)} for {len(skips)} skips; give one per skip")
    return [s + r for s, r in zip(skips, down_residuals)], mid + mid_residual


def _residual_cases():
    g = torch.Generator().manual_seed(31)
    shapes = [(2, 4, 8, 8), (2, 4, 8, 8), (2, 4, 4, 4), (2, 8, 4, 4), (2, 8, 2, 2)]
    skips = [torch.randn(s, generator=g) for s in shapes]
    residuals = [torch.randn(s, generator=g) for s in shapes]
    mid, mid_residual = torch.randn(2, 8, 2, 2, generator=g), torch.randn(2, 8, 2, 2, generator=g)
    square = [(1, 2, 4, 4)] * 3  # skips all of one shape: an order mistake cannot hide behind a shape error
    same = [torch.randn(s, generator=g) for s in square]
    same_res = [torch.randn(s, generator=g) for s in square]
    return [Case("three skips of one shape", (same, torch.randn(1, 2, 4, 4, generator=g), same_res,
                                               torch.randn(1, 2, 4, 4, generator=g))),
            Case("five skips of the tiny U-Net's shapes", (skips, mid, residuals, mid_residual)),
            Case("one residual too few", (skips, mid, residuals[:-1], mid_residual))]


def _report_inputs(fn):
    """Run fn, and report whether it changed its inputs (the U-Net's skips are reused later)."""
    def report(skips, mid, down_residuals, mid_residual):
        before = [s.clone() for s in skips], mid.clone()
        result = fn(skips, mid, down_residuals, mid_residual)
        unchanged = all(torch.equal(a, b) for a, b in zip(before[0], skips)) and torch.equal(before[1], mid)
        return {"result": result, "inputs unchanged": unchanged}
    return report


def _in_place(skips, mid, down, mid_residual):
    if len(down) != len(skips):
        raise ValueError("one per skip")
    for s, r in zip(skips, down):
        s += r
    mid += mid_residual
    return skips, mid


check_add_residuals = exercise_check(
    "add_residuals",
    _add_residuals,
    _residual_cases,
    mistakes={
        "the residuals went in reverse order: residual i belongs to skip i, in the order the down path makes "
        "them (the up path reads the skips backwards, but that comes later)":
            lambda s, m, d, mr: ([a + b for a, b in zip(s, d[::-1])], m + mr),
        "the skips were changed in place (+=): make new tensors, since the caller may use the skips again":
            _in_place,
        "the mid residual was left out: it is added to the mid block's output":
            lambda s, m, d, mr: ([a + b for a, b in zip(s, d)], m),
        "a list of residuals that does not fit the skips was accepted: zip stops at the shorter list, so a "
        "missing residual goes unnoticed; raise a ValueError":
            lambda s, m, d, mr: ([a + b for a, b in zip(s, d)], m + mr),
    },
    hints=[
        "Residual i goes to skip i: a new list, [skip + residual for each pair], and mid + mid_residual.",
        "Check first that there is one residual per skip (a ValueError otherwise), and do not use +=: the skips "
        "are tensors the U-Net keeps for its up path.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_report_inputs,
)


# ---- exercise 3: a control picture from a filled mask ------------------------------------------


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (a square of side 2 radius + 1) of a True pixel; outside the picture is False."""
    padded = np.pad(mask, radius)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _outline_from_mask(mask, radius):
    mask = np.asarray(mask, dtype=bool)
    ring = _grow(mask, radius) & _grow(~mask, radius)
    return np.repeat((ring * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _mask_cases():
    yy, xx = np.mgrid[:32, :32]
    disc = (xx - 12.5) ** 2 + (yy - 14.5) ** 2 <= 49
    square = (np.abs(xx - 20) <= 6) & (np.abs(yy - 20) <= 6)
    edge = (xx < 10) & (yy > 4)  # touches the picture's border
    return [Case("a disc, radius 1", (disc, 1)), Case("a square, radius 2", (square, 2)),
            Case("a shape at the border, radius 1", (edge, 1))]


check_outline_from_mask = exercise_check(
    "outline_from_mask",
    _outline_from_mask,
    _mask_cases,
    mistakes={
        "only the inside half of the outline: a pixel is on it when it is near the mask and near its outside, "
        "so the line runs radius pixels out and radius pixels in": lambda m, r: np.repeat(
            ((np.asarray(m, bool) & _grow(~np.asarray(m, bool), r)) * 255).astype(np.uint8)[..., None], 3, -1),
        "the mask itself, filled: a ControlNet trained on outlines reads a filled shape as a thick outline":
            lambda m, r: np.repeat((np.asarray(m, bool) * 255).astype(np.uint8)[..., None], 3, -1),
        "black on white: the control pictures it learned from are white lines on black":
            lambda m, r: 255 - _outline_from_mask(m, r),
        "one channel: a control picture is RGB, (H, W, 3), as the pipeline reads it":
            lambda m, r: _outline_from_mask(m, r)[..., 0],
        "the picture's border counted as outside the shape: a shape that touches the border gets a line "
        "along it, which no outline of the shapes world has": lambda m, r: np.repeat(
            ((_grow(np.asarray(m, bool), r) & ~_shrink_closed(np.asarray(m, bool), r)) * 255).astype(np.uint8)[..., None],
            3, -1),
    },
    hints=[
        "A pixel is on the outline when some pixel within radius of it (a square around it) is in the mask, "
        "and some pixel within radius of it is not.",
        "Grow the mask by radius (True wherever a True pixel is within reach; np.pad, then OR of shifted copies) "
        "and grow its complement the same way; the outline is where both are True. Outside the picture counts "
        "as neither.",
        "Return white (255) on the outline and black (0) elsewhere, uint8, repeated to 3 channels: (H, W, 3).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


def _shrink_closed(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask shrunk by radius, with outside the picture counted as outside the shape."""
    return ~_grow(np.pad(~mask, radius, constant_values=True), radius)[radius:-radius, radius:-radius]
