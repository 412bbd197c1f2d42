"""Loading a Stable Diffusion pipeline: the course's embedded tiny model, or a real one.

    >>> from sdcourse import load_pipeline
    >>> pipe = load_pipeline()                      # the tiny model shipped with the course
    >>> images = generate(pipe, "a red circle", seed=0)

`load_pipeline(model)` also takes a Hugging Face hub id or a local folder of a real SD
1.x/2.x model ("stable-diffusion-v1-5/stable-diffusion-v1-5"); the environment variable
SDCOURSE_MODEL chooses one without changing code. Everything is loaded offline: a hub id
must already be in the local Hugging Face cache.

Before anything is built, every weights file is checked, so a damaged or missing file
stops the load with an error naming it, instead of a half-loaded model.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent / "assets" / "tiny-sd"
MODEL_ENV_VAR = "SDCOURSE_MODEL"
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker", "image_encoder")


class ModelNotAvailableError(OSError):
    """The requested model is neither a local folder nor in the local Hugging Face cache."""


class DamagedWeightsError(OSError):
    """A weights file exists but cannot be read (truncated, corrupted, not safetensors)."""


def _how_to_get(model: str) -> str:
    return (
        f"The model {model!r} is not available offline: it is not a local folder and not in the "
        f"Hugging Face cache, and this machine cannot download it.\n"
        f"To use it:\n"
        f"  1. on a machine with network access, run\n"
        f"       huggingface-cli download {model} --local-dir <folder>\n"
        f"     (or `hf download {model} --local-dir <folder>`; some models need you to accept\n"
        f"     their licence on huggingface.co and to log in first);\n"
        f"  2. copy <folder> here and point the course at it:\n"
        f"       export {MODEL_ENV_VAR}=/path/to/<folder>   (or load_pipeline('/path/to/<folder>'))\n"
        f"Without it, load_pipeline() uses the course's embedded tiny model."
    )


def _looks_like_hub_id(model: str) -> bool:
    """"owner/name" with letters, digits, '-', '_', '.' only (and not starting with '.')."""
    return re.fullmatch(r"[A-Za-z0-9_][\w.-]*/[\w.-]+", model) is not None


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """The local folder holding `model`: the argument, else $SDCOURSE_MODEL, else the embedded
    tiny model. Hub ids are looked up in the local Hugging Face cache only."""
    chosen = model if model is not None else os.environ.get(MODEL_ENV_VAR) or EMBEDDED_MODEL
    chosen_str = str(chosen)
    local = Path(chosen_str).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ValueError(f"model={chosen_str!r} is a file; give a pipeline folder (with model_index.json) or a hub id")
    if isinstance(chosen, Path) or not _looks_like_hub_id(chosen_str):
        raise FileNotFoundError(f"model folder not found: {chosen_str}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(chosen_str, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ModelNotAvailableError(_how_to_get(chosen_str)) from err


def _check_safetensors(path: Path):
    """Open a safetensors file and read every tensor: raises DamagedWeightsError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            big = path.stat().st_size > 200e6  # real SD weights: header check only, reading all is slow
            for key in f.keys():
                if big:
                    f.get_slice(key)
                else:
                    f.get_tensor(key)
    except Exception as err:  # safetensors raises several error types for bad files
        raise DamagedWeightsError(f"damaged weights file {path}: {err}") from err


def validate_model_folder(folder: str | os.PathLike) -> list[Path]:
    """Check a pipeline folder before loading it; returns the weights files checked.

    Checks that model_index.json is there, that every component with weights has a
    weights file, that sharded files are complete, and that every .safetensors file reads.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"missing file {index_path}: not a diffusers pipeline folder")
    index = json.loads(index_path.read_text())
    checked = []
    for name in WEIGHT_COMPONENTS:
        spec = index.get(name)
        if not spec or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise FileNotFoundError(f"missing folder {sub} (listed in {index_path})")
        shard_indexes = sorted(sub.glob("*.safetensors.index.json"))
        files = sorted(p for p in sub.glob("*.safetensors"))
        for shard_index in shard_indexes:
            shards = set(json.loads(shard_index.read_text())["weight_map"].values())
            for shard in sorted(shards):
                if not (sub / shard).exists():
                    raise FileNotFoundError(f"missing weights file {sub / shard} (listed in {shard_index})")
        if not files:
            other = sorted(p.name for p in sub.glob("*.bin"))
            if other:
                checked.extend(sub / f for f in other)  # older checkpoints: torch .bin files
                continue
            expected = "diffusion_pytorch_model.safetensors" if index[name][0] == "diffusers" else "model.safetensors"
            raise FileNotFoundError(f"missing weights file {sub / expected}")
        for path in files:
            _check_safetensors(path)
            checked.append(path)
    return checked


@contextmanager
def _quiet_loading():
    """Hide the libraries' loading progress bars while the pipeline is built."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


def load_pipeline(model: str | os.PathLike | None = None, device: str = "cpu", quiet: bool = True):
    """A ready StableDiffusionPipeline, offline, in float32 on `device`.

    model: None (use $SDCOURSE_MODEL, else the embedded tiny model), a local pipeline
        folder, or a hub id already in the local Hugging Face cache.
    quiet: hide progress bars, both while loading and while generating.
    """
    import torch

    folder = resolve_model(model)
    validate_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    components = {}
    tokenizer = _load_tokenizer_fast(folder / "tokenizer")
    if tokenizer is not None:
        components["tokenizer"] = tokenizer
    with _quiet_loading() if quiet else _nullcontext():
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                       **components)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=quiet)
    return pipe


def _load_tokenizer_fast(folder: Path):
    """Build a CLIPTokenizer straight from tokenizer.json (much faster than the generic
    loader, which parses the 3.6 MB file in Python). None if the folder has no such file."""
    return _cached_tokenizer(str(folder)) if (folder / "tokenizer.json").exists() else None


@lru_cache(maxsize=4)
def _cached_tokenizer(folder: str):
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return CLIPTokenizer(tokenizer_object=Tokenizer.from_file(str(Path(folder) / "tokenizer.json")),
                         model_max_length=config.get("model_max_length", 77))


@contextmanager
def _nullcontext():
    yield


def check_size(height: int, width: int):
    """Stable Diffusion's VAE downsamples by 8: height and width must be multiples of 8."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise ValueError(f"{name}={value!r}; it must be a positive multiple of 8 (e.g. 64, 512)")


def generate(pipe, prompts, height: int | None = None, width: int | None = None,
             num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int = 0,
             negative_prompt=None, output_type: str = "pil", **kwargs):
    """Generate one picture per prompt; picture i uses seed `seed + i`.

    height/width default to the model's native size (64 for the tiny model, 512 for SD 1.x)
    and must be multiples of 8. Long prompts are cut to 77 tokens with a warning.
    Returns a list of PIL images (or an array with output_type="np").
    """
    import torch

    from .tokenizer import tokenize

    if isinstance(prompts, str):
        prompts = [prompts]
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height = native if height is None else height
    width = native if width is None else width
    check_size(height, width)
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}; it must be at least 1")
    tokenize(prompts, pipe.tokenizer)  # warns about prompts that will be truncated
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(list(prompts), height=height, width=width, num_inference_steps=num_inference_steps,
               guidance_scale=guidance_scale, negative_prompt=negative_prompt, generator=generators,
               output_type=output_type, **kwargs)
    return out.images
