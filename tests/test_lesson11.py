"""Lesson 11's checks: each passes right answers (written more than one way), fails the blank stub,
and fails each mistake it lists, naming it, first of all the ones the lesson's text warns about.
Their references are the libraries themselves: the weight that diffusers' `fuse_lora` leaves, the
U-Net output under `set_adapters`."""

import copy
import warnings
from pathlib import Path

import pytest
import torch

import sdcourse.checks as checks
from sdcourse.checks import ALL_CHECKS, check_choose_setting, check_fused_weight, check_mixed_update, lesson11

ROOT = Path(__file__).resolve().parents[1]
LESSON11 = ["fused_weight", "mixed_update", "choose_setting"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The U-Nets here are tiny: one thread is faster than two on a busy machine."""


def stub(*args, **kwargs):
    raise NotImplementedError("fill in this part")


def cause_of(check, fn):
    result = check(fn, verbose=False)
    assert not result, "the check passed a wrong answer"
    return next(line for line in result.report.splitlines() if "likely cause: " in line)


# ---- right answers pass -------------------------------------------------------------------------


def fused_weight(weight, lora_A, lora_B, alpha, lora_scale):
    rank = lora_A.shape[0]
    return weight + lora_scale * (alpha / rank) * (lora_B @ lora_A)


def fused_weight_with_addmm(weight, lora_A, lora_B, alpha, lora_scale):
    return torch.addmm(weight, lora_B, lora_A, alpha=lora_scale * alpha / len(lora_A))


def mixed_update(adapters, weights):
    updates = {}
    for adapter, weight in zip(adapters, weights):
        for key in adapter:
            if key.endswith(".lora_A.weight"):
                layer = key.removeprefix("unet.").removesuffix(".lora_A.weight")
                A, B = adapter[key], adapter[key.replace(".lora_A.", ".lora_B.")]
                updates[layer] = updates.get(layer, 0) + weight * (B @ A)
    return updates


def mixed_update_by_layer(adapters, weights):
    layers = sorted({k[len("unet."):].rsplit(".lora_", 1)[0] for adapter in adapters for k in adapter})
    return {layer: sum(w * a[f"unet.{layer}.lora_B.weight"] @ a[f"unet.{layer}.lora_A.weight"]
                       for a, w in zip(adapters, weights) if f"unet.{layer}.lora_A.weight" in a)
            for layer in layers}


def choose_setting(runs, min_identity):
    keeping = [run for run in runs if run["identity"] >= min_identity]
    if not keeping:
        raise ValueError(f"no checkpoint reaches {min_identity}%")
    best = min(keeping, key=lambda run: run["held-out loss"])
    return best["rank"], best["step"]


def choose_setting_by_sorting(runs, min_identity):
    ranked = sorted((r["held-out loss"], r["rank"], r["step"]) for r in runs if r["identity"] >= min_identity)
    if not ranked:
        raise ValueError("nothing keeps the subject")
    return [ranked[0][1], ranked[0][2]]  # a list is as good as a tuple


@pytest.mark.parametrize("check, answer", [
    (check_fused_weight, fused_weight), (check_fused_weight, fused_weight_with_addmm),
    (check_mixed_update, mixed_update), (check_mixed_update, mixed_update_by_layer),
    (check_choose_setting, choose_setting), (check_choose_setting, choose_setting_by_sorting),
], ids=lambda x: getattr(x, "__name__", ""))
def test_right_answers_pass(check, answer):
    assert check(answer, verbose=False)


@pytest.mark.parametrize("name", LESSON11)
def test_the_reference_passes_and_the_stub_fails(name):
    check = ALL_CHECKS[name]
    assert check(check.reference, verbose=False)
    result = check(stub, verbose=False)
    assert not result and "not filled in yet" in result.report and "to do: fill in this part" in result.report
    assert "hint()" in result.report, "the report says how to get a hint"
    assert getattr(checks, "check_" + name) is check, "exported under its name"


@pytest.mark.parametrize("name, cause", [(name, cause) for name in LESSON11 for cause in ALL_CHECKS[name].mistakes])
def test_each_listed_mistake_fails_and_is_named(name, cause):
    check = ALL_CHECKS[name]
    assert cause_of(check, check.mistakes[cause]) == "   likely cause: " + cause


@pytest.mark.parametrize("name", LESSON11)
def test_hints_and_the_solution_notebook(name):
    check = ALL_CHECKS[name]
    assert 2 <= len(check.hints) <= 4 and len(set(check.hints)) == len(check.hints)
    assert f"check_{name}(" in (ROOT / check.solution).read_text(encoding="utf-8")


# ---- the mistakes the lesson's text warns about, written the way a learner would ------------------


def test_fused_weight_changed_in_place_is_named():
    def in_place(weight, lora_A, lora_B, alpha, lora_scale):
        weight.add_(lora_scale * alpha / lora_A.shape[0] * lora_B @ lora_A)
        return weight

    assert "changed the weight it was given" in cause_of(check_fused_weight, in_place)


@pytest.mark.parametrize("answer, words", [
    (lambda W, A, B, alpha, s: W + s * B @ A, "not scaled by alpha / rank"),
    (lambda W, A, B, alpha, s: W + alpha / A.shape[0] * B @ A, "lora_scale is missing"),
    (lambda W, A, B, alpha, s: s * (W + alpha / A.shape[0] * B @ A), "lora_scale multiplied W as well"),
    (lambda W, A, B, alpha, s: W + s * alpha / A.shape[0] * A.T @ B.T, "transposed"),
])
def test_fused_weight_scale_mistakes_are_named(answer, words):
    assert words in cause_of(check_fused_weight, answer)


def test_a_crash_in_fused_weight_is_reported_not_raised():
    report = check_fused_weight(lambda W, A, B, alpha, s: W + A @ B, verbose=False).report
    assert "your function raised RuntimeError" in report


def test_an_unknown_fused_weight_mistake_shows_expected_and_got():
    report = check_fused_weight(lambda W, A, B, alpha, s: s * alpha / A.shape[0] * B @ A, verbose=False).report
    assert "first difference at ['fused weight']" in report and "expected: Tensor of shape (64, 64)" in report
    assert "none of the usual mistakes" in report


@pytest.mark.parametrize("answer, words", [
    (lambda adapters, weights: mixed_update(adapters, [1.0] * len(weights)), "the weights were left out"),
    (lambda adapters, weights: {k: v / len(adapters) for k, v in mixed_update(adapters, weights).items()},
     "averaged"),
    (lambda adapters, weights: {"unet." + k: v for k, v in mixed_update(adapters, weights).items()}, "prefix"),
])
def test_mixed_update_mistakes_are_named(answer, words):
    assert words in cause_of(check_mixed_update, answer)


def test_mixed_update_that_returns_no_dict_says_so():
    report = check_mixed_update(lambda adapters, weights: list(mixed_update(adapters, weights).values()),
                                verbose=False).report
    assert "the exercise asks for a dict" in report


def test_choosing_by_training_loss_is_named_as_overfitting():
    def lowest_training_loss(runs, min_identity):
        best = min((r for r in runs if r["identity"] >= min_identity), key=lambda r: r["train loss"])
        return best["rank"], best["step"]

    cause = cause_of(check_choose_setting, lowest_training_loss)
    assert "lowest training loss" in cause and "by heart" in cause


def test_choosing_without_the_identity_mark_is_named():
    def ignores_identity(runs, min_identity):
        best = min(runs, key=lambda r: r["held-out loss"])
        return best["rank"], best["step"]

    assert "identity mark was ignored" in cause_of(check_choose_setting, ignores_identity)


def test_the_reference_names_the_best_identity_when_nothing_keeps_the_subject():
    runs = lesson11.sweep_table([(4, 50, 0.05, 0.05, 12.5), (8, 50, 0.05, 0.05, 40.0)])
    expected = r"no checkpoint reaches identity 75.0%; the best is 40.0% \(rank 8, step 50\)"
    with pytest.raises(ValueError, match=expected):
        lesson11.choose_setting_reference(runs, 75.0)


# ---- the references are the libraries' own numbers ------------------------------------------------


def test_the_fused_weight_reference_is_what_the_pipelines_fuse_lora_leaves():
    from peft import LoraConfig

    from sdcourse import load_pipeline

    pipe = load_pipeline()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                          adapter_name="star")
    layer = pipe.unet.get_submodule(name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B["star"].weight.normal_(std=0.1, generator=g)
    weight, A, B = (t.detach().clone() for t in (layer.base_layer.weight, layer.lora_A["star"].weight,
                                                 layer.lora_B["star"].weight))
    pipe.fuse_lora(lora_scale=0.8)
    diffusers_fused = layer.base_layer.weight.detach()
    assert torch.allclose(lesson11.fused_weight_reference(weight, A, B, 8.0, 0.8), diffusers_fused, atol=1e-7)
    assert torch.allclose(fused_weight(weight, A, B, 8.0, 0.8), diffusers_fused, atol=1e-6)


def test_the_mixed_update_reference_gives_the_unet_output_under_set_adapters():
    unet = lesson11._small_unet()
    adapters = [lesson11.random_adapter(unet, lesson11.ATTENTION, 4, 1),
                lesson11.random_adapter(unet, ("attn2.to_k", "attn2.to_v"), 2, 2)]
    weights = [0.7, -0.4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = lesson11.peft_unet_with_adapters(adapters, weights)
    latents, t, text = lesson11._unet_inputs(9)
    with torch.no_grad():
        under_set_adapters = mixed(latents, t, encoder_hidden_states=text).sample
    report = lesson11._mix_report(mixed_update)(adapters, weights, 9)
    assert torch.allclose(report["U-Net output"], under_set_adapters, atol=1e-5)
    reference = lesson11._mix_report(lesson11.mixed_update_reference)(adapters, weights, 9)
    assert torch.allclose(reference["U-Net output"], under_set_adapters, atol=1e-5)
    plain = copy.deepcopy(unet)
    with torch.no_grad():
        assert not torch.allclose(plain(latents, t, encoder_hidden_states=text).sample, under_set_adapters,
                                  atol=1e-3), "the adapters should change the output"


def test_the_choose_setting_reference_refuses_an_empty_sweep():
    with pytest.raises(ValueError, match="runs is empty"):
        lesson11.choose_setting_reference([], 75.0)
