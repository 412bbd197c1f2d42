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

The second half of this file is the whole pipeline written with the course's own parts:
`TextToImage`, `ImageToImage` and `Inpaint` run the course's tokenizer, text encoder, U-Net,
VAE and samplers, step by step. With the same weights, seed and arguments, their pictures
are the ones diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline makes:

    >>> import torch
    >>> from sdcourse.pipeline import TextToImage
    >>> sd = TextToImage.from_pretrained()          # the embedded model's weights, DDIM
    >>> images = sd("a red circle", num_inference_steps=25, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import json
import numbers
import operator
import os
import re
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdcourse import CourseWarning
from sdcourse.guidance import check_guidance_scale, guided_noise_prediction
from sdcourse.samplers import (
    SAMPLERS,
    DPMSolverMultistepSampler,
    EulerSampler,
    check_num_inference_steps,
    make_sampler,
    randn_like_diffusers,
)
from sdcourse.text_encoder import TextEncoder
from sdcourse.tokenizer import END_TOKEN_ID, load_tokenizer, tokenize
from sdcourse.unet import UNet
from sdcourse.vae import VAE

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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
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
# Config fields that size the layers whose names contain these parts (the usual suspects).
_SIZE_FIELDS = {"attn2.to_k": "cross_attention_dim", "attn2.to_v": "cross_attention_dim",
                "text_model": "hidden_size", "encoder.": "block_out_channels", "decoder.": "block_out_channels"}


def _config_mismatch(error: Exception, folder: Path) -> ValueError | None:
    """The course's message for weights that do not fit their config, or None for other errors."""
    found = _MISMATCH.search(str(error))
    if found is None:
        return None
    key, config_shape, weights_shape = found.groups()
    field = next((f for part, f in _SIZE_FIELDS.items() if part in key), "block_out_channels")
    component = "vae" if key.startswith(("encoder.", "decoder.")) else "text_encoder" if "text_model" in key else "unet"
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


def load_pipeline(model: str | os.PathLike | None = None, device: str = "cpu", quiet: bool = True):
    """A ready StableDiffusionPipeline, offline, in float32 on `device`.

    model: None (use $SDCOURSE_MODEL, else the embedded tiny model), a local pipeline
        folder, or a hub id already in the local Hugging Face cache.
    quiet: hide progress bars, both while loading and while generating.
    """
    device = check_device(device)
    folder = resolve_model(model)
    validate_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    components = {}
    tokenizer = _load_tokenizer_fast(folder / "tokenizer")
    if tokenizer is not None:
        components["tokenizer"] = tokenizer
    with _quiet_loading() if quiet else _nullcontext():
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


def check_size(height, width, factor: int = 8) -> tuple[int, int]:
    """height and width as ints (any integer type), each a positive multiple of the VAE's
    downsampling factor (8 for Stable Diffusion)."""
    sizes = []
    for name, value in (("height", height), ("width", width)):
        value = _integer(name, value)
        if value < 1 or value % factor:
            raise ValueError(f"{name}={value}; it must be a positive multiple of {factor} (e.g. 64, 512)")
        sizes.append(value)
    return sizes[0], sizes[1]


# A rough peak for one picture, per pixel: float32 activations of the VAE decoder's
# full-resolution layers (128 channels in SD's), about three held at once. It overestimates
# the tiny model (32 channels) and is the right size for SD 1.x, which is what it guards.
BYTES_PER_PIXEL = 4 * 128 * 3


def memory_limit_bytes(device="cpu") -> int:
    """The memory a request may use: the GPU's, or the machine's RAM. $SDCOURSE_MEMORY_GB overrides it."""
    override = os.environ.get("SDCOURSE_MEMORY_GB")
    if override:
        try:
            return int(float(override) * 2**30)
        except ValueError:
            raise ValueError(f"SDCOURSE_MEMORY_GB={override!r}; it must be a number of GB, such as 16") from None
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system: do not guess
        return 2**62


def check_memory(batch: int, height: int, width: int, device="cpu"):
    """Refuse, before anything is allocated, a request whose rough peak memory
    (batch x height x width x BYTES_PER_PIXEL) is more than the device has. Set
    SDCOURSE_MEMORY_GB to move the limit."""
    need = batch * height * width * BYTES_PER_PIXEL
    limit = memory_limit_bytes(device)
    if need > limit:
        raise ValueError(
            f"{batch} picture(s) of {height} x {width} would need about {need / 2**30:,.1f} GB at their peak, more "
            f"than the {limit / 2**30:,.1f} GB available: make fewer or smaller pictures at a time (or set "
            "SDCOURSE_MEMORY_GB if the estimate is wrong for your machine)"
        )


# What generate sets itself; every other keyword goes to the pipeline, if the pipeline has it.
_GENERATE_OWN = ("prompt", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt", "generator",
                 "output_type", "num_images_per_prompt")


def _pipeline_keywords(pipe) -> set[str]:
    import inspect

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
    from .tokenizer import tokenize

    prompts, negatives = check_prompts(prompts, negative_prompt)
    if "generator" in kwargs:
        raise TypeError("generate() makes its own generators from seed (picture i uses seed + i): pass seed=, "
                        "or call the pipeline itself to give generator=")
    unknown = sorted(set(kwargs) - _pipeline_keywords(pipe))
    if unknown:
        import difflib

        known = sorted(set(_GENERATE_OWN) | {"seed"} | _pipeline_keywords(pipe))
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = check_size(native if height is None else height, native if width is None else width,
                               pipe.vae_scale_factor)
    num_inference_steps = _integer("num_inference_steps", num_inference_steps, minimum=1)
    guidance_scale = check_guidance_scale(guidance_scale)
    per_prompt = _integer("num_images_per_prompt", num_images_per_prompt, minimum=1)
    seed = _integer("seed", seed, minimum=0)
    batch = len(prompts) * per_prompt
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


# ----------------------------------------------------------------------------
# The whole pipeline, from scratch
#
# Every picture goes through the same steps:
#   1. encode the prompt      tokens -> text encoder -> context c (and c_neg for guidance)
#   2. choose the timesteps   the sampler's t_1 > t_2 > ... (img2img and inpainting skip the first ones)
#   3. prepare the latents    text-to-image: pure noise; img2img / inpainting: the picture's latents, noised
#   4. the denoising loop     eps = U-Net(x_t, t, c) with guidance; x_t -> x_next by the sampler
#   5. decode                 pixels = VAE decoder(z / scaling_factor)
# The three classes share steps 1, 2, 4 and 5 (`StableDiffusion`) and differ in step 3.

# "DDIMScheduler" -> "ddim": the from-scratch sampler that reproduces each diffusers scheduler
TWIN_SAMPLERS = {cls.twin: name for name, cls in SAMPLERS.items()}
FALLBACK_SAMPLER = "ddim"  # for a scheduler without a twin (PNDMScheduler, SD 1.x's default)


def make_sampler_for(scheduler, name=None):
    """The from-scratch sampler for a diffusers scheduler: its twin, or the sampler called `name`.

    It is built from the scheduler's config by `samplers.make_sampler`, as diffusers'
    `OtherScheduler.from_config(scheduler.config)` builds one. A field the sampler has for a
    feature it lacks (karras sigmas, thresholding...) must still be at its default.
    """
    if name is None:
        name = TWIN_SAMPLERS.get(type(scheduler).__name__)
        if name is None:
            name = FALLBACK_SAMPLER
            warnings.warn(
                f"the pipeline's {type(scheduler).__name__} has no from-scratch twin: using the {name!r} sampler, "
                f"so the pictures will differ from the pipeline's. Pass sampler= to choose one of "
                f"{', '.join(map(repr, SAMPLERS))}",
                CourseWarning,
                stacklevel=3,
            )
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not a known sampler; choose one of {', '.join(map(repr, SAMPLERS))}")
    return make_sampler(name, scheduler.config)


def add_noise(sampler, x0, noise, index):
    """The forward process: clean latents x0 noised to the level of `sampler.timesteps[index]`.

    Each sampler works in its own variable, so the same noising reads differently:
        DDPM, DDIM:   x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        Euler:        x   = x_0 + sigma eps                 (x = x_t / sqrt(alpha_bar_t))
        DPM-Solver:   x_t = alpha x_0 + sigma_t eps,  alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha
    The schedule is cast to the latents' dtype first, as diffusers' `add_noise` does.
    """
    if isinstance(sampler, (EulerSampler, DPMSolverMultistepSampler)):
        sigma = sampler.sigmas.to(x0.device, x0.dtype)[index]
        if isinstance(sampler, EulerSampler):
            return x0 + noise * sigma
        alpha = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha
        return alpha * x0 + sigma_t * noise
    alpha_bar = sampler.alphas_cumprod.to(x0.device, x0.dtype)[int(sampler.timesteps[index])]
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise


# ---- checking the arguments: every mistake is a ValueError that names the argument


def _integer(name, value, minimum=None):
    """value as an int (any integer type: int, numpy.int64...), at least `minimum` if given."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def check_prompts(prompt, negative_prompt=None):
    """(prompts, negative prompts) as two lists of the same length.

    prompt: a non-empty string or a non-empty list of them. negative_prompt: None (the empty
    prompt ""), one string for every prompt, or a list with one per prompt.
    """
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    if not all(p.strip() for p in prompts):
        raise ValueError(f"prompt must not be empty, got {prompt!r}; describe the picture you want")
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    elif isinstance(negative_prompt, (list, tuple)) and all(isinstance(n, str) for n in negative_prompt):
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}: give one negative "
                "prompt per prompt, or one string for all of them"
            )
    else:
        raise ValueError(f"negative_prompt must be None, a string or a list of strings, got {negative_prompt!r}")
    return list(prompts), negatives


def check_strength(strength) -> float:
    """strength as a float in [0, 1]: how much noise img2img and inpainting add to the picture."""
    is_number = isinstance(strength, numbers.Real) and not isinstance(strength, bool)
    if not is_number or not 0 <= strength <= 1:  # NaN fails the comparison too
        raise ValueError(
            f"strength must be a number in [0, 1] (small: change the picture a little, 1: start from pure noise), "
            f"got {strength!r}"
        )
    return float(strength)


def first_step(num_inference_steps, strength) -> int:
    """The index of the first timestep to run: strength s runs the last int(n s) of the n timesteps.

    The picture is then noised to the level of that timestep, not to pure noise (s = 1 runs all).
    """
    steps_to_run = min(int(num_inference_steps * strength), num_inference_steps)
    if steps_to_run < 1:
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} leaves "
            f"int({num_inference_steps} * {strength}) = 0 denoising steps: raise strength or num_inference_steps"
        )
    return num_inference_steps - steps_to_run


def check_generator(generator, batch):
    """None, one torch.Generator, or a list of them with one per picture; returns it (a list as a list)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(
                f"generator is a list of {len(generator)} generators for {batch} pictures: give one per picture "
                "(len(prompt) * num_images_per_prompt), or a single generator"
            )
        return list(generator)
    raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_images(images, name):
    """A PIL image or a list of them, as a list."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items or not all(isinstance(item, Image.Image) for item in items):
        raise ValueError(f"{name} must be a PIL image or a list of PIL images, got {type(images).__name__}")
    return items


def _check_image_count(count, batch):
    if batch % count:
        raise ValueError(f"image: {count} images for {batch} pictures; the number of pictures "
                         "(len(prompt) * num_images_per_prompt) must be a multiple of the number of images")


def repeat_to(x, batch):
    """Repeat a batch of k tensors to `batch` of them (k divides batch): [a, b] -> [a, b, a, b]."""
    return x.repeat(batch // len(x), *[1] * (x.ndim - 1))


# ---- pictures in and out


def _resized(picture, height, width):
    """Resize with the Lanczos filter, as diffusers' image processor does (a copy if the size is right)."""
    return picture.resize((width, height), resample=Image.Resampling.LANCZOS)


def image_to_tensor(images, height, width):
    """PIL images -> (k, 3, height, width) float32 in [-1, 1]: resize, then x / 255 * 2 - 1."""
    arrays = [np.asarray(_resized(im, height, width).convert("RGB")).astype(np.float32) / 255.0 for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (k, 3, H, W) in [0, 1]
    return 2.0 * pixels - 1.0


def mask_to_tensor(masks, height, width):
    """PIL masks -> (k, 1, height, width) float32 of 0s and 1s; 1 (white) is where to paint.

    Resize, convert to grayscale, then binarize: values >= 0.5 become 1, the others 0.
    """
    arrays = [np.asarray(_resized(m, height, width).convert("L")).astype(np.float32) / 255.0 for m in masks]
    mask = torch.from_numpy(np.stack(arrays))[:, None]  # (k, 1, H, W) in [0, 1]
    return (mask >= 0.5).to(torch.float32)


def tensor_to_images(pixels):
    """(batch, 3, H, W) in [-1, 1] -> PIL images: x / 2 + 1/2, clamp to [0, 1], * 255, round."""
    pixels = (pixels / 2 + 0.5).clamp(0, 1)
    arrays = pixels.cpu().permute(0, 2, 3, 1).float().numpy()  # (batch, H, W, 3)
    return [Image.fromarray(a) for a in (arrays * 255).round().astype(np.uint8)]


class StableDiffusion:
    """What the three pipelines share: the networks, the sampler and the steps every picture takes.

    Build one with `from_pretrained`, or from networks already built:
    `ImageToImage(sd.text_encoder, sd.unet, sd.vae, sd.sampler)` reuses a TextToImage's networks.
    `on_step(step, t, latents, x0_pred)`, if given to a call, runs after each denoising step
    with the step's index, its timestep, the latents after the step and the sampler's guess of
    the clean latents (`sampler.last_x0`); `sd.decode(x0_pred)` shows that guess as pictures.
    """

    def __init__(self, text_encoder: TextEncoder, unet: UNet, vae: VAE, sampler, pad_token_id=END_TOKEN_ID):
        self.tokenizer = load_tokenizer()
        self.text_encoder = text_encoder.eval()
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.sampler = sampler
        # SD 1.x pads prompts with the end token; SD 2.x's tokenizer pads with "!" (id 0)
        self.pad_token_id = pad_token_id
        self.vae_scale_factor = vae.downsample_factor  # 8: one latent pixel covers 8 x 8 pixels

    @classmethod
    def from_pretrained(cls, path_or_diffusers_pipeline=None, sampler=None):
        """The from-scratch networks, holding a Stable Diffusion 1.x / 2.x pipeline's weights.

        path_or_diffusers_pipeline: None (the embedded tiny model, or $SDCOURSE_MODEL), a model
            folder or cached hub id (loaded with `load_pipeline`), or a diffusers pipeline already
            loaded. The result runs on that pipeline's device and dtype; `.to()` moves it.
        sampler: a name from `sdcourse.samplers.SAMPLERS` ("ddim", "euler_a", "dpm++2m"...);
            None: the twin of the pipeline's scheduler, built from its config.
        """
        pipe = path_or_diffusers_pipeline
        if pipe is None or isinstance(pipe, (str, os.PathLike)):
            pipe = load_pipeline(pipe)
        missing = [part for part in ("text_encoder", "unet", "vae", "scheduler", "tokenizer")
                   if getattr(pipe, part, None) is None]
        if missing:
            raise ValueError(f"expected a Stable Diffusion pipeline; {type(pipe).__name__} has no {', '.join(missing)}")
        new_sampler = make_sampler_for(pipe.scheduler, sampler)
        # each network is built from its twin's config, then takes its weights (strict: every key must fit)
        text_encoder = TextEncoder.from_config(pipe.text_encoder.config)
        text_encoder.load_state_dict(pipe.text_encoder.state_dict())
        unet = UNet.from_config(pipe.unet.config)
        unet.load_state_dict(pipe.unet.state_dict())
        vae = VAE.from_config(pipe.vae.config)
        vae.load_state_dict(pipe.vae.state_dict())
        pad_token_id = pipe.tokenizer.pad_token_id
        scratch = cls(text_encoder, unet, vae, new_sampler, END_TOKEN_ID if pad_token_id is None else pad_token_id)
        return scratch.to(pipe.unet.device, pipe.unet.dtype)

    def to(self, device=None, dtype=None):
        """Move the networks to a device and/or dtype, like nn.Module.to: `.to("cuda", torch.float16)`."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for network in (self.text_encoder, self.unet, self.vae):
            network.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def __repr__(self):
        return f"{type(self).__name__}(sampler={type(self.sampler).__name__}, device={self.device}, dtype={self.dtype})"

    # ---- the steps

    def encode_prompt(self, prompts):
        """Prompts -> context (batch, 77, width): tokenize (pad or cut to 77 tokens), then the text encoder."""
        tokens = tokenize(prompts, self.tokenizer)
        ids = tokens.input_ids.masked_fill(tokens.attention_mask == 0, self.pad_token_id)
        return self.text_encoder(ids.to(self.device))

    def encode_prompts(self, prompts, negative_prompts, guidance_scale, num_images_per_prompt):
        """The context c of the prompts and, with guidance (scale > 1), c_neg of the negative prompts.

        Each is repeated for the pictures of one prompt: [p0, p0, p1, p1] for two per prompt.
        """
        cond = self.encode_prompt(prompts).repeat_interleave(num_images_per_prompt, dim=0)
        if guidance_scale <= 1:
            return cond, None  # no guidance: the negative prompt is not used
        uncond = self.encode_prompt(negative_prompts).repeat_interleave(num_images_per_prompt, dim=0)
        return cond, uncond

    def set_timesteps(self, num_inference_steps):
        """The sampler's timesteps t_1 > t_2 > ... > t_n, on the networks' device."""
        self.sampler.set_timesteps(num_inference_steps, device=self.device)
        return self.sampler.timesteps

    def initial_noise(self, batch, height, width, generator):
        """eps ~ N(0, I) of shape (batch, 4, height / 8, width / 8), drawn as diffusers' randn_tensor draws it."""
        f = self.vae_scale_factor
        shape = (batch, self.vae.latent_channels, height // f, width // f)
        return randn_like_diffusers(shape, generator, self.device, self.dtype)

    def encode_images(self, pixels, generator):
        """Pixels in [-1, 1] -> latents z = scaling_factor * (a sample of the VAE encoder's Gaussian).

        With a list of generators each picture is encoded alone and sampled with its own generator.
        """
        pixels = pixels.to(self.device, self.dtype)
        if isinstance(generator, list):
            z = torch.cat([self.vae.encode(pixels[i : i + 1]).sample(generator[i]) for i in range(len(pixels))])
        else:
            z = self.vae.encode(pixels).sample(generator)
        return self.vae.scaling_factor * z

    def predict_noise(self, latents, t, cond, uncond, guidance_scale, extra_channels=None):
        """The U-Net's guided noise prediction at timestep t.

        eps = eps(x, c_neg) + w * (eps(x, c) - eps(x, c_neg)), both from ONE U-Net call on the
        doubled batch (`guided_noise_prediction`); with w <= 1 only eps(x, c).
        extra_channels (inpainting U-Nets): the mask and masked picture, put next to the latents.
        """
        model_input = self.sampler.scale_model_input(latents, t)
        if extra_channels is not None:
            model_input = torch.cat([model_input, extra_channels], dim=1)
        return guided_noise_prediction(self.unet, model_input, t, cond, uncond, guidance_scale)

    def denoise(self, latents, timesteps, cond, uncond, guidance_scale, generator,
                on_step=None, extra_channels=None, after_step=None):
        """The denoising loop: for each t, predict the noise, then let the sampler take one step.

        after_step(i, latents) -> latents, if given, changes the latents after each step
        (inpainting puts the known part of the picture back).
        """
        for i, t in enumerate(timesteps):
            eps = self.predict_noise(latents, t, cond, uncond, guidance_scale, extra_channels)
            latents = self.sampler.step(eps, t, latents, generator=generator)  # x_t -> x_next
            if after_step is not None:
                latents = after_step(i, latents)
            if on_step is not None:
                on_step(i, t.item(), latents, self.sampler.last_x0)
        return latents

    @torch.no_grad()
    def decode(self, latents):
        """Latents -> PIL images: pixels = VAE decoder(z / scaling_factor)."""
        return tensor_to_images(self.vae.decode(latents.to(self.device, self.dtype) / self.vae.scaling_factor))

    # ---- shared checks

    def _check_arguments(self, prompt, negative_prompt, num_inference_steps, guidance_scale,
                         num_images_per_prompt, generator, on_step):
        """Check what every call takes; returns (prompts, negative prompts, steps, batch, generator)."""
        prompts, negatives = check_prompts(prompt, negative_prompt)
        steps = check_num_inference_steps(num_inference_steps, self.sampler.num_train_timesteps)
        check_guidance_scale(guidance_scale)
        batch = len(prompts) * _integer("num_images_per_prompt", num_images_per_prompt, minimum=1)
        generator = check_generator(generator, batch)
        if on_step is not None and not callable(on_step):
            raise ValueError(f"on_step must be a function on_step(step, t, latents, x0_pred), got {on_step!r}")
        return prompts, negatives, steps, batch, generator

    def _check_size(self, height, width, default_height, default_width, batch):
        """height and width as ints, each a positive multiple of the VAE's factor (8), for a batch
        that fits in memory (`check_memory`)."""
        height, width = check_size(default_height if height is None else height,
                                   default_width if width is None else width, self.vae_scale_factor)
        check_memory(batch, height, width, self.device)
        return height, width

    def _native_size(self):
        """The size the U-Net was trained at, in pixels: 64 for the tiny model, 512 for SD 1.x."""
        return self.unet.sample_size * self.vae_scale_factor

    def _check_plain_unet(self):
        if self.unet.in_channels != self.vae.latent_channels:
            raise ValueError(
                f"this U-Net reads {self.unet.in_channels} channels, not the {self.vae.latent_channels} of the "
                "latents: it is an inpainting model; use Inpaint"
            )


class TextToImage(StableDiffusion):
    """Text to image: start from pure noise and denoise it towards the prompt."""

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, height=None, width=None, num_inference_steps=50,
                 guidance_scale=7.5, num_images_per_prompt=1, generator=None, on_step=None):
        """Pictures for the prompt(s), as a list of PIL images (diffusers' argument names and defaults).

        height, width: multiples of 8; default: the model's native size.
        """
        self._check_plain_unet()
        prompts, negatives, steps, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        height, width = self._check_size(height, width, self._native_size(), self._native_size(), batch)

        # 1. encode the prompt: c = text_encoder(tokens), c_neg for the negative prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale, num_images_per_prompt)
        # 2. the timesteps, all of them
        timesteps = self.set_timesteps(steps)
        # 3. prepare the latents: x_T = init_noise_sigma * eps, eps ~ N(0, I)
        latents = self.initial_noise(batch, height, width, generator) * self.sampler.init_noise_sigma
        # 4. the denoising loop
        latents = self.denoise(latents, timesteps, cond, uncond, guidance_scale, generator, on_step)
        # 5. decode
        return self.decode(latents)


class ImageToImage(StableDiffusion):
    """Image to image (SDEdit): noise a picture part of the way, then denoise it towards the prompt."""

    @torch.no_grad()
    def __call__(self, prompt, image, strength=0.8, negative_prompt=None, num_inference_steps=50,
                 guidance_scale=7.5, num_images_per_prompt=1, generator=None, height=None, width=None,
                 on_step=None):
        """Pictures for the prompt(s) starting from `image`, as a list of PIL images.

        image: a PIL image, or a list of them (their number must divide the number of pictures).
        strength in [0, 1]: how far the picture is noised; int(num_inference_steps * strength)
            steps run. height, width: default the first image's size rounded down to a multiple
            of 8, as diffusers does; the images are resized (Lanczos) to that size.
        """
        self._check_plain_unet()
        images = check_images(image, "image")
        strength = check_strength(strength)
        prompts, negatives, steps, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        f = self.vae_scale_factor
        height, width = self._check_size(height, width, images[0].height // f * f, images[0].width // f * f,
                                          batch)
        _check_image_count(len(images), batch)
        start = first_step(steps, strength)

        # 1. encode the prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale, num_images_per_prompt)
        # 2. the timesteps, from index `start` on: the first (noisiest) ones are skipped
        timesteps = self.set_timesteps(steps)[start:]
        # 3. prepare the latents: z_0 = scaling_factor * VAE encoding of the picture, then noise it to
        #    t = timesteps[start]: x_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps (see add_noise)
        pixels = image_to_tensor(images, height, width)
        if isinstance(generator, list):  # one generator per picture: each picture is encoded with its own
            pixels = repeat_to(pixels, batch)
        z0 = repeat_to(self.encode_images(pixels, generator), batch)
        noise = randn_like_diffusers(z0.shape, generator, self.device, self.dtype)
        latents = add_noise(self.sampler, z0, noise, start)
        # 4. the denoising loop, from timesteps[start]
        latents = self.denoise(latents, timesteps, cond, uncond, guidance_scale, generator, on_step)
        # 5. decode
        return self.decode(latents)


class Inpaint(StableDiffusion):
    """Inpainting: repaint the white part of a mask, keep the rest of the picture.

    With a plain U-Net (4 input channels, "latent masking"), after every step the latents outside
    the mask are replaced by the picture's own latents, noised to the level of the next step:
        x = (1 - m) * noised(z_0, t_next) + m * x          (m: the mask at latent size)
    An inpainting U-Net (9 input channels: latents, mask, masked picture's latents) sees the
    mask and the rest of the picture at every step instead.
    """

    @torch.no_grad()
    def __call__(self, prompt, image, mask_image, strength=1.0, negative_prompt=None, height=None, width=None,
                 num_inference_steps=50, guidance_scale=7.5, num_images_per_prompt=1, generator=None,
                 on_step=None):
        """Pictures with the mask's white part repainted for the prompt(s), as a list of PIL images.

        image: a PIL image or a list of them; mask_image: one mask of the same size (white = paint,
            black = keep), or one per image. height, width: default the model's native size, as in
            diffusers; image and mask are resized (Lanczos) to it.
        strength in [0, 1]: 1 starts the painted part from pure noise.
        """
        latent_channels = self.vae.latent_channels
        if self.unet.in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(f"Inpaint needs a U-Net with {latent_channels} or {2 * latent_channels + 1} input "
                             f"channels, this one has {self.unet.in_channels}")
        images = check_images(image, "image")
        masks = check_images(mask_image, "mask_image")
        if len(masks) not in (1, len(images)):
            raise ValueError(f"mask_image: {len(masks)} masks for {len(images)} images; "
                             "give one mask, or one per image")
        for i, im in enumerate(images):
            mask = masks[i if len(masks) > 1 else 0]
            if mask.size != im.size:
                raise ValueError(f"mask_image is {mask.width}x{mask.height} pixels but image is "
                                 f"{im.width}x{im.height}: the mask must have the image's size")
        strength = check_strength(strength)
        prompts, negatives, steps, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        height, width = self._check_size(height, width, self._native_size(), self._native_size(), batch)
        _check_image_count(len(images), batch)
        start = first_step(steps, strength)

        # 1. encode the prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guidance_scale, num_images_per_prompt)
        # 2. the timesteps, from index `start` on (all of them at strength 1)
        timesteps = self.set_timesteps(steps)[start:]
        # 3. prepare the latents, drawing the random numbers in diffusers' order:
        #    the picture's latents z_0, the noise, then the masked picture's latents
        pixels = image_to_tensor(images, height, width)  # (k, 3, H, W) in [-1, 1]
        mask = mask_to_tensor(masks, height, width)  # (k or 1, 1, H, W), 1 = paint
        latent_masking = self.unet.in_channels == latent_channels
        z0 = repeat_to(self.encode_images(pixels, generator), batch) if latent_masking or strength < 1 else None
        noise = self.initial_noise(batch, height, width, generator)
        if strength == 1:  # pure noise: x_T = init_noise_sigma * eps
            latents = noise * self.sampler.init_noise_sigma
        else:  # the noised picture: x_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps (see add_noise)
            latents = add_noise(self.sampler, z0, noise, start)
        # the picture with the painted part blacked out, and the mask at latent size (nearest pixel).
        # A plain U-Net does not read the masked picture's latents, but diffusers encodes them all the
        # same, and that encoding draws random numbers: so does this, to keep the generator in step.
        masked_latents = repeat_to(self.encode_images(pixels * (mask < 0.5), generator), batch)
        f = self.vae_scale_factor
        latent_mask = repeat_to(F.interpolate(mask, size=(height // f, width // f)), batch).to(self.device, self.dtype)

        # 4. the denoising loop
        if latent_masking:
            def keep_the_rest(i, latents):
                # outside the mask: the picture's latents, noised to the next step's level (none after the last)
                known = add_noise(self.sampler, z0, noise, start + i + 1) if i < len(timesteps) - 1 else z0
                return (1 - latent_mask) * known + latent_mask * latents  # x = (1 - m) known + m x

            latents = self.denoise(latents, timesteps, cond, uncond, guidance_scale, generator, on_step,
                                   after_step=keep_the_rest)
        else:  # an inpainting U-Net reads [latents, mask, masked picture's latents]
            extra = torch.cat([latent_mask, masked_latents], dim=1)
            latents = self.denoise(latents, timesteps, cond, uncond, guidance_scale, generator, on_step,
                                   extra_channels=extra)
        # 5. decode
        return self.decode(latents)
