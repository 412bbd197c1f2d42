"""Stage 1: a tiny CLIP, trained contrastively on (picture, caption) pairs.

Stable Diffusion does not train its text encoder: it borrows CLIP's, which learned from
image-caption pairs which words matter for what a picture looks like. We do the same in
miniature: train a small `CLIPModel` here, then keep only its text encoder, frozen.

The text encoder uses the real CLIP tokenizer (49,408 tokens, 77-token context), so its
token embedding table is kept narrow (32 numbers per token) to keep the model small.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import shapes
from .common import images_to_tensor, restore_generator, resume, rng_state, save_checkpoint
from .datasets import tokenize_ids


def make_clip(cfg):
    """A fresh, small transformers CLIPModel for 64x64 pictures."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=49408, hidden_size=cfg.clip_text_width, intermediate_size=4 * cfg.clip_text_width,
        num_hidden_layers=cfg.clip_text_layers, num_attention_heads=cfg.clip_text_heads,
        max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    vision = dict(
        image_size=64, patch_size=8, num_channels=3, hidden_size=cfg.clip_vision_width,
        intermediate_size=4 * cfg.clip_vision_width, num_hidden_layers=cfg.clip_vision_layers,
        num_attention_heads=cfg.clip_vision_heads, hidden_act="quick_gelu",
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.clip_projection)
    return CLIPModel(config)


def contrastive_loss(image_emb, text_emb, logit_scale, token_ids):
    """CLIP's symmetric cross-entropy, with one fix for a tiny vocabulary of captions:
    when two captions in a batch are identical, both of their pictures count as correct."""
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
    same = (token_ids[:, None, :] == token_ids[None, :, :]).all(-1).float()
    targets = same / same.sum(1, keepdim=True)
    loss_i = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(targets * logits.t().log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


@torch.no_grad()
def zero_shot_accuracy(model, n: int = 512, seed: int = 999, batch: int = 256, shape_names=shapes.BASE_SHAPES):
    """Zero-shot colour and shape accuracy on fresh single-object pictures.

    Every picture is compared with the captions "a <colour> <shape>" for all pairs; the
    best-matching caption is the guess. Returns {"colour": %, "shape": %, "both": %}.
    """
    model.eval()
    pairs = [(c, s) for c in shapes.COLOURS for s in shape_names]
    ids = torch.from_numpy(tokenize_ids([f"{shapes.article(c)} {c} {s}" for c, s in pairs])).long()
    text = F.normalize(_as_tensor(model.get_text_features(input_ids=ids)), dim=-1)
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shape_names, n_objects=1)
    correct = {"colour": 0, "shape": 0, "both": 0}
    for start in range(0, n, batch):
        pixels = images_to_tensor(images[start : start + batch])
        emb = F.normalize(_as_tensor(model.get_image_features(pixel_values=pixels)), dim=-1)
        guesses = (emb @ text.t()).argmax(1).tolist()
        for guess, label in zip(guesses, labels[start : start + batch]):
            colour, shape = pairs[guess]
            truth = label["objects"][0]
            correct["colour"] += colour == truth["colour"]
            correct["shape"] += shape == truth["shape"]
            correct["both"] += colour == truth["colour"] and shape == truth["shape"]
    return {k: 100.0 * v / n for k, v in correct.items()}


def _as_tensor(output):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    return output if torch.is_tensor(output) else output.pooler_output


def train_clip(cfg, data: dict, run_dir: Path, progress: bool = True):
    """Train the CLIP on the training set; resumes from run_dir/clip_ckpt.pt. Returns the model."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "clip_ckpt.pt"
    model = make_clip(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1, betas=(0.9, 0.98))
    start, state = resume(ckpt_path, model, opt)
    warmup = max(1, cfg.clip_steps // 15)

    def lr_at(step):
        if step < warmup:
            return cfg.clip_lr * (step + 1) / warmup
        t = (step - warmup) / max(1, cfg.clip_steps - warmup)
        return cfg.clip_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    images, token_ids = data["images"], data["token_ids"]
    n, k = token_ids.shape[:2]
    gen = np.random.default_rng([cfg.seed, 11, start])
    restore_generator(gen, state)
    bar = tqdm(range(start, cfg.clip_steps), desc="CLIP", disable=not progress, initial=start,
               total=cfg.clip_steps, mininterval=2)
    model.train()
    for step in bar:
        idx = gen.integers(0, n, cfg.clip_batch)
        which = gen.integers(0, k, cfg.clip_batch)
        pixels = images_to_tensor(images[idx])
        ids = torch.from_numpy(token_ids[idx, which]).long()
        # Captions are short: drop the padding columns beyond the longest one in the batch
        # (the pooled output at <|endoftext|> does not look at them), which is ~3x cheaper.
        ids = ids[:, : int((ids != 49407).sum(1).max()) + 1]
        out = model(input_ids=ids, pixel_values=pixels)
        loss = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale, ids)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.clip_steps:
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=done, rng=rng_state(gen))
        if done % (2 * cfg.sample_every) == 0 and done < cfg.clip_steps:
            acc = zero_shot_accuracy(model, n=256)
            bar.write(f"CLIP step {done}: zero-shot accuracy {acc}")
            model.train()
    model.eval()
    return model


@torch.no_grad()
def _pooled_text(model, token_ids: np.ndarray, batch: int = 512) -> torch.Tensor:
    """The text encoder's pooled output (at <|endoftext|>) for many captions: (N, width)."""
    model.eval()
    out = []
    for start in range(0, len(token_ids), batch):
        ids = torch.from_numpy(token_ids[start : start + batch]).long()
        ids = ids[:, : int((ids != 49407).sum(1).max()) + 1]
        out.append(model.text_model(input_ids=ids).pooler_output)
    return torch.cat(out)


def refine_image_encoder(cfg, model, data: dict, run_dir: Path, progress: bool = True):
    """Second CLIP phase: keep training the image encoder against the now-locked text encoder.

    The joint phase learns colours quickly but shapes slowly (a small vision transformer
    has to discover outlines from 8x8 patches). The text encoder is already fixed for
    Stable Diffusion, so it stays locked; the image encoder, both projection heads and the
    temperature train on, cheaply: the text encoder's outputs are computed once.
    Resumes from run_dir/clip_image_ckpt.pt. Returns the model.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "clip_image_ckpt.pt"
    steps = cfg.clip_image_steps
    vision_params = (list(model.vision_model.parameters()) + list(model.visual_projection.parameters())
                     + list(model.text_projection.parameters()) + [model.logit_scale])
    model.requires_grad_(False)
    for p in vision_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(vision_params, lr=cfg.clip_image_lr, weight_decay=0.05, betas=(0.9, 0.98))
    start, state = resume(ckpt_path, model, opt)
    images, token_ids = data["images"], data["token_ids"]
    n, k = token_ids.shape[:2]
    flat_ids = token_ids.reshape(n * k, -1)
    pooled = _pooled_text(model, flat_ids).reshape(n, k, -1)
    warmup = max(1, steps // 20)

    def lr_at(step):
        if step < warmup:
            return cfg.clip_image_lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return cfg.clip_image_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = np.random.default_rng([cfg.seed, 12, start])
    restore_generator(gen, state)
    bar = tqdm(range(start, steps), desc="CLIP image encoder", disable=not progress, initial=start,
               total=steps, mininterval=2)
    model.vision_model.train()
    for step in bar:
        idx = gen.integers(0, n, cfg.clip_batch)
        which = gen.integers(0, k, cfg.clip_batch)
        ids = torch.from_numpy(token_ids[idx, which]).long()
        t_emb = F.normalize(model.text_projection(pooled[idx, which]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        i_emb = F.normalize(_as_tensor(model.get_image_features(pixel_values=images_to_tensor(images[idx]))), dim=-1)
        logits = scale * i_emb @ t_emb.t()
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        targets = same / same.sum(1, keepdim=True)
        loss = (-(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.t().log_softmax(1)).sum(1).mean()) / 2
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision_params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == steps:
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=done, rng=rng_state(gen))
        if done % (2 * cfg.sample_every) == 0 and done < steps:
            acc = zero_shot_accuracy(model, n=256)
            bar.write(f"CLIP image encoder step {done}: zero-shot accuracy {acc}")
            model.vision_model.train()
    model.requires_grad_(False)
    model.eval()
    return model
