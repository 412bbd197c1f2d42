"""Every exercise check can fail: on the blank stub, and on each plausible mistake it lists.
Every exercise has hints, and `hint()` shows them one at a time."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sdcourse.checks as checks
from sdcourse.checks import ALL_CHECKS, Case, core, exercise_check, hint, run_check, values_close

ROOT = Path(__file__).resolve().parents[1]


def stub(*args, **kwargs):
    raise NotImplementedError("fill in this part")


def test_there_are_checks():
    assert ALL_CHECKS, "no exercise checks are registered"


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_check_fails_on_the_blank_stub(name):
    result = ALL_CHECKS[name](stub, verbose=False)
    assert not result
    assert "not filled in yet" in result.report
    assert "to do: fill in this part" in result.report, "the report shows the stub's message"
    assert "hint()" in result.report, "the report says how to get a hint"


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_check_has_two_to_four_hints(name):
    hints = ALL_CHECKS[name].hints
    assert 2 <= len(hints) <= 4, "a nudge first, something close to the answer last"
    assert len(set(hints)) == len(hints), "the same hint twice"


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_check_names_the_solution_notebook_that_uses_it(name):
    solution = ROOT / ALL_CHECKS[name].solution
    assert solution.is_file(), f"{name}: no {solution.relative_to(ROOT)}"
    assert f"check_{name}(" in solution.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name, cause", [(name, cause) for name, check in sorted(ALL_CHECKS.items()) for cause in check.mistakes]
)
def test_check_fails_on_each_mistake_and_names_it(name, cause):
    check = ALL_CHECKS[name]
    result = check(check.mistakes[cause], verbose=False)
    assert not result, f"{name} passes the mistake: {cause}"
    assert "likely cause: " + cause in result.report


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_check_names_at_least_three_kinds_of_wrong_answer(name):
    causes = ALL_CHECKS[name].mistakes
    assert len(causes) >= 3, f"{name} names {len(causes)} wrong answers ({', '.join(causes)}); give it at least 3"


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_check_is_exported_under_its_name(name):
    assert getattr(checks, "check_" + name) is ALL_CHECKS[name]


def test_report_shows_case_expected_and_got(capsys):
    cases = [Case("x = 2", (2,)), Case("x = 4", (4,))]
    result = run_check("square", lambda x: x * 3 if x == 4 else x * x, lambda x: x * x, cases, {"tripled": lambda x: 3 * x})
    printed = capsys.readouterr().out
    assert not result
    assert "'x = 4'" in printed and "expected: 16" in printed and "got:      12" in printed
    assert "likely cause: tripled" in printed


def test_a_crash_in_the_learner_code_is_reported_not_raised(capsys):
    result = run_check("f", lambda x: 1 / 0, lambda x: x, [Case("x = 1", (1,))], {})
    assert not result and "ZeroDivisionError" in capsys.readouterr().out


def test_learner_code_cannot_change_the_reference_inputs():
    def in_place(x):
        x.mul_(0)
        return x

    reference_inputs = []
    result = run_check("f", in_place, lambda x: reference_inputs.append(x.clone()) or x, [Case("ones", (torch.ones(3),))], {}, verbose=False)
    assert not result
    assert torch.equal(reference_inputs[0], torch.ones(3))


@pytest.mark.parametrize(
    "got, expected, same",
    [
        (torch.ones(3), torch.ones(3) + 1e-7, True),
        (torch.ones(3), torch.ones(4), False),
        ({"a": 1.0, "b": [1, 2]}, {"a": 1.0, "b": [1, 2]}, True),
        ({"a": 1.0}, {"a": 1.0, "b": 2}, False),
        ([{"t": 259}], [{"t": 260}], False),
        ("linear", "linear", True),
        (None, 1.0, False),
    ],
)
def test_values_close(got, expected, same):
    assert values_close(got, expected) is same


def test_report_points_at_the_first_differing_field(capsys):
    reference = lambda: {"total": 10, "levels": [{"channels": 64}, {"channels": 128}]}  # noqa: E731
    wrong = lambda: {"total": 10, "levels": [{"channels": 64}, {"channels": 256}]}  # noqa: E731
    run_check("analyze", wrong, reference, [Case("two levels")], {})
    printed = capsys.readouterr().out
    assert "first difference at ['levels'][1]['channels']" in printed
    assert "expected: 128" in printed and "got:      256" in printed


def test_a_reference_that_raises_expects_the_learner_to_raise_too(capsys):
    def reference(size):
        if size % 8:
            raise ValueError(f"size={size} is not a multiple of 8")
        return size // 8

    cases = [Case("64", (64,)), Case("65", (65,))]
    assert run_check("latent_side", reference, reference, cases, {}, verbose=False)
    result = run_check("latent_side", lambda size: size // 8, reference, cases, {"rounded down": lambda size: size // 8})
    printed = capsys.readouterr().out
    assert not result
    assert "expected: raises ValueError" in printed and "got:      8" in printed and "likely cause: rounded down" in printed


@pytest.fixture
def demo_check(monkeypatch):
    """A check registered on its own, with fresh hint state: the course's checks are left alone."""
    monkeypatch.setattr(core, "ALL_CHECKS", {})
    monkeypatch.setattr(core, "_hints_shown", {})
    monkeypatch.setattr(core, "_last_checked", None)
    return exercise_check(
        "double",
        lambda x: 2 * x,
        lambda: [Case("x = 3", (3,))],
        {"tripled": lambda x: 3 * x},
        hints=["Think of adding x to itself.", "Return x + x."],
        solution="solutions/99_demo.ipynb",
    )


def test_hint_walks_the_hints_in_order_and_stops_after_the_last(demo_check, capsys):
    hint()
    first = capsys.readouterr().out
    assert "No check has run yet" in first and "Exercises: double" in first

    def blank(x):
        raise NotImplementedError("Return x, doubled.")

    demo_check(blank)
    report = capsys.readouterr().out
    assert "not filled in yet" in report and "to do: Return x, doubled." in report and "hint()" in report

    hint()
    assert capsys.readouterr().out.strip() == "💡 double, hint 1 of 2: Think of adding x to itself."
    hint()
    assert capsys.readouterr().out.strip() == "💡 double, hint 2 of 2: Return x + x."
    for _ in range(2):
        hint()
        last = capsys.readouterr().out
        assert "last hint" in last and "solutions/99_demo.ipynb" in last


def test_hint_by_name_and_for_an_unknown_name(demo_check, capsys):
    hint("double")
    assert "hint 1 of 2" in capsys.readouterr().out
    hint("triple")
    unknown = capsys.readouterr().out
    assert "no exercise named 'triple'" in unknown and "Exercises: double" in unknown


@pytest.mark.parametrize("hints", [[], "Return x + x.", [""]])
def test_a_check_needs_hints(monkeypatch, hints):
    monkeypatch.setattr(core, "ALL_CHECKS", {})
    with pytest.raises(ValueError, match="hints"):
        exercise_check("double", lambda x: 2 * x, lambda: [], {"tripled": lambda x: 3 * x}, hints=hints, solution="")


# ---- shape and dtype differences are named as such ------------------------------------------------


def test_a_wrong_dtype_is_reported_as_a_dtype(capsys):
    from sdcourse.checks import check_to_uint8_image

    def as_float(x):  # the right values, left as floats
        return ((x.clamp(-1, 1) + 1) / 2 * 255).round().permute(1, 2, 0)

    assert not check_to_uint8_image(as_float)
    report = capsys.readouterr().out
    assert "the dtype is float32; the exercise asks for uint8" in report
    assert "float32: [" in report and "uint8: [" in report, "both dtypes are shown beside the values"


def test_a_wrong_shape_without_a_known_cause_is_reported_as_a_shape(capsys):
    from sdcourse.checks import check_to_uint8_image

    def flattened(x):
        return ((x.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0).reshape(-1)

    assert not check_to_uint8_image(flattened)
    assert "likely cause: the shape is (3,); the exercise asks for (1, 1, 3)" in capsys.readouterr().out


def test_float_widths_are_not_a_dtype_problem():
    from sdcourse.checks.core import dtype_problem

    assert dtype_problem(torch.zeros(2, dtype=torch.float64), torch.zeros(2)) is None
    assert dtype_problem(np.zeros(2, np.float32), torch.zeros(2, dtype=torch.float16)) is None
    assert "int64" in dtype_problem(torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.uint8))


# ---- the general probes name a wrong result that no listed mistake explains ----------------------


def add_noise(x0, noise, alpha_bar_t):
    return alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise


def scaled_in_place(x0, noise, alpha_bar_t):
    x0 *= alpha_bar_t.sqrt()
    return x0 + (1 - alpha_bar_t).sqrt() * noise


def noise_scaled_in_place(x0, noise, alpha_bar_t):
    noise.mul_(2)  # changes the caller's noise, and doubles the noise term
    return add_noise(x0, noise, alpha_bar_t)


PROBED = [
    ("a constant factor", lambda *a: 2.5 * add_noise(*a), "off by a constant factor: your result is 2.5 times"),
    ("the sign", lambda *a: -add_noise(*a), "the sign is wrong"),
    ("transposed", lambda *a: add_noise(*a).transpose(-1, -2), "transposed: axes 2 and 3 of your result are swapped"),
    ("axes reordered", lambda *a: add_noise(*a).permute(0, 2, 3, 1), "the axes are in another order"),
    ("shifted one place", lambda *a: add_noise(*a).roll(1, dims=-1), "an index one off: your values are shifted"),
    ("a constant offset", lambda *a: add_noise(*a) + 0.25, "off by a constant: every value is +0.25"),
    ("an integer dtype", lambda *a: add_noise(*a).long(), "the dtype is int64; the exercise asks for float32"),
    ("another device", lambda *a: add_noise(*a).to("meta"),
     "the result is on the meta device; the exercise asks for cpu"),
    ("all zeros", lambda x0, *a: torch.zeros_like(x0), "the result is all zeros"),
    ("changed in place, right result", scaled_in_place,
     "the result is right, but your function changed its input `x0`"),
    ("changed in place, wrong result", noise_scaled_in_place, "your function changed its input `noise` in place"),
]


@pytest.mark.parametrize("label, answer, words", PROBED, ids=[p[0] for p in PROBED])
def test_a_probe_names_a_wrong_answer_built_its_way(label, answer, words):
    from sdcourse.checks import check_add_noise

    assert check_add_noise(add_noise, verbose=False)
    result = check_add_noise(answer, verbose=False)
    assert not result and words in result.report, result.report
    assert "none of the usual mistakes" not in result.report


def test_a_count_one_off_is_named():
    result = run_check("count", lambda n: n + 1, lambda n: n, [Case("n = 7", (7,))], {}, verbose=False)
    assert "one more than expected: an index or a count off by one?" in result.report


@pytest.mark.parametrize("got, expected", [
    (torch.ones(4), torch.zeros(4)),                       # nothing to scale: no factor for an all-zero expectation
    (torch.full((4,), 3.0), torch.full((4,), 2.0)),        # every value the same: a factor would prove nothing
    (0.3, 0.2),                                            # one number: a factor or an offset would prove nothing
    (1.5, 0.5),
    (torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0])),  # differs in one place only
    (torch.randn(5, generator=torch.Generator().manual_seed(0)),   # unrelated values
     torch.randn(5, generator=torch.Generator().manual_seed(1))),
    (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.0, 5.0]])),
])
def test_the_probes_claim_nothing_they_cannot_show(got, expected):
    assert core.probe(got, expected) is None


@pytest.mark.parametrize("name", sorted(ALL_CHECKS))
def test_the_reference_passes_and_no_probe_speaks_on_its_results(name):
    check = ALL_CHECKS[name]
    assert check(check.reference, verbose=False), f"{name} fails its own reference"
    reference = check.prepare(check.reference) if check.prepare else check.reference
    result = core._call(reference, check.cases()[0])
    assert core.probe(result, result) is None


def test_digits_that_print_the_same_show_the_first_element_that_differs():
    expected = torch.arange(12.0).reshape(3, 4)
    got = expected.clone()
    got[2, 1] = 99.0
    result = run_check("f", lambda: got, lambda: expected, [Case("one value off")], {}, verbose=False)
    assert "first element that differs at index (2, 1): expected 9, got 99" in result.report


def test_digits_that_differ_already_need_no_extra_line():
    result = run_check("f", lambda: torch.ones(3), lambda: torch.zeros(3), [Case("all off")], {}, verbose=False)
    assert "first element that differs" not in result.report


def test_the_per_row_alpha_bar_mistake_in_gaussian_eps_shows_the_differing_element():
    from sdcourse.checks import check_gaussian_eps

    def first_row_only(x_t, alpha_bar, mu, s):  # the first row's alpha-bar used for every row
        a = alpha_bar.flatten()[0]
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s**2 + 1 - a)

    report = check_gaussian_eps(first_row_only, verbose=False).report
    assert "one alpha_bar per row" in report and "first element that differs at index (1, 0)" in report


def test_guidance_contexts_shows_the_first_element_past_the_start_token():
    from sdcourse.checks import check_guidance_contexts

    def reversed_negatives(encode, prompts, negative_prompt=None):
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        negatives = [""] * len(prompts) if negative_prompt is None else list(reversed(negatives))
        return encode(prompts), encode(negatives)

    report = check_guidance_contexts(reversed_negatives, verbose=False).report
    lines = report.splitlines()
    expected, got = (next(line for line in lines if line.strip().startswith(w)) for w in ("expected:", "got:"))
    assert expected.split(":", 1)[1].strip() == got.split(":", 1)[1].strip(), "the start-token row prints the same"
    assert re.search(r"first element that differs at index \(0, [1-9]\d*, \d+\): expected \S+, got \S+", report), report


# ---- four wrong answers that passed: each is the worked solution with one edit ---------------------


def solution_code(notebook, start, edit=None):
    """The code cell of solutions/<notebook> that contains `start`, run with `edit` = (old, new) applied."""
    import json
    import math

    from torch import nn

    from sdcourse.guidance import classifier_free_guidance

    cells = json.loads((ROOT / "solutions" / notebook).read_text(encoding="utf-8"))["cells"]
    code = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and start in "".join(c["source"]))
    if edit:
        assert edit[0] in code, f"the edit no longer applies to {notebook}: {edit[0]!r}"
        code = code.replace(*edit)
    namespace = {"torch": torch, "nn": nn, "math": math, "np": np, "cfg": classifier_free_guidance}
    exec(code, namespace)  # noqa: S102 (the course's own solution code)
    return namespace


WRONG_ANSWERS = [
    ("decode_latents", "08_pipeline.ipynb", "def decode_latents", (".round().to(torch.uint8)", ".to(torch.uint8)"),
     "the values were truncated instead of rounded"),
    ("cfg_simulator", "07_guidance.ipynb", "def cfg_simulator", ("guided.norm() > 3", "guided.norm() >= 3"),
     "a norm equal to 3x counted"),
    ("inject", "10_lora_from_scratch.ipynb", "def inject(", ("names = sorted(name for", "names = list(name for"),
     "the names are in the model's order"),
    ("lora_linear", "10_lora_from_scratch.ipynb", "class LoRALinear",
     ("nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))", "nn.init.normal_(self.lora_A)"),
     "A does not start as a Linear layer's weight does"),
]


@pytest.mark.parametrize("name, notebook, start, edit, cause", WRONG_ANSWERS, ids=[w[0] for w in WRONG_ANSWERS])
def test_the_worked_solution_passes_and_the_edited_one_fails(name, notebook, start, edit, cause):
    fn_name = {"lora_linear": "LoRALinear"}.get(name, name)
    check = ALL_CHECKS[name]
    assert check(solution_code(notebook, start)[fn_name], verbose=False)
    result = check(solution_code(notebook, start, edit)[fn_name], verbose=False)
    assert not result, f"{name} passes the wrong answer {edit[1]!r}"
    assert "likely cause: " + cause in result.report


# ---- wrong answers a learner writes, beyond each catalogue, named by the probes ---------------------


def kl_with_the_sign_lost(mean, logvar):
    logvar = logvar.clamp(-30, 20)
    return 0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(dim=(1, 2, 3))


def psnr_without_the_inverse(reconstruction, original):
    return 10 * torch.log10(((reconstruction - original) / 2).pow(2).flatten(1).mean(1))


def bins_counted_from_one(timesteps, losses, num_bins, T=1000):
    bins = timesteps * num_bins // T + 1
    return [float(losses[bins == k].mean()) if (bins == k).any() else float("nan") for k in range(num_bins)]


def embedding_transposed(t, dim, flip_sin_to_cos=True, freq_shift=0):
    return ALL_CHECKS["timestep_embedding"].reference(t, dim, flip_sin_to_cos, freq_shift).T


def uint8_changing_its_input(x):
    x.clamp_(-1, 1).add_(1).div_(2).mul_(255)
    return x.round().to(torch.uint8).permute(1, 2, 0)


BEYOND_THE_CATALOGUE = [
    ("kl_divergence", kl_with_the_sign_lost, "the sign is wrong"),
    ("reconstruction_psnr", psnr_without_the_inverse, "the sign is wrong"),
    ("loss_by_timestep_bin", bins_counted_from_one, "an index one off"),
    ("timestep_embedding", embedding_transposed, "transposed: axes 0 and 1"),
    ("to_uint8_image", uint8_changing_its_input, "changed its input `x` in place"),
]


@pytest.mark.parametrize("name, answer, words", BEYOND_THE_CATALOGUE, ids=[b[1].__name__ for b in BEYOND_THE_CATALOGUE])
def test_a_wrong_answer_beyond_the_catalogue_is_named(name, answer, words):
    result = ALL_CHECKS[name](answer, verbose=False)
    assert not result and words in result.report, result.report
