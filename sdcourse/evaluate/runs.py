"""Where a build's outputs are."""

from __future__ import annotations

from pathlib import Path

from ..loading import EMBEDDED_MODEL


def clip_image_folder(model=None, run=None) -> Path | None:
    """Where the tiny CLIP's image half of a model is: `<run>/tiny-clip` for a build's run
    folder; else `tiny-clip` beside the pipeline folder (the shipped model's
    sdcourse/assets/tiny-clip). None if there is none."""
    candidates = []
    if run is not None:
        candidates.append(Path(run) / "tiny-clip")
    candidates.append(Path(model if model is not None else EMBEDDED_MODEL).parent / "tiny-clip")
    return next((c for c in candidates if (c / "config.json").exists()), None)
