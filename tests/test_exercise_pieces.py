"""The exercises that build real pieces: lesson 03's ResNet block (against diffusers') and lesson
05's causal self-attention (against transformers'). The worked answer passes; each mistake a check
lists fails and is named; the same mistakes, made by editing the worked answer, are named too;
shapes, dtypes and parameter names are reported as such; bad arguments get clear errors."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdcourse.checks import ALL_CHECKS, check_clip_self_attention, check_resnet_block
from sdcourse.checks.lesson03 import diffusers_resnet_block, parameter_report, randomize, run_with_weights
from sdcourse.checks.lesson05 import transformers_clip_attention

ROOT = Path(__file__).resolve().parents[1]


def solution_source(notebook, starts_with):
    """The source of the code cell of a solution notebook that starts with `starts_with`."""
    cells = json.loads((ROOT / "solutions" / notebook).read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    found = [s for s in sources if s.startswith(starts_with)]
    assert len(found) == 1, f"{notebook}: {len(found)} code cells start with {starts_with!r}"
    return found[0]


def build(source, name, extra=()):
    """Run cell sources in a fresh namespace with the notebooks' imports; return `name` from it."""
    namespace = {"math": math, "torch": torch, "nn": nn, "F": F}
    for code in (*extra, source):
        exec(compile(code, "<solution cell>", "exec"), namespace)  # noqa: S102 (our own notebooks)
    return namespace[name]


def edited(source, old, new):
    """The source with `old` replaced by `new`; fails loudly if the worked answer no longer holds `old`."""
    assert old in source, f"the worked answer no longer contains {old!r}"
    return source.replace(old, new)


RESNET = solution_source("03_unet.ipynb", "class ResnetBlock2D")
ATTENTION = solution_source("05_text_conditioning.ipynb", "class CLIPSelfAttention")
CAUSAL_MASK = solution_source("05_text_conditioning.ipynb", "def causal_mask")


def resnet_class(source=RESNET):
    return build(source, "ResnetBlock2D")


def attention_class(source=ATTENTION):
    return build(source, "CLIPSelfAttention", extra=(CAUSAL_MASK,))


# ---- the worked answers pass, every listed mistake fails and is named ---------------------------


def test_the_worked_resnet_block_passes():
    assert check_resnet_block(resnet_class(), verbose=False)


def test_the_worked_self_attention_passes():
    assert check_clip_self_attention(attention_class(), verbose=False)


PIECES = [check_resnet_block, check_clip_self_attention]


@pytest.mark.parametrize(
    "check, cause", [(check, cause) for check in PIECES for cause in check.mistakes],
    ids=lambda value: value.__name__ if callable(value) else value[:50],
)
def test_each_listed_mistake_fails_and_is_named(check, cause):
    result = check(check.mistakes[cause], verbose=False)
    assert not result
    assert "likely cause: " + cause in result.report


# The mistakes the lessons warn about: each must be one of the causes a check can name.
WARNED = {
    "resnet_block": ["time embedding was not added", "without time_emb_proj", "added after norm2",
                     "no conv_shortcut", "SiLU is missing", "output_scale_factor was ignored"],
    "clip_self_attention": ["the tokens can see later tokens", "multiplied by sqrt(head_dim)", "the full width",
                            "heads were not split", "heads were not merged", "softmax ran over the queries"],
}


@pytest.mark.parametrize("name, phrase", [(name, phrase) for name, phrases in WARNED.items() for phrase in phrases])
def test_the_warned_mistakes_are_diagnosed(name, phrase):
    assert sum(phrase in cause for cause in ALL_CHECKS[name].mistakes) == 1, phrase


# ---- the same mistakes, made by editing the worked answer ---------------------------------------


def likely_cause(report):
    lines = [line for line in report.splitlines() if line.strip().startswith("likely cause: ")]
    assert len(lines) == 1, report
    return lines[0]


TIME_LINE = "        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]\n"
NORM2_LINE = "        h = self.conv2(self.dropout(F.silu(self.norm2(h))))\n"

RESNET_EDITS = [
    ("the time embedding left out", [(TIME_LINE, "")], "the time embedding was not added"),
    ("the time embedding added after norm2",
     [(TIME_LINE, ""), (NORM2_LINE, NORM2_LINE.replace(
         "self.norm2(h)", "self.norm2(h) + self.time_emb_proj(F.silu(temb))[:, :, None, None]"))],
     "the time embedding was added after norm2"),
    ("no SiLU after either norm", [("F.silu(self.norm1(x))", "self.norm1(x)"), ("F.silu(self.norm2(h))", "self.norm2(h)")],
     "SiLU is missing after the GroupNorms"),
    ("no shortcut conv", [("if in_channels != out_channels:", "if False:"),
                          ("x if self.conv_shortcut is None else self.conv_shortcut(x)", "x")],
     "no conv_shortcut"),
    ("output_scale_factor left out", [("(shortcut + h) / self.output_scale_factor", "shortcut + h")],
     "output_scale_factor was ignored"),
    ("dropout after conv2", [("self.conv2(self.dropout(F.silu(self.norm2(h))))", "self.dropout(self.conv2(F.silu(self.norm2(h))))")],
     "dropout in the wrong place"),
    ("float32 output", [("return (shortcut + h) / self.output_scale_factor", "return ((shortcut + h) / self.output_scale_factor).float()")],
     "the output is float32 for float64 inputs"),
]


@pytest.mark.parametrize("label, edits, cause", RESNET_EDITS, ids=[e[0] for e in RESNET_EDITS])
def test_an_edited_resnet_block_is_diagnosed(label, edits, cause):
    source = RESNET
    for old, new in edits:
        source = edited(source, old, new)
    result = check_resnet_block(resnet_class(source), verbose=False)
    assert not result
    assert cause in likely_cause(result.report)


MASK_LINE = '        scores = scores.masked_fill(~causal_mask(tokens), float("-inf"))\n'

ATTENTION_EDITS = [
    ("no causal mask", [(MASK_LINE, "")], "the tokens can see later tokens"),
    ("scores multiplied by sqrt(head_dim)", [("self.head_dim**-0.5", "self.head_dim**0.5")],
     "multiplied by sqrt(head_dim)"),
    ("scaled by the full width", [("self.head_dim**-0.5", "width**-0.5")], "the scale used the full width"),
    ("softmax over the queries", [("scores.softmax(dim=-1)", "scores.softmax(dim=-2)")], "softmax ran over the queries"),
    ("heads split by a plain view",
     [("t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)", "t.view(batch, self.num_heads, tokens, self.head_dim)")],
     "split with a plain view"),
    ("heads merged by a plain reshape", [("heads.transpose(1, 2).reshape(", "heads.reshape(")], "merged with a plain reshape"),
    ("heads never merged", [("return self.out_proj(merged)", "return heads")], "the heads were not merged"),
    ("masked scores set to 0", [('float("-inf"))', "0.0)")], "the masked scores were set to 0"),
]


@pytest.mark.parametrize("label, edits, cause", ATTENTION_EDITS, ids=[e[0] for e in ATTENTION_EDITS])
def test_an_edited_self_attention_is_diagnosed(label, edits, cause):
    source = ATTENTION
    for old, new in edits:
        source = edited(source, old, new)
    result = check_clip_self_attention(attention_class(source), verbose=False)
    assert not result
    assert cause in likely_cause(result.report)


# ---- shapes, dtypes and names are reported as such ----------------------------------------------


def test_a_shape_difference_is_reported_as_a_shape():
    source = edited(ATTENTION, "return self.out_proj(merged)", "return heads")
    report = check_clip_self_attention(attention_class(source), verbose=False).report
    assert "first difference at ['output shape']" in report
    assert "expected: (2, 5, 16)" in report and "got:      (2, 4, 5, 4)" in report


def test_a_dtype_difference_is_reported_as_a_dtype():
    source = edited(ATTENTION, "return self.out_proj(merged)", "return self.out_proj(merged).float()")
    report = check_clip_self_attention(attention_class(source), verbose=False).report
    assert "float64" in report.splitlines()[0]  # the failing case is the float64 one
    assert "first difference at ['output dtype']" in report
    assert "expected: 'torch.float64'" in report and "got:      'torch.float32'" in report


def test_renamed_layers_are_reported_by_name():
    source = edited(RESNET, "self.time_emb_proj", "self.time_proj")  # in __init__ and in forward
    report = check_resnet_block(resnet_class(source), verbose=False).report
    assert "first difference at ['parameters']" in report
    assert "missing: time_emb_proj | unexpected: time_proj" in report


def test_parameter_report_names_wrong_shapes():
    report = parameter_report(nn.Linear(3, 4), nn.Linear(4, 3), "the library", "weight, bias")
    assert report.startswith("wrong shape: weight (4, 3), the library (3, 4); bias (4,), the library (3,)")
    assert parameter_report(nn.Linear(3, 4), nn.Linear(3, 4), "the library", "weight, bias") == (
        "the names and shapes of the library"
    )


def test_a_blank_class_is_not_filled_in_yet():
    class Blank(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            raise NotImplementedError("Make the layers.")

    for check in PIECES:
        result = check(Blank, verbose=False)
        assert not result and "not filled in yet" in result.report and "Make the layers." in result.report


# ---- what the checks compare against -----------------------------------------------------------


def test_the_reference_is_diffusers_block_and_dropout_draws_match():
    from diffusers.models.resnet import ResnetBlock2D

    block = diffusers_resnet_block(8, 16, 12, groups=4, dropout=0.5)
    assert type(block) is ResnetBlock2D and block.conv_shortcut is not None
    # in training mode, a block that drops where diffusers does draws the same numbers
    x, temb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    source = randomize(block, 0)
    ours, theirs = resnet_class(), lambda **config: diffusers_resnet_block(**config)
    config = {"in_channels": 8, "out_channels": 16, "temb_channels": 12, "groups": 4, "dropout": 0.5}

    def run(cls, training):
        return run_with_weights(lambda: cls(**config), source, "diffusers", "", (x, temb), training=training,
                                seed=1)["output"]

    torch.testing.assert_close(run(ours, True), run(theirs, True))
    assert not torch.allclose(run(theirs, True), run(theirs, False)), "dropout acted in training mode"


def test_the_attention_reference_uses_the_causal_mask():
    torch.manual_seed(0)
    layer = transformers_clip_attention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        full = layer(x)
        first_three = layer(x[:, :3])
    # a causal layer: the first tokens' outputs do not depend on later tokens
    torch.testing.assert_close(full[:, :3], first_three)


# ---- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 0}, "in_channels must be a positive int, got 0"),
    ({"out_channels": 12.0}, "out_channels must be a positive int, got 12.0"),
    ({"groups": 5}, "groups=5 must divide in_channels=8"),
    ({"eps": 0}, "eps must be a positive number, got 0"),
    ({"dropout": 1.5}, "dropout must be a probability in [0, 1), got 1.5"),
    ({"output_scale_factor": "2"}, "output_scale_factor must be a positive number, got '2'"),
])
def test_the_block_reference_rejects_bad_arguments(kwargs, message):
    arguments = {"in_channels": 8, "out_channels": 16, "temb_channels": 12, "groups": 4, **kwargs}
    with pytest.raises(ValueError) as error:
        diffusers_resnet_block(**arguments)
    assert message in str(error.value)


@pytest.mark.parametrize("hidden_size, num_heads, message", [
    (10, 3, "num_heads=3 must divide hidden_size=10"),
    ("16", 4, "hidden_size must be a positive int, got '16'"),
    (16, 0, "num_heads must be a positive int, got 0"),
])
def test_the_attention_reference_rejects_bad_arguments(hidden_size, num_heads, message):
    with pytest.raises(ValueError) as error:
        transformers_clip_attention(hidden_size, num_heads)
    assert message in str(error.value)


def test_the_checks_want_the_class_not_an_instance():
    with pytest.raises(TypeError, match="pass the class itself"):
        check_resnet_block(resnet_class()(8, 8, 8, groups=4), verbose=False)
    with pytest.raises(TypeError, match="pass the class itself"):
        check_clip_self_attention(attention_class()(8, 2), verbose=False)
    with pytest.raises(TypeError, match="pass a class.*got int"):
        check_clip_self_attention(3, verbose=False)


def test_the_helpers_reject_what_is_not_a_module():
    with pytest.raises(TypeError, match="module must be an nn.Module, got str"):
        randomize("conv1", 0)
    with pytest.raises(TypeError, match="seed must be an int, got 0.5"):
        randomize(nn.Linear(2, 2), 0.5)
    with pytest.raises(TypeError, match="reference must be an nn.Module, got dict"):
        parameter_report(nn.Linear(2, 2), {}, "the library", "")
    with pytest.raises(TypeError, match="the class must make an nn.Module; it made a function"):
        run_with_weights(lambda: F.silu, nn.Linear(2, 2), "the library", "", (torch.randn(1, 2),))
