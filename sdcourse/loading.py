"""Loading a Stable Diffusion pipeline, the course's embedded tiny model or a real one, and
making pictures with it.

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

import difflib
import inspect
import json
import os
import re
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import torch

from sdcourse.arguments import random_seed, whole_number
from sdcourse.guidance import check_guidance_scale
from sdcourse.request_checks import check_memory, check_prompts, check_size
from sdcourse.tokenizer import tokenize

EMBEDDED_MODEL = Path(__file__).resolve().parent / "assets" / "tiny-sd"
EMBEDDED_CONTROLNET = Path(__file__).resolve().parent / "assets" / "tiny-controlnet"  # outlines in, for tiny-sd
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
    from_env = model is None and bool(os.environ.get(MODEL_ENV_VAR))
    chosen = model if model is not None else os.environ.get(MODEL_ENV_VAR) or EMBEDDED_MODEL
    chosen_str = str(chosen)
    named = f"{MODEL_ENV_VAR}={chosen_str!r} (an environment variable)" if from_env else f"model={chosen_str!r}"
    local = Path(chosen_str).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ValueError(f"{named} is a file; give a pipeline folder (with model_index.json) or a hub id")
    if isinstance(chosen, Path) or not _looks_like_hub_id(chosen_str):
        raise FileNotFoundError(f"{named}: no such folder"
                                + (f"; unset {MODEL_ENV_VAR} to use the embedded tiny model" if from_env else ""))
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
                    continue
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise DamagedWeightsError(f"damaged weights file {path}: {key} holds NaN or infinite values "
                                              "(a model with them paints black pictures)")
    except DamagedWeightsError:
        raise
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
    index = _read_json(index_path)
    tokenizer = folder / "tokenizer"
    if index.get("tokenizer") and not any((tokenizer / name).exists() for name in ("tokenizer.json", "vocab.json")):
        raise FileNotFoundError(f"missing tokenizer: {tokenizer} has neither tokenizer.json nor vocab.json "
                                f"(listed in {index_path}); copy the model's tokenizer folder there")
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
            shards = set(_read_json(shard_index)["weight_map"].values())
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it from the model's original folder") from None


def check_device(device) -> torch.device:
    """device as a torch.device, refused at once if this machine does not have it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a device ({error}); use 'cpu', 'cuda' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but torch sees no CUDA GPU here (torch.cuda.is_available() is "
                         "False); use device='cpu', or install a CUDA build of torch (README: Running on a GPU)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r}, but Apple's GPU (mps) is not available here; use device='cpu'")
    return device


_MISMATCH = re.compile(r"(\S+) expected shape (torch\.Size\(\[[^\]]*\]\)), but got (torch\.Size\(\[[^\]]*\]\))")
# Config fields that size the layers whose names contain these parts, the first that matches
# (the usual suspects); any other layer is sized by block_out_channels.
_SIZE_FIELDS = {"quant_conv": "latent_channels", "encoder.conv_out": "latent_channels",
                "decoder.conv_in": "latent_channels", "attn2.to_k": "cross_attention_dim",
                "attn2.to_v": "cross_attention_dim", "text_model": "hidden_size", "conv_in": "in_channels",
                "conv_out": "out_channels"}
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def _config_mismatch(error: Exception, folder: Path) -> ValueError | None:
    """The course's message for weights that do not fit their config, or None for other errors."""
    found = _MISMATCH.search(str(error))
    if found is None:
        return None
    key, config_shape, weights_shape = found.groups()
    field = next((f for part, f in _SIZE_FIELDS.items() if part in key), "block_out_channels")
    component = "vae" if key.startswith(_VAE_PARTS) else "text_encoder" if "text_model" in key else "unet"
    return ValueError(
        f"{folder / component / 'config.json'} does not fit the weights beside it: {key} is "
        f"{weights_shape} in the weights, but the config makes it {config_shape}. A size in the config "
        f"(most likely {field}) was changed after the weights were saved: restore the config from the "
        "model's original folder."
    )


@contextmanager
def _quiet_loading():
    """Hide the libraries' loading progress bars and warnings while the pipeline is built."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with _libraries_quiet():
            yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


def load_pipeline(model: str | os.PathLike | None = None, device: str = "cpu", quiet: bool = True,
                  controlnet: bool | str | os.PathLike | None = None):
    """A ready StableDiffusionPipeline, offline, in float32 on `device`.

    model: None (use $SDCOURSE_MODEL, else the embedded tiny model), a local pipeline
        folder, or a hub id already in the local Hugging Face cache.
    quiet: hide progress bars, both while loading and while generating.
    controlnet: a ControlNetModel folder (or True: the embedded model's, which reads outlines):
        then a StableDiffusionControlNetPipeline of the same parts and that ControlNet.
    """
    if controlnet is not None and controlnet is not False:
        return _with_controlnet(load_pipeline(model, device, quiet), controlnet, quiet)
    device = check_device(device)
    folder = resolve_model(model)
    validate_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    components = {}
    tokenizer = load_tokenizer_of(folder / "tokenizer")
    if tokenizer is not None:
        components["tokenizer"] = tokenizer
    with _quiet_loading() if quiet else nullcontext():
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                           **components)
        except (ValueError, RuntimeError) as error:
            mismatch = _config_mismatch(error, folder)
            if mismatch is None:
                raise
            raise mismatch from error
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=quiet)
    return pipe


def _with_controlnet(pipe, controlnet, quiet: bool):
    """diffusers' StableDiffusionControlNetPipeline of `pipe`'s parts and the ControlNet in the
    folder `controlnet` (True: EMBEDDED_CONTROLNET), in the pipeline's dtype and device."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    folder = EMBEDDED_CONTROLNET if controlnet is True else Path(controlnet)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"controlnet={str(folder)!r} holds no config.json; give a ControlNetModel folder "
                                "(what ControlNetModel.save_pretrained writes), or True for the embedded model's")
    with _quiet_loading() if quiet else nullcontext():
        model = ControlNetModel.from_pretrained(str(folder), local_files_only=True)
    controlled = StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        controlnet=model.to(pipe.device, pipe.unet.dtype), scheduler=pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    controlled.set_progress_bar_config(disable=quiet)
    return controlled


def load_tokenizer_of(folder: Path):
    """A new CLIPTokenizer from the folder's tokenizer.json, or None if it has none.

    Much faster than the generic loader, which parses the 3.6 MB file in Python. Every call
    returns a tokenizer of its own: a token added to one (textual inversion) is in no other.
    A tokenizer.json that cannot be read stops the load, naming it.
    """
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.exists() else {}
    stat = path.stat()
    try:
        tokenizer = Tokenizer.from_str(_tokenizer_json(str(path), stat.st_mtime_ns, stat.st_size))
    except Exception as error:  # tokenizers raises a bare Exception for a damaged file
        raise ValueError(f"{path} is not a valid tokenizer file ({error}); restore it from the model's original "
                         "folder") from None
    return CLIPTokenizer(tokenizer_object=tokenizer, model_max_length=config.get("model_max_length", 77))


@lru_cache(maxsize=4)
def _tokenizer_json(path: str, mtime_ns: int, size: int) -> str:
    """The text of a tokenizer.json, read once per version of the file (its time and size are part
    of the key, so a replaced file is read again): each tokenizer is then built from it."""
    return Path(path).read_text(encoding="utf-8")


# What generate sets itself; every other keyword goes to the pipeline, if the pipeline has it.
_GENERATE_OWN = ("prompt", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt", "generator",
                 "output_type", "num_images_per_prompt")


def _pipeline_keywords(pipe) -> set[str]:
    parameters = inspect.signature(type(pipe).__call__).parameters
    return {name for name, p in parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD}


def generate(pipe, prompts, height: int | None = None, width: int | None = None,
             num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int = 0,
             negative_prompt=None, output_type: str = "pil", num_images_per_prompt: int = 1, **kwargs):
    """Generate pictures with a diffusers pipeline; picture i uses the seed `seed + i`.

    prompts: a string or a list of strings; negative_prompt: None, one string, or one per prompt.
    height/width default to the model's native size (64 for the tiny model, 512 for SD 1.x)
    and must be multiples of 8. guidance_scale: 0 or more; at 1 or less diffusers runs the
    prompt's prediction alone (no guidance). num_images_per_prompt pictures per prompt, the
    prompt's pictures one after another. Long prompts are cut to 77 tokens with one warning.
    Other keywords (eta, latents, ...) go to the pipeline; a keyword it does not have is a
    TypeError. A request too big for the machine's memory (`check_memory`) is refused first.
    Returns a list of PIL images (or an array with output_type="np").
    """
    prompts, negatives = check_prompts(prompts, negative_prompt)
    if "generator" in kwargs:
        raise TypeError("generate() makes its own generators from seed (picture i uses seed + i): pass seed=, "
                        "or call the pipeline itself to give generator=")
    unknown = sorted(set(kwargs) - _pipeline_keywords(pipe))
    if unknown:
        known = sorted(set(_GENERATE_OWN) | {"seed"} | _pipeline_keywords(pipe))
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = check_size(native if height is None else height, native if width is None else width,
                               pipe.vae_scale_factor)
    num_inference_steps = whole_number("num_inference_steps", num_inference_steps, minimum=1)
    guidance_scale = check_guidance_scale(guidance_scale)
    per_prompt = whole_number("num_images_per_prompt", num_images_per_prompt, minimum=1)
    batch = len(prompts) * per_prompt
    seed = random_seed("seed", seed, count=batch)
    check_memory(batch, height, width, pipe.device)
    tokenize(prompts, pipe.tokenizer)  # one warning per prompt that will be truncated ...
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(batch)]
    with _libraries_quiet():  # ... and not two more from transformers and diffusers
        out = pipe(prompts, height=height, width=width, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, negative_prompt=negatives if negative_prompt is not None else None,
                   generator=generators, output_type=output_type, num_images_per_prompt=per_prompt, **kwargs)
    return out.images


@contextmanager
def _libraries_quiet():
    """transformers' and diffusers' warnings hidden (errors still show)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
