"""Writing what training produces: the StableDiffusionPipeline folder and the CLIP's image half.

Used by the build (build_model.py) and by train_longer.py. Both claim their --out before they
train (`claim_pipeline_folder`): a folder of someone else's is refused unless --overwrite.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from ..files import claim_folder, read_marker, save_safetensors, write_marker, write_text
from .train_unet import build_pipeline, make_scheduler

SHIPPED = "shipped.json"  # in the run folder: the pipeline folder last written from it, and its files


def shipped_marker(run_dir: Path) -> Path:
    return Path(run_dir) / "finished" / SHIPPED


def claim_pipeline_folder(out: Path, run_dir: Path, overwrite: bool = False) -> Path:
    """Check that the pipeline folder `out` may be written from the run folder `run_dir`: it is
    missing, empty, or the pipeline this run folder wrote there before (its files unchanged in
    name); anything else needs `overwrite`."""
    out = Path(out)
    recorded = read_marker(shipped_marker(run_dir))
    same = recorded is not None and recorded.get("settings", {}).get("out") == str(out.resolve())
    return claim_folder(out, "--out", owned=recorded["files"] if same else (), overwrite=overwrite)


def save_pipeline(unet, vae, text_encoder, tokenizer, out: Path, run_dir: Path):
    """Write the StableDiffusionPipeline folder. U-Net and VAE weights are stored in float16
    (diffusers loads them back as float32); the text encoder stays float32. The folder is
    written into the run folder first (pipeline.partial) and moved to `out` at the end, so an
    interrupt never leaves half of it and nothing is written beside `out`. What `out` held (the
    caller has claimed it) is moved aside into the run folder and deleted only once the new
    folder is in place. The run folder records what it wrote (`claim_pipeline_folder` reads it)."""
    out, run_dir = Path(out), Path(run_dir)
    partial, replaced = run_dir / "pipeline.partial", run_dir / "pipeline.replaced"
    if replaced.exists() and not out.exists():  # interrupted between the two moves below: put `out` back
        shutil.move(str(replaced), str(out))
    for leftover in (partial, replaced):
        if leftover.exists():
            shutil.rmtree(leftover)
    pipe = build_pipeline(copy.deepcopy(unet).half(), copy.deepcopy(vae).half(), text_encoder, tokenizer,
                          make_scheduler("ddim"))
    pipe.save_pretrained(str(partial), safe_serialization=True)
    files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.move(str(out), str(replaced))
    shutil.move(str(partial), str(out))  # a rename, or a copy when the two are on different disks
    write_marker(shipped_marker(run_dir), out, files, {"out": str(out.resolve())})
    if replaced.exists():
        shutil.rmtree(replaced)
    return out


def save_clip_extras(clip, folder: Path):
    """Save the CLIP's image encoder, projections and logit scale (not the text encoder,
    which the pipeline already holds) so its zero-shot accuracy can be measured later."""
    folder = Path(folder)
    write_text(folder / "config.json", clip.config.to_json_string())
    weights = {k: v for k, v in clip.state_dict().items() if not k.startswith("text_model.")}
    save_safetensors(folder / "model.safetensors", weights)


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
