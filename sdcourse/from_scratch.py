"""The whole Stable Diffusion pipeline, written with the course's own parts.

`TextToImage`, `ImageToImage` and `Inpaint` run the tokenizer, text encoder, U-Net, VAE and
samplers of the course, step by step. With the same weights, seed and arguments, their
pictures are the ones diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline makes:

    >>> import torch
    >>> from sdcourse.pipeline import TextToImage
    >>> sd = TextToImage.from_pretrained()          # the embedded model's weights, DDIM
    >>> images = sd("a red circle", num_inference_steps=25, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdcourse import CourseWarning, warn
from sdcourse.arguments import flag, real_number, whole_number
from sdcourse.controlnet import (
    ControlNet,
    check_fits,
    control_images_to_tensor,
    control_picture_warnings,
    load_controlnet,
    picture_size,
    read_control_images,
)
from sdcourse.guidance import guided_noise_prediction, uses_guidance
from sdcourse.images import images_to_tensor, unit_to_uint8
from sdcourse.loading import load_pipeline
from sdcourse.request_checks import (
    check_generator,
    check_image_count,
    check_images,
    check_memory,
    check_prompts,
    check_size,
    check_strength,
)
from sdcourse.samplers import (
    SAMPLERS,
    check_num_inference_steps,
    make_sampler,
    randn_like_diffusers,
)
from sdcourse.text_encoder import TextEncoder
from sdcourse.textual_inversion import spell_out_learned_words
from sdcourse.tokenizer import END_TOKEN_ID, load_tokenizer, tokenize
from sdcourse.unet import UNet
from sdcourse.vae import VAE

# The whole pipeline, from scratch
#
# Every picture goes through the same steps:
#   1. encode the prompt      tokens -> text encoder -> context c (and c_neg for guidance)
#   2. choose the timesteps   the sampler's t_1 > t_2 > ... (img2img and inpainting skip the first ones)
#   3. prepare the latents    text-to-image: pure noise; img2img / inpainting: the picture's latents, noised
#   4. the denoising loop     eps = U-Net(x_t, t, c) with guidance; x_t -> x_next by the sampler
#   5. decode                 pixels = VAE decoder(z / scaling_factor)
# The three classes share steps 1, 2, 4 and 5 (`StableDiffusion`) and differ in step 3.
# TextToImage may hold a ControlNet: its residuals then join the U-Net at every step of 4.

# "DDIMScheduler" -> "ddim": the from-scratch sampler that reproduces each diffusers scheduler
TWIN_SAMPLERS = {cls.twin: name for name, cls in SAMPLERS.items()}
FALLBACK_SAMPLER = "ddim"  # for a scheduler without a twin (PNDM with its Runge-Kutta warm-up, say)


def twin_sampler_name(scheduler):
    """The name of the sampler that reproduces `scheduler`, or None if the course has none.

    SD 1.x's PNDMScheduler has skip_prk_steps=True: that is PLMS. With skip_prk_steps=False,
    PNDM's default, it starts with Runge-Kutta steps, which the course does not write.
    """
    name = TWIN_SAMPLERS.get(type(scheduler).__name__)
    return None if untwinned_settings(scheduler) else name


def untwinned_settings(scheduler):
    """The config fields that keep a scheduler from being its sampler's twin (`Sampler.twin_settings`)."""
    name = TWIN_SAMPLERS.get(type(scheduler).__name__)
    settings = SAMPLERS[name].twin_settings if name is not None else {}
    return [field for field, value in settings.items() if scheduler.config.get(field) != value]


def make_sampler_for(scheduler, name=None):
    """The from-scratch sampler for a diffusers scheduler: its twin, or the sampler called `name`.

    It is built from the scheduler's config by `samplers.make_sampler`, as diffusers'
    `OtherScheduler.from_config(scheduler.config)` builds one. A field the sampler has for a
    feature it lacks (karras sigmas, thresholding...) must still be at its default.
    """
    if name is None:
        name = twin_sampler_name(scheduler)
        if name is None:
            name = FALLBACK_SAMPLER
            setting = "".join(f" with {field}={scheduler.config.get(field)!r}" for field in untwinned_settings(scheduler))
            warn(
                f"the pipeline's {type(scheduler).__name__}{setting} has no from-scratch twin: using the {name!r} "
                f"sampler, so the pictures will differ from the pipeline's. Pass sampler= to choose one of "
                f"{', '.join(map(repr, SAMPLERS))}",
                CourseWarning,
                stacklevel=3,
            )
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not a known sampler; choose one of {', '.join(map(repr, SAMPLERS))}")
    return make_sampler(name, scheduler.config)


def add_noise(sampler, x0, noise, index):
    """The forward process: clean latents x0 noised to the level of `sampler.timesteps[index]`,
    written in the sampler's own variable (`sampler.add_noise`, as diffusers' schedulers have it).

    DDPM, DDIM: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; Euler: x = x_0 + sigma eps.
    """
    return sampler.add_noise(x0, noise, sampler.timesteps[index : index + 1])


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


def repeat_to(x, batch):
    """Repeat a batch of k tensors to `batch` of them (k divides batch): [a, b] -> [a, b, a, b]."""
    return x.repeat(batch // len(x), *[1] * (x.ndim - 1))


@dataclass
class Control:
    """A ControlNet's part in one call: the control pictures' embedding (one per row of the U-Net's
    batch, doubled for guidance unless in guess mode; the same at every step, so computed once),
    the scale and the share of the steps it acts in."""

    controlnet: ControlNet
    embedding: torch.Tensor
    scale: float
    guess_mode: bool
    start: float
    end: float

    def scale_at(self, i, steps) -> float:
        """The scale at step i of `steps`: 0 outside [start, end], where step i covers [i/steps, (i+1)/steps]."""
        outside = i / steps < self.start or (i + 1) / steps > self.end
        return 0.0 if outside else self.scale

    def denoiser(self, unet, scale, guided):
        """unet with the ControlNet's residuals: a model(x, t, context) for `guided_noise_prediction`."""
        def controlled(x, t, context):
            if self.guess_mode and guided:
                # the ControlNet sees the prompt's half only; the unconditional half gets no residuals
                half = len(x) // 2
                down, mid = self.controlnet(x[half:], t, context[half:], None, scale, guess_mode=True,
                                            control_embedding=self.embedding)
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            else:
                down, mid = self.controlnet(x, t, context, None, scale, guess_mode=self.guess_mode,
                                            control_embedding=self.embedding)
            return unet(x, t, context, down, mid)

        return controlled


# ---- pictures in and out


def _resized(picture, height, width):
    """Resize with the Lanczos filter, as diffusers' image processor does (a copy if the size is right)."""
    return picture.resize((width, height), resample=Image.Resampling.LANCZOS)


def image_to_tensor(images, height, width):
    """PIL images -> (k, 3, height, width) float32 in [-1, 1]: resize, then x / 127.5 - 1."""
    return images_to_tensor(np.stack([np.asarray(_resized(im, height, width).convert("RGB")) for im in images]))


def mask_to_tensor(masks, height, width):
    """PIL masks -> (k, 1, height, width) float32 of 0s and 1s; 1 (white) is where to paint.

    Resize, convert to grayscale, then binarize: values >= 0.5 become 1, the others 0.
    """
    arrays = [np.asarray(_resized(m, height, width).convert("L")).astype(np.float32) / 255.0 for m in masks]
    mask = torch.from_numpy(np.stack(arrays))[:, None]  # (k, 1, H, W) in [0, 1]
    return (mask >= 0.5).to(torch.float32)


def tensor_to_images(pixels):
    """(batch, 3, H, W) in [-1, 1] -> PIL images: x / 2 + 1/2, clamp to [0, 1], * 255, round."""
    pixels = (pixels / 2 + 0.5).clamp(0, 1)  # in the networks' dtype, as diffusers does
    return [Image.fromarray(a) for a in unit_to_uint8(pixels.cpu().permute(0, 2, 3, 1).float().numpy())]


class StableDiffusion:
    """What the three pipelines share: the networks, the sampler and the steps every picture takes.

    Build one with `from_pretrained`, or from networks already built:
    `ImageToImage(sd.text_encoder, sd.unet, sd.vae, sd.sampler)` reuses a TextToImage's networks.
    TextToImage also takes a ControlNet (`controlnet=`, `sdcourse.controlnet`): made for its U-Net,
    it steers every picture towards a control picture.
    `on_step(step, t, latents, x0_pred)`, if given to a call, runs after each denoising step
    (each U-Net call, as diffusers' callback_on_step_end: PLMS's first step is two calls, so
    12 steps run it 13 times) with the call's index, its timestep, the latents after the step
    and the sampler's guess of the clean latents (`sampler.last_x0`); `sd.decode(x0_pred)` shows that guess as pictures.
    """

    takes_controlnet = False  # True for the pipelines that can use a ControlNet

    def __init__(self, text_encoder: TextEncoder, unet: UNet, vae: VAE, sampler, tokenizer=None, controlnet=None):
        self.tokenizer = load_tokenizer() if tokenizer is None else tokenizer
        self.text_encoder = text_encoder.eval()
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.sampler = sampler
        self.vae_scale_factor = vae.downsample_factor  # 8: one latent pixel covers 8 x 8 pixels
        self.controlnet = None if controlnet is None else self._check_controlnet(controlnet).eval()

    def _check_controlnet(self, controlnet):
        """The course's ControlNet (a diffusers ControlNetModel is converted), made for this U-Net
        and for pictures this VAE's factor larger than the latents."""
        if not self.takes_controlnet:
            raise ValueError(f"{type(self).__name__} does not take a ControlNet; use TextToImage")
        if not isinstance(controlnet, ControlNet):
            controlnet = load_controlnet(controlnet)
        check_fits(controlnet, self.unet)
        if controlnet.downsample_factor != self.vae_scale_factor:
            raise ValueError(
                f"this ControlNet's conditioning embedding shrinks the control picture {controlnet.downsample_factor} "
                f"times (conditioning_embedding_out_channels={list(controlnet.config['conditioning_embedding_out_channels'])}), "
                f"but the VAE's latents are {self.vae_scale_factor} times smaller than the pictures")
        return controlnet

    @property
    def pad_token_id(self) -> int:
        """The id prompts are padded with: SD 1.x pads with the end token, SD 2.x's tokenizer with "!" (0)."""
        pad = self.tokenizer.pad_token_id
        return END_TOKEN_ID if pad is None else pad

    @classmethod
    def from_pretrained(cls, path_or_diffusers_pipeline=None, sampler=None):
        """The from-scratch networks, holding a Stable Diffusion 1.x / 2.x pipeline's weights.

        path_or_diffusers_pipeline: None (the embedded tiny model, or $SDCOURSE_MODEL), a model
            folder or cached hub id (loaded with `load_pipeline`), or a diffusers pipeline already
            loaded. The result runs on that pipeline's device and dtype; `.to()` moves it.
            A StableDiffusionControlNetPipeline's ControlNet comes along (TextToImage only).
        sampler: a name from `sdcourse.samplers.SAMPLERS` ("ddim", "euler_a", "dpm++2m", "plms"...);
            None: the twin of the pipeline's scheduler, built from its config (SD 1.x's
            PNDMScheduler gives "plms").
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
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is not None:
            if not cls.takes_controlnet:
                raise ValueError(f"{type(pipe).__name__} holds a ControlNet, which {cls.__name__} does not take; "
                                 "use TextToImage.from_pretrained(pipe)")
            controlnet = load_controlnet(controlnet)
        # a copy of the pipeline's tokenizer, added words (textual inversion) included: a word added to
        # the pipeline later is not in this one, whose text encoder has no embedding row for it
        scratch = cls(text_encoder, unet, vae, new_sampler, copy.deepcopy(pipe.tokenizer), controlnet=controlnet)
        return scratch.to(pipe.unet.device, pipe.unet.dtype)

    def to(self, device=None, dtype=None):
        """Move the networks to a device and/or dtype, like nn.Module.to: `.to("cuda", torch.float16)`."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for network in (self.text_encoder, self.unet, self.vae, self.controlnet):
            if network is not None:
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
        """Prompts -> context (batch, 77, width): tokenize (pad or cut to 77 tokens), then the text encoder.
        A learned word of several vectors is first spelled out as its tokens, as diffusers does."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        prompts = [spell_out_learned_words(prompt, self.tokenizer) for prompt in prompts]
        tokens = tokenize(prompts, self.tokenizer)
        ids = tokens.input_ids.masked_fill(tokens.attention_mask == 0, self.pad_token_id)
        return self.text_encoder(ids.to(self.device))

    def encode_prompts(self, prompts, negative_prompts, guided, num_images_per_prompt):
        """The context c of the prompts and, when `guided` (guidance_scale > 1), c_neg of the negative prompts.

        Each is repeated for the pictures of one prompt: [p0, p0, p1, p1] for two per prompt.
        """
        cond = self.encode_prompt(prompts).repeat_interleave(num_images_per_prompt, dim=0)
        if not guided:
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

    def predict_noise(self, latents, t, cond, uncond, guidance_scale, extra_channels=None, control=None,
                      control_scale=0.0):
        """The U-Net's guided noise prediction at timestep t.

        eps = eps(x, c_neg) + w * (eps(x, c) - eps(x, c_neg)), both from ONE U-Net call on the
        doubled batch (`guided_noise_prediction`); with w <= 1 only eps(x, c).
        extra_channels (inpainting U-Nets): the mask and masked picture, put next to the latents.
        control (a `Control`) with control_scale > 0: the ControlNet runs first, on the same batch,
        and the U-Net adds its residuals. At scale 0 it is left out: its residuals would be zeros.
        """
        model_input = self.sampler.scale_model_input(latents, t)
        if extra_channels is not None:
            model_input = torch.cat([model_input, extra_channels], dim=1)
        model = self.unet
        if control is not None and control_scale > 0:
            model = control.denoiser(self.unet, control_scale, uses_guidance(guidance_scale))
        return guided_noise_prediction(model, model_input, t, cond, uncond, guidance_scale)

    def denoise(self, latents, timesteps, cond, uncond, guidance_scale, generator,
                on_step=None, extra_channels=None, after_step=None, control=None):
        """The denoising loop: for each t, predict the noise, then let the sampler take one step.

        after_step(i, latents) -> latents, if given, changes the latents after each step
        (inpainting puts the known part of the picture back). control: a `Control`, or None.
        """
        for i, t in enumerate(timesteps):
            scale = control.scale_at(i, len(timesteps)) if control is not None else 0.0
            eps = self.predict_noise(latents, t, cond, uncond, guidance_scale, extra_channels, control, scale)
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
        """Check what every call takes, and decide once whether it uses guidance.

        Returns (prompts, negative prompts, steps, guided, batch, generator).
        """
        prompts, negatives = check_prompts(prompt, negative_prompt)
        steps = check_num_inference_steps(num_inference_steps, self.sampler.num_train_timesteps)
        guided = uses_guidance(guidance_scale)
        batch = len(prompts) * whole_number("num_images_per_prompt", num_images_per_prompt, minimum=1)
        generator = check_generator(generator, batch)
        if on_step is not None and not callable(on_step):
            raise ValueError(f"on_step must be a function on_step(step, t, latents, x0_pred), got {on_step!r}")
        return prompts, negatives, steps, guided, batch, generator

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
        reads, latent = self.unet.in_channels, self.vae.latent_channels
        if reads == 2 * latent + 1:
            raise ValueError(f"this U-Net reads {reads} channels, not the {latent} of the latents: it is an "
                             "inpainting model (latents, mask and masked picture); use Inpaint")
        if reads != latent:
            raise ValueError(f"this U-Net reads {reads} channels but the VAE's latents have {latent}: the U-Net "
                             "and the VAE do not belong to the same model")


class TextToImage(StableDiffusion):
    """Text to image: start from pure noise and denoise it towards the prompt.

    With a ControlNet (from a StableDiffusionControlNetPipeline, or `controlnet=`) the pictures
    also follow a control picture, `image=`, as diffusers' StableDiffusionControlNetPipeline draws them.
    """

    takes_controlnet = True

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, height=None, width=None, num_inference_steps=50,
                 guidance_scale=7.5, num_images_per_prompt=1, generator=None, on_step=None, *, image=None,
                 controlnet_conditioning_scale=1.0, guess_mode=False, control_guidance_start=0.0,
                 control_guidance_end=1.0):
        """Pictures for the prompt(s), as a list of PIL images (diffusers' argument names and defaults).

        height, width: multiples of 8; default: the model's native size, or with a ControlNet the
            first control picture's size rounded down to a multiple of 8 (as diffusers does).
        With a ControlNet only:
        image: the control picture: a PIL image, a numpy array or tensor (floats in [0, 1], bools
            or 0..255), or a list of them, one for every prompt (or a single one for all). Each is
            resized to height x width (Lanczos for PIL pictures, the nearest pixel for arrays), as
            diffusers does; a picture of another size is resized with a CourseWarning saying so.
        controlnet_conditioning_scale (>= 0): how strongly the control steers; 0 gives the
            pictures of the model without ControlNet.
        guess_mode: the ControlNet sees the prompt's half of the guided batch only, its residuals
            scaled from 0.1 (fine levels) to 1 (the mid block): the control shows even with no prompt.
        control_guidance_start, control_guidance_end (0 <= start < end <= 1): the share of the
            steps the ControlNet acts in; a step whose span [i/n, (i+1)/n] leaves it goes without.
        """
        self._check_plain_unet()
        prompts, negatives, steps, guided, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        pictures = self._check_control_arguments(image, controlnet_conditioning_scale, guess_mode,
                                                 control_guidance_start, control_guidance_end, len(prompts))
        default_height = default_width = self._native_size()
        if pictures is not None:  # as diffusers: the first control picture's size, down to a multiple of 8
            f = self.vae_scale_factor
            default_height, default_width = (size // f * f for size in picture_size(pictures[0]))
        height, width = self._check_size(height, width, default_height, default_width, batch)
        control = None
        if pictures is not None:
            pixels = self._control_pixels(pictures, height, width, guided, guess_mode, num_images_per_prompt, batch)
            # the control picture's features on the latent grid are the same at every step: computed once
            control = Control(self.controlnet, self.controlnet.embed_control(pixels),
                              float(controlnet_conditioning_scale), guess_mode, float(control_guidance_start),
                              float(control_guidance_end))

        # 1. encode the prompt: c = text_encoder(tokens), c_neg for the negative prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guided, num_images_per_prompt)
        # 2. the timesteps, all of them
        timesteps = self.set_timesteps(steps)
        # 3. prepare the latents: x_T = init_noise_sigma * eps, eps ~ N(0, I)
        latents = self.initial_noise(batch, height, width, generator) * self.sampler.init_noise_sigma
        # 4. the denoising loop (with a ControlNet: its residuals join the U-Net at every step it acts in)
        latents = self.denoise(latents, timesteps, cond, uncond, guidance_scale, generator, on_step, control=control)
        # 5. decode
        return self.decode(latents)

    def _check_control_arguments(self, image, scale, guess_mode, start, end, prompt_count):
        """The control pictures (`read_control_images`), or None without a ControlNet; every control
        argument checked."""
        if self.controlnet is None:
            if image is not None:
                raise ValueError("image= is a ControlNet's control picture, and this TextToImage has no ControlNet: "
                                 "build it from a StableDiffusionControlNetPipeline (TextToImage.from_pretrained(pipe)) "
                                 "or give one (TextToImage(..., controlnet=ControlNet.from_unet(unet))); to start from "
                                 "a picture, use ImageToImage")
            changed = [name for name, value, default in (
                ("controlnet_conditioning_scale", scale, 1.0), ("guess_mode", guess_mode, False),
                ("control_guidance_start", start, 0.0), ("control_guidance_end", end, 1.0)) if value != default]
            if changed:
                raise ValueError(f"{', '.join(changed)} steer a ControlNet, and this TextToImage has none")
            return None
        if image is None:
            raise ValueError("this TextToImage holds a ControlNet: pass its control picture as image= (an outline, "
                             "say, white lines on black, as a PIL image, numpy array or tensor)")
        real_number("controlnet_conditioning_scale", scale, 0, meaning="0: no control, 1: as trained")
        flag("guess_mode", guess_mode)
        start = real_number("control_guidance_start", start, 0, 1, high_open=True,
                            meaning="the share of the steps done before the ControlNet starts")
        end = real_number("control_guidance_end", end, 0, 1, low_open=True,
                          meaning="the share of the steps done when the ControlNet stops")
        if start >= end:
            raise ValueError(f"control_guidance_start must be below control_guidance_end, got {start:g} and {end:g}")
        pictures = read_control_images(image, self.controlnet.conditioning_channels)
        if len(pictures) not in (1, prompt_count):
            raise ValueError(f"image: {len(pictures)} control pictures for {prompt_count} prompt(s); give one control "
                             "picture for every prompt, or a single one for all")
        return pictures

    def _control_pixels(self, pictures, height, width, guided, guess_mode, num_images_per_prompt, batch):
        """The control pictures as the ControlNet reads them: (rows, C, height, width) in [0, 1], one
        per picture made, and twice that under guidance (the unconditional half too) unless in guess mode."""
        sizes = sorted({picture_size(p) for p in pictures} - {(height, width)})
        if sizes:
            listed = ", ".join(f"{w}x{h}" for h, w in sizes)
            warn(f"image (the control picture) is {listed} pixels (width x height), not the {width}x{height} of the "
                 f"pictures asked: it is resized to {width}x{height}, as diffusers does, which can blur or stretch "
                 "its lines; give it at the size of the pictures, or pass that size as height= and width=",
                 CourseWarning, stacklevel=4)
        pixels = control_images_to_tensor(pictures, height, width, self.controlnet.conditioning_channels)
        for note in control_picture_warnings(pixels):
            warn(note, CourseWarning, stacklevel=4)
        # one control picture for all (repeat it for every picture), or one per prompt (for each of its pictures)
        pixels = pixels.repeat_interleave(batch if len(pixels) == 1 else num_images_per_prompt, dim=0)
        if guided and not guess_mode:
            pixels = torch.cat([pixels, pixels])
        parameter = next(self.controlnet.parameters())
        return pixels.to(parameter.device, parameter.dtype)


class ImageToImage(StableDiffusion):
    """Image to image (SDEdit): noise a picture part of the way, then denoise it towards the prompt."""

    @torch.no_grad()
    def __call__(self, prompt, image, strength=0.8, negative_prompt=None, num_inference_steps=50,
                 guidance_scale=7.5, num_images_per_prompt=1, generator=None, height=None, width=None,
                 on_step=None):
        """Pictures for the prompt(s) starting from `image`, as a list of PIL images.

        image: a PIL image, or a list of them (their number must divide the number of pictures);
            16-bit and float pictures are read by `sdcourse.images.eight_bit_picture`.
        strength in [0, 1]: how far the picture is noised; int(num_inference_steps * strength)
            steps run. height, width: default the first image's size rounded down to a multiple
            of 8, as diffusers does; the images are resized (Lanczos) to that size.
        """
        self._check_plain_unet()
        images = check_images(image, "image")
        strength = check_strength(strength)
        prompts, negatives, steps, guided, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        f = self.vae_scale_factor
        height, width = self._check_size(height, width, images[0].height // f * f, images[0].width // f * f,
                                          batch)
        check_image_count(len(images), batch)
        start = first_step(steps, strength)

        # 1. encode the prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guided, num_images_per_prompt)
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
            black = keep; a mask of 0s and 1s, bool or float: `sdcourse.images.mask_picture`), or one
            per image. height, width: default the model's native size, as in diffusers; image and
            mask are resized (Lanczos) to it.
        strength in [0, 1]: 1 starts the painted part from pure noise.
        """
        latent_channels = self.vae.latent_channels
        if self.unet.in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(f"Inpaint needs a U-Net with {latent_channels} or {2 * latent_channels + 1} input "
                             f"channels, this one has {self.unet.in_channels}")
        images = check_images(image, "image")
        masks = check_images(mask_image, "mask_image", masks=True)
        if len(masks) not in (1, len(images)):
            raise ValueError(f"mask_image: {len(masks)} masks for {len(images)} images; "
                             "give one mask, or one per image")
        for i, im in enumerate(images):
            mask = masks[i if len(masks) > 1 else 0]
            if mask.size != im.size:
                raise ValueError(f"mask_image is {mask.width}x{mask.height} pixels but image is "
                                 f"{im.width}x{im.height}: the mask must have the image's size")
        strength = check_strength(strength)
        prompts, negatives, steps, guided, batch, generator = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, generator, on_step)
        height, width = self._check_size(height, width, self._native_size(), self._native_size(), batch)
        check_image_count(len(images), batch)
        start = first_step(steps, strength)

        # 1. encode the prompt
        cond, uncond = self.encode_prompts(prompts, negatives, guided, num_images_per_prompt)
        # 2. the timesteps, from index `start` on (all of them at strength 1)
        timesteps = self.set_timesteps(steps)[start:]
        # 3. prepare the latents, drawing the random numbers in diffusers' order:
        #    the picture's latents z_0, the noise, then the masked picture's latents
        pixels = image_to_tensor(images, height, width)  # (k, 3, H, W) in [-1, 1]
        mask = mask_to_tensor(masks, height, width)  # (k or 1, 1, H, W), 1 = paint
        if not mask.any():
            warn("mask_image has no white part, so nothing is repainted: the pictures come back as the image "
                 "(white, or 1 in a 0/1 mask, marks the part to paint)", CourseWarning, stacklevel=3)
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
