"""Measuring the tiny Stable Diffusion: does the picture show what the prompt asked for?

A small CNN (`ShapeClassifier`, the judge) names the colour and the shape of the object in a
64x64 picture (star included). It is trained on generator pictures, so it is a fair judge of
generated ones. The shipped weights (`CLASSIFIER_PATH`) are the fixed judge: every function
here uses them unless given another classifier, so a model measured before and after a
rebuild is judged the same way. A build trains a classifier of its own into its run folder
(a figure about the recipe, `sdcourse.training.judge`); it never replaces the fixed judge.

The measures, each with a check of its own accuracy on clean generator pictures:

- `prompt_adherence`: colour and shape of single-object prompts (the classifier), and size
  where the prompt names one (`measure_size`, no classifier);
- `position_adherence`: is the object where the prompt says (`locate`, no classifier);
- `two_object_adherence`: are both objects of "a red circle and a blue square" right
  (`split_objects`, then the classifier on each);
- `vae_round_trip`: does the judge still name the shape after the VAE's encode and decode,
  per shape and size; and PSNR.

    >>> from sdcourse import load_pipeline
    >>> from sdcourse.evaluate import prompt_adherence
    >>> pipe = load_pipeline()
    >>> prompt_adherence(pipe, ["a red circle", "a blue square"], seeds=[0, 1])
    {'colour_correct': ..., 'shape_correct': ..., 'both_correct': ..., 'diversity': ..., 'size_correct': ..., ...}

Pictures may be given as a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that
shape (what the pipeline returns with output_type="np"), or a list of PIL images; anything
else is refused with a ValueError.

One module per concern: `pictures` (pictures in), `judge`, `objects` (finding objects without
the judge), `scoring`, `prompts`, `adherence` (generating and judging), `roundtrip` (the VAE),
`runs` (a build's outputs); `python -m sdcourse.evaluate` reports the judge's accuracy.
"""

from .adherence import position_adherence, prompt_adherence, two_object_adherence
from .judge import (
    CLASSIFIER_FILE,
    CLASSIFIER_PATH,
    COLOUR_NAMES,
    SHAPE_NAMES,
    ShapeClassifier,
    classifier_accuracy,
    classify,
    load_classifier,
    save_classifier,
)
from .objects import (
    FOREGROUND_THRESHOLD,
    MIN_OBJECT_PIXELS,
    POSITION_NAMES,
    OBJECT_COLOURS,
    SIZE_THRESHOLD,
    background_colour,
    classify_objects,
    foreground_mask,
    locate,
    measure_size,
    object_colours,
    split_objects,
)
from .pictures import ALLOWED_PICTURES, SIZE, as_pictures
from .prompts import (
    SIZE_NAMES,
    parse_position,
    parse_prompt,
    parse_size,
    parse_two_objects,
    position_prompts,
    two_object_prompts,
)
from .roundtrip import psnr, round_trip_pictures, vae_round_trip
from .runs import clip_image_folder
from .scoring import (
    colour_measure_accuracy,
    position_measure_accuracy,
    score_positions,
    score_sizes,
    score_two_objects,
    size_measure_accuracy,
    two_object_measure_accuracy,
)

__all__ = [
    "ALLOWED_PICTURES", "CLASSIFIER_FILE", "CLASSIFIER_PATH", "COLOUR_NAMES", "FOREGROUND_THRESHOLD",
    "MIN_OBJECT_PIXELS", "OBJECT_COLOURS", "POSITION_NAMES", "SHAPE_NAMES", "SIZE", "SIZE_NAMES", "SIZE_THRESHOLD", "ShapeClassifier",
    "as_pictures", "background_colour", "classifier_accuracy", "classify", "classify_objects",
    "clip_image_folder", "colour_measure_accuracy", "foreground_mask", "load_classifier", "locate", "measure_size", "object_colours", "parse_position",
    "parse_prompt", "parse_size", "parse_two_objects", "position_adherence", "position_measure_accuracy",
    "position_prompts", "prompt_adherence", "psnr", "round_trip_pictures", "save_classifier", "score_positions",
    "score_sizes", "score_two_objects", "size_measure_accuracy", "split_objects", "two_object_adherence",
    "two_object_measure_accuracy", "two_object_prompts", "vae_round_trip",
]
