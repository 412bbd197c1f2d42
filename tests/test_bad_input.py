"""Bad input, as a new learner might type it: each case gets an error from the course's own code,
of the right type, naming the argument, what was given and what is allowed. Never a silent
wrong result, never a crash deep inside a library."""

import numpy as np
import pytest
import torch

from sdcourse.pipeline import TextToImage, check_memory, generate, load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


# ---- generate ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [-1.0, float("nan"), "7.5"])
def test_generate_refuses_a_negative_or_nan_guidance_scale(pipe, scale):
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        generate(pipe, "a red circle", guidance_scale=scale, num_inference_steps=1)


def test_guidance_scales_from_0_to_1_stay_valid(pipe):
    for scale in (0.0, 0.5, 1):
        assert len(generate(pipe, "a red circle", guidance_scale=scale, num_inference_steps=1)) == 1


def test_a_misspelled_keyword_is_a_type_error_that_names_it(pipe):
    with pytest.raises(TypeError, match="'guidence_scale'; did you mean 'guidance_scale'"):
        generate(pipe, "a red circle", guidence_scale=3)


@pytest.mark.parametrize("prompt", [[], None, 3, ["a red circle", None], "", ["  "]])
def test_a_missing_or_non_string_prompt_names_prompt(pipe, prompt):
    with pytest.raises(ValueError, match="prompt must"):
        generate(pipe, prompt, num_inference_steps=1)


@pytest.mark.parametrize("steps", [2.5, 0, "25", None])
def test_num_inference_steps_must_be_a_whole_number(pipe, steps):
    with pytest.raises(ValueError, match="num_inference_steps must be"):
        generate(pipe, "a red circle", num_inference_steps=steps)


def test_sizes_of_any_integer_type_are_accepted(pipe):
    images = generate(pipe, "a red circle", height=np.int64(64), width=np.int32(64), num_inference_steps=1,
                      output_type="np")
    assert images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="height=60; it must be a positive multiple of 8"):
        generate(pipe, "a red circle", height=60, num_inference_steps=1)
    with pytest.raises(ValueError, match="width must be an integer, got 64.5"):
        generate(pipe, "a red circle", width=64.5, num_inference_steps=1)


def test_generator_is_refused_with_a_pointer_to_seed(pipe):
    with pytest.raises(TypeError, match="pass seed="):
        generate(pipe, "a red circle", generator=torch.Generator().manual_seed(0))


def test_num_images_per_prompt_works_and_each_picture_has_its_own_seed(pipe):
    images = generate(pipe, ["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=3,
                      seed=10, output_type="np")
    assert images.shape == (4, 64, 64, 3)
    # the prompt's pictures one after another: picture 2 is "a blue square" with seed 12
    alone = generate(pipe, "a blue square", num_inference_steps=3, seed=12, output_type="np")
    # a batch and a single picture sum in another order: float rounding, far below one level of 255
    assert np.abs(images[2] - alone[0]).max() <= 1e-4
    with pytest.raises(ValueError, match="num_images_per_prompt must be at least 1"):
        generate(pipe, "a red circle", num_images_per_prompt=0)


def test_a_negative_prompt_per_prompt_works_and_a_wrong_count_is_refused(pipe):
    images = generate(pipe, ["a red circle", "a blue square"], negative_prompt="a green background",
                      num_inference_steps=2, output_type="np")
    assert images.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries but prompt has 2"):
        generate(pipe, ["a red circle", "a blue square"], negative_prompt=["a", "b", "c"])


@pytest.mark.parametrize("prompts, side", [(["a red circle"] * 100_000, 64), (["a red circle"], 80_000)])
def test_a_request_too_big_for_memory_is_refused_before_allocating(pipe, prompts, side):
    with pytest.raises(ValueError, match=r"would need about .* GB at their peak, more than the .* GB available"):
        generate(pipe, prompts, height=side, width=side)
    with pytest.raises(ValueError, match="GB at their peak"):
        TextToImage.from_pretrained(pipe)(prompts, height=side, width=side)


def test_the_memory_limit_can_be_moved(monkeypatch):
    check_memory(16, 64, 64)  # the course's usual request
    monkeypatch.setenv("SDCOURSE_MEMORY_GB", "0.001")
    with pytest.raises(ValueError, match="SDCOURSE_MEMORY_GB"):
        check_memory(16, 64, 64)
    monkeypatch.setenv("SDCOURSE_MEMORY_GB", "lots")
    with pytest.raises(ValueError, match="SDCOURSE_MEMORY_GB='lots'"):
        check_memory(1, 64, 64)


# ---- load_pipeline -------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path):
    import shutil

    from sdcourse.pipeline import EMBEDDED_MODEL

    folder = tmp_path / "tiny-sd"
    shutil.copytree(EMBEDDED_MODEL, folder)
    return folder


def test_a_folder_without_its_tokenizer_is_refused_naming_it(model_copy):
    import shutil

    shutil.rmtree(model_copy / "tokenizer")
    with pytest.raises(FileNotFoundError, match=r"missing tokenizer: .*tokenizer has neither"):
        load_pipeline(model_copy)


def test_weights_holding_nan_are_refused_as_damaged_naming_the_file(model_copy):
    from safetensors.torch import load_file, save_file

    from sdcourse.pipeline import DamagedWeightsError

    path = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    key = next(iter(weights))
    weights[key][..., 0] = float("nan")
    save_file(weights, path)
    with pytest.raises(DamagedWeightsError, match=rf"{path}: {key} holds NaN or infinite values"):
        load_pipeline(model_copy)


def test_an_invalid_model_index_names_the_file(model_copy):
    (model_copy / "model_index.json").write_text('{"unet": ["diffusers", ')
    with pytest.raises(ValueError, match=r"model_index\.json is not valid JSON"):
        load_pipeline(model_copy)


def test_a_config_that_does_not_fit_its_weights_names_the_key(model_copy):
    import json

    path = model_copy / "unet" / "config.json"
    config = json.loads(path.read_text())
    config["cross_attention_dim"] = 48
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet/config\.json does not fit .*attn2\.to_k\.weight .*cross_attention_dim"):
        load_pipeline(model_copy)


def test_a_bad_sdcourse_model_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCOURSE_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SDCOURSE_MODEL=.*nowhere.* no such folder; unset SDCOURSE_MODEL"):
        load_pipeline()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_before_loading():
    with pytest.raises(ValueError, match="device='cuda', but torch sees no CUDA GPU"):
        load_pipeline(device="cuda")
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        load_pipeline(device="gpu")


# ---- elsewhere -----------------------------------------------------------------------------


def test_a_long_prompt_is_reported_once_and_briefly(pipe, capfd):
    from sdcourse.tokenizer import PromptTruncatedWarning

    with pytest.warns(PromptTruncatedWarning) as caught:
        generate(pipe, "a red circle " * 40, num_inference_steps=1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "the last 45 tokens were dropped" in message and len(message) < 300
    printed = capfd.readouterr().err
    assert "truncated" not in printed and "longer than the specified maximum" not in printed


def test_the_text_encoder_called_with_the_tokenizer_output_says_to_pass_input_ids(pipe):
    from sdcourse.text_encoder import TextEncoder
    from sdcourse.tokenizer import tokenize

    encoder = TextEncoder.from_config(pipe.text_encoder.config)
    tokens = tokenize(["a red circle"], pipe.tokenizer)
    with pytest.raises(TypeError, match=r"pass tokens\.input_ids"):
        encoder(tokens)
    with pytest.raises(TypeError, match="input_ids must be a tensor of token ids"):
        encoder([[49406, 320, 49407]])
    assert encoder(tokens.input_ids).shape == (1, 77, pipe.text_encoder.config.hidden_size)


def test_add_noise_with_numpy_arrays_says_how_to_convert():
    from sdcourse.schedules import NoiseSchedule

    schedule = NoiseSchedule()
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(TypeError, match=r"original must be a torch tensor, got ndarray; convert it with torch\.from_numpy"):
        schedule.add_noise(x, np.zeros_like(x), 10)
    with pytest.raises(TypeError, match="noise must be a torch tensor"):
        schedule.add_noise(torch.from_numpy(x), x, 10)


# ---- files that cannot be read --------------------------------------------------------------


def test_a_damaged_judge_file_is_named(tmp_path):
    from safetensors.torch import save_file

    from sdcourse.evaluate import CLASSIFIER_FILE, CLASSIFIER_PATH, classify

    truncated = tmp_path / CLASSIFIER_FILE
    truncated.write_bytes(CLASSIFIER_PATH.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"classifier weights {truncated} cannot be read .*the file is damaged"):
        classify(np.zeros((1, 64, 64, 3), np.uint8), classifier=tmp_path)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match=rf"{other} hold another network, not the judge; train new ones"):
        classify(np.zeros((1, 64, 64, 3), np.uint8), classifier=other)


@pytest.mark.parametrize("seed, said", [(-1, "from 0 to 9223372036854775807, got -1"),
                                        (2**63, "from 0 to 9223372036854775807, got 9223372036854775808")])
def test_a_seed_outside_0_to_2_to_the_63_is_refused(pipe, seed, said):
    with pytest.raises(ValueError, match=f"seed must be {said}"):
        generate(pipe, "a red circle", seed=seed, num_inference_steps=1)


def test_the_last_pictures_seed_must_fit_too(pipe):
    """Picture i takes seed + i: two pictures from 2**63 - 1 would need the seed 2**63."""
    with pytest.raises(ValueError, match=r"seed must be from 0 to 9223372036854775806, got 9223372036854775807"):
        generate(pipe, "a red circle", seed=2**63 - 1, num_images_per_prompt=2, num_inference_steps=1)


@pytest.mark.parametrize("part, field, value", [("vae", "latent_channels", 8), ("unet", "in_channels", 9)])
def test_an_edited_channel_count_is_named_not_block_out_channels(model_copy, part, field, value):
    import json

    path = model_copy / part / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ValueError, match=rf"{part}/config\.json does not fit .*most likely {field}\)"):
        load_pipeline(model_copy)
