"""The build's training stages: an interrupted run resumes exactly where it stopped."""

import numpy as np
import pytest
import torch

from sdcourse.training.common import EMA, load_checkpoint
from sdcourse.training.config import fast_config
from sdcourse.training.datasets import tokenize_ids
from sdcourse.training.train_unet import train_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def frozen_parts():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    return pipe.vae, pipe.text_encoder, pipe.tokenizer


TINY_UNET = dict(unet_channels=(16, 32, 32), unet_groups=8, unet_heads=2, unet_batch=4, unet_warmup=2,
                 checkpoint_every=2, sample_every=0)


def tiny_unet_run(run_dir, total_steps, frozen_parts, init_unet=None, **overrides):
    vae, text_encoder, tokenizer = frozen_parts
    cfg = fast_config(**{**TINY_UNET, **overrides})
    rng = np.random.default_rng(0)
    latents = (rng.standard_normal((16, 4, 8, 8)).astype(np.float16),
               np.full((16, 4, 8, 8), 0.1, dtype=np.float16))
    token_ids = tokenize_ids(["a red circle", "a blue square"] * 16, tokenizer).reshape(16, 2, 77)
    train_unet(cfg, latents, token_ids, text_encoder, vae, tokenizer, 0.5, run_dir, progress=False,
               total_steps=total_steps, init_unet=init_unet)
    return load_checkpoint(run_dir / "unet_ckpt.pt")


def test_unet_training_resumes_exactly(tmp_path, frozen_parts):
    torch.manual_seed(0)
    interrupted = tiny_unet_run(tmp_path / "interrupted", 4, frozen_parts)
    assert interrupted["step"] == 4
    resumed = tiny_unet_run(tmp_path / "interrupted", 6, frozen_parts)  # same folder: picks up at step 4
    torch.manual_seed(0)
    straight = tiny_unet_run(tmp_path / "straight", 6, frozen_parts)
    assert resumed["step"] == straight["step"] == 6
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    for key, value in straight["ema"]["model"].items():
        torch.testing.assert_close(resumed["ema"]["model"][key], value, rtol=0, atol=0, msg=key)
    changed = any(not torch.equal(interrupted["model"][k], v) for k, v in straight["model"].items())
    assert changed, "steps 5 and 6 should have changed the weights"


def test_unet_training_can_start_from_a_trained_unet(tmp_path, frozen_parts):
    from sdcourse.training.train_unet import make_unet

    torch.manual_seed(1)
    start = make_unet(fast_config(**TINY_UNET))
    start_weights = {k: v.clone() for k, v in start.state_dict().items()}
    # With a learning rate of 0 the weights cannot move: both they and their EMA stay the start's.
    still = tiny_unet_run(tmp_path / "still", 2, frozen_parts, init_unet=start, unet_lr=0.0)
    for key, value in start_weights.items():
        torch.testing.assert_close(still["model"][key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(still["ema"]["model"][key], value, rtol=0, atol=0, msg=key)
    # A real run trains a copy: the U-Net passed in is left as it was.
    moved = tiny_unet_run(tmp_path / "moved", 2, frozen_parts, init_unet=start)
    assert any(not torch.equal(moved["model"][k], v) for k, v in start_weights.items())
    for key, value in start.state_dict().items():
        torch.testing.assert_close(value, start_weights[key], rtol=0, atol=0, msg=key)


def test_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model)
    after = ema.model.weight
    assert torch.all((after - before) > 0) and torch.all(after < model.weight)
