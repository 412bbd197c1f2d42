"""The evaluator: its classifier is accurate, and prompt adherence is measured sensibly."""

import numpy as np
import pytest

from sdcourse.data import shapes
from sdcourse.evaluate import classifier_accuracy, classify, parse_prompt, prompt_adherence

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classifier_is_accurate_on_fresh_pictures():
    acc = classifier_accuracy(n=300, seed=77)
    assert acc["colour"] >= 97 and acc["shape"] >= 97


def test_classifier_knows_the_star():
    scene = shapes.make_scene([{"colour": "purple", "shape": "star"}], background="white")
    guess = classify(shapes.render(scene)[None])[0]
    assert guess == {"colour": "purple", "shape": "star"}


def test_classify_accepts_uint8_and_float():
    images, _, _ = shapes.make_dataset(4, seed=1, n_objects=1)
    assert classify(images) == classify(images.astype(np.float32) / 255)


def test_parse_prompt():
    assert parse_prompt("a small blue square in the top left") == {"colour": "blue", "shape": "square"}
    with pytest.raises(ValueError, match="prompt='a cat'"):
        parse_prompt("a cat")


def test_prompt_adherence_runs_on_the_embedded_model():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    result = prompt_adherence(pipe, ["a red circle", {"prompt": "a blue square", "colour": "blue",
                                                      "shape": "square"}],
                              seeds=[0, 1], guidance_scale=7.5, num_inference_steps=5)
    assert result["n_images"] == 4
    for key in ("colour_correct", "shape_correct", "both_correct"):
        assert 0 <= result[key] <= 100
    assert result["both_correct"] <= min(result["colour_correct"], result["shape_correct"])
    assert result["diversity"] > 0
