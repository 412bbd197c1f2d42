"""CLIP's text encoder, the part of Stable Diffusion that reads the prompt, from scratch.

The tokenizer turns a prompt into 77 token ids; this transformer turns them into 77 vectors
(768 numbers each for SD 1.x) that the UNet attends to through cross-attention.

    ids (batch, 77) -> token + position embeddings -> 12 x [pre-LayerNorm transformer block
    with causal self-attention] -> final LayerNorm -> last_hidden_state (batch, 77, 768)

It is a GPT-style stack: every token only sees itself and the tokens before it (causal
mask), because CLIP was trained to summarise the prompt at its last token, the end-of-text
token. That token's vector is the "pooled" output (used by CLIP to compare text with
images, and by SDXL); SD 1.x itself uses the whole last_hidden_state.

Parameter names are the ones of transformers' `CLIPTextModel` (5.x), so its weights load
directly:

    encoder = TextEncoder.from_config(clip_text_model.config)
    encoder.load_state_dict(clip_text_model.state_dict())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdcourse.arguments import choice
from sdcourse.layers import MultiHeadAttention
from sdcourse.weights import ConfigRule, check_state_dict

# How this encoder reads a config of transformers' CLIPTextConfig (see sdcourse.weights): the
# fields it uses, and CLIP's fields that cannot change the forward pass: its other token ids, the
# width of its joint text-image projection (not part of the text transformer) and initialisation.
# `attention_dropout` and the `dropout` of older versions (training only) must keep their default 0.
CONFIG_RULE = ConfigRule(
    network="text encoder",
    library_class="transformers.CLIPTextConfig",
    used=(
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id",
    ),
    bookkeeping=("bos_token_id", "pad_token_id", "projection_dim", "initializer_range", "initializer_factor"),
    also_accepted={"dropout": (0.0,)},
)
# older checkpoints (e.g. the SD 1.x text_encoder files) store every key under this prefix
CHECKPOINT_PREFIX = "text_model."


def quick_gelu(x):
    # quick_gelu(x) = x * sigmoid(1.702 x), a cheap approximation of GELU used by OpenAI's CLIP
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class Embeddings(nn.Module):
    """Token embedding + learned position embedding."""

    def __init__(self, vocab_size, hidden_size, max_positions):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_positions, hidden_size)
        # 0, 1, ..., max_positions - 1; not saved in the state dict (persistent=False), as in transformers
        self.register_buffer("position_ids", torch.arange(max_positions).expand(1, -1), persistent=False)

    def forward(self, input_ids):  # (batch, tokens)
        tokens = input_ids.shape[1]
        positions = self.position_ids[:, :tokens]  # (1, tokens)
        # x = E_token[ids] + E_position[0, 1, ..., tokens - 1]
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # (batch, tokens, width)


class SelfAttention(MultiHeadAttention):
    """Multi-head causal self-attention with CLIP's names (q_proj, k_proj, v_proj, out_proj).

    The computation is the one every attention layer of the course shares
    (`sdcourse.layers.MultiHeadAttention`); this class adds only the projections.
    """

    def __init__(self, hidden_size, heads):
        if hidden_size % heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads})")
        super().__init__(heads)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, mask):  # (batch, tokens, width)
        # softmax(Q K^T / sqrt(head_dim) + causal mask) V, then the output projection
        return self.out_proj(self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), mask))


class MLP(nn.Module):
    """Position-wise feed-forward: width -> intermediate -> width."""

    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.act = ACTIVATIONS[hidden_act]
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x):  # (batch, tokens, width)
        # mlp(x) = fc2(act(fc1(x)))
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, hidden_size, heads, intermediate_size, hidden_act, eps):
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, heads)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = MLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x, mask):  # (batch, tokens, width)
        # x = x + attention(LayerNorm1(x))
        x = x + self.self_attn(self.layer_norm1(x), mask)
        # x = x + mlp(LayerNorm2(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, num_layers, hidden_size, heads, intermediate_size, hidden_act, eps):
        super().__init__()
        self.layers = nn.ModuleList(
            [EncoderLayer(hidden_size, heads, intermediate_size, hidden_act, eps) for _ in range(num_layers)]
        )

    def forward(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class TextEncoder(nn.Module):
    """CLIP's text transformer (transformers' `CLIPTextModel`), from scratch.

    `forward(input_ids)` returns last_hidden_state (batch, tokens, hidden_size), what SD 1.x's
    UNet reads. `pooled(input_ids)` returns the hidden state at the end-of-text token.
    """

    def __init__(self, config=None):
        """config: a transformers CLIPTextConfig (or a dict of its fields); None: transformers' defaults."""
        super().__init__()
        self.config = cfg = CONFIG_RULE.read({} if config is None else config)
        choice("hidden_act", cfg["hidden_act"], ACTIVATIONS)
        self.vocab_size = cfg["vocab_size"]
        self.hidden_size = width = cfg["hidden_size"]
        self.max_position_embeddings = cfg["max_position_embeddings"]
        self.eos_token_id = cfg["eos_token_id"]
        self.embeddings = Embeddings(self.vocab_size, width, self.max_position_embeddings)
        self.encoder = Encoder(cfg["num_hidden_layers"], width, cfg["num_attention_heads"], cfg["intermediate_size"],
                               cfg["hidden_act"], cfg["layer_norm_eps"])
        self.final_layer_norm = nn.LayerNorm(width, eps=cfg["layer_norm_eps"])

    @classmethod
    def from_config(cls, config):
        """Build from a transformers `CLIPTextConfig` (or a dict of its fields).

        A full `CLIPConfig` (text + vision) is accepted too: its text part is used. The course's
        one rule for configs applies (`sdcourse.weights`): an unknown field is an error.
        """
        if isinstance(config, dict):
            return cls(config.get("text_config", config))
        return cls(getattr(config, "text_config", config))

    def check_input_ids(self, input_ids):
        """Return input_ids as (batch, tokens), or raise a ValueError saying what is wrong."""
        if hasattr(input_ids, "keys") and "input_ids" in input_ids.keys():  # the tokenizer's whole output
            raise TypeError("the text encoder takes the token ids, not the tokenizer's whole output: pass "
                            "tokens.input_ids (or tokens['input_ids'])")
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a tensor of token ids, (batch, tokens), got {type(input_ids).__name__}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
        tokens = input_ids.shape[1]
        if tokens > self.max_position_embeddings:
            raise ValueError(
                f"input_ids has {tokens} tokens but the text encoder has only "
                f"max_position_embeddings={self.max_position_embeddings} positions"
            )
        if input_ids.numel() and input_ids.device.type != "meta":
            low, high = input_ids.min().item(), input_ids.max().item()
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.vocab_size - 1}] (vocab_size={self.vocab_size}), "
                    f"got ids from {low} to {high}"
                )
        return input_ids

    def forward(self, input_ids):
        """Token ids (batch, tokens) -> last_hidden_state (batch, tokens, hidden_size)."""
        input_ids = self.check_input_ids(input_ids)
        x = self.embeddings(input_ids)  # (batch, tokens, width)
        tokens = input_ids.shape[1]
        # causal mask: token i may attend to token j only if j <= i (True = may attend)
        mask = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()  # (tokens, tokens)
        x = self.encoder(x, mask)
        return self.final_layer_norm(x)  # (batch, tokens, width)

    def pooled(self, input_ids, last_hidden_state=None):
        """The hidden state at each prompt's end-of-text token: (batch, hidden_size).

        Which position is "end of text" depends on the config, exactly as in transformers:
        - eos_token_id == 2 (old configs, including SD 1.x's): the position of the largest token
          id, because CLIP's end-of-text token 49407 is the largest id in its vocabulary;
        - otherwise: the first position holding eos_token_id (position 0 if there is none).
        """
        input_ids = self.check_input_ids(input_ids)
        if last_hidden_state is None:
            last_hidden_state = self(input_ids)
        if self.eos_token_id == 2:
            positions = input_ids.argmax(dim=-1)  # (batch,)
        else:
            positions = (input_ids == self.eos_token_id).int().argmax(dim=-1)  # first match, (batch,)
        batch = torch.arange(input_ids.shape[0], device=input_ids.device)
        return last_hidden_state[batch, positions]  # (batch, width)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Like nn.Module.load_state_dict, but with strict=True the error lists the mismatched keys.

        Keys saved under "text_model." (older transformers; the SD 1.x checkpoint files) are
        accepted too: transformers 5 drops that prefix when it loads them, and so does this.
        A saved "embeddings.position_ids" (very old files) is ignored, as transformers does.
        """
        if state_dict and all(key.startswith(CHECKPOINT_PREFIX) for key in state_dict):
            state_dict = {key[len(CHECKPOINT_PREFIX):]: value for key, value in state_dict.items()}
        # very old files also saved the position ids (0, 1, 2, ...); they are rebuilt, not loaded
        state_dict = {key: value for key, value in state_dict.items() if key != "embeddings.position_ids"}
        check_state_dict(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
