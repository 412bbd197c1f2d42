"""Loading the embedded tiny Stable Diffusion (and failing clearly when a model is unusable)."""

import shutil

import numpy as np
import pytest
import torch

from sdcourse.pipeline import (
    EMBEDDED_MODEL,
    DamagedWeightsError,
    ModelNotAvailableError,
    generate,
    load_pipeline,
    validate_model_folder,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_embedded_model_is_one_small_pipeline_folder():
    assert (EMBEDDED_MODEL / "model_index.json").exists()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (EMBEDDED_MODEL / part).is_dir(), part
    size = sum(f.stat().st_size for f in EMBEDDED_MODEL.rglob("*") if f.is_file())
    assert size <= 30e6, f"{size / 1e6:.1f} MB: the course ships one small model (at most 30 MB)"


def test_loads_offline_with_sd_parts(pipe):
    assert pipe.unet.dtype == torch.float32
    assert pipe.vae.config.latent_channels == 4
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77 and len(pipe.tokenizer) == 49408
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.beta_start == 0.00085 and pipe.scheduler.config.beta_end == 0.012
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert 0.05 < pipe.vae.config.scaling_factor < 20


def test_generates_64x64_deterministically(pipe):
    a = generate(pipe, ["a red circle"], seed=3, num_inference_steps=5, output_type="np")
    b = generate(pipe, ["a red circle"], seed=3, num_inference_steps=5, output_type="np")
    assert a.shape == (1, 64, 64, 3)
    assert np.array_equal(a, b)
    images = generate(pipe, "a blue square", seed=0, num_inference_steps=5)
    assert images[0].size == (64, 64)


def test_plain_diffusers_from_pretrained_works():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(EMBEDDED_MODEL))
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a green triangle", height=64, width=64, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 64, 3)


def test_height_not_multiple_of_8_raises(pipe):
    with pytest.raises(ValueError, match="height=60"):
        generate(pipe, "a red circle", height=60, num_inference_steps=2)


@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "tiny-sd"
    shutil.copytree(EMBEDDED_MODEL, folder)
    return folder


def test_damaged_file_is_named(model_copy):
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a download cut in half
    with pytest.raises(DamagedWeightsError, match="unet/diffusion_pytorch_model.safetensors"):
        load_pipeline(model_copy)


def test_garbage_file_is_named(model_copy):
    weights = model_copy / "text_encoder" / "model.safetensors"
    weights.write_bytes(b"not a weights file" * 100)
    with pytest.raises(DamagedWeightsError, match="text_encoder/model.safetensors"):
        validate_model_folder(model_copy)


def test_missing_file_is_named(model_copy):
    (model_copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="vae/diffusion_pytorch_model.safetensors"):
        load_pipeline(model_copy)


def test_unknown_model_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_pipeline("sdcourse-test/no-such-model")
    message = str(info.value)
    assert "huggingface-cli download sdcourse-test/no-such-model" in message
    assert "SDCOURSE_MODEL" in message


def test_env_var_chooses_model(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCOURSE_MODEL", str(tmp_path / "missing-folder"))
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        load_pipeline()


def test_each_loaded_pipeline_has_a_tokenizer_of_its_own(tmp_path):
    """A word added to one pipeline (textual inversion) is in that pipeline alone."""
    from safetensors.torch import save_file

    first, second = load_pipeline(), load_pipeline()
    assert first.tokenizer is not second.tokenizer
    width = first.text_encoder.get_input_embeddings().weight.shape[1]
    save_file({"<blob>": torch.randn(width)}, str(tmp_path / "learned_embeds.safetensors"))
    first.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"), token="<blob>")
    assert len(first.tokenizer) == len(second.tokenizer) + 1
    third = load_pipeline()
    assert len(third.tokenizer) == third.text_encoder.get_input_embeddings().weight.shape[0]
    third("a red <blob>", num_inference_steps=2, output_type="np")  # no IndexError: "<blob>" is plain text here


def test_a_damaged_tokenizer_file_is_named_and_a_repaired_one_read_again(tmp_path):
    from sdcourse.pipeline import load_tokenizer_of

    folder = tmp_path / "tokenizer"
    shutil.copytree(EMBEDDED_MODEL / "tokenizer", folder)
    whole = (folder / "tokenizer.json").read_bytes()
    assert load_tokenizer_of(folder)("a red circle").input_ids[:2] == [49406, 320]
    (folder / "tokenizer.json").write_bytes(whole[: len(whole) // 2])  # a copy cut in half
    with pytest.raises(ValueError, match=r"tokenizer/tokenizer\.json is not a valid tokenizer file"):
        load_tokenizer_of(folder)
    (folder / "tokenizer.json").write_bytes(whole)
    assert load_tokenizer_of(folder)("a red circle").input_ids[:2] == [49406, 320]
    (folder / "tokenizer_config.json").write_bytes(b'{"model_max_length": 7')
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON"):
        load_tokenizer_of(folder)
