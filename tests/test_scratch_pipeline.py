"""The pipeline from scratch makes diffusers' pictures (to 1/255), and refuses bad arguments clearly.

Every case runs the course's TextToImage / ImageToImage / Inpaint and diffusers' pipeline with
the same weights (the embedded tiny model), seed and arguments, and compares the pictures as
uint8 arrays. A few steps at 64x64 keep it fast.
"""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from sdcourse import CourseWarning
from sdcourse.pipeline import EMBEDDED_MODEL, ImageToImage, Inpaint, TextToImage, image_to_tensor, load_pipeline
from sdcourse.samplers import DDIMSampler, DPMSolverMultistepSampler, EulerAncestralSampler, PLMSSampler

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
SCHEDULERS = {"ddim": DDIMScheduler, "euler_a": EulerAncestralDiscreteScheduler, "dpm++2m": DPMSolverMultistepScheduler,
              "plms": PNDMScheduler}
SCHEDULER_CHANGES = {"plms": {"skip_prk_steps": True}}  # SD 1.x's PNDM: PLMS, no Runge-Kutta warm-up
# Stable Diffusion 1.5's scheduler_config.json
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def max_difference(ours, theirs):
    """The largest difference between two lists of pictures, in 0..255 levels."""
    assert len(ours) == len(theirs)
    worst = 0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        assert a.shape == b.shape
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


def picture(size=(64, 64)):
    """A small test picture: a colour gradient with a bright disc."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)], axis=-1)
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2
    rgb[disc] = (240, 220, 60)
    return Image.fromarray(rgb.astype(np.uint8))


def square_mask(size=(64, 64), mode="L"):
    """White (paint) in the middle, black (keep) around it, with soft edges to test binarizing."""
    width, height = size
    m = np.zeros((height, width), np.float32)
    m[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    m[height // 4 - 1, :] = 100  # a grey line: below 0.5, kept
    m[:, width // 4 - 1] = 160  # a light line: above 0.5, painted
    return Image.fromarray(m.astype(np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def embedded():
    return load_pipeline()


@pytest.fixture(scope="module", params=list(SCHEDULERS))
def both(request, embedded):
    """(sampler name, diffusers' three pipelines, the course's three) for one sampler.

    ddim is the embedded model's own scheduler (the default twin); euler_a is chosen by name,
    built from the DDIM config; dpm++2m and plms are the twins of a pipeline whose scheduler was swapped.
    """
    name = request.param
    scheduler = SCHEDULERS[name].from_config(embedded.scheduler.config, **SCHEDULER_CHANGES.get(name, {}))
    text = StableDiffusionPipeline(**{**embedded.components, "scheduler": scheduler})
    theirs = {
        "text": text,
        "image": StableDiffusionImg2ImgPipeline(**text.components),
        "inpaint": StableDiffusionInpaintPipeline(**text.components),
    }
    for pipe in theirs.values():
        pipe.set_progress_bar_config(disable=True)
    ours_text = TextToImage.from_pretrained(embedded, sampler="euler_a") if name == "euler_a" else (
        TextToImage.from_pretrained(text))
    parts = (ours_text.text_encoder, ours_text.unet, ours_text.vae, ours_text.sampler)
    ours = {"text": ours_text, "image": ImageToImage(*parts), "inpaint": Inpaint(*parts)}
    return name, theirs, ours


def test_each_sampler_is_the_twin_asked_for(both):
    name, _, ours = both
    expected = {"ddim": DDIMSampler, "euler_a": EulerAncestralSampler, "dpm++2m": DPMSolverMultistepSampler,
                "plms": PLMSSampler}[name]
    assert type(ours["text"].sampler) is expected


TEXT_CASES = {
    "no guidance": dict(prompt="a red circle", guidance_scale=1.0),
    "guidance": dict(prompt="a red circle", guidance_scale=7.5),
    "negative prompt": dict(prompt="a red circle", guidance_scale=7.5, negative_prompt="a blue square"),
    "two prompts, two images each": dict(prompt=["a red circle", "a green cat"], negative_prompt=["blue", ""],
                                         num_images_per_prompt=2, generators=4),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_to_image_equals_diffusers(both, case):
    _, theirs, ours = both
    args = dict(TEXT_CASES[case])
    count = args.pop("generators", 0)  # a list of generators, one per picture, or one generator

    def generator():
        return [seeded(i) for i in range(count)] if count else seeded(0)

    reference = theirs["text"](**args, height=64, width=64, num_inference_steps=STEPS, generator=generator()).images
    images = ours["text"](**args, num_inference_steps=STEPS, generator=generator())
    assert images[0].size == (64, 64)
    assert max_difference(images, reference) <= 1


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_image_to_image_equals_diffusers(both, strength):
    _, theirs, ours = both
    args = dict(prompt="a blue square", image=picture(), strength=strength, num_inference_steps=5, guidance_scale=7.5)
    reference = theirs["image"](**args, generator=seeded(1)).images
    assert max_difference(ours["image"](**args, generator=seeded(1)), reference) <= 1


def test_image_to_image_with_a_generator_per_picture_and_an_odd_size(both):
    """A 70x66 picture is resized (Lanczos) to 64x64; each picture is encoded with its own generator."""
    _, theirs, ours = both
    args = dict(prompt="a blue square", image=picture((70, 66)), strength=0.6, num_inference_steps=5,
                num_images_per_prompt=2)
    reference = theirs["image"](**args, generator=[seeded(5), seeded(6)]).images
    images = ours["image"](**args, generator=[seeded(5), seeded(6)])
    assert images[0].size == (64, 64)
    assert max_difference(images, reference) <= 1


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_equals_diffusers(both, strength):
    _, theirs, ours = both
    args = dict(prompt="a green triangle", image=picture(), mask_image=square_mask(), strength=strength,
                num_inference_steps=5, guidance_scale=7.5)
    reference = theirs["inpaint"](**args, generator=seeded(2)).images
    assert max_difference(ours["inpaint"](**args, generator=seeded(2)), reference) <= 1


def test_inpainting_resizes_to_the_native_size_and_takes_rgb_masks(both):
    _, theirs, ours = both
    args = dict(prompt=["a green triangle", "a cat"], image=picture((72, 72)), mask_image=square_mask((72, 72), "RGB"),
                num_inference_steps=4, guidance_scale=3.0)
    reference = theirs["inpaint"](**args, generator=[seeded(7), seeded(8)]).images
    images = ours["inpaint"](**args, generator=[seeded(7), seeded(8)])
    assert images[0].size == (64, 64)
    assert max_difference(images, reference) <= 1


def test_inpainting_keeps_the_unmasked_part(both):
    """With nothing to paint, the last latents are the picture's own: the picture back through the VAE."""
    _, _, ours = both
    inpaint, image = ours["inpaint"], picture()
    with pytest.warns(CourseWarning, match="nothing is repainted"):
        kept = inpaint("a green triangle", image=image, mask_image=Image.new("L", (64, 64), 0),
                       num_inference_steps=3, generator=seeded(0))
    # the picture's latents z_0 are the first draw from the generator
    with torch.no_grad():
        z0 = inpaint.encode_images(image_to_tensor([image], 64, 64), seeded(0))
    assert max_difference(kept, inpaint.decode(z0.contiguous())) == 0


@pytest.fixture(scope="module")
def nine_channels(embedded):
    """diffusers' inpainting pipeline with an inpainting U-Net (9 input channels: latents, mask,
    masked picture's latents), randomly initialised, and Euler ancestral; and the course's twin."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**embedded.unet.config, "in_channels": 9}).eval()
    scheduler = EulerAncestralDiscreteScheduler.from_config(embedded.scheduler.config)
    theirs = StableDiffusionInpaintPipeline(**{**embedded.components, "unet": unet, "scheduler": scheduler})
    theirs.set_progress_bar_config(disable=True)
    return theirs, Inpaint.from_pretrained(theirs)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_an_inpainting_unet_equals_diffusers(nine_channels, strength):
    theirs, ours = nine_channels
    args = dict(prompt="a cat", image=picture(), mask_image=square_mask(), strength=strength, num_inference_steps=4)
    reference = theirs(**args, generator=seeded(3)).images
    assert max_difference(ours(**args, generator=seeded(3)), reference) <= 1


def test_an_inpainting_unet_is_refused_for_other_tasks(nine_channels):
    ours = nine_channels[1]
    parts = (ours.text_encoder, ours.unet, ours.vae, ours.sampler)
    with pytest.raises(ValueError, match="this U-Net reads 9 channels, not the 4 of the latents"):
        TextToImage(*parts)("a cat", num_inference_steps=2)
    with pytest.raises(ValueError, match="use Inpaint"):
        ImageToImage(*parts)("a cat", image=picture(), num_inference_steps=2)


# ---- the step hook, devices and dtypes, loading


def test_on_step_sees_every_step_and_equals_diffusers_latents(embedded):
    ours = TextToImage.from_pretrained(embedded)
    theirs_latents = []

    def record(pipe, i, t, tensors):
        theirs_latents.append(tensors["latents"].clone())
        return tensors

    reference = embedded("a red circle", height=64, width=64, num_inference_steps=STEPS, generator=seeded(0),
                         callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"]).images
    seen = []
    images = ours("a red circle", num_inference_steps=STEPS, generator=seeded(0),
                  on_step=lambda step, t, latents, x0: seen.append((step, t, latents.clone(), x0.clone())))
    assert [s[0] for s in seen] == list(range(STEPS))
    assert [s[1] for s in seen] == ours.sampler.timesteps.tolist()
    for (_, _, latents, x0), expected in zip(seen, theirs_latents):
        assert x0.shape == latents.shape == (1, 4, 8, 8)
        torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    assert max_difference(ours.decode(seen[-1][2]), images) == 0
    assert max_difference(images, reference) <= 1


def test_image_to_image_runs_int_steps_times_strength_steps(embedded):
    ours = ImageToImage.from_pretrained(embedded)
    steps = []
    ours("a cat", image=picture(), strength=0.5, num_inference_steps=6, generator=seeded(0),
         on_step=lambda step, t, latents, x0: steps.append(step))
    assert steps == [0, 1, 2]


def test_float16_equals_diffusers_in_float16():
    pipe = load_pipeline().to(dtype=torch.float16)
    ours = TextToImage.from_pretrained(pipe)
    assert ours.dtype == torch.float16 and ours.device == pipe.device
    reference = pipe("a red circle", height=64, width=64, num_inference_steps=3, generator=seeded(0)).images
    assert max_difference(ours("a red circle", num_inference_steps=3, generator=seeded(0)), reference) <= 1
    ours.to(torch.float32)
    assert ours.dtype == torch.float32 and ours.vae.decoder.conv_out.weight.dtype == torch.float32


def test_from_a_folder_copies_the_weights(embedded):
    ours = TextToImage.from_pretrained(str(EMBEDDED_MODEL))
    assert type(ours.sampler) is DDIMSampler  # the embedded model's scheduler is DDIM
    pairs = ((ours.unet, embedded.unet), (ours.vae, embedded.vae), (ours.text_encoder, embedded.text_encoder))
    for mine, theirs in pairs:
        for key, value in theirs.state_dict().items():
            key = key.removeprefix("text_model.")
            assert torch.equal(mine.state_dict()[key], value), key
    assert ours.unet.conv_in.weight.data_ptr() != embedded.unet.conv_in.weight.data_ptr()  # a copy, not shared


def test_prompts_are_padded_with_the_pipelines_pad_token(embedded):
    """SD 2.x's tokenizer pads with "!" (id 0), not the end token: the padding changes the context."""
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    vocabulary = Tokenizer.from_file(str(EMBEDDED_MODEL / "tokenizer" / "tokenizer.json"))
    tokenizer = CLIPTokenizer(tokenizer_object=vocabulary, model_max_length=77, pad_token="!")
    theirs = StableDiffusionPipeline(**{**embedded.components, "tokenizer": tokenizer})
    theirs.set_progress_bar_config(disable=True)
    ours = TextToImage.from_pretrained(theirs)
    assert ours.pad_token_id == 0
    reference = theirs("a cat", height=64, width=64, num_inference_steps=3, generator=seeded(0)).images
    assert max_difference(ours("a cat", num_inference_steps=3, generator=seeded(0)), reference) <= 1


def test_a_scheduler_without_a_twin_falls_back_to_ddim_with_a_warning(embedded):
    """PNDM with its Runge-Kutta warm-up (skip_prk_steps=False, PNDM's default) has no twin."""
    pndm = StableDiffusionPipeline(**{**embedded.components,
                                      "scheduler": PNDMScheduler.from_config(embedded.scheduler.config)})
    with pytest.warns(CourseWarning, match="PNDMScheduler with skip_prk_steps=False has no from-scratch twin"):
        ours = TextToImage.from_pretrained(pndm)
    assert type(ours.sampler) is DDIMSampler


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    """The embedded model with Stable Diffusion 1.5's scheduler config: PNDMScheduler, skip_prk_steps."""
    folder = tmp_path_factory.mktemp("sd15-scheduler") / "tiny-sd"
    shutil.copytree(EMBEDDED_MODEL, folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps(
        {**json.loads((EMBEDDED_MODEL / "model_index.json").read_text()), "scheduler": ["diffusers", "PNDMScheduler"]}))
    return folder


def test_sd15s_pndm_scheduler_gives_plms_whose_13_calls_for_12_steps_equal_diffusers(sd15_folder):
    """A pipeline made from a folder with SD 1.5's scheduler runs PLMS, without a warning. Its first
    step calls the U-Net twice, so 12 steps are 13 calls (914, 831, 831, 748, ..., 1), and on_step
    runs after each call, as diffusers' callback does; each call's latents and the pictures are
    diffusers' StableDiffusionPipeline's."""
    theirs = load_pipeline(str(sd15_folder))
    assert type(theirs.scheduler) is PNDMScheduler
    with warnings.catch_warnings():
        warnings.simplefilter("error", CourseWarning)
        ours = TextToImage.from_pretrained(str(sd15_folder))
    assert type(ours.sampler) is PLMSSampler

    their_calls = []

    def record(pipe, i, t, tensors):
        their_calls.append((i, int(t), tensors["latents"].clone()))
        return tensors

    args = dict(prompt="a red circle", guidance_scale=7.5, num_inference_steps=12)
    reference = theirs(**args, height=64, width=64, generator=seeded(0), callback_on_step_end=record,
                       callback_on_step_end_tensor_inputs=["latents"]).images
    our_calls = []
    images = ours(**args, generator=seeded(0),
                  on_step=lambda step, t, latents, x0: our_calls.append((step, t, latents.clone())))
    assert [t for _, t, _ in our_calls] == [914, 831, 831] + list(range(748, 0, -83))
    assert [(i, t) for i, t, _ in our_calls] == [(i, t) for i, t, _ in their_calls]
    for (_, _, latents), (_, _, expected) in zip(our_calls, their_calls):
        torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    assert max_difference(images, reference) <= 1


def test_integer_types_other_than_int_are_accepted(embedded):
    ours = TextToImage.from_pretrained(embedded)
    a = ours("a red circle", height=np.int64(64), width=np.int64(64), num_inference_steps=np.int64(3),
             generator=seeded(0))
    b = ours("a red circle", height=64, width=64, num_inference_steps=3, generator=seeded(0))
    assert max_difference(a, b) == 0


# ---- bad arguments


@pytest.fixture(scope="module")
def scratch(embedded):
    text = TextToImage.from_pretrained(embedded)
    parts = (text.text_encoder, text.unet, text.vae, text.sampler)
    return {"text": text, "image": ImageToImage(*parts), "inpaint": Inpaint(*parts)}


def call(scratch, kind, **changes):
    """Call one pipeline with valid arguments, except for `changes`."""
    args = dict(prompt="a red circle", num_inference_steps=2, generator=seeded(0))
    if kind == "image":
        args.update(image=picture())
    if kind == "inpaint":
        args.update(image=picture(), mask_image=square_mask())
    return scratch[kind](**{**args, **changes})


KINDS = ["text", "image", "inpaint"]
BAD = [
    (dict(num_inference_steps=0), r"num_inference_steps must be at least 1"),
    (dict(num_inference_steps=-3), r"num_inference_steps must be at least 1"),
    (dict(num_inference_steps=2.5), r"num_inference_steps must be an integer"),
    (dict(num_inference_steps="4"), r"num_inference_steps must be an integer"),
    (dict(guidance_scale=-1.0), r"guidance_scale must be a number >= 0"),
    (dict(guidance_scale=math.nan), r"guidance_scale must be a number >= 0"),
    (dict(prompt=""), r"prompt must not be empty"),
    (dict(prompt="   "), r"prompt must not be empty"),
    (dict(prompt=None), r"prompt must be a string or a non-empty list of strings"),
    (dict(prompt=7), r"prompt must be a string or a non-empty list of strings"),
    (dict(prompt=[]), r"prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a cat", 3]), r"prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a", "b"], negative_prompt=["c"], generator=None),
     r"negative_prompt has 1 entries but prompt has 2"),
    (dict(negative_prompt=5), r"negative_prompt must be None, a string or a list of strings"),
    (dict(height=60), r"height=60; it must be a positive multiple of 8"),
    (dict(width=100), r"width=100; it must be a positive multiple of 8"),
    (dict(height=64.0), r"height must be an integer"),
    (dict(width=0), r"width=0; it must be a positive multiple of 8"),
    (dict(num_images_per_prompt=0), r"num_images_per_prompt must be at least 1"),
    (dict(generator=[seeded(0), seeded(1)]), r"generator is a list of 2 generators for 1 pictures"),
    (dict(generator="seed"), r"generator must be a torch.Generator"),
    (dict(on_step="print"), r"on_step must be a function"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("changes, message", BAD)
def test_bad_arguments_are_refused_with_their_name(scratch, kind, changes, message):
    with pytest.raises(ValueError, match=message):
        call(scratch, kind, **changes)


@pytest.mark.parametrize("kind", ["image", "inpaint"])
@pytest.mark.parametrize("strength", [-0.1, 1.5, math.nan, "0.5", True])
def test_strength_must_lie_in_zero_one(scratch, kind, strength):
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        call(scratch, kind, strength=strength)


@pytest.mark.parametrize("kind", ["image", "inpaint"])
def test_a_strength_that_leaves_no_step_is_refused(scratch, kind):
    with pytest.raises(ValueError, match=r"strength=0.1 with num_inference_steps=5 leaves int\(5 \* 0.1\) = 0"):
        call(scratch, kind, strength=0.1, num_inference_steps=5)


def test_a_mask_of_another_size_is_refused(scratch):
    with pytest.raises(ValueError, match=r"mask_image is 32x32 pixels but image is 64x64"):
        call(scratch, "inpaint", mask_image=square_mask((32, 32)))


@pytest.mark.parametrize("kind, name", [("image", "image"), ("inpaint", "image"), ("inpaint", "mask_image")])
def test_pictures_must_be_pil_images(scratch, kind, name):
    with pytest.raises(ValueError, match=rf"{name} must be a PIL image or a list of PIL images"):
        call(scratch, kind, **{name: np.zeros((64, 64, 3))})


def test_an_unknown_sampler_is_refused_with_the_known_ones_listed(embedded):
    with pytest.raises(ValueError, match=r"sampler='euler-a' is not a known sampler; choose one of 'ddpm', 'ddim', "
                                         r"'euler', 'euler_a', 'dpm\+\+2m'"):
        TextToImage.from_pretrained(embedded, sampler="euler-a")


@pytest.mark.parametrize("kind", KINDS)
def test_a_misspelled_keyword_is_a_type_error(scratch, kind):
    with pytest.raises(TypeError, match="num_inference_step"):
        call(scratch, kind, num_inference_step=3)


def test_a_word_added_by_textual_inversion_reaches_the_from_scratch_pipeline(tmp_path):
    """The from-scratch pipeline tokenizes with the pipeline's tokenizer, its added words included."""
    from safetensors.torch import save_file

    theirs = load_pipeline()
    star_row = theirs.text_encoder.get_input_embeddings().weight[theirs.tokenizer.convert_tokens_to_ids("star</w>")]
    save_file({"<star>": star_row.detach() * 3}, str(tmp_path / "learned_embeds.safetensors"))
    theirs.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"), token="<star>")
    ours = TextToImage.from_pretrained(theirs)
    assert ours.tokenizer.convert_tokens_to_ids("<star>") == len(ours.tokenizer) - 1
    reference = theirs("a red <star>", height=64, width=64, num_inference_steps=3, generator=seeded(0)).images
    plain = theirs("a red star", height=64, width=64, num_inference_steps=3, generator=seeded(0)).images
    assert max_difference(reference, plain) > 1  # the new word's embedding changes the picture
    assert max_difference(ours("a red <star>", num_inference_steps=3, generator=seeded(0)), reference) <= 1


# ---- pictures and masks of other depths: one rule (sdcourse.images), or a refusal by name


def grey(values, mode):
    """A grey picture from 8-bit values, in `mode`: "L", "I;16" (x 257) or "F" (/ 255)."""
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(values.astype(np.float32) / 255)
    return Image.fromarray(values.astype(np.uint8))


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_a_16_bit_or_float_picture_is_read_as_its_8_bit_twin(scratch, mode):
    values = np.asarray(picture().convert("L"))
    assert grey(values, mode).mode == mode
    assert max_difference(call(scratch, "image", image=grey(values, mode)),
                          call(scratch, "image", image=grey(values, "L"))) == 0


def test_a_float_picture_outside_zero_one_is_refused_by_name(scratch):
    values = np.asarray(picture().convert("L")).astype(np.float32)  # 0..255 in a float picture
    with pytest.raises(ValueError, match=r"image is a float picture \(mode 'F'\) .* must lie in \[0, 1\]"):
        call(scratch, "image", image=Image.fromarray(values))


@pytest.mark.parametrize("make", [
    lambda m: Image.fromarray((m > 0).astype(np.uint8)),  # 0/1
    lambda m: Image.fromarray((m > 0).astype(np.float32)),  # float 0/1
    lambda m: Image.fromarray(m.astype(np.float32) / 255),  # float in [0, 1]
])
def test_masks_of_0_and_1_or_floats_paint_what_a_white_mask_paints(scratch, make):
    white = np.where(np.asarray(square_mask()) >= 128, 255, 0).astype(np.uint8)
    expected = call(scratch, "inpaint", mask_image=Image.fromarray(white))
    assert max_difference(call(scratch, "inpaint", mask_image=make(white)), expected) == 0


def test_a_mask_that_paints_nothing_is_warned_about(scratch):
    with pytest.warns(CourseWarning, match="mask_image has no white part, so nothing is repainted"):
        call(scratch, "inpaint", mask_image=Image.new("L", (64, 64), 0))


def test_a_vae_of_another_latent_width_is_not_called_an_inpainting_model(scratch):
    from sdcourse.vae import VAE

    text = scratch["text"]
    vae = VAE.from_config({**text.vae.config, "latent_channels": 8})
    with pytest.raises(ValueError, match=r"reads 4 channels but the VAE's latents have 8: .* not belong to the same"):
        TextToImage(text.text_encoder, text.unet, vae, text.sampler)("a cat", num_inference_steps=2)
