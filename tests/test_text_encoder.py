"""The from-scratch CLIP text encoder gives transformers' CLIPTextModel numbers with its weights."""

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from sdcourse.text_encoder import TextEncoder, quick_gelu

SMALL = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=998,
    eos_token_id=999,
    pad_token_id=0,
)
# CLIP ViT-L/14's text transformer, as used by Stable Diffusion 1.x
SD1_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
TOL = 1e-5


def build_pair(config, seed):
    torch.manual_seed(seed)
    reference = CLIPTextModel(CLIPTextConfig(**config)).eval()
    ours = TextEncoder.from_config(reference.config).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def random_prompts(batch, tokens, config, seed):
    """Token ids like a tokenizer makes: start token, words, end token, then padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config["vocab_size"] - 2, (batch, tokens), generator=gen)
    ids[:, 0] = config["bos_token_id"]
    for row, length in enumerate(torch.randint(2, tokens - 1, (batch,), generator=gen).tolist()):
        ids[row, length] = config["eos_token_id"]
        ids[row, length + 1 :] = config["pad_token_id"]
    return ids


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_last_hidden_state_and_pooled_match_transformers(seed, hidden_act):
    config = dict(SMALL, hidden_act=hidden_act)
    reference, ours = build_pair(config, seed)
    for tokens in (77, 12):
        ids = random_prompts(3, tokens, config, seed)
        expected = reference(input_ids=ids)
        hidden = ours(ids)
        assert hidden.shape == (3, tokens, 32)
        assert max_diff(hidden, expected.last_hidden_state) <= TOL
        assert max_diff(ours.pooled(ids), expected.pooler_output) <= TOL
        assert max_diff(ours.pooled(ids, hidden), expected.pooler_output) <= TOL


@torch.no_grad()
def test_pooled_with_legacy_eos_token_id_2_uses_argmax():
    # SD 1.x's config says eos_token_id=2: the end token is then found as the largest id
    config = dict(SMALL, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    reference, ours = build_pair(config, 4)
    ids = random_prompts(4, 20, dict(config, eos_token_id=999), 4)  # ends with 999, the largest id
    expected = reference(input_ids=ids)
    assert max_diff(ours(ids), expected.last_hidden_state) <= TOL
    assert max_diff(ours.pooled(ids), expected.pooler_output) <= TOL
    end = (ids == 999).int().argmax(-1)
    assert max_diff(ours.pooled(ids), ours(ids)[torch.arange(4), end]) == 0


@torch.no_grad()
def test_causal_mask_makes_earlier_tokens_ignore_later_ones():
    _, ours = build_pair(SMALL, 5)
    ids = random_prompts(2, 16, SMALL, 5)
    changed = ids.clone()
    changed[:, 10:] = 7
    assert max_diff(ours(ids)[:, :10], ours(changed)[:, :10]) <= 1e-6
    assert max_diff(ours(ids)[:, 10:], ours(changed)[:, 10:]) > 1e-3


@torch.no_grad()
def test_written_out_attention_gives_the_same_numbers():
    reference, ours = build_pair(SMALL, 7)
    ids = random_prompts(2, 77, SMALL, 7)
    for layer in ours.encoder.layers:
        layer.self_attn.use_sdpa = False
    assert max_diff(ours(ids), reference(input_ids=ids).last_hidden_state) <= TOL
    attn = ours.encoder.layers[0].self_attn
    attn.store_probs = True
    ours(ids)
    probs = attn.last_probs  # (batch, heads, tokens, tokens)
    assert probs.shape == (2, 4, 77, 77)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 77))
    assert probs.triu(diagonal=1).abs().max() == 0  # nothing attends to later tokens


def test_quick_gelu():
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(quick_gelu(x), x * torch.sigmoid(1.702 * x))
    assert (quick_gelu(x) - torch.nn.functional.gelu(x)).abs().max() < 0.03


def test_from_config_accepts_a_dict():
    ours = TextEncoder.from_config(dict(SMALL, hidden_act="gelu"))
    assert ours.eos_token_id == 999 and ours.max_position_embeddings == 77
    assert ours.encoder.layers[0].mlp.act is torch.nn.functional.gelu
    with pytest.raises(ValueError, match="hidden_act"):
        TextEncoder.from_config(dict(SMALL, hidden_act="tanh"))


def test_position_ids_buffer_is_not_in_the_state_dict():
    reference, ours = build_pair(SMALL, 0)
    assert "embeddings.position_ids" not in reference.state_dict()
    assert "embeddings.position_ids" not in ours.state_dict()
    assert torch.equal(ours.embeddings.position_ids, torch.arange(77)[None])


def test_checkpoint_keys_with_text_model_prefix_load():
    reference, _ = build_pair(SMALL, 6)
    prefixed = {"text_model." + key: value for key, value in reference.state_dict().items()}
    prefixed["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ours = TextEncoder.from_config(reference.config)
    ours.load_state_dict(prefixed)
    ids = random_prompts(2, 77, SMALL, 6)
    with torch.no_grad():
        assert max_diff(ours(ids), reference(input_ids=ids).last_hidden_state) <= TOL


def test_sd1_layout_matches_transformers_on_meta_device():
    with torch.device("meta"):
        reference = CLIPTextModel(CLIPTextConfig(**SD1_TEXT))
        ours = TextEncoder.from_config(reference.config)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert sorted(our_state) == sorted(ref_state)
    assert not any(key.startswith("text_model.") for key in ref_state)
    for key, value in ref_state.items():
        assert our_state[key].shape == value.shape, key
        assert our_state[key].is_meta
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in reference.parameters()) == 123_060_480
    ours.load_state_dict(ref_state, assign=True)
    assert ours(torch.zeros(2, 77, dtype=torch.long, device="meta")).shape == (2, 77, 768)


def test_too_many_tokens_raise():
    ours = TextEncoder.from_config(SMALL)
    with pytest.raises(ValueError, match=r"78 tokens.*max_position_embeddings=77"):
        ours(torch.zeros(1, 78, dtype=torch.long))


def test_bad_token_ids_raise():
    ours = TextEncoder.from_config(SMALL)
    ids = torch.zeros(2, 5, dtype=torch.long)
    ids[1, 3] = 1000
    with pytest.raises(ValueError, match=r"vocab_size=1000.*got ids from 0 to 1000"):
        ours(ids)
    with pytest.raises(ValueError, match=r"vocab_size=1000.*got ids from -1"):
        ours(torch.full((1, 5), -1))
    with pytest.raises(ValueError, match=r"integer token ids, got dtype torch.float32"):
        ours(torch.zeros(1, 5))


def test_load_state_dict_lists_missing_and_unexpected_keys():
    reference, ours = build_pair(SMALL, 0)
    state = reference.state_dict()
    state.pop("final_layer_norm.bias")
    state["encoder.layers.2.mlp.fc1.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): \['final_layer_norm.bias'\]") as error:
        ours.load_state_dict(state)
    assert "unexpected keys (1): ['encoder.layers.2.mlp.fc1.weight']" in str(error.value)
    result = ours.load_state_dict(state, strict=False)
    assert result.missing_keys == ["final_layer_norm.bias"]
