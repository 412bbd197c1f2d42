"""The from-scratch ControlNet against diffusers' ControlNetModel, and the from-scratch pipeline
with a ControlNet against diffusers' StableDiffusionControlNetPipeline.

The networks are compared on held-out tiny configurations (not the shipped model's), with every
weight moved off its start, the zero convolutions included: a ControlNet whose outputs are all
zero would match anything. The pipeline is compared on the shipped tiny model with a ControlNet
made from its U-Net, whose zero convolutions are given small random weights.
"""

import warnings

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from PIL import Image

from sdcourse import CourseWarning
from sdcourse.controlnet import ControlNet, check_fits, control_picture_warnings, load_controlnet
from sdcourse.data import shapes
from sdcourse.pipeline import TextToImage, load_pipeline
from sdcourse.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

# Two held-out configurations that differ in block types, widths, heads, layers and projections.
# Each pairs a U-Net config with the ControlNet's conditioning embedding widths (how many times it
# shrinks the control picture: 2 ** (len - 1)).
CROSSATTN_FIRST = {
    "unet": {
        "block_out_channels": (4, 8), "norm_num_groups": 2, "cross_attention_dim": 8, "attention_head_dim": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1, "sample_size": 8,
    },
    "embedding": (4, 8),
}
SD2_STYLE_CROSSATTN_LAST = {
    "unet": {
        "block_out_channels": (8, 16, 16), "norm_num_groups": 4, "cross_attention_dim": 12,
        "attention_head_dim": [2, 4, 4], "use_linear_projection": True, "transformer_layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2, "flip_sin_to_cos": False, "freq_shift": 1, "sample_size": 8,
    },
    "embedding": (4, 8, 8),
}
CONFIGS = {"crossattn-first": CROSSATTN_FIRST, "sd2-style": SD2_STYLE_CROSSATTN_LAST}


def perturb(module, seed, size=0.1):
    """Every weight moved off its start (zero convolutions off zero, norms off 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(size * torch.randn(p.shape, generator=g))
    return module


def make_networks(config, seed=0, **controlnet_options):
    """diffusers' U-Net and ControlNet with random weights, and the course's with the same weights."""
    torch.manual_seed(seed)
    unet = perturb(UNet2DConditionModel(**config["unet"]), seed).eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=config["embedding"])
    if controlnet_options:
        controlnet = ControlNetModel.from_config({**controlnet.config, **controlnet_options})
    controlnet = perturb(controlnet, seed + 1).eval()
    our_unet = UNet.from_config(unet.config).eval()
    our_unet.load_state_dict(unet.state_dict())
    ours = ControlNet.from_config(controlnet.config).eval()
    ours.load_state_dict(controlnet.state_dict())
    return unet, controlnet, our_unet, ours


def inputs(config, batch=2, height=8, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(config["embedding"]) - 1)
    sample = torch.randn(batch, 4, height, width, generator=g)
    text = torch.randn(batch, 5, config["unet"]["cross_attention_dim"], generator=g)
    control = torch.rand(batch, 3, height * factor, width * factor, generator=g)
    return sample, torch.tensor([999, 37])[:batch], text, control


def max_diff(a, b):
    return (a - b).abs().max().item()


# ---- the network --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("scale,guess_mode", [(1.0, False), (0.6, False), (0.8, True)])
def test_residuals_and_the_unet_with_them_equal_diffusers(name, scale, guess_mode):
    config = CONFIGS[name]
    unet, controlnet, our_unet, ours = make_networks(config)
    sample, t, text, control = inputs(config)
    with torch.no_grad():
        down, mid = controlnet(sample, t, text, control, conditioning_scale=scale, guess_mode=guess_mode,
                               return_dict=False)
        our_down, our_mid = ours(sample, t, text, control, conditioning_scale=scale, guess_mode=guess_mode)
        assert len(our_down) == len(down) == len(ours.controlnet_down_blocks)  # one per skip of the U-Net
        for theirs, mine in zip([*down, mid], [*our_down, our_mid]):
            assert mine.shape == theirs.shape
            assert theirs.abs().max() > 1e-2  # not zero: the test means something
            assert max_diff(mine, theirs) <= 1e-5
        expected = unet(sample, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        got = our_unet(sample, t, text, our_down, our_mid)
        assert max_diff(got, expected) <= 1e-5
        # the residuals change the U-Net's output
        assert max_diff(got, our_unet(sample, t, text)) > 1e-3


def test_channel_order_bgr_and_global_pooling_equal_diffusers():
    for options in ({"controlnet_conditioning_channel_order": "bgr"}, {"global_pool_conditions": True}):
        _, controlnet, _, ours = make_networks(CROSSATTN_FIRST, seed=3, **options)
        sample, t, text, control = inputs(CROSSATTN_FIRST)
        with torch.no_grad():
            down, mid = controlnet(sample, t, text, control, return_dict=False)
            our_down, our_mid = ours(sample, t, text, control)
        assert max(max_diff(a, b) for a, b in zip([*down, mid], [*our_down, our_mid])) <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dicts_load_strictly_both_ways(name):
    _, controlnet, _, ours = make_networks(CONFIGS[name], seed=5)
    assert list(ours.state_dict()) == list(controlnet.state_dict())  # the same names, in the same order
    back = ControlNetModel.from_config(controlnet.config).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    sample, t, text, control = inputs(CONFIGS[name])
    with torch.no_grad():
        down, mid = back(sample, t, text, control, return_dict=False)
        our_down, our_mid = ours(sample, t, text, control)
    assert max(max_diff(a, b) for a, b in zip([*down, mid], [*our_down, our_mid])) <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_unet_equals_diffusers_weight_for_weight(name):
    config = CONFIGS[name]
    unet, _, our_unet, _ = make_networks(config, seed=7)
    torch.manual_seed(11)
    theirs = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=config["embedding"]).state_dict()
    for source in (our_unet, unet):  # the course's U-Net, or diffusers' own
        torch.manual_seed(11)  # the conditioning embedding's random weights: drawn as diffusers draws them
        ours = ControlNet.from_unet(source, conditioning_embedding_out_channels=config["embedding"]).state_dict()
        assert list(ours) == list(theirs)
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key
    zero = [key for key in ours if key.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                                    "controlnet_cond_embedding.conv_out"))]
    assert zero and all(not ours[key].any() for key in zero)
    copied = [key for key in ours if key.startswith(("conv_in", "time_embedding", "down_blocks", "mid_block"))]
    assert all(torch.equal(ours[key], our_unet.state_dict()[key]) for key in copied)


def test_a_new_controlnet_leaves_the_unet_unchanged():
    _, _, our_unet, _ = make_networks(CROSSATTN_FIRST, seed=2)
    new = ControlNet.from_unet(our_unet, conditioning_embedding_out_channels=CROSSATTN_FIRST["embedding"])
    sample, t, text, control = inputs(CROSSATTN_FIRST)
    with torch.no_grad():
        down, mid = new(sample, t, text, control)
        assert torch.equal(our_unet(sample, t, text, down, mid), our_unet(sample, t, text))


def test_the_control_embedding_computed_once_gives_the_same_residuals():
    """A pipeline embeds the control picture once per call, not at every step."""
    _, _, _, ours = make_networks(SD2_STYLE_CROSSATTN_LAST, seed=6)
    sample, t, text, control = inputs(SD2_STYLE_CROSSATTN_LAST)
    with torch.no_grad():
        down, mid = ours(sample, t, text, control, 0.7)
        embedding = ours.embed_control(control)
        again_down, again_mid = ours(sample, t, text, conditioning_scale=0.7, control_embedding=embedding)
        assert all(torch.equal(a, b) for a, b in zip([*down, mid], [*again_down, again_mid]))
        with pytest.raises(ValueError, match="one of the two"):
            ours(sample, t, text, control, control_embedding=embedding)
        with pytest.raises(ValueError, match=r"control_embedding must have the shape \(2, 8, 8, 16\)"):
            ours(sample, t, text, control_embedding=embedding[:, :, :4])


def test_load_controlnet_from_a_model_and_from_its_folder(tmp_path):
    _, controlnet, _, _ = make_networks(CROSSATTN_FIRST, seed=4)
    controlnet.save_pretrained(tmp_path / "controlnet")
    for source in (controlnet, tmp_path / "controlnet", str(tmp_path / "controlnet")):
        ours = load_controlnet(source).state_dict()
        assert all(torch.equal(ours[key], value) for key, value in controlnet.state_dict().items())
    with pytest.raises(ValueError, match="no config.json"):
        load_controlnet(tmp_path)


def test_the_unet_refuses_residuals_that_do_not_fit():
    unet, controlnet, our_unet, ours = make_networks(CROSSATTN_FIRST)
    sample, t, text, control = inputs(CROSSATTN_FIRST)
    with torch.no_grad():
        down, mid = ours(sample, t, text, control)
        with pytest.raises(ValueError, match="down_block_additional_residuals was given without mid_block"):
            our_unet(sample, t, text, down_block_additional_residuals=down)
        with pytest.raises(ValueError, match="mid_block_additional_residual was given without down_block"):
            our_unet(sample, t, text, mid_block_additional_residual=mid)
        with pytest.raises(ValueError, match=f"has {len(down) - 1} tensors, but this U-Net has {len(down)} skip"):
            our_unet(sample, t, text, down[:-1], mid)
        with pytest.raises(ValueError, match=r"down_block_additional_residuals\[0\] must have the shape \(2, 4, 8, 16\)"):
            our_unet(sample, t, text, [down[0][:1], *down[1:]], mid)  # batch 1 would broadcast silently
        with pytest.raises(ValueError, match="controlnet_cond is 8x16, but this ControlNet needs 2 times"):
            ours(sample, t, text, control[:, :, :8, :16])
        with pytest.raises(ValueError, match="controlnet_cond has 1 channels, but this ControlNet reads "
                                             "conditioning_channels=3"):
            ours(sample, t, text, control[:, :1])


def test_config_fields_it_does_not_implement_are_refused():
    with pytest.raises(ValueError, match="mid_block_type='UNetMidBlock2D' is not supported"):
        ControlNet.from_config({"mid_block_type": "UNetMidBlock2D"})
    with pytest.raises(ValueError, match="controlnet_conditioning_channel_order='grb' is not allowed"):
        ControlNet.from_config({"controlnet_conditioning_channel_order": "grb"})
    with pytest.raises(ValueError, match="unknown fields"):
        ControlNet.from_config({"up_block_types": ["UpBlock2D"] * 4})
    _, _, our_unet, _ = make_networks(CROSSATTN_FIRST)
    with pytest.raises(ValueError, match="whole U-Net's weights"):
        ControlNet.from_unet(our_unet).load_state_dict(our_unet.state_dict())


# ---- the pipeline, on the shipped tiny model ----------------------------------------------

STEPS = 5
PROMPTS = ["a red circle", "a blue square"]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def max_difference(ours, theirs):
    """The largest difference between two lists of pictures, in 0..255 levels."""
    assert len(ours) == len(theirs)
    return max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(ours, theirs))


def outline(objects, background="black", size=64):
    """An edge map of a shapes scene: white lines on black, uint8 (size, size)."""
    grey = shapes.render(shapes.make_scene(objects, background), size).astype(np.float32).mean(axis=-1)
    gy, gx = np.gradient(grey)
    return np.where(np.hypot(gx, gy) > 20, 255, 0).astype(np.uint8)


CIRCLE = outline([{"colour": "red", "shape": "circle"}])
SQUARE = outline([{"colour": "blue", "shape": "square", "position": "top left", "size": "small"}])


def ring(size=64, inner=14, outer=17):
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    return ((r > inner) & (r < outer)).astype(np.float32)


@pytest.fixture(scope="module")
def pipes():
    """(the base pipeline, diffusers' ControlNet pipeline, the course's TextToImage from it)."""
    pipe = load_pipeline()
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(pipe.unet)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # small random zero convolutions: the control picture now steers
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(0.05 * torch.randn(conv.bias.shape, generator=g))
    theirs = StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=controlnet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    return pipe, theirs, TextToImage.from_pretrained(theirs)


def grey_pil(array):
    return Image.fromarray(array).convert("RGB")


CASES = {
    "outline, two prompts": dict(prompt=PROMPTS, image=grey_pil(CIRCLE)),
    "two pictures per prompt": dict(prompt="a red circle", image=grey_pil(SQUARE), num_images_per_prompt=2),
    "one control per prompt": dict(prompt=PROMPTS, image=[grey_pil(CIRCLE), grey_pil(SQUARE)]),
    # a batch of one: diffusers reads the length of a single (H, W, 3) array as its number of pictures
    "numpy ring in [0, 1]": dict(prompt=PROMPTS, image=np.repeat(ring()[None, ..., None], 3, axis=-1)),
    "tensor": dict(prompt=PROMPTS, image=torch.from_numpy(ring()).expand(3, -1, -1)[None].contiguous()),
    "scale 0.5": dict(prompt=PROMPTS, image=grey_pil(CIRCLE), controlnet_conditioning_scale=0.5),
    "guess mode": dict(prompt=PROMPTS, image=grey_pil(CIRCLE), guess_mode=True),
    "control from 20% to 60% of the steps": dict(prompt=PROMPTS, image=grey_pil(CIRCLE), control_guidance_start=0.2,
                                                 control_guidance_end=0.6),
    "no guidance": dict(prompt=PROMPTS, image=grey_pil(CIRCLE), guidance_scale=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_to_image_with_a_controlnet_equals_diffusers(pipes, case):
    _, theirs, ours = pipes
    args = {"guidance_scale": 7.5, **CASES[case]}
    reference = theirs(**args, num_inference_steps=STEPS, generator=seeded(0)).images
    with warnings.catch_warnings():
        warnings.simplefilter("error", CourseWarning)  # a good control picture draws no warning
        images = ours(**args, num_inference_steps=STEPS, generator=seeded(0))
    assert len(images) == 2 and images[0].size == (64, 64)
    assert max_difference(images, reference) <= 1


def test_a_control_picture_of_another_size_is_resized_as_diffusers_does_with_a_warning(pipes):
    _, theirs, ours = pipes
    control = grey_pil(outline([{"colour": "red", "shape": "circle"}], size=96))
    args = dict(prompt=PROMPTS, image=control, height=64, width=64, num_inference_steps=STEPS)
    reference = theirs(**args, generator=seeded(1)).images
    with pytest.warns(CourseWarning, match="is 96x96 pixels .width x height., not the 64x64 of the pictures asked: "
                                           "it is resized to 64x64"):
        images = ours(**args, generator=seeded(1))
    assert max_difference(images, reference) <= 1
    # without height and width, the control picture's size (rounded down to a multiple of 8) is the pictures'
    with warnings.catch_warnings():
        warnings.simplefilter("error", CourseWarning)
        assert ours(prompt="a red circle", image=control, num_inference_steps=1)[0].size == (96, 96)


def test_scale_0_gives_the_base_models_pictures(pipes):
    base, _, ours = pipes
    plain = TextToImage.from_pretrained(base)
    args = dict(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5)
    expected = plain(**args, generator=seeded(2))
    got = ours(**args, image=grey_pil(CIRCLE), controlnet_conditioning_scale=0.0, generator=seeded(2))
    assert max_difference(got, expected) == 0
    steered = ours(**args, image=grey_pil(CIRCLE), generator=seeded(2))
    assert max_difference(steered, expected) > 10  # and the ControlNet does steer


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [-0.5, float("nan"), "1"])
def test_a_negative_or_nan_conditioning_scale_is_refused(pipes, scale):
    with pytest.raises(ValueError, match=r"controlnet_conditioning_scale must be a number >= 0 \(0: no control"):
        pipes[2]("a red circle", image=grey_pil(CIRCLE), controlnet_conditioning_scale=scale, num_inference_steps=1)


@pytest.mark.parametrize("start,end,message", [
    (-0.1, 1.0, r"control_guidance_start must be a number in \[0, 1\)"),
    (0.0, 1.5, r"control_guidance_end must be a number in \(0, 1\]"),
    (0.6, 0.4, "control_guidance_start must be below control_guidance_end, got 0.6 and 0.4"),
])
def test_a_control_guidance_window_out_of_order_is_refused(pipes, start, end, message):
    with pytest.raises(ValueError, match=message):
        pipes[2]("a red circle", image=grey_pil(CIRCLE), control_guidance_start=start, control_guidance_end=end,
                 num_inference_steps=1)


@pytest.mark.parametrize("image,message", [
    (np.zeros((64, 64, 4), np.float32), r"image \(the control picture\) has 4 channels, but this ControlNet reads 3 "
                                        r"\(its conditioning_channels\); a picture is read as \(height, width, channels\)"),
    (torch.zeros(1, 2, 64, 64), "has 2 channels, but this ControlNet reads 3"),
    (np.zeros((3, 64, 64), np.float32), "has 64 channels"),  # channels first in a numpy array
    (torch.full((3, 64, 64), 2.0), r"holds floats from 2 to 2; a control picture's floats must lie in \[0, 1\]"),
    (np.full((64, 64), 300), "holds whole numbers from 300 to 300; a picture's must be 0..255"),
    ("outline.png", "must be a PIL image, a numpy array or a torch tensor, got str"),
])
def test_a_control_picture_that_is_not_one_is_refused(pipes, image, message):
    with pytest.raises(ValueError, match=message):
        pipes[2]("a red circle", image=image, num_inference_steps=1)


def test_a_list_of_control_pictures_that_fits_neither_the_prompts_nor_one_is_refused(pipes):
    with pytest.raises(ValueError, match=r"image: 3 control pictures for 2 prompt\(s\); give one control picture for "
                                         "every prompt, or a single one for all"):
        pipes[2](PROMPTS, image=[grey_pil(CIRCLE)] * 3, num_inference_steps=1)


def test_an_inverted_control_or_a_filled_mask_is_warned_about(pipes):
    ours = pipes[2]
    with pytest.warns(CourseWarning, match=r"is mostly white \(9\d% of its pixels are bright\): an outline ControlNet "
                                           "expects white lines on black; invert it"):
        ours("a red circle", image=grey_pil(255 - CIRCLE), num_inference_steps=1)
    y, x = np.mgrid[0:64, 0:64]
    disc = (np.hypot(x - 32, y - 32) < 15).astype(np.uint8) * 255
    with pytest.warns(CourseWarning, match="looks like a filled mask: its white part is solid, about 1[5-7] pixels "
                                           "thick"):
        ours("a red circle", image=grey_pil(disc), num_inference_steps=1)
    # outlines (thin lines, a ring) and an empty picture draw no warning
    pixels = torch.stack([torch.from_numpy(a / 255.0).float().expand(3, -1, -1) for a in (CIRCLE, SQUARE)]
                         + [torch.from_numpy(ring()).expand(3, -1, -1), torch.zeros(3, 64, 64)])
    assert control_picture_warnings(pixels) == []


def test_a_controlnet_made_for_another_unet_is_refused_naming_the_first_layer(pipes):
    base, _, ours = pipes
    _, other, _, _ = make_networks(CROSSATTN_FIRST)
    with pytest.raises(ValueError, match=r"made for another U-Net: its layer conv_in.weight is \(4, 4, 3, 3\), the "
                                         r"U-Net's is \(64, 4, 3, 3\)"):
        TextToImage(ours.text_encoder, ours.unet, ours.vae, ours.sampler, controlnet=other)
    wider = base.unet.config | {"block_out_channels": [64, 128, 256]}
    with pytest.raises(ValueError, match=r"its layer down_blocks.2.resnets.0.conv1.weight is \(256, 128, 3, 3\), "
                                         r"the U-Net.s is \(128, 128, 3, 3\)"):
        check_fits(ControlNet.from_unet(UNet.from_config(wider)), ours.unet)


def test_control_arguments_without_a_controlnet_and_a_controlnet_without_a_picture_are_refused(pipes):
    base, _, ours = pipes
    plain = TextToImage.from_pretrained(base)
    with pytest.raises(ValueError, match="image= is a ControlNet's control picture, and this TextToImage has no "
                                         "ControlNet"):
        plain("a red circle", image=grey_pil(CIRCLE), num_inference_steps=1)
    with pytest.raises(ValueError, match="controlnet_conditioning_scale, guess_mode steer a ControlNet"):
        plain("a red circle", controlnet_conditioning_scale=0.5, guess_mode=True, num_inference_steps=1)
    with pytest.raises(ValueError, match="holds a ControlNet: pass its control picture as image="):
        ours("a red circle", num_inference_steps=1)
    with pytest.raises(ValueError, match="does not take a ControlNet; use TextToImage"):
        from sdcourse.pipeline import ImageToImage

        ImageToImage(ours.text_encoder, ours.unet, ours.vae, ours.sampler, controlnet=ours.controlnet)
