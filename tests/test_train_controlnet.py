"""Training a ControlNet for the embedded model: the data, a short run that diffusers loads, resuming."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdcourse.loading import load_pipeline
from sdcourse.training.train_controlnet import CHECKPOINT, CONTROLNET_FILES, control_set, main, sample_outlines


def test_the_control_set_pairs_each_picture_with_its_outlines_and_caption():
    images, captions, outlines = control_set(6, seed=3)
    again = control_set(6, seed=3)
    assert np.array_equal(images, again[0]) and np.array_equal(outlines, again[2]) and captions == again[1]
    for image, outline in zip(images, outlines):
        drawn = (np.abs(image.astype(int) - image[0, 0].astype(int)).sum(-1) > 60)  # the objects' pixels
        ring = outline[..., 0] > 128
        assert ring.any() and drawn.any()
        # The ring lies on the objects' edges: next to drawn pixels, never far from them.
        near = np.zeros_like(drawn)
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                near |= np.roll(np.roll(drawn, dy, 0), dx, 1)
        assert near[ring].mean() > 0.95


def test_sample_outlines_hold_every_shape_and_name_each_colour():
    outlines, prompts = sample_outlines(n=8)
    assert outlines.shape == (8, 64, 64, 3)
    assert [p.split()[-1] for p in prompts[:4]] == ["circle", "square", "triangle", "shape"]


def test_a_short_run_writes_a_float16_controlnet_diffusers_loads_and_resumes(tmp_path, one_thread):
    from diffusers import ControlNetModel

    out = tmp_path / "cn"
    args = ["--out", str(out), "--n-pictures", "8", "--batch", "4", "--checkpoint-every", "2", "--samples-every", "2",
            "--threads", "1", "--quiet"]
    main([*args, "--steps", "2"])
    assert all((out / f).exists() for f in CONTROLNET_FILES) and (out / "samples" / "step_00002.png").exists()
    main([*args, "--steps", "4"])  # resumes from step 2, with its sample grid in the folder
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 4
    stored = load_file(str(out / CONTROLNET_FILES[1]))
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}  # stored as the U-Net is
    controlnet = ControlNetModel.from_pretrained(str(out / "controlnet"))
    zero_convs = [p for n, p in controlnet.named_parameters() if n.startswith("controlnet_down_blocks")]
    assert any(p.abs().sum() > 0 for p in zero_convs)  # the zero convolutions have learned
    assert json.loads((out / "train_controlnet.json").read_text())["steps"] == 4
    controlled = load_pipeline(controlnet=out / "controlnet")  # what the lessons load
    assert type(controlled).__name__ == "StableDiffusionControlNetPipeline"
    assert controlled.controlnet.dtype == controlled.unet.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="holds no config.json; give a ControlNetModel folder"):
        load_pipeline(controlnet=tmp_path / "nothing")


def test_an_out_folder_of_someone_elses_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--steps", "1", "--quiet"])
    assert "holds files this command did not write" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"
