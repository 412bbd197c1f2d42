"""Writing what training produces: the StableDiffusionPipeline folder and the CLIP's image half.

Used by the build (build_model.py) and by train_longer.py.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from .train_unet import build_pipeline, make_scheduler


def save_pipeline(unet, vae, text_encoder, tokenizer, out: Path, partial: Path):
    """Write the StableDiffusionPipeline folder. U-Net and VAE weights are stored in float16
    (diffusers loads them back as float32); the text encoder stays float32. The folder is
    written to `partial` first (a folder inside the run folder) and moved to `out` at the end,
    so an interrupt never leaves half of it and nothing is written beside `out`."""
    out, tmp = Path(out), Path(partial)
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = build_pipeline(copy.deepcopy(unet).half(), copy.deepcopy(vae).half(), text_encoder, tokenizer,
                          make_scheduler("ddim"))
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), str(out))  # a rename, or a copy when the two are on different disks
    return out


def save_clip_extras(clip, folder: Path):
    """Save the CLIP's image encoder, projections and logit scale (not the text encoder,
    which the pipeline already holds) so its zero-shot accuracy can be measured later."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip.config.to_json_file(str(folder / "config.json"))
    weights = {k: v.contiguous() for k, v in clip.state_dict().items() if not k.startswith("text_model.")}
    save_file(weights, str(folder / "model.safetensors"))


def load_clip(folder: Path, text_encoder):
    """Rebuild the full CLIPModel from saved extras plus the pipeline's text encoder."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    model = CLIPModel(CLIPConfig.from_json_file(str(Path(folder) / "config.json")))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)
    model.text_model.load_state_dict(text_encoder.state_dict())
    return model.eval()


def folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6
