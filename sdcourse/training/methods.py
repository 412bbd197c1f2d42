"""What trains: the LoRA trainer's ways of fine-tuning, each a small object for the fine-tuning
core (finetune_core.py).

- `UNetAdapter`: a rank-r LoRA adapter on the U-Net's layers (peft's `add_adapter`, as diffusers'
  own LoRA scripts do); only the adapter trains. Saved as pytorch_lora_weights.safetensors,
  which diffusers' `pipe.load_lora_weights(out)` loads.
- `UNetAndTextEncoderAdapters`: the same, plus an adapter on the text encoder's attention, so
  that the encoding of a word can move; the captions are then encoded at every step. Both
  adapters go into the one file.
- `FullUNet`: every U-Net weight (a full fine-tune), the ceiling an adapter is measured against.
  Saved as a diffusers U-Net folder, out/unet.

And the ways of fine-tune.py's other methods:

- `TextualInversion`: a new word's row of the text encoder's input embedding, nothing else
  (sdcourse.textual_inversion). Saved as learned_embeds.safetensors, which diffusers'
  `pipe.load_textual_inversion(out / "learned_embeds.safetensors")` loads.
- `DreamBooth`: every U-Net weight, on pictures captioned with a rare word and the class word,
  usually with prior preservation (sdcourse.dreambooth; the loss is the fine-tuning core's).
  Saved as out/unet, as `FullUNet`; the word may be a new one whose row trains too.
- `PivotalTuning`: a new word's row and a LoRA adapter on the U-Net together; both files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..lora import DEFAULT_TARGETS, LORA_FILE, check_rank, linear_layer_endings, matches_target, target_names
from ..textual_inversion import EMBEDDING_FILE, add_token, learned_embedding, row_mask, save_learned_embedding
from .finetune_core import WhatTrains, unet_prediction

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention, as diffusers' scripts adapt it


def prediction_through_the_text_encoder(module, batch):
    """The U-Net's prediction, for a method whose module holds both "unet" and "text_encoder" and
    trains part of the text encoder: the batch's token ids are encoded at every step."""
    return unet_prediction(module["unet"], batch, module["text_encoder"](batch["text"])[0])


def add_peft_adapter(model, rank: int, alpha: float, targets, seed: int, what: str = "U-Net") -> list:
    """peft's LoRA on the layers of `model` (the U-Net, or the text encoder) that `targets` name:
    Linear layers, and the convolutions of the U-Net's ResNet blocks if named. Its A starts from
    `seed`. Returns the adapter's parameters."""
    from peft import LoraConfig

    targets = target_names(targets)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    for target in targets:
        matched = [name for name in layers if matches_target(name, target)]
        if not matched:
            convolutions = sorted({name.rsplit(".", 1)[-1] for name, m in layers.items() if isinstance(m, torch.nn.Conv2d)})
            raise ValueError(f"targets: {target!r} matches no Linear layer of the {what}; its Linear layers "
                             f"end in: {', '.join(linear_layer_endings(model))}"
                             + (f" (and its convolutions in: {', '.join(convolutions)})" if convolutions else ""))
        for name in matched:  # the narrowest layer decides
            layer = layers[name]
            if isinstance(layer, torch.nn.Linear):
                d_out, d_in = layer.weight.shape
            else:
                d_out, d_in = layer.out_channels, layer.in_channels
            check_rank(rank, d_in, d_out)
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft draws A from torch's global generator: the same seed, the same A
        torch.manual_seed(seed)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=list(targets)))
    return [p for p in model.parameters() if p.requires_grad]


class UNetAdapter(WhatTrains):
    """A LoRA adapter of rank `rank` on the U-Net layers `targets` name; the update is scaled by alpha / rank."""

    name = "LoRA"

    def __init__(self, rank: int = 4, alpha: float = 4.0, targets=DEFAULT_TARGETS, seed: int = 0):
        self.rank, self.alpha, self.targets, self.seed = rank, alpha, target_names(targets), seed
        self.pipe = None

    def attach(self, pipe):
        self.pipe = pipe
        return add_peft_adapter(pipe.unet, self.rank, self.alpha, self.targets, self.seed)

    @property
    def module(self):
        return self.pipe.unet

    def adapter_weights(self, model) -> dict:
        """The adapter of `model` as a state dict, alpha / rank folded into B: a saved adapter
        carries no alpha, and loaders then take alpha = rank, so the file gives exactly the
        trained model (sdcourse.lora.export_lora does the same)."""
        from peft.utils import get_peft_model_state_dict

        fold = self.alpha / self.rank
        return {k: (v * fold if ".lora_B." in k else v).contiguous()
                for k, v in get_peft_model_state_dict(model).items()}

    def adapters(self) -> dict:
        """The adapters to save, by the name `save_lora_weights` gives them (it adds "unet." or "text_encoder.")."""
        return {"unet_lora_layers": self.adapter_weights(self.pipe.unet)}

    def save(self, out):
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(out, weight_name=LORA_FILE, safe_serialization=True,
                                                  **self.adapters())

    def saved_file(self, out):
        return Path(out) / LORA_FILE


class UNetAndTextEncoderAdapters(UNetAdapter):
    """A LoRA adapter on the U-Net and one of the same rank on the text encoder's attention
    projections (diffusers' DreamBooth LoRA script has the same switch). The captions' token ids
    go through the adapted text encoder at every step."""

    encodes_text = True

    def attach(self, pipe):
        params = super().attach(pipe)
        params += add_peft_adapter(pipe.text_encoder, self.rank, self.alpha, TEXT_ENCODER_TARGETS, self.seed,
                                   "text encoder")
        # One module holds both, so that the loop trains, checkpoints and moves them together.
        self._module = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        return params

    @property
    def module(self):
        return self._module

    def predict(self, module, batch):
        return prediction_through_the_text_encoder(module, batch)

    def adapters(self):
        return {**super().adapters(), "text_encoder_lora_layers": self.adapter_weights(self.pipe.text_encoder)}


class FullUNet(WhatTrains):
    """Every weight of the U-Net (a full fine-tune); written as a diffusers U-Net folder, out/unet."""

    name = "full U-Net"

    def __init__(self):
        self.pipe = None

    def attach(self, pipe):
        self.pipe = pipe
        pipe.unet.requires_grad_(True)
        return list(pipe.unet.parameters())

    @property
    def module(self):
        return self.pipe.unet

    def save(self, out):
        self.pipe.unet.save_pretrained(Path(out) / "unet", safe_serialization=True)

    def saved_file(self, out):
        return Path(out) / "unet" / "diffusion_pytorch_model.safetensors"


class DreamBooth(FullUNet):
    """Every U-Net weight, on pictures of the subject under "a <rare word> <class word>"; the
    prior-preservation loss comes from the settings (FineTuneSettings.prior_loss_weight).
    train_text_encoder: every text-encoder weight trains too (diffusers' DreamBooth script has the
    same switch), at text_encoder_lr_scale times the U-Net's rate, so that the rare word's encoding
    can move away from the class word's; saved as out/text_encoder beside out/unet.
    learned_word: a `TextualInversion` (a new word, not a rare one): its row trains beside the
    U-Net, at embedding_lr_scale times the rate (the textual-inversion part of diffusers' advanced
    DreamBooth scripts); saved as learned_embeds.safetensors beside out/unet."""

    name = "DreamBooth"

    def __init__(self, train_text_encoder: bool = False, text_encoder_lr_scale: float = 1.0,
                 learned_word: "TextualInversion | None" = None, embedding_lr_scale: float = 1.0):
        super().__init__()
        if train_text_encoder and learned_word is not None:
            raise ValueError("DreamBooth trains either the whole text encoder (train_text_encoder) or a learned "
                             "word's row (learned_word), not both")
        self.train_text_encoder, self.learned_word = train_text_encoder, learned_word
        self.encodes_text = train_text_encoder or learned_word is not None
        self.text_encoder_lr_scale, self.embedding_lr_scale = text_encoder_lr_scale, embedding_lr_scale

    def attach(self, pipe):
        rows = self.learned_word.attach(pipe) if self.learned_word is not None else None  # freezes the U-Net...
        params = super().attach(pipe)  # ...which then trains whole
        if rows is not None:
            self._module = self.learned_word.module
            return [{"params": params}, {"params": rows, "lr_scale": self.embedding_lr_scale}]
        if not self.train_text_encoder:
            return params
        pipe.text_encoder.requires_grad_(True)
        self._module = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        return [{"params": params},
                {"params": list(pipe.text_encoder.parameters()), "lr_scale": self.text_encoder_lr_scale}]

    @property
    def module(self):
        return self._module if self.encodes_text else self.pipe.unet

    def predict(self, module, batch):
        if not self.encodes_text:
            return super().predict(module, batch)
        return prediction_through_the_text_encoder(module, batch)

    def save(self, out):
        super().save(out)
        if self.train_text_encoder:
            self.pipe.text_encoder.save_pretrained(Path(out) / "text_encoder", safe_serialization=True)
        if self.learned_word is not None:
            self.learned_word.save(out)


class TextualInversion(WhatTrains):
    """A new word `token`, its row started from `initializer`'s, and that row alone trained: the
    gradient of the embedding matrix is multiplied by a mask that is 1 on the new row only.
    vectors > 1: the word is that many tokens, each with a row of its own (the captions must
    spell it out: `textual_inversion.spell_out`)."""

    name = "textual inversion"
    encodes_text = True  # the captions go through the text encoder at every step: its input row trains

    def __init__(self, token: str, initializer: str, vectors: int = 1):
        self.token, self.initializer, self.vectors = token, initializer, vectors
        self.pipe = self.token_ids = self.mask = None

    def attach(self, pipe):
        self.pipe = pipe
        pipe.unet.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        self.token_ids = add_token(pipe.tokenizer, pipe.text_encoder, self.token, self.initializer, self.vectors)
        rows = pipe.text_encoder.get_input_embeddings().weight
        rows.requires_grad_(True)
        self.mask = row_mask(rows.shape[0], self.token_ids, rows.dtype).to(rows.device)
        rows.register_hook(lambda gradient: gradient * self.mask.to(gradient.device))
        self._module = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        return [rows]

    @property
    def module(self):
        return self._module

    def predict(self, module, batch):
        return prediction_through_the_text_encoder(module, batch)

    def save(self, out):
        Path(out).mkdir(parents=True, exist_ok=True)
        save_learned_embedding(Path(out) / EMBEDDING_FILE, self.token,
                               learned_embedding(self.pipe.text_encoder, self.token_ids))

    def saved_file(self, out):
        return Path(out) / EMBEDDING_FILE


class PivotalTuning(TextualInversion):
    """A new word's row (as `TextualInversion`) and a LoRA adapter on the U-Net, trained
    together; the row learns at `embedding_lr_scale` times the adapter's rate."""

    name = "pivotal tuning"

    def __init__(self, token: str, initializer: str, rank: int = 4, alpha: float = 4.0, targets=DEFAULT_TARGETS,
                 seed: int = 0, embedding_lr_scale: float = 5.0, vectors: int = 1):
        super().__init__(token, initializer, vectors)
        self.adapter = UNetAdapter(rank, alpha, targets, seed)
        self.embedding_lr_scale = embedding_lr_scale

    def attach(self, pipe):
        rows = super().attach(pipe)
        adapter = self.adapter.attach(pipe)
        return [{"params": adapter}, {"params": rows, "lr_scale": self.embedding_lr_scale}]

    def save(self, out):
        super().save(out)
        self.adapter.save(out)

    def saved_file(self, out):
        return self.adapter.saved_file(out)
