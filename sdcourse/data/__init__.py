"""Training data for the course's tiny Stable Diffusion: procedural coloured shapes."""

from .shapes import (
    ALL_SHAPES,
    BACKGROUNDS,
    BASE_SHAPES,
    COLOURS,
    HELD_OUT_SHAPES,
    POSITIONS,
    SIZES,
    Scene,
    ShapeObject,
    evaluation_prompts,
    make_dataset,
    make_scene,
    recaption,
    describe,
    render,
    sample_scene,
    scene_at,
)

__all__ = [
    "ALL_SHAPES", "BACKGROUNDS", "BASE_SHAPES", "COLOURS", "HELD_OUT_SHAPES", "POSITIONS", "SIZES",
    "Scene", "ShapeObject", "evaluation_prompts", "make_dataset", "make_scene", "recaption", "describe", "render",
    "sample_scene", "scene_at",
]
