"""Checks for lesson 07: classifier-free guidance (the formula, one batched U-Net call, negative
prompts, and a simulator of what the scale does)."""

from __future__ import annotations

from functools import lru_cache

import torch

from ..guidance import classifier_free_guidance, guided_noise_prediction
from .core import Case, exercise_check

__all__ = ["StandInUNet", "check_cfg", "check_guided_noise", "check_guidance_contexts", "check_cfg_simulator"]

SOLUTION_NOTEBOOK = "solutions/07_guidance.ipynb"  # hint() points here after the last hint


def _predictions(seed, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ---- warm-up: the guidance formula ---------------------------------------------------------


def cfg_reference(eps_uncond, eps_cond, w):
    # eps = eps_uncond + w (eps_cond - eps_uncond)
    return classifier_free_guidance(eps_uncond, eps_cond, w)


def _cfg_cases():
    eps_uncond, eps_cond = _predictions(0)
    return [
        Case("w = 7.5, Stable Diffusion's default", (eps_uncond, eps_cond, 7.5)),
        Case("w = 1: the prompt's prediction alone", (eps_uncond, eps_cond, 1.0)),
        Case("w = 0: the empty prompt's prediction alone", (eps_uncond, eps_cond, 0.0)),
        Case("w = 15, shape (3, 4, 2, 2)", (*_predictions(1, (3, 4, 2, 2)), 15.0)),
    ]


check_cfg = exercise_check(
    "cfg",
    cfg_reference,
    _cfg_cases,
    mistakes={
        "the conditional and unconditional predictions were swapped: the step goes from eps_uncond towards eps_cond": (
            lambda u, c, w: c + w * (u - c)
        ),
        "the step starts from eps_cond; it starts from eps_uncond, so that w = 1 gives eps_cond": (
            lambda u, c, w: c + w * (c - u)
        ),
        "w scales the conditional prediction; it scales the difference eps_cond - eps_uncond": lambda u, c, w: u + w * c,
        "the difference was scaled, but eps_uncond was not added back": lambda u, c, w: w * (c - u),
        "a weighted average stays between the two predictions; guidance goes past eps_cond": (
            lambda u, c, w: (u + w * c) / (1 + w)
        ),
    },
    hints=[
        "Start from the unconditional prediction and move towards the conditional one. w says how far: "
        "1 reaches it, more goes past it.",
        "The direction is eps_cond - eps_uncond, what the prompt changes in the prediction.",
        "eps_uncond + w * (eps_cond - eps_uncond).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 1: one batched U-Net call ------------------------------------------------------


class StandInUNet:
    """A small, fixed stand-in for a U-Net, for the checks: `model(latents, t, context)`.

    Each sample's output depends only on its own latents, its context and t, as a U-Net's does,
    so one call on a doubled batch gives each half the answer it would get alone. It counts its
    calls, and every call after the first adds 100 to its answer: a function that calls it twice
    for one prediction cannot pass.
    """

    def __init__(self, channels=4, width=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.scale = torch.rand(1, channels, 1, 1, generator=g) + 0.5  # (1, C, 1, 1)
        self.text = torch.randn(width, channels, generator=g)          # context width -> channels
        self.calls = 0

    def __call__(self, latents, t, context):
        self.calls += 1
        if len(context) != len(latents):
            raise ValueError(f"got {len(latents)} latents but {len(context)} contexts: give one context per latent")
        from_text = (context.mean(dim=1) @ self.text)[:, :, None, None]  # (batch, C, 1, 1)
        t = torch.as_tensor(t, dtype=latents.dtype)
        return torch.tanh(self.scale * latents + from_text + t / 1000) + 100.0 * (self.calls - 1)


def guided_noise_reference(unet, latents, t, cond_context, uncond_context, w):
    return guided_noise_prediction(unet, latents, t, cond_context, uncond_context, w)


def _two_calls(unet, latents, t, cond, uncond, w):
    if w <= 1:
        return unet(latents, t, cond)
    eps_cond = unet(latents, t, cond)
    eps_uncond = unet(latents, t, uncond)
    return eps_uncond + w * (eps_cond - eps_uncond)


def _halves_swapped(unet, latents, t, cond, uncond, w):
    if w <= 1:
        return unet(latents, t, cond)
    eps_cond, eps_uncond = unet(torch.cat([latents, latents]), t, torch.cat([uncond, cond])).chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)


def _always_guided(unet, latents, t, cond, uncond, w):
    eps_uncond, eps_cond = unet(torch.cat([latents, latents]), t, torch.cat([uncond, cond])).chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)


def _guided_cases():
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 77, 8, generator=g), torch.randn(2, 77, 8, generator=g)
    return [
        Case("a batch of 2, t = 981, w = 7.5", (StandInUNet(), latents, 981, cond, uncond, 7.5)),
        Case("one latent, t = 500 as a tensor, w = 3", (StandInUNet(seed=1), latents[:1], torch.tensor(500),
                                                        cond[:1], uncond[:1], 3.0)),
        Case("w = 15", (StandInUNet(seed=2), latents, 21, cond, uncond, 15.0)),
        Case("w = 0.5: at or below 1 there is no guidance", (StandInUNet(seed=3), latents, 301, cond, uncond, 0.5)),
    ]


check_guided_noise = exercise_check(
    "guided_noise",
    guided_noise_reference,
    _guided_cases,
    mistakes={
        "the U-Net was called twice: call it once, on the latents twice over with both contexts": _two_calls,
        "the halves were swapped: the first half of the output answers the first half of the batch": _halves_swapped,
        "with a scale of 1 or less there is no guidance: one call with the prompt's context, and its answer": (
            _always_guided
        ),
    },
    hints=[
        "Stack the inputs so that one call answers both questions: the latents twice, with the unconditional "
        "context for the first copy and the prompt's for the second.",
        "torch.cat([latents, latents]) and torch.cat([uncond_context, cond_context]) along the batch; "
        "split the output with .chunk(2) in the same order.",
        "if w <= 1: return unet(latents, t, cond_context). Otherwise eps_uncond, eps_cond = unet(doubled latents, t, "
        "doubled contexts).chunk(2), then eps_uncond + w * (eps_cond - eps_uncond).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: negative prompts ------------------------------------------------------------


@lru_cache(maxsize=1)
def _pipeline():
    from ..pipeline import load_pipeline  # loaded late: the model takes a few seconds

    return load_pipeline()


@torch.no_grad()
def tiny_text_encoder(prompts):
    """The embedded model's text encoder: a list of prompts -> (len(prompts), 77, 32)."""
    from ..tokenizer import tokenize

    pipe = _pipeline()
    return pipe.text_encoder(tokenize(prompts, pipe.tokenizer, warn=False).input_ids).last_hidden_state


def _negatives(prompts, negative_prompt):
    if negative_prompt is None:
        return [""] * len(prompts)
    if isinstance(negative_prompt, str):
        return [negative_prompt] * len(prompts)
    return list(negative_prompt)


@torch.no_grad()
def guidance_contexts_reference(encode, prompts, negative_prompt=None):
    """What diffusers' StableDiffusionPipeline.encode_prompt returns (encode is the same text encoder)."""
    # one negative prompt per prompt: diffusers wants a list for a list of prompts ("" where there is none)
    negatives = _negatives(prompts, negative_prompt)
    cond, uncond = _pipeline().encode_prompt(prompts, "cpu", 1, True, negative_prompt=negatives)
    return cond, uncond


def _ignores_negative(encode, prompts, negative_prompt=None):
    return encode(prompts), encode([""] * len(prompts))


def _zeros_for_none(encode, prompts, negative_prompt=None):
    cond = encode(prompts)
    return cond, torch.zeros_like(cond) if negative_prompt is None else encode(_negatives(prompts, negative_prompt))


def _swapped(encode, prompts, negative_prompt=None):
    return encode(_negatives(prompts, negative_prompt)), encode(prompts)


def _one_negative(encode, prompts, negative_prompt=None):
    negatives = [negative_prompt or ""] if not isinstance(negative_prompt, list) else negative_prompt
    return encode(prompts), encode(negatives)


def _contexts_cases():
    encode = tiny_text_encoder
    return [
        Case("one prompt, no negative prompt", (encode, ["a red circle"])),
        Case("two prompts, one negative prompt for both", (encode, ["a red circle", "a blue square"]),
             {"negative_prompt": "a purple background"}),
        Case("two prompts, a negative prompt each", (encode, ["a red circle", "a blue square"]),
             {"negative_prompt": ["a yellow circle", "a small square"]}),
        Case("two prompts, no negative prompt", (encode, ["a green triangle", "a large white circle"])),
    ]


check_guidance_contexts = exercise_check(
    "guidance_contexts",
    guidance_contexts_reference,
    _contexts_cases,
    mistakes={
        "the negative prompt was ignored: it takes the empty prompt's place": _ignores_negative,
        "without a negative prompt the unconditional context is the empty prompt's embedding, not zeros": (
            _zeros_for_none
        ),
        "the two contexts were swapped: return (the prompts' context, the negative prompts' context)": _swapped,
        "one negative prompt for the whole batch: repeat it, one row per prompt": _one_negative,
    },
    hints=[
        "Both contexts have one row per prompt. The second row set answers 'what should the picture not "
        "be?': the empty prompt when there is no negative prompt.",
        "Make a list of negative prompts as long as prompts: [\"\"] * n for None, [negative_prompt] * n for "
        "one string, the list itself otherwise. Encode both lists.",
        "return encode(prompts), encode(negatives).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: the CFG simulator -----------------------------------------------------------


def _cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def cfg_simulator_reference(scales, eps_uncond, signal):
    eps_cond = eps_uncond + signal  # the prompt adds a known direction
    cosines, norms, first = [], [], None
    for w in scales:
        guided = eps_uncond + w * (eps_cond - eps_uncond)
        cosines.append(_cosine(guided, signal))
        norms.append(float(guided.norm()))
        if first is None and guided.norm() > 3 * eps_cond.norm():
            first = w
    return {"cosine": cosines, "norm": norms, "first_over_3x": first}


def _simulator_variant(cosine_with="signal", dot=False, threshold_of="cond", squared=False, index=False,
                       no_base=False, or_equal=False):
    def simulate(scales, eps_uncond, signal):
        eps_cond = eps_uncond + signal
        cosines, norms, first = [], [], None
        for i, w in enumerate(scales):
            guided = w * signal if no_base else eps_uncond + w * (eps_cond - eps_uncond)
            target = eps_cond if cosine_with == "cond" else signal
            cosines.append(float((guided * target).sum()) if dot else _cosine(guided, target))
            norms.append(float((guided**2).sum()) if squared else float(guided.norm()))
            reference = eps_uncond if threshold_of == "uncond" else eps_cond
            over = guided.norm() >= 3 * reference.norm() if or_equal else guided.norm() > 3 * reference.norm()
            if first is None and over:
                first = i if index else w
        return {"cosine": cosines, "norm": norms, "first_over_3x": first}

    return simulate


SCALES = [1.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0]


def _simulator_cases():
    g = torch.Generator().manual_seed(5)
    eps_uncond = torch.randn(100, generator=g)
    return [
        Case("100 values, a signal a fifth of the noise's size", (SCALES, eps_uncond, 0.2 * torch.randn(100, generator=g))),
        Case("a signal as large as the noise, scales 1 to 7.5 in steps of 0.5",
             ([1 + 0.5 * i for i in range(14)], eps_uncond, torch.randn(100, generator=g))),
        Case("a weak signal: the norm never passes 3x", ([1.0, 2.0, 4.0], eps_uncond, 0.05 * torch.randn(100, generator=g))),
        Case("latent-shaped (4, 8, 8) predictions", (SCALES, torch.randn(4, 8, 8, generator=g),
                                                     0.3 * torch.randn(4, 8, 8, generator=g))),
        Case("values of +-1 whose guided norm is exactly 3x at w = 5 (so not greater)", _exactly_three_times(g)),
    ]


def _exactly_three_times(g):
    """Scales, eps_uncond and signal, shaped (4, 8, 8), for which the guided norm is exactly 3 times the
    conditional one at w = 5: eps_uncond holds 96 values of +-1, and the signal 48 on other places,
    so |eps_cond|^2 = 96 + 48 = 144 and at w = 5 |guided|^2 = 96 + 25 * 48 = 1296 = (3 * 12)^2."""
    places = torch.randperm(256, generator=g)
    signs = torch.randint(0, 2, (256,), generator=g) * 2.0 - 1
    eps_uncond, signal = torch.zeros(256), torch.zeros(256)
    eps_uncond[places[:96]] = signs[places[:96]]
    signal[places[96:144]] = signs[places[96:144]]
    # with 4.5 among the scales, a threshold of 3x the unconditional norm (3 sqrt(96)) is passed first there
    return [1.0, 3.0, 4.5, 5.0, 7.5, 10.0], eps_uncond.reshape(4, 8, 8), signal.reshape(4, 8, 8)


check_cfg_simulator = exercise_check(
    "cfg_simulator",
    cfg_simulator_reference,
    _simulator_cases,
    mistakes={
        "the cosine was taken with eps_cond; the question is how well the result points along the signal": (
            _simulator_variant(cosine_with="cond")
        ),
        "that is the dot product: a cosine divides it by both norms": _simulator_variant(dot=True),
        "the threshold was 3x the unconditional norm; it is 3x the conditional prediction's norm": (
            _simulator_variant(threshold_of="uncond")
        ),
        "the norm was squared: the L2 norm is the square root of the sum of squares": _simulator_variant(squared=True),
        "first_over_3x is the scale itself, not its position in scales": _simulator_variant(index=True),
        "the guided prediction lost eps_uncond: it is eps_uncond + w * signal": _simulator_variant(no_base=True),
        "a norm equal to 3x counted: first_over_3x asks for a norm greater than 3x, not equal to it": (
            _simulator_variant(or_equal=True)
        ),
    },
    hints=[
        "The conditional prediction is eps_uncond + signal, so the difference guidance scales is exactly the "
        "signal. Build the guided prediction for each scale first; the three answers are measurements of it.",
        "cosine(a, b) = (a * b).sum() / (a.norm() * b.norm()), over all values, whatever the shape. The norm is "
        "guided.norm().",
        "For each w: guided = eps_uncond + w * signal. Keep the first w (not its index) for which guided.norm() > "
        "3 * eps_cond.norm(), with eps_cond = eps_uncond + signal; None if there is none. Return floats in the "
        "two lists.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
