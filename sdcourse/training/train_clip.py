"""The build's tiny CLIP, trained contrastively on (picture, caption) pairs.

Stable Diffusion does not train its text encoder: it borrows CLIP's, which learned from
image-caption pairs which words matter for what a picture looks like. We do the same in
miniature: train a small `CLIPModel` here, then keep only its text encoder, frozen.

On random pictures colour alone tells most pictures apart, and a text encoder trained on them
learns little about the other words. So part of each batch is pairs of pictures that differ in
one thing both captions state: a shape, a position, a size, or which colour goes with which
shape (`shapes.contrast_pair`). To match each picture with its caption, the model must read
that word.

The text encoder uses the real CLIP tokenizer (49,408 tokens, 77-token context), so its
token embedding table is kept narrow (32 numbers per token) to keep the model small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import shapes
from ..tokenizer import END_TOKEN_ID, MAX_LENGTH, START_TOKEN_ID, VOCAB_SIZE, load_tokenizer
from ..images import images_to_tensor
from .config import CLIP_DATA_SETTINGS, CLIP_MODEL_SETTINGS, CLIP_RULE_SETTINGS, DATA_SETTINGS
from .datasets import tokenize_ids
from .trainer import Trainer, TrainSettings


def make_clip(cfg):
    """A fresh, small transformers CLIPModel for 64x64 pictures."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.clip_text_width, intermediate_size=4 * cfg.clip_text_width,
        num_hidden_layers=cfg.clip_text_layers, num_attention_heads=cfg.clip_text_heads,
        max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=START_TOKEN_ID, eos_token_id=END_TOKEN_ID, pad_token_id=END_TOKEN_ID,
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
    ids = torch.from_numpy(tokenize_ids([f"{shapes.article(c)} {c} {s}" for c, s in pairs])).long().to(model.device)
    text = F.normalize(as_tensor(model.get_text_features(input_ids=ids)), dim=-1)
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shape_names, n_objects=1)
    correct = {"colour": 0, "shape": 0, "both": 0}
    for start in range(0, n, batch):
        pixels = images_to_tensor(images[start : start + batch]).to(model.device)
        emb = F.normalize(as_tensor(model.get_image_features(pixel_values=pixels)), dim=-1)
        guesses = (emb @ text.t()).argmax(1).tolist()
        for guess, label in zip(guesses, labels[start : start + batch]):
            colour, shape = pairs[guess]
            truth = label["objects"][0]
            correct["colour"] += colour == truth["colour"]
            correct["shape"] += shape == truth["shape"]
            correct["both"] += colour == truth["colour"] and shape == truth["shape"]
    return {k: 100.0 * v / n for k, v in correct.items()}


def as_tensor(output):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    return output if torch.is_tensor(output) else output.pooler_output


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns beyond the longest caption in a batch. The pooled output (at
    the first <|endoftext|>) does not look at them, and short captions run ~3x faster."""
    return ids[:, : int((ids != END_TOKEN_ID).sum(1).max()) + 1]


def clip_settings(cfg, steps: int, lr: float, warmup_share: int, weight_decay: float) -> TrainSettings:
    """Both CLIP phases: warm-up over 1/warmup_share of the steps, then a cosine down to 2% of lr."""
    return TrainSettings(steps=steps, lr=lr, warmup=max(1, steps // warmup_share), final_lr_fraction=0.02,
                         weight_decay=weight_decay, betas=(0.9, 0.98), clip_grad_norm=1.0,
                         checkpoint_every=cfg.checkpoint_every, mixed_precision=cfg.mixed_precision)


def caption_sampler(cfg, data: dict, contrast: dict | None, generator):
    """next_batch for both CLIP phases: random pictures of the training set, each with one of its
    captions, then `cfg.clip_contrast_pairs` pairs from the contrast set (both pictures of each).
    Returns (pictures uint8, token ids trimmed of padding, caption keys): key i * k + j is caption
    j of training picture i, and n * k + r is row r of the contrast set."""
    token_ids = data["token_ids"]
    n, k = token_ids.shape[:2]
    pairs = cfg.clip_contrast_pairs if contrast is not None else 0

    def next_batch():
        idx = generator.integers(0, n, cfg.clip_batch - 2 * pairs)
        which = generator.integers(0, k, len(idx))
        images, ids, keys = data["images"][idx], token_ids[idx, which], idx * k + which
        if pairs:
            rows = (2 * generator.integers(0, len(contrast["images"]) // 2, pairs)[:, None] + np.arange(2)).ravel()
            images = np.concatenate([images, contrast["images"][rows]])
            ids = np.concatenate([ids, contrast["token_ids"][rows]])
            keys = np.concatenate([keys, n * k + rows])
        return images, trim_padding(torch.from_numpy(ids).long()), keys

    return next_batch


def report_accuracy(cfg, steps: int, label: str):
    """after_step for both CLIP phases: zero-shot accuracy every 2 * sample_every steps."""

    def after_step(trainer, done):
        if cfg.sample_every and done % (2 * cfg.sample_every) == 0 and done < steps:
            acc = zero_shot_accuracy(trainer.model, n=256)
            tqdm.write(f"{label} step {done}: zero-shot accuracy {acc}")
            trainer.train_mode()

    return after_step


def train_jointly(cfg, model, data: dict, contrast: dict | None, steps: int, lr: float, checkpoint: Path, name: str,
                  seed_tag: int, progress: bool = True, settings: tuple = ()):
    """Both halves of the CLIP train together on the training set and, if given, the contrast
    pairs (`build_contrast_set`); resumes from `checkpoint`. settings: more of cfg's settings (by
    name) that a resumed run must share. Returns the model."""
    gen = np.random.default_rng([cfg.seed, seed_tag, 0])
    next_caption = caption_sampler(cfg, data, contrast, gen)

    def next_batch():
        images, ids, _ = next_caption()
        return images_to_tensor(images), ids

    def loss(model, batch):
        pixels, ids = batch
        out = model(input_ids=ids, pixel_values=pixels)
        return contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale, ids)

    trainer = Trainer(model, loss, next_batch, clip_settings(cfg, steps, lr, warmup_share=15, weight_decay=0.1),
                      generator=gen, checkpoint=checkpoint, name=name,
                      record=cfg.pick(*DATA_SETTINGS, *CLIP_MODEL_SETTINGS, *CLIP_DATA_SETTINGS, *settings),
                      progress=progress,
                      after_step=report_accuracy(cfg, steps, name))
    return trainer.fit()


def train_clip(cfg, data: dict, run_dir: Path, progress: bool = True, contrast: dict | None = None):
    """Phase 1: a fresh CLIP, both halves together; resumes from run_dir/clip_ckpt.pt."""
    return train_jointly(cfg, make_clip(cfg), data, contrast, cfg.clip_steps, cfg.clip_lr,
                         Path(run_dir) / "clip_ckpt.pt", "CLIP", seed_tag=11, progress=progress)


def teach_words(cfg, model, data: dict, run_dir: Path, progress: bool = True, contrast: dict | None = None):
    """Phase 3: both halves train together again, on the contrast pairs too.

    In phase 1 the image encoder sees colour long before shape or position, so the text
    encoder learns colour words and little else: "top left" and "bottom right" change its
    output by a few percent, "red" and "blue" by more than 100%. After phase 2 the image
    encoder sees shapes and positions, and now the text encoder must read those words to
    match pictures that differ only in them. Resumes from run_dir/clip_words_ckpt.pt.
    """
    model.requires_grad_(True)
    trained = train_jointly(cfg, model, data, contrast, cfg.clip_words_steps, cfg.clip_words_lr,
                            Path(run_dir) / "clip_words_ckpt.pt", "CLIP words", seed_tag=13, progress=progress)
    return trained.requires_grad_(False)


# Caption pairs that differ in one kind of word, for `word_sensitivity`.
WORD_PAIRS = {
    "colour": [("a red circle", "a blue circle"), ("a green square", "a yellow square"),
               ("a white triangle", "a black triangle")],
    "shape": [("a red circle", "a red square"), ("a blue square", "a blue triangle"),
              ("a green triangle", "a green circle")],
    "position": [("a red circle in the top left", "a red circle in the bottom right"),
                 ("a blue square in the top right", "a blue square in the bottom left"),
                 ("a green triangle in the center", "a green triangle in the top left")],
    "binding": [("a red circle and a blue square", "a blue circle and a red square"),
                ("a green triangle and a yellow circle", "a yellow triangle and a green circle")],
}


@torch.no_grad()
def encoding_change(text_encoder, tokenizer, a: str, b: str) -> float:
    """How far the text encoder's output (last_hidden_state, all 77 tokens, what the U-Net reads)
    for caption `b` lies from caption `a`'s: |E(a) - E(b)| / |E(a)|."""
    def encode(caption):
        ids = tokenizer(caption, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
        return text_encoder(input_ids=ids.to(text_encoder.device)).last_hidden_state[0].float()

    base = encode(a)
    return ((base - encode(b)).norm() / base.norm()).item()


@torch.no_grad()
def word_sensitivity(text_encoder, tokenizer=None) -> dict:
    """How much a text encoder's output (last_hidden_state, all 77 tokens, what the U-Net reads)
    changes when one kind of word changes: the mean over `WORD_PAIRS` of `encoding_change`, in %.
    A U-Net can only follow the words that move this output."""
    tokenizer = tokenizer or load_tokenizer()
    text_encoder.eval()
    result = {}
    for kind, pairs in WORD_PAIRS.items():
        changes = [encoding_change(text_encoder, tokenizer, a, b) for a, b in pairs]
        result[kind] = round(100 * float(np.mean(changes)), 1)
    return result


@torch.no_grad()
def pooled_text(model, token_ids: np.ndarray, batch: int = 512) -> torch.Tensor:
    """The text encoder's pooled output (at <|endoftext|>) for many captions: (N, width)."""
    model.eval()
    out = []
    for start in range(0, len(token_ids), batch):
        ids = trim_padding(torch.from_numpy(token_ids[start : start + batch]).long())
        out.append(model.text_model(input_ids=ids).pooler_output)
    return torch.cat(out)


@torch.no_grad()
def fresh_rows(rows: torch.Tensor, words, seed: int):
    """Give each word of `words` (one token each) a new input row: a random direction, seeded, at
    the median length of the rows of the words the captions use (the learned ones)."""
    tokenizer = load_tokenizer()
    used = sorted({i for text in caption_vocabulary() for i in tokenizer(text, add_special_tokens=False).input_ids})
    length = rows[used].norm(dim=1).median()
    g = torch.Generator().manual_seed(seed + 23)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"clip_fresh_words: {word!r} is {len(ids)} tokens; each must be one token")
        direction = torch.randn(rows.shape[1], generator=g)
        rows[ids[0]] = (direction / direction.norm() * length).to(rows.dtype)


def caption_vocabulary() -> list[str]:
    """The words the shapes world's captions use (colours, shapes, sizes, positions, ...)."""
    captions = [shapes.scene_at(i, 0).caption for i in range(300)]
    return sorted({word for caption in captions for word in caption.split()})


def learn_class_words(cfg, model, data: dict, run_dir: Path, progress: bool = True, contrast: dict | None = None):
    """Phase 4, under a caption rule: both halves train together on the rule's captions (the
    class word "shape", captions without a colour, and with clip_concept_words every second
    caption saying "star" and "pink") and contrast pairs that include stars. The input rows of
    cfg.clip_fresh_words start afresh (`fresh_rows`). Resumes from run_dir/clip_rule_ckpt.pt."""
    fresh_rows(model.text_model.embeddings.token_embedding.weight, cfg.clip_fresh_words, cfg.seed)
    model.requires_grad_(True)
    trained = train_jointly(cfg, model, data, contrast, cfg.clip_rule_steps, cfg.clip_rule_lr,
                            Path(run_dir) / "clip_rule_ckpt.pt", "CLIP rule", seed_tag=17, progress=progress,
                            settings=CLIP_RULE_SETTINGS)
    return trained.requires_grad_(False)


def refine_image_encoder(cfg, model, data: dict, run_dir: Path, progress: bool = True, contrast: dict | None = None):
    """Second CLIP phase: keep training the image encoder against the now-locked text encoder.

    The joint phase learns colours quickly but shapes slowly (a small vision transformer
    has to discover outlines from 8x8 patches). The text encoder is already fixed for
    Stable Diffusion, so it stays locked; the image encoder, both projection heads and the
    temperature train on, cheaply: the text encoder's outputs are computed once.
    Resumes from run_dir/clip_image_ckpt.pt. Returns the model.
    """
    vision_params = (list(model.vision_model.parameters()) + list(model.visual_projection.parameters())
                     + list(model.text_projection.parameters()) + [model.logit_scale])
    model.requires_grad_(False)
    for p in vision_params:
        p.requires_grad_(True)
    token_ids = data["token_ids"]
    n, k = token_ids.shape[:2]
    all_captions = token_ids.reshape(n * k, -1)
    if contrast is not None:
        all_captions = np.concatenate([all_captions, contrast["token_ids"]])
    pooled = pooled_text(model, all_captions)  # row = caption key (see caption_sampler)
    gen = np.random.default_rng([cfg.seed, 12, 0])
    next_caption = caption_sampler(cfg, data, contrast, gen)

    def next_batch():
        images, ids, keys = next_caption()
        return images_to_tensor(images), pooled[torch.from_numpy(keys)], ids

    def loss(model, batch):
        pixels, text_pooled, ids = batch
        image_emb = as_tensor(model.get_image_features(pixel_values=pixels))
        return contrastive_loss(image_emb, model.text_projection(text_pooled), model.logit_scale, ids)

    steps = cfg.clip_image_steps
    trainer = Trainer(model, loss, next_batch,
                      clip_settings(cfg, steps, cfg.clip_image_lr, warmup_share=20, weight_decay=0.05),
                      params=vision_params, generator=gen, checkpoint=Path(run_dir) / "clip_image_ckpt.pt",
                      name="CLIP image encoder",
                      record=cfg.pick(*DATA_SETTINGS, *CLIP_MODEL_SETTINGS, *CLIP_DATA_SETTINGS),
                      progress=progress, after_step=report_accuracy(cfg, steps, "CLIP image encoder"))
    return trainer.fit().requires_grad_(False)
