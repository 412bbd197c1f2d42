"""Figures used across the lessons. Every function returns a matplotlib Figure.

The figures here are drawn in the course's style (small, no top or right spines, a light
grid) without changing matplotlib's global settings. A lesson that draws its own figures
with `plt` calls `use_course_style()` once, to get the same look; nothing else changes.

Images may be torch tensors or numpy arrays, (C, H, W) or (H, W, C), in [-1, 1] (what the
networks use), [0, 1], or uint8 [0, 255]; `to_image` turns any of them into (H, W, 3) uint8.
"""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import torch

STYLE = {
    "figure.dpi": 80,
    "savefig.dpi": 80,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 10,
    "axes.titlesize": 10,
}


def use_course_style() -> None:
    """Apply the course's figure style to every later matplotlib figure (global rcParams)."""
    plt.rcParams.update(STYLE)


def _in_course_style(make_figure):
    """Draw a figure function's output in the course style, leaving the global settings alone."""

    @functools.wraps(make_figure)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return make_figure(*args, **kwargs)

    return wrapper


def to_image(image, value_range=None) -> np.ndarray:
    """(H, W, 3) uint8 from a tensor or array in [-1, 1], [0, 1] or [0, 255].

    value_range: (low, high) to say how the input is scaled; guessed when None:
    uint8 means [0, 255], any negative value means [-1, 1], otherwise [0, 1].
    """
    channels_first = isinstance(image, torch.Tensor)  # torch images are (C, H, W)
    if channels_first:
        image = image.detach().cpu()
        image = image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and not channels_first:  # arrays: (H, W, C) unless clearly (C, H, W)
        channels_first = array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4)
    if array.ndim == 3 and channels_first:
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image has shape {array.shape}; allowed: (H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4")
    if array.dtype == np.uint8:
        out = array
    else:
        if value_range is None:
            value_range = (-1.0, 1.0) if array.min() < 0 else (0.0, 1.0)
        low, high = value_range
        out = (np.clip((array - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out[..., :3]


@_in_course_style
def image_grid(images, captions=None, ncols=None, title=None, size=1.6) -> plt.Figure:
    """Images in a grid, each with an optional caption below it."""
    images = list(images)
    if not images:
        raise ValueError("images is empty; give at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"captions has {len(captions)} entries for {len(images)} images; they must match")
    ncols = ncols or min(len(images), 8)
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(to_image(images[i]), interpolation="nearest")
            if captions is not None:
                ax.set_title(_wrap(str(captions[i]), _characters_over(size)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@_in_course_style
def picture_table(rows, row_labels=None, column_labels=None, title=None, size=1.2, notes=None,
                  row_labels_above=False) -> plt.Figure:
    """Pictures in a table: one list of pictures per row, a label left of each row and one above
    each column. Labels wrap to fit, so long prompts never overlap.

    notes: one short text per picture (a list per row), written under it, such as the judge's verdict.
    row_labels_above: each row's label goes above the row, for labels too long for the left margin;
        the column labels then go under the last row (and there is no room for notes).
    """
    rows = [list(row) for row in rows]
    n_rows, n_cols = len(rows), len(rows[0]) if rows else 0
    if n_cols == 0:
        raise ValueError("rows is empty; give at least one row of pictures")
    if any(len(row) != n_cols for row in rows):
        raise ValueError(f"rows hold {[len(row) for row in rows]} pictures; every row needs the same number")
    for name, labels, count, unit in (("row_labels", row_labels, n_rows, "rows"),
                                      ("column_labels", column_labels, n_cols, "columns"), ("notes", notes, n_rows, "rows")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} has {len(labels)} entries for {count} {unit}; they must match")
    if notes is not None and any(len(row) != n_cols for row in notes):
        raise ValueError(f"notes rows hold {[len(row) for row in notes]} texts; give one per picture ({n_cols} a row)")
    if notes is not None and row_labels_above:
        raise ValueError("notes and row_labels_above=True both need the space under the pictures; give one of them")
    fontsize, note_size = 8, 7
    fits = _characters_over(size, fontsize)
    column_labels = [_wrap(str(label), fits) for label in column_labels] if column_labels else None
    notes = [[_wrap(str(note), fits + 2) for note in row] for row in notes] if notes is not None else None
    line = fontsize * 1.3 / 72  # one line of labels, in inches
    label_lines = max(label.count("\n") + 1 for label in column_labels) if column_labels else 0
    note_lines = max(note.count("\n") + 1 for row in notes for note in row) if notes else 0
    # The layout in inches: labels around the pictures, a gap between them, nothing stretched
    head, left, bottom = (0.4 if title else 0.05), 0.05, 0.05
    gap_x, gap_y = 0.08, 0.15 + note_lines * line
    if row_labels_above:
        gap_y += line if row_labels else 0
        head += line if row_labels else 0
        bottom += label_lines * line
    else:
        head += label_lines * line
        left += 0.3 if row_labels else 0
        bottom += note_lines * line
    width = left + n_cols * size + (n_cols - 1) * gap_x + 0.05
    height = head + n_rows * size + (n_rows - 1) * gap_y + bottom
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.05 / width, bottom=bottom / height, top=1 - head / height,
                        wspace=gap_x / size, hspace=gap_y / size)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            ax = axes[r, c]
            ax.imshow(to_image(picture), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
            if column_labels and r == (n_rows - 1 if row_labels_above else 0):
                if row_labels_above:
                    ax.set_xlabel(column_labels[c], fontsize=fontsize)
                else:
                    ax.set_title(column_labels[c], fontsize=fontsize)
            if notes:
                ax.set_xlabel(notes[r][c], fontsize=note_size)
        if row_labels and row_labels_above:
            axes[r, 0].set_title(str(row_labels[r]), loc="left", fontsize=fontsize)
        elif row_labels:
            axes[r, 0].set_ylabel(_wrap(str(row_labels[r]), 14), fontsize=fontsize)
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
    return fig


@_in_course_style
def schedule_curves(schedules: dict, title="Noise schedules") -> plt.Figure:
    """alpha-bar and SNR (dB) against t for named schedules.

    schedules: {name: a NoiseSchedule, or a 1-D array of alphas_cumprod}.
    """
    fig, (ax_bar, ax_snr) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, schedule in schedules.items():
        alpha_bar = np.asarray(getattr(schedule, "alphas_cumprod", schedule), dtype=np.float64)
        t = np.arange(len(alpha_bar))
        ax_bar.plot(t, alpha_bar, label=name)
        ax_snr.plot(t, 10 * np.log10(alpha_bar / (1 - alpha_bar)), label=name)
    ax_bar.set(xlabel="timestep t", ylabel=r"$\bar\alpha_t$", title="signal kept")
    ax_snr.axhline(0, color="gray", lw=0.8, ls="--")
    ax_snr.set(xlabel="timestep t", ylabel="SNR (dB)", title="signal-to-noise ratio")
    ax_bar.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_in_course_style
def trajectory_strip(images, timesteps, title=None, size=1.4) -> plt.Figure:
    """One row of images along a noising or denoising trajectory, labelled t=..."""
    images = list(images)
    if len(images) != len(timesteps):
        raise ValueError(f"timesteps has {len(timesteps)} entries for {len(images)} images; they must match")
    return image_grid(images, [f"t={int(t)}" for t in timesteps], ncols=len(images), title=title, size=size)


@_in_course_style
def compare_images(ours, theirs, labels=("ours", "library"), title=None, size=2.2) -> plt.Figure:
    """Two images side by side and their absolute difference, with the max difference in the title."""
    a = _as_float_hwc(ours)
    b = _as_float_hwc(theirs)
    if a.shape != b.shape:
        raise ValueError(f"the images differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a - b).max(axis=-1)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size + 0.6, size + 0.5))
    for ax, image, label in zip(axes, (ours, theirs), labels):
        ax.imshow(to_image(image), interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    shown = axes[2].imshow(diff, cmap="magma", vmin=0, vmax=max(float(diff.max()), 1e-8), interpolation="nearest")
    axes[2].set_title(f"|difference|, max {diff.max():.2e}")
    axes[2].axis("off")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, format="%.0e")  # no offset label over the title
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _as_float_hwc(image) -> np.ndarray:
    """Values as given (not rescaled), as float (H, W, C), so differences are in the input's units."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().double().numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    return array if array.ndim == 3 else array[..., None]


def _characters_over(inches: float, fontsize: float = 8) -> int:
    """How many characters of a label fit over a picture `inches` wide."""
    return max(6, int(inches * 72 / (fontsize * 0.62)) - 1)


def _wrap(text, width=22) -> str:
    """Lines of at most `width` characters, broken between words; the text's own line breaks stay."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
    return "\n".join(lines)


@_in_course_style
def pipeline_diagram(highlight=None) -> plt.Figure:
    """Stable Diffusion's inference pipeline as boxes and arrows.

    highlight: the name of one box to colour (e.g. "U-Net"), to show where a lesson sits.
    """
    boxes = {  # name: (x, y, what it does)
        "prompt": (0.0, 1.0, '"a red circle"'),
        "tokenizer": (1.9, 1.0, "CLIP BPE\n77 token ids"),
        "text encoder": (3.8, 1.0, "CLIP\n77 x width"),
        "noise": (3.8, 0.0, "random latents\n4 x h/8 x w/8"),
        "U-Net": (6.1, 0.5, "predicts the noise\nwith & without text"),
        "scheduler": (8.5, 0.5, "removes some noise\nrepeat N steps"),
        "VAE decoder": (10.7, 0.5, "latents -> pixels\nx8 per side"),
        "image": (12.5, 0.5, "3 x h x w"),
    }
    arrows = [
        ("prompt", "tokenizer"), ("tokenizer", "text encoder"), ("text encoder", "U-Net"),
        ("noise", "U-Net"), ("U-Net", "scheduler"), ("scheduler", "VAE decoder"), ("VAE decoder", "image"),
    ]
    HALF_WIDTH = {"prompt": 0.65, "tokenizer": 0.6, "text encoder": 0.6, "noise": 0.75, "U-Net": 0.85,
                  "scheduler": 0.85, "VAE decoder": 0.75, "image": 0.45}
    if highlight is not None and highlight not in boxes:
        raise ValueError(f"highlight={highlight!r} is not a box; allowed: {', '.join(boxes)}")
    fig, ax = plt.subplots(figsize=(11, 2.4))
    for name, (x, y, note) in boxes.items():
        colour = "#ffd27f" if name == highlight else "#dbe9f6"
        ax.text(x, y, f"{name}\n{note}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="#4a6fa5"))
    for start, end in arrows:
        (x0, y0, _), (x1, y1, _) = boxes[start], boxes[end]
        ax.annotate("", xy=(x1 - HALF_WIDTH[end], y1), xytext=(x0 + HALF_WIDTH[start], y0),
                    arrowprops=dict(arrowstyle="->", color="#4a6fa5"))
    # the denoising loop: the scheduler's output goes back into the U-Net
    ax.annotate("", xy=(6.1, 0.85), xytext=(8.5, 0.85),
                arrowprops=dict(arrowstyle="->", color="#c0392b", connectionstyle="arc3,rad=0.45"))
    ax.text(7.3, 1.3, "denoising loop", color="#c0392b", ha="center", fontsize=8)
    ax.set_xlim(-0.9, 13.3)
    ax.set_ylim(-0.5, 1.5)
    ax.axis("off")
    fig.tight_layout()
    return fig
