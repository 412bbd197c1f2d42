"""LoRA from scratch (sdcourse.lora) against peft and diffusers' LoRA loaders: same A and B,
same numbers; and every bad input refused by name."""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from sdcourse.lora import (
    LORA_FILE,
    LoRAConv2d,
    LoRALinear,
    export_lora,
    inject_lora,
    load_lora,
    lora_layers,
    lora_parameter_count,
    merge_lora,
    save_lora,
    set_lora_scale,
    unmerge_lora,
)
from sdcourse.training.trainer import CheckpointError
from sdcourse.text_encoder import TextEncoder
from sdcourse.unet import UNet

from test_unet import TINY, inputs, make_pair

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(module, seed=0):
    """Give every LoRA layer random A and B (B starts at zero, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(module).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def peft_twin(reference, ours_with_lora, rank, alpha, targets=TARGETS):
    """diffusers' U-Net with a peft adapter holding the same A and B as `ours_with_lora`."""
    from peft import LoraConfig

    twin = copy.deepcopy(reference)
    twin.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))
    layers = lora_layers(ours_with_lora)
    with torch.no_grad():
        for name, module in twin.named_modules():
            if name in layers:
                module.lora_A["default"].weight.copy_(layers[name].lora_A)
                module.lora_B["default"].weight.copy_(layers[name].lora_B)
    return twin.eval()


def test_lora_linear_starts_at_the_base_layer_and_has_the_right_shapes():
    torch.manual_seed(0)
    base = nn.Linear(768, 768)
    layer = LoRALinear(copy.deepcopy(base), rank=4)
    assert layer.lora_A.shape == (4, 768) and layer.lora_B.shape == (768, 4)
    assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() == 0
    assert layer.lora_A.numel() + layer.lora_B.numel() == 6144  # against 589,824 in W
    x = torch.randn(3, 768)
    assert torch.equal(layer(x), base(x))
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_lora_linear_computes_the_low_rank_update():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5), rank=2, alpha=3)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 6)
    expected = layer.base(x) + (3 / 2) * x @ (layer.lora_B @ layer.lora_A).T
    assert (layer(x) - expected).abs().max() <= 1e-6


def test_merge_and_unmerge_are_exact():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16), rank=4, alpha=8)
    nn.init.normal_(layer.lora_B, std=0.1)  # a trained adapter's size: outputs of order 1
    original = layer.base.weight.clone()
    x = torch.randn(5, 32)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged and (layer(x) - unmerged).abs().max() <= 1e-6
    layer.merge()  # a second merge does nothing
    layer.unmerge()
    assert not layer.merged and (layer.base.weight - original).abs().max() <= 1e-6


def test_scale_zero_is_the_base_model_and_half_is_half_the_update():
    reference, ours = make_pair(TINY, seed=0)
    sample, t, text = inputs(TINY)
    with torch.no_grad():
        base = ours(sample, t, text)
        inject_lora(ours, rank=2, alpha=2)
        random_lora(ours)
        full = ours(sample, t, text)
        set_lora_scale(ours, 0)
        assert (ours(sample, t, text) - base).abs().max() == 0
        merge_lora(ours)
        set_lora_scale(ours, 1.0)  # merged layers are re-merged at the new scale
        assert (ours(sample, t, text) - full).abs().max() <= 1e-5
        unmerge_lora(ours)
        assert (ours(sample, t, text) - full).abs().max() <= 1e-5
    layer = next(iter(lora_layers(ours).values()))
    half = copy.deepcopy(layer)
    half.scale = 0.5
    assert (half.delta_weight() - 0.5 * layer.delta_weight()).abs().max() <= 1e-7


def test_inject_lora_wraps_the_attention_projections_and_freezes_the_rest():
    reference, ours = make_pair(TINY, seed=0)
    for model in (reference, ours):
        names = inject_lora(model, rank=2)
        # TINY has 4 transformer blocks (1 down, 1 middle, 2 up), each 2 attentions x 4 projections
        assert len(names) == 32 and all(name.split(".")[-1] in ("to_q", "to_k", "to_v", "0") for name in names)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora" in name for name in trainable)
        assert lora_parameter_count(model) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert inject_lora(make_pair(TINY, 0)[1], ["to_q"], rank=1) == [n for n in names if n.endswith("to_q")]


@pytest.mark.parametrize("rank, alpha", [(2, 2), (2, 8), (1, 0.5)])
def test_same_a_and_b_give_peft_outputs(rank, alpha, one_thread):
    """The from-scratch LoRA on diffusers' U-Net and on the course's U-Net equal peft's."""
    reference, ours = make_pair(TINY, seed=1)
    diffusers_scratch = copy.deepcopy(reference)
    inject_lora(ours, rank=rank, alpha=alpha)
    random_lora(ours)
    inject_lora(diffusers_scratch, rank=rank, alpha=alpha)
    diffusers_scratch.load_state_dict(ours.state_dict())
    twin = peft_twin(reference, ours, rank, alpha)
    sample, t, text = inputs(TINY)
    with torch.no_grad():
        expected = twin(sample, t, text).sample
        assert (expected - reference(sample, t, text).sample).abs().max() > 1e-3  # the adapter does something
        assert (ours(sample, t, text) - expected).abs().max() <= 1e-6
        assert (diffusers_scratch(sample, t, text).sample - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("rank, alpha", [(2, 2), (3, 6)])
def test_convolutions_too_give_peft_outputs_and_merge_exactly(rank, alpha, one_thread):
    """LoRA on the ResNet blocks' convolutions (conv1, conv2) and a stride-2 downsampler, beside the
    attention projections: the course's layers equal peft's with the same A and B."""
    targets = [*TARGETS, "conv1", "conv2", "downsamplers.0.conv"]
    reference, ours = make_pair(TINY, seed=4)
    names = inject_lora(ours, targets, rank=rank, alpha=alpha)
    convs = [n for n, layer in lora_layers(ours).items() if isinstance(layer, LoRAConv2d)]
    assert convs and any("downsamplers" in n for n in convs) and len(names) > len(convs)
    random_lora(ours, seed=rank)
    twin = peft_twin(reference, ours, rank, alpha, targets)
    sample, t, text = inputs(TINY)
    with torch.no_grad():
        expected = twin(sample, t, text).sample
        assert (expected - reference(sample, t, text).sample).abs().max() > 1e-3
        assert (ours(sample, t, text) - expected).abs().max() <= 1e-5
        merge_lora(ours)
        assert (ours(sample, t, text) - expected).abs().max() <= 1e-5


def test_a_convolution_adapter_loads_in_diffusers_and_back(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    ours = UNet.from_config(pipe.unet.config).eval()
    ours.load_state_dict(pipe.unet.state_dict())
    inject_lora(ours, [*TARGETS, "conv1", "conv2"], rank=4, alpha=8)
    random_lora(ours, seed=9)
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500, 20])
    with torch.no_grad():
        expected = ours(latents, t, text)
    adapter = export_lora(ours)
    assert any(v.dim() == 4 for v in adapter.values())  # (r, d_in, 3, 3) and (d_out, r, 1, 1)
    pipe.load_lora_weights(str(save_lora(ours, tmp_path / "conv").parent), adapter_name="conv")
    with torch.no_grad():
        assert (pipe.unet(latents, t, text).sample - expected).abs().max() <= 1e-5
    fresh = UNet.from_config(pipe.unet.config).eval()
    fresh.load_state_dict(base_weights)  # the base model again, then the exported adapter from scratch
    load_lora(fresh, adapter)
    with torch.no_grad():
        assert (fresh(latents, t, text) - expected).abs().max() <= 1e-6
    with pytest.raises(ValueError, match=r"layer down_blocks\.0\.resnets\.0\.conv1 is 64 x 64 x 3 x 3 here"):
        load_lora(UNet.from_config(pipe.unet.config), {**adapter, **{k: v[:, :2] if "conv1.lora_A" in k else v
                                                                     for k, v in adapter.items()}})


@pytest.mark.parametrize("rank, alpha", [(4, 4), (4, 8), (2, 1)])
def test_an_exported_adapter_loads_in_diffusers_with_the_same_outputs(tmp_path, rank, alpha, one_thread):
    """export_lora/save_lora give what diffusers' load_lora_weights takes, alpha != rank included."""
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    ours = UNet.from_config(pipe.unet.config).eval()
    ours.load_state_dict(pipe.unet.state_dict())
    inject_lora(ours, rank=rank, alpha=alpha)
    random_lora(ours, seed=rank)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500, 20])
    with torch.no_grad():
        base = pipe.unet(latents, t, text).sample
        expected = ours(latents, t, text)
    assert (expected - base).abs().max() > 1e-3
    path = save_lora(ours, tmp_path / "adapter")
    assert path == tmp_path / "adapter" / LORA_FILE
    for source in (export_lora(ours), str(tmp_path / "adapter")):
        pipe.load_lora_weights(source, adapter_name="scratch")
        with torch.no_grad():
            got = pipe.unet(latents, t, text).sample
        assert (got - expected).abs().max() <= 1e-5
        pipe.delete_adapters("scratch")


def test_export_has_diffusers_keys_and_load_lora_reads_them_back(tmp_path):
    reference, ours = make_pair(TINY, seed=2)
    inject_lora(ours, rank=2, alpha=4)
    random_lora(ours)
    adapter = export_lora(ours)
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in adapter)
    assert len(adapter) == 2 * len(lora_layers(ours))
    save_lora(ours, tmp_path)
    fresh = make_pair(TINY, seed=2)[1]
    assert load_lora(fresh, tmp_path) == sorted(lora_layers(ours))
    sample, t, text = inputs(TINY)
    with torch.no_grad():
        assert (fresh(sample, t, text) - ours(sample, t, text)).abs().max() <= 1e-6


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rank, error", [(0, ValueError), (-1, ValueError), (9, ValueError), (2.0, ValueError)])
def test_rank_out_of_range_is_refused(rank, error):
    with pytest.raises(error, match="rank"):
        LoRALinear(nn.Linear(8, 16), rank=rank)


def test_targets_that_match_nothing_list_the_linear_layers():
    _, ours = make_pair(TINY, seed=0)
    with pytest.raises(ValueError, match=r"\[.to_query.\].*Linear layers end in:.*to_out\.0, to_q"):
        inject_lora(ours, ["to_q", "to_query"])
    assert not lora_layers(ours)  # nothing was half-done


def test_targets_that_are_neither_linear_nor_convolutions_and_a_second_adapter_are_refused():
    _, ours = make_pair(TINY, seed=0)
    with pytest.raises(ValueError, match=r"neither nn.Linear nor nn.Conv2d, e.g. \S+norm1 \((Group|Layer)Norm\); LoRA"):
        inject_lora(ours, ["norm1"])
    inject_lora(ours)
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(ours)
    with pytest.raises(ValueError, match="scale"):
        set_lora_scale(ours, float("nan"))
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(make_pair(TINY, seed=0)[1])


def test_an_adapter_for_another_model_names_the_layer(tmp_path):
    _, ours = make_pair(TINY, seed=0)
    inject_lora(ours, rank=2)
    adapter = export_lora(ours)
    wider = UNet2DConditionModel(**{**TINY, "block_out_channels": (8, 8)})
    with pytest.raises(ValueError, match=r"another model: layer down_blocks\.0\.attentions\.0.*to_k is 8 x 8"):
        load_lora(wider, adapter)
    renamed = {k.replace("attn1", "attn9"): v for k, v in adapter.items()}
    with pytest.raises(ValueError, match=r"layer .*attn9\.to_k is missing"):
        load_lora(make_pair(TINY, 0)[1], renamed)
    with pytest.raises(FileNotFoundError, match=LORA_FILE):
        load_lora(make_pair(TINY, 0)[1], tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="lora_A.weight"):
        load_lora(make_pair(TINY, 0)[1], {"unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"holds no 'unet\.' layers, only text_encoder"):
        load_lora(make_pair(TINY, 0)[1], {k.replace("unet.", "text_encoder.", 1): v for k, v in adapter.items()})


# ----------------------------------------------------------------------------- the LoRA trainer


def test_concept_pictures_are_stars_with_the_token_in_their_captions():
    from sdcourse.evaluate import classify
    from sdcourse.training.train_lora import concept_pictures

    images, captions = concept_pictures("star", 24, seed=1, token="sks")
    assert images.shape == (24, 64, 64, 3) and len(captions) == 24
    assert all("sks" in c and "star" not in c for c in captions)
    assert sum(g["shape"] == "star" for g in classify(images)) >= 20
    with pytest.raises(ValueError, match="concept"):
        concept_pictures("circle", 4)


def test_concept_pictures_of_a_new_colour_word_are_drawn_in_it():
    from sdcourse.data import shapes
    from sdcourse.training.train_lora import concept_pictures

    images, captions = concept_pictures("pink", 16, seed=2)
    assert all("pink" in c for c in captions)
    pink = np.array(shapes.HELD_OUT_COLOURS["pink"])
    for image in images:  # some pixel of each picture is exactly pink: the shape's inside
        assert (np.abs(image.reshape(-1, 3).astype(int) - pink).sum(1) == 0).any()


def write_pictures(folder, n=3, size=(80, 60)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"p{i}.png")
    return folder


def test_a_folder_with_metadata_or_text_files_gives_square_pictures_and_captions(tmp_path):
    from sdcourse.training.train_lora import folder_pictures

    folder = write_pictures(tmp_path / "a")
    (folder / "metadata.jsonl").write_text("\n".join(
        f'{{"file_name": "p{i}.png", "text": "a photo of sks {i}"}}' for i in range(3)))
    images, captions = folder_pictures(folder, 64)
    assert images.shape == (3, 64, 64, 3) and captions == [f"a photo of sks {i}" for i in range(3)]
    folder = write_pictures(tmp_path / "b", n=2)
    for i in range(2):
        (folder / f"p{i}.txt").write_text(f"caption {i}\n")
    assert folder_pictures(folder, 32)[1] == ["caption 0", "caption 1"]


def test_a_bad_folder_names_the_file(tmp_path):
    from sdcourse.training.train_lora import folder_pictures

    folder = write_pictures(tmp_path / "no-captions", n=2)
    (folder / "p0.txt").write_text("one caption")
    with pytest.raises(FileNotFoundError, match=r"p1\.png has no caption"):
        folder_pictures(folder, 64)
    (folder / "p1.txt").write_text("another")
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / "broken.txt").write_text("a broken picture")
    with pytest.raises(ValueError, match=r"broken\.png cannot be read"):
        folder_pictures(folder, 64)
    with pytest.raises(FileNotFoundError, match="no pictures"):
        folder_pictures(tmp_path, 64)
    folder = write_pictures(tmp_path / "meta", n=1)
    (folder / "metadata.jsonl").write_text('{"file_name": "p0.png"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 1"):
        folder_pictures(folder, 64)
    (folder / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        folder_pictures(folder, 64)


@pytest.mark.parametrize("field, value", [("rank", 0), ("alpha", -1.0), ("steps", 2.5), ("batch", 0),
                                          ("token", "two words"), ("mixed_precision", "fp8"),
                                          ("prior_share", 1.0), ("prior_share", -0.1), ("train_text_encoder", "yes"),
                                          ("caption_dropout", 1.0), ("caption_dropout", -0.1),
                                          ("min_snr_gamma", -1.0), ("min_snr_gamma", True), ("full_unet", 1)])
def test_bad_lora_settings_are_refused_by_name(field, value):
    from sdcourse.training.train_lora import LoRASettings

    with pytest.raises(ValueError, match=field):
        LoRASettings(**{field: value})


def test_the_trainer_writes_an_adapter_diffusers_loads_and_resumes(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import CHECKPOINT, main

    out = tmp_path / "star"
    args = ["--concept", "star", "--out", str(out), "--batch", "4", "--n-pictures", "8", "--checkpoint-every",
            "2", "--threads", "1", "--quiet"]
    main([*args, "--steps", "2"])
    assert (out / LORA_FILE).exists() and (out / CHECKPOINT).exists() and (out / "samples.png").exists()
    first = torch.load(out / CHECKPOINT, weights_only=False)
    assert first["step"] == 2 and all("lora" in name for name in first["model"])
    main([*args, "--steps", "4"])  # trains on from step 2
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 4
    with pytest.raises(CheckpointError, match="rank: the checkpoint has 4, this run asks for 2"):
        main([*args, "--steps", "6", "--rank", "2"])
    pipe = load_pipeline()
    pipe.load_lora_weights(str(out))
    with torch.no_grad():
        loaded = [p for n, p in pipe.unet.named_parameters() if "lora_B" in n]
    assert loaded and any(p.abs().sum() > 0 for p in loaded)


def test_targets_that_match_nothing_are_refused_before_training(tmp_path):
    from sdcourse.training.train_lora import main

    listed = r"'to_query' matches no Linear layer of the U-Net; its Linear layers end in: .*to_out\.0, to_q.*convolutions in: .*conv1"
    with pytest.raises(ValueError, match=listed):
        main(["--concept", "star", "--out", str(tmp_path), "--targets", "to_query", "--quiet", "--steps", "1"])


def test_an_adapter_trained_with_alpha_above_rank_loads_exactly_in_diffusers_and_from_scratch(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    pipe = load_pipeline()
    images, captions = concept_pictures("star", 4)
    path = train_lora(pipe, images, captions, LoRASettings(rank=2, alpha=8, steps=3, batch=2, lr=0.05), tmp_path,
                      progress=False)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([700, 30])
    with torch.no_grad():
        trained = pipe.unet(latents, t, text).sample
        base = load_pipeline().unet(latents, t, text).sample
        assert (trained - base).abs().max() > 1e-4  # the adapter trained
        fresh = load_pipeline()
        fresh.load_lora_weights(str(path.parent))
        assert (fresh.unet(latents, t, text).sample - trained).abs().max() <= 1e-5
        ours = UNet.from_config(fresh.unet.config).eval()
        ours.load_state_dict(load_pipeline().unet.state_dict())
        load_lora(ours, path)  # the file's U-Net part: the text encoder's loads below
        assert (ours(latents, t, text) - trained).abs().max() <= 1e-5
        # the text encoder's adapter (a default of the trainer), the same three ways
        ids = pipe.tokenizer(["a red star shape", "a blue circle"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        encoded = pipe.text_encoder(input_ids=ids).last_hidden_state
        assert (encoded - load_pipeline().text_encoder(input_ids=ids).last_hidden_state).abs().max() > 1e-4
        assert (fresh.text_encoder(input_ids=ids).last_hidden_state - encoded).abs().max() <= 1e-5
        our_text = TextEncoder.from_config(fresh.text_encoder.config).eval()
        our_text.load_state_dict(load_pipeline().text_encoder.state_dict())
        load_lora(our_text, path, prefix="text_encoder")
        assert (our_text(ids) - encoded).abs().max() <= 1e-5


def test_a_rank_above_the_layers_width_is_refused_before_training(tmp_path):
    from sdcourse.training.train_lora import main

    with pytest.raises(ValueError, match=r"rank=64; for a \d+ x 32 layer it must be from 1 to 32"):
        main(["--concept", "star", "--out", str(tmp_path), "--rank", "64", "--quiet", "--steps", "1"])
    assert not (tmp_path / LORA_FILE).exists()


def test_prior_pictures_are_the_shapes_the_model_knows_and_mix_into_each_batch(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, prior_pictures, train_lora

    images, captions = prior_pictures(24, seed=3)
    assert images.shape == (24, 64, 64, 3) and len(captions) == 24
    assert not any("star" in caption for caption in captions)
    stars = concept_pictures("star", 4)
    settings = LoRASettings(steps=1, batch=4, prior_share=0.5)
    with pytest.raises(ValueError, match=r"prior_share=0.5 needs prior=\(images, captions\)"):
        train_lora(load_pipeline(), *stars, settings, tmp_path / "none", progress=False)
    assert train_lora(load_pipeline(), *stars, settings, tmp_path / "mixed", progress=False,
                      prior=(images, captions)).exists()


def test_batches_drop_captions_to_the_empty_prompt_and_weight_each_timestep(tmp_path, monkeypatch):
    """What the trainer is given: caption_dropout of the captions are the empty prompt's encoding,
    the others their own caption's; each picture's loss weight is the min-SNR weight of its timestep."""
    import sdcourse.training.finetune_core as finetune_core
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.common import min_snr_weights
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    batches = []

    class RecordingTrainer:  # stands in for the training loop: draws batches, trains nothing
        def __init__(self, model, loss, next_batch, *args, **kwargs):
            self.next_batch, self.accelerator = next_batch, SimpleNamespace(is_main_process=False)

        def fit(self):
            batches.extend(self.next_batch() for _ in range(4))

    monkeypatch.setattr(finetune_core, "Trainer", RecordingTrainer)
    pipe = load_pipeline()
    images, captions = concept_pictures("star", 8)
    settings = LoRASettings(batch=64, caption_dropout=0.25, min_snr_gamma=5.0, train_text_encoder=False)
    train_lora(pipe, images, captions, settings, tmp_path, progress=False)
    _, empty = finetune_core.encode_captions(pipe, [""])
    _, own = finetune_core.encode_captions(pipe, captions)
    texts = torch.cat([batch["text"] for batch in batches])
    dropped = (texts == empty).flatten(1).all(1)
    assert 0.15 < dropped.float().mean() < 0.35  # about a quarter of 256 captions
    kept = texts[~dropped]
    assert all(any(torch.allclose(text, caption, atol=1e-5) for caption in own) for text in kept)
    weights = min_snr_weights(pipe.scheduler.alphas_cumprod, 5.0)
    assert all(torch.equal(batch["weight"], weights[batch["timesteps"]]) for batch in batches)


def test_a_batch_carries_each_drawn_pictures_extra_inputs_and_token_ids_when_the_text_encoder_trains():
    """Extras (a ControlNet's control picture, say) travel with their picture, prior pictures included."""
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.finetune_core import Batches, FineTuneSettings, encode_examples
    from sdcourse.training.train_lora import concept_pictures, prior_pictures

    pipe = load_pipeline()
    new = encode_examples(pipe, *concept_pictures("star", 6), extras={"number": torch.arange(6)})
    old = encode_examples(pipe, *prior_pictures(4), extras={"number": 100 + torch.arange(4)})
    batches = Batches(pipe, new, FineTuneSettings(batch=8), text_as_ids=True, prior=old, n_prior=2)
    for _ in range(3):
        batch = batches()
        number = batch["number"]
        assert (number[:6] < 6).all() and (number[6:] >= 100).all()
        ids = torch.cat([new.token_ids[number[:6]], old.token_ids[number[6:] - 100]])
        assert torch.equal(batch["text"], ids)
    with pytest.raises(ValueError, match=r"prior pictures carry \[\] but the new ones \['number'\]"):
        Batches(pipe, new, FineTuneSettings(batch=8), text_as_ids=True, prior=encode_examples(pipe, *prior_pictures(4)),
                n_prior=2)


def test_prior_share_goes_with_a_concept_not_with_a_folder(tmp_path, capsys):
    from sdcourse.training.train_lora import main

    with pytest.raises(SystemExit):
        main(["--images", str(tmp_path), "--out", str(tmp_path / "out"), "--prior-share", "0.5", "--quiet"])
    assert "--prior-share 0.5 goes with --concept" in capsys.readouterr().err


def test_an_adapter_on_the_resnet_convolutions_too_loads_exactly_in_diffusers(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    pipe = load_pipeline()
    targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2")
    settings = LoRASettings(rank=2, alpha=4, steps=2, batch=2, lr=0.05, targets=targets)
    path = train_lora(pipe, *concept_pictures("star", 4), settings, tmp_path, progress=False)
    assert any("conv1.lora_A" in name for name, _ in pipe.unet.named_parameters())
    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 30])
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    fresh = load_pipeline()
    fresh.load_lora_weights(str(path.parent))
    with torch.no_grad():
        assert (fresh.unet(latents, t, text).sample - pipe.unet(latents, t, text).sample).abs().max() <= 1e-5


def test_a_full_fine_tune_trains_every_unet_weight_and_saves_the_unet_the_pipeline_loads(tmp_path, one_thread):
    from diffusers import UNet2DConditionModel

    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    pipe, base = load_pipeline(), load_pipeline()
    settings = LoRASettings(steps=2, batch=2, lr=1e-3, full_unet=True)  # the text encoder then stays frozen
    path = train_lora(pipe, *concept_pictures("star", 4), settings, tmp_path, progress=False)
    assert path == tmp_path / "unet" / "diffusion_pytorch_model.safetensors" and path.exists()
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    trained = dict(pipe.unet.named_parameters())
    assert all(not torch.equal(p, trained[name]) for name, p in base.unet.named_parameters() if "to_q" in name)
    saved = UNet2DConditionModel.from_pretrained(path.parent)
    assert all(torch.equal(p, trained[name]) for name, p in saved.named_parameters())


def test_a_full_fine_tune_with_a_text_encoder_adapter_is_refused_by_name():
    from sdcourse.training.train_lora import LoRASettings

    with pytest.raises(ValueError, match="full_unet=True with train_text_encoder=True"):
        LoRASettings(full_unet=True, train_text_encoder=True)


def test_the_same_settings_train_the_same_adapter(tmp_path, one_thread):
    from safetensors.torch import load_file

    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    stars = concept_pictures("star", 4)
    torch.manual_seed(123)  # whatever the global generator holds, the adapter starts from settings.seed
    first = load_file(train_lora(load_pipeline(), *stars, LoRASettings(steps=2, batch=2), tmp_path / "a", progress=False))
    torch.manual_seed(456)
    second = load_file(train_lora(load_pipeline(), *stars, LoRASettings(steps=2, batch=2), tmp_path / "b", progress=False))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_an_adapter_on_the_text_encoder_too_loads_exactly_in_diffusers(tmp_path, one_thread):
    from sdcourse.pipeline import load_pipeline
    from sdcourse.training.train_lora import LoRASettings, concept_pictures, train_lora

    pipe = load_pipeline()
    settings = LoRASettings(rank=2, alpha=8, steps=3, batch=2, lr=0.05, train_text_encoder=True)
    path = train_lora(pipe, *concept_pictures("star", 4), settings, tmp_path, progress=False)
    ids = pipe.tokenizer(["a red star", "a blue triangle"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    fresh = load_pipeline()
    fresh.load_lora_weights(str(path.parent))
    with torch.no_grad():
        trained = pipe.text_encoder(ids)[0]
        assert (trained - load_pipeline().text_encoder(ids)[0]).abs().max() > 1e-3  # the text adapter trained
        assert (fresh.text_encoder(ids)[0] - trained).abs().max() <= 1e-5
        latents, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([700, 30])
        assert (fresh.unet(latents, t, trained).sample - pipe.unet(latents, t, trained).sample).abs().max() <= 1e-5


def test_resuming_with_the_text_encoder_switched_is_refused_by_name(tmp_path, one_thread):
    from sdcourse.training.train_lora import main

    args = ["--concept", "star", "--out", str(tmp_path), "--batch", "4", "--n-pictures", "4", "--threads", "1",
            "--quiet", "--steps", "1"]
    main(args)  # the default adapts the text encoder too
    with pytest.raises(CheckpointError, match="train_text_encoder: the checkpoint has True, this run asks for False"):
        main([*args[:-1], "2", "--no-train-text-encoder"])


# ---- files that cannot be read: each named, with the line and what to do ---------------------


@pytest.mark.parametrize("text, problem", [
    ("null", r'"text" is null; it must be a string'),
    ('["a red star", "a blue star"]', r'"text" is \["a red star", "a blue star"\]; it must be a string'),
    ("7", r'"text" is 7; it must be a string'),
])
def test_a_caption_that_is_not_a_string_is_refused_naming_the_line(tmp_path, text, problem):
    from sdcourse.training.train_lora import folder_pictures

    folder = write_pictures(tmp_path, n=2)
    (folder / "metadata.jsonl").write_text(f'{{"file_name": "p0.png", "text": "a star"}}\n'
                                           f'{{"file_name": "p1.png", "text": {text}}}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 2: " + problem):
        folder_pictures(folder, 32)


def test_a_picture_listed_twice_in_metadata_is_refused_naming_both_lines(tmp_path):
    from sdcourse.training.train_lora import folder_pictures

    folder = write_pictures(tmp_path, n=2)
    (folder / "metadata.jsonl").write_text('{"file_name": "p0.png", "text": "first"}\n'
                                           '{"file_name": "p1.png", "text": "other"}\n'
                                           '{"file_name": "p0.png", "text": "second"}\n')
    with pytest.raises(ValueError, match=r"line 3: p0\.png is listed again \(first on line 1\)"):
        folder_pictures(folder, 32)


def test_a_caption_file_not_in_utf8_is_named_with_its_line(tmp_path):
    from sdcourse.training.train_lora import folder_pictures

    folder = write_pictures(tmp_path / "txt", n=1)
    (folder / "p0.txt").write_bytes("a red star\nin a caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"p0\.txt, line 2: not UTF-8 text"):
        folder_pictures(folder, 32)
    folder = write_pictures(tmp_path / "jsonl", n=1)
    (folder / "metadata.jsonl").write_bytes('{"file_name": "p0.png", "text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 1: not UTF-8 text"):
        folder_pictures(folder, 32)
    (folder / "metadata.jsonl").write_bytes('\ufeff{"file_name": "p0.png", "text": "caf\xe9"}\n'.encode("utf-8"))
    assert folder_pictures(folder, 32)[1] == ["caf\xe9"]  # UTF-8 with a byte-order mark is UTF-8


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_damaged_adapter_file_is_named(tmp_path, damage):
    unet = UNet(TINY)
    inject_lora(unet, rank=2)
    path = save_lora(unet, tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 100] if damage == "truncated" else b"PK\x03\x04 a zip, not an adapter")
    with pytest.raises(ValueError, match=rf"the adapter file {path} cannot be read .*truncated or not a safetensors"):
        load_lora(UNet(TINY), tmp_path)


# ----------------------------------------------------------------------------- LoRA: state dicts and refusals


def test_a_merged_models_state_dict_loads_into_a_fresh_lora_model_with_the_same_outputs():
    """The state dict holds W unmerged: loaded beside A and B, the update counts once."""
    _, ours = make_pair(TINY, seed=0)
    fresh = copy.deepcopy(ours)
    inject_lora(ours, rank=2)
    random_lora(ours)
    merge_lora(ours)
    sample, t, text = inputs(TINY)
    with torch.no_grad():
        expected = ours(sample, t, text)
        inject_lora(fresh, rank=2)
        fresh.load_state_dict(ours.state_dict())
        assert (fresh(sample, t, text) - expected).abs().max() <= 1e-5
        ours.load_state_dict(ours.state_dict())  # into the merged model itself: unmerged, the same outputs
        assert not any(layer.merged for layer in lora_layers(ours).values())
        assert (ours(sample, t, text) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("targets", [[], (), "", [""], [3]])
def test_inject_lora_with_no_targets_is_refused_and_changes_nothing(targets):
    _, ours = make_pair(TINY, seed=0)
    with pytest.raises(ValueError, match="target_modules must name at least one layer"):
        inject_lora(ours, targets)
    assert all(p.requires_grad for p in ours.parameters())


def test_a_rank_too_large_for_a_later_layer_changes_nothing_so_a_smaller_one_works():
    config = {**TINY, "cross_attention_dim": 2}  # attn2.to_k is 4 x 2, after five 4 x 4 layers
    _, ours = make_pair(config, seed=0)
    with pytest.raises(ValueError, match=r"rank=3; for a 4 x 2 layer it must be from 1 to 2"):
        inject_lora(ours, rank=3)
    assert not lora_layers(ours) and all(p.requires_grad for p in ours.parameters())
    assert len(inject_lora(ours, rank=2)) == 32


def test_an_adapter_holding_nan_is_refused_naming_the_file_and_the_layer(tmp_path):
    _, ours = make_pair(TINY, seed=0)
    inject_lora(ours, rank=2)
    random_lora(ours)
    with torch.no_grad():
        next(iter(lora_layers(ours).values())).lora_B[0, 0] = float("nan")
    path = save_lora(ours, tmp_path / "adapter")
    fresh = make_pair(TINY, seed=0)[1]
    damaged = rf"adapter in '{re.escape(str(path))}' is damaged: layer down_blocks\.0\..*attn1\.to_q\b"
    with pytest.raises(ValueError, match=damaged):
        load_lora(fresh, path)
    assert not lora_layers(fresh)


def test_one_target_given_as_a_string_is_one_layer_name_not_its_letters():
    from sdcourse.training.train_lora import LoRASettings

    assert LoRASettings(targets="to_q").targets == ("to_q",)
    for targets in ([], [""], [3]):
        with pytest.raises(ValueError, match="targets must name at least one layer"):
            LoRASettings(targets=targets)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.0])
def test_the_trainers_seed_must_be_from_0_to_2_to_the_63(seed):
    from sdcourse.training.train_lora import LoRASettings

    with pytest.raises(ValueError, match=r"seed must be (from 0 to 9223372036854775807|an integer)"):
        LoRASettings(seed=seed)


def test_a_16_bit_png_in_the_trainers_folder_is_read_as_its_8_bit_twin(tmp_path):
    from PIL import Image

    from sdcourse.training.train_lora import folder_pictures

    grey = np.tile(np.arange(0, 240, 3, dtype=np.uint16), (60, 1))  # a grey ramp, 80 x 60
    for name, picture in (("eight", Image.fromarray(grey.astype(np.uint8))), ("sixteen", Image.fromarray(grey * 257))):
        (tmp_path / name).mkdir()
        picture.save(tmp_path / name / "p.png")
        (tmp_path / name / "p.txt").write_text("a grey ramp")
    assert Image.open(tmp_path / "sixteen" / "p.png").mode == "I;16"
    sixteen, eight = folder_pictures(tmp_path / "sixteen", 32)[0], folder_pictures(tmp_path / "eight", 32)[0]
    assert np.array_equal(sixteen, eight) and eight.max() > 100  # not all white
