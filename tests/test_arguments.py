"""The one module that checks arguments: values pass through as plain types, mistakes name themselves."""

import math

import numpy as np
import pytest
import torch

from sdcourse import arguments


def test_whole_numbers_of_any_integer_type_come_back_as_int():
    for value in (3, np.int64(3), torch.tensor(3)):
        number = arguments.whole_number("steps", value, minimum=1)
        assert number == 3 and type(number) is int


@pytest.mark.parametrize("value, message", [
    (2.5, "steps must be an integer, got 2.5"),
    ("3", "steps must be an integer, got '3'"),
    (True, "steps must be an integer, got True"),
    (0, "steps must be at least 1, got 0"),
])
def test_whole_number_mistakes_name_the_argument_and_the_value(value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        arguments.whole_number("steps", value, minimum=1)


def test_whole_number_bounds_on_both_sides_are_said_together():
    assert arguments.whole_number("rank", 32, 1, 32) == 32
    with pytest.raises(ValueError, match=r"^rank must be from 1 to 32, got 33$"):
        arguments.whole_number("rank", 33, 1, 32)
    with pytest.raises(ValueError, match=r"^rank must be at most 8, got 9$"):
        arguments.whole_number("rank", 9, maximum=8)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, "0.5", True, None])
def test_probabilities_outside_zero_one_are_refused(value):
    with pytest.raises(ValueError, match=r"^eta must be a number in \[0, 1\] \(0: DDIM\), got "):
        arguments.probability("eta", value, meaning="0: DDIM")


def test_a_probability_below_one_refuses_one_and_says_so():
    assert arguments.probability("share", 0.999, below_one=True) == 0.999
    with pytest.raises(ValueError, match=r"share must be a number in \[0, 1\), got 1"):
        arguments.probability("share", 1, below_one=True)


@pytest.mark.parametrize("low, high, low_open, high_open, words", [
    (0, math.inf, False, False, "a number >= 0"),
    (0, math.inf, True, False, "a number above 0"),
    (-math.inf, 2, False, True, "a number below 2"),
    (0.5, 2, True, False, "a number in (0.5, 2]"),
    (-math.inf, math.inf, False, False, "a finite number"),
])
def test_intervals_read_as_words(low, high, low_open, high_open, words):
    assert arguments.describe_interval(low, high, low_open, high_open) == words


def test_an_infinite_number_is_refused_even_without_an_upper_bound():
    assert arguments.real_number("guidance_scale", np.float32(7.5), 0) == 7.5
    with pytest.raises(ValueError, match=r"guidance_scale must be a number >= 0, got inf"):
        arguments.real_number("guidance_scale", math.inf, 0)


def test_choices_list_what_is_allowed():
    assert arguments.choice("sampler", "ddim", {"ddim": 1, "euler": 2}) == "ddim"
    with pytest.raises(ValueError, match=r"^sampler='pndm' is not allowed; choose one of 'ddim', 'euler'$"):
        arguments.choice("sampler", "pndm", {"ddim": 1, "euler": 2})
    with pytest.raises(ValueError, match=r"sampler=\['ddim'\] is not allowed"):
        arguments.choice("sampler", ["ddim"], {"ddim": 1})


def test_flags_must_be_booleans():
    assert arguments.flag("full_unet", False) is False
    with pytest.raises(ValueError, match=r"^full_unet must be True or False, got 1$"):
        arguments.flag("full_unet", 1)
