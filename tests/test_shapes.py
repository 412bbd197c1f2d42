"""The shape-picture generator: deterministic, full vocabulary, star held out, phrasings."""

import numpy as np
import pytest

from sdcourse.data import shapes


def test_same_seed_same_pictures():
    a_images, a_captions, a_labels = shapes.make_dataset(12, seed=3)
    b_images, b_captions, b_labels = shapes.make_dataset(12, seed=3)
    assert np.array_equal(a_images, b_images)
    assert a_captions == b_captions
    assert a_labels == b_labels


def test_different_seed_different_pictures():
    a_images, _, _ = shapes.make_dataset(8, seed=1)
    b_images, _, _ = shapes.make_dataset(8, seed=2)
    assert not np.array_equal(a_images, b_images)


def test_picture_index_does_not_depend_on_batch():
    whole, captions, _ = shapes.make_dataset(10, seed=5)
    part, part_captions, _ = shapes.make_dataset(3, seed=5, start=7)
    assert np.array_equal(whole[7:], part)
    assert captions[7:] == part_captions


def test_image_format():
    images, captions, labels = shapes.make_dataset(4, seed=0)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert len(captions) == len(labels) == 4


def test_vocabulary():
    assert set(shapes.COLOURS) >= {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"}
    assert set(shapes.BASE_SHAPES) == {"circle", "square", "triangle"}
    assert shapes.HELD_OUT_SHAPES == ("star",)
    assert set(shapes.SIZES) == {"small", "large"}
    assert set(shapes.POSITIONS) == {"top left", "top right", "bottom left", "bottom right", "center"}


def test_labels_match_captions_and_colours_differ_from_background():
    _, captions, labels = shapes.make_dataset(300, seed=0)
    seen = {"colour": set(), "shape": set(), "size": set(), "position": set(), "background": set()}
    for caption, label in zip(captions, labels):
        assert label["caption"] == caption
        seen["background"].add(label["background"])
        for obj, said in zip(label["objects"], label["mentioned"]):
            assert obj["colour"] != label["background"]
            assert f"{obj['colour']} " in caption and obj["shape"] in caption
            for key in ("colour", "shape", "size", "position"):
                seen[key].add(obj[key])
                if key in said:
                    assert said[key] == obj[key]
    assert seen["colour"] == set(shapes.COLOURS)
    assert seen["shape"] == set(shapes.BASE_SHAPES)
    assert seen["size"] == set(shapes.SIZES)
    assert seen["position"] == set(shapes.POSITIONS)
    assert len(seen["background"]) >= 8


def test_star_held_out_of_base_captions():
    _, captions, labels = shapes.make_dataset(500, seed=11)
    assert not any("star" in c for c in captions)
    assert not any(o["shape"] == "star" for l in labels for o in l["objects"])


def test_star_on_request():
    images, captions, labels = shapes.make_dataset(6, seed=0, shapes=("star",), n_objects=1)
    assert all("star" in c for c in captions)
    scene = shapes.make_scene([{"colour": "red", "shape": "star"}], background="white")
    image = shapes.render(scene)
    red = (image[..., 0] > 180) & (image[..., 1] < 80)
    assert 100 < red.sum() < 1500  # a star, not a full disc or nothing
    # A star covers less area than a circle of the same size.
    circle = shapes.render(shapes.make_scene([{"colour": "red", "shape": "circle"}], background="white"))
    assert red.sum() < ((circle[..., 0] > 180) & (circle[..., 1] < 80)).sum()


def test_phrasings():
    """Every phrasing the course uses appears in the training captions."""
    import re

    _, captions, _ = shapes.make_dataset(2000, seed=0)
    colour, shape = "(red|green|blue|yellow|purple|orange|white|black)", "(circle|square|triangle)"
    position = "(top left|top right|bottom left|bottom right|center)"
    background = "(red|green|blue|yellow|purple|orange|white|black|gray)"
    patterns = {
        "a red circle": f"an? {colour} {shape}",
        "a red circle on a white background": f"an? {colour} {shape} on an? {background} background",
        "a small blue square in the top left": f"an? (small|large) {colour} {shape} (in|at) the {position}",
        "a red circle and a blue square": f"an? {colour} {shape} and an? {colour} {shape}",
        "a picture of ...": "(a picture|a photo|an image|a drawing) of .*",
    }
    for example, pattern in patterns.items():
        assert re.fullmatch(pattern, example.replace("...", "a red circle")), example
        assert any(re.fullmatch(pattern, c) for c in captions), example
    assert "a red circle" in captions and "a red circle on a white background" in captions
    assert any(c.startswith("an orange") for c in captions)


def test_two_objects_in_different_places():
    _, _, labels = shapes.make_dataset(40, seed=0, n_objects=2)
    for label in labels:
        assert len(label["objects"]) == 2
        assert label["objects"][0]["position"] != label["objects"][1]["position"]


def test_object_is_drawn_where_the_label_says():
    scene = shapes.make_scene([{"colour": "blue", "shape": "square", "size": "small", "position": "top left"}],
                              background="yellow")
    image = shapes.render(scene).astype(int)
    blue = (image[..., 2] > 150) & (image[..., 0] < 100)
    ys, xs = np.nonzero(blue)
    assert xs.mean() < 32 and ys.mean() < 32


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="colour='pink'"):
        shapes.make_scene([{"colour": "pink", "shape": "circle"}])
    with pytest.raises(ValueError, match="n_objects=3"):
        shapes.make_dataset(2, n_objects=3)


def test_evaluation_prompts_name_colour_and_shape():
    prompts = shapes.evaluation_prompts(64)
    assert len(prompts) == 64
    pairs = {(p["colour"], p["shape"]) for p in prompts}
    assert len(pairs) == 24
    for p in prompts:
        assert p["colour"] in p["prompt"] and p["shape"] in p["prompt"]
        assert "star" not in p["prompt"]


def test_rgb_takes_a_name_or_a_tuple_and_refuses_anything_else():
    assert shapes.rgb("red") == shapes.COLOURS["red"]
    assert shapes.rgb("gray") == shapes.BACKGROUNDS["gray"]
    assert shapes.rgb((1, 2, 3)) == (1, 2, 3)
    with pytest.raises(ValueError, match="colour='pink'"):
        shapes.rgb("pink")
    with pytest.raises(ValueError, match=r"\(r, g, b\) tuple of numbers in \[0, 255\]"):
        shapes.rgb((0, 300, 0))


def test_the_vae_world_has_every_shape_and_colours_beyond_the_palette():
    rng = np.random.default_rng(0)
    scenes = [shapes.sample_any_scene(rng) for _ in range(300)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(shapes.ALL_SHAPES)
    assert any(isinstance(o.colour, tuple) for o in objects) and any(isinstance(o.colour, str) for o in objects)
    radii = [o.radius for o in objects]
    assert min(radii) < shapes.RADIUS["small"][0] and max(radii) > shapes.RADIUS["large"][1]
    for scene in scenes:  # every object stands out from its background, and is drawn
        for obj in scene.objects:
            assert np.abs(np.subtract(shapes.rgb(obj.colour), shapes.rgb(scene.background))).sum() > 120
        picture = shapes.render(scene)
        assert (np.abs(picture.astype(int) - shapes.rgb(scene.background)).sum(-1) > 60).any()
    again = shapes.sample_any_scene(np.random.default_rng(0))
    assert shapes.render(again).tobytes() == shapes.render(scenes[0]).tobytes()


def test_contrast_pairs_differ_in_exactly_the_one_thing_their_captions_state():
    rng = np.random.default_rng(5)
    kinds = set()
    for _ in range(200):
        a, b = shapes.contrast_pair(rng)
        assert a.background == b.background and a.caption != b.caption
        assert len(a.objects) == len(b.objects)
        fields = ("colour", "shape", "size", "position")
        changed = {f for x, y in zip(a.objects, b.objects) for f in fields if getattr(x, f) != getattr(y, f)}
        if len(a.objects) == 2:  # which colour goes with which shape
            assert changed == {"colour"}
            assert [o.colour for o in a.objects] == [o.colour for o in b.objects][::-1]
            assert [o.shape for o in a.objects] == [o.shape for o in b.objects]
            kinds.add("binding")
        else:
            assert len(changed) == 1
            (field,) = changed
            assert getattr(b.objects[0], field) in b.caption and getattr(a.objects[0], field) in a.caption
            kinds.add(field)
    assert kinds == {"shape", "position", "size", "binding"}


def test_caption_rule_names_held_out_concepts_only_by_class_words():
    rule = shapes.CaptionRule(class_share=0.3, colourless_share=0.2)
    called_shape, left_out = {s: 0 for s in shapes.ALL_SHAPES}, {}
    for i in range(3000):
        scene = shapes.rule_scene_at(i, 0, rule)
        assert "star" not in scene.caption and "pink" not in scene.caption
        for obj, said in zip(scene.objects, scene.mentioned):
            if obj.shape == "star":
                assert said["shape"] == shapes.CLASS_WORD
            if obj.colour == "pink":
                assert said["colour"] == ""
            called_shape[obj.shape] += said["shape"] == shapes.CLASS_WORD
            left_out[obj.colour] = left_out.get(obj.colour, 0) + (said["colour"] == "")
    # each of the four shapes is called "shape" about equally often, and each colour left out so
    assert max(called_shape.values()) < 1.3 * min(called_shape.values())
    assert len(left_out) == len(shapes.COLOURS) + 1 and max(left_out.values()) < 1.6 * min(left_out.values())
    said = shapes.CaptionRule(0.3, 0.2, concept_words=True)
    captions = [shapes.recaption(shapes.rule_scene_at(i, 0, rule), np.random.default_rng(i), said) for i in range(300)]
    assert any("star" in c for c in captions)
    assert shapes.rule_scene_at(7, 0, rule).caption == shapes.rule_scene_at(7, 0, rule).caption
    with pytest.raises(ValueError, match="class_share"):
        shapes.CaptionRule(class_share=1.5)


def test_a_held_out_weight_makes_stars_that_many_times_as_often_called_shape():
    rule = shapes.CaptionRule(class_share=0.2, held_out_weight=3.0)
    called_shape = {s: 0 for s in shapes.ALL_SHAPES}
    for i in range(3000):
        scene = shapes.rule_scene_at(i, 0, rule)
        for obj, said in zip(scene.objects, scene.mentioned):
            called_shape[obj.shape] += said["shape"] == shapes.CLASS_WORD
    known = [called_shape[s] for s in shapes.BASE_SHAPES]
    assert 2.5 < called_shape["star"] / np.mean(known) < 3.5  # about half of what "shape" shows
    assert shapes.CaptionRule(0.3, held_out_weight=1.0).star_share == shapes.CaptionRule(0.3).star_share
    with pytest.raises(ValueError, match=r"held_out_weight must be a number above 0 \(1: as often as each known shape\), got 0"):
        shapes.CaptionRule(held_out_weight=0)


def test_known_weights_call_each_known_shape_shape_that_many_times_as_often():
    rule = shapes.CaptionRule(class_share=0.2, held_out_weight=3.0, known_weights=(2.0, 0.5, 1.0))
    called_shape = {s: 0 for s in shapes.ALL_SHAPES}
    for i in range(3000):
        scene = shapes.rule_scene_at(i, 0, rule)
        for obj, said in zip(scene.objects, scene.mentioned):
            called_shape[obj.shape] += said["shape"] == shapes.CLASS_WORD
    assert 3 < called_shape["circle"] / called_shape["square"] < 5.5  # 2 / 0.5 = 4
    assert 1.5 < called_shape["circle"] / called_shape["triangle"] < 2.5
    assert 2.5 < called_shape["star"] / np.mean([called_shape[s] for s in shapes.BASE_SHAPES]) < 3.5
    # All ones is the rule without weights, draw for draw.
    plain, weighted = shapes.CaptionRule(0.3), shapes.CaptionRule(0.3, known_weights=(1, 1, 1))
    assert [shapes.rule_scene_at(i, 0, plain).caption for i in range(50)] == \
        [shapes.rule_scene_at(i, 0, weighted).caption for i in range(50)]
    with pytest.raises(ValueError, match=r"known_weights=\(4, 1, 1\); it must be 3 numbers \(circle, square, "
                                         r"triangle\), each at least 0 and at most 1 / class_share"):
        shapes.CaptionRule(0.3, known_weights=(4, 1, 1))
    with pytest.raises(ValueError, match="known_weights"):
        shapes.CaptionRule(0.3, known_weights=(1, 1))


def test_an_outline_is_a_white_ring_about_two_pixels_wide_on_the_shapes_edge():
    from sdcourse.data.shapes import render_outline

    scene = shapes.Scene([shapes.ShapeObject("red", "circle", "large", "center", (32.0, 32.0), 14.0)], "blue", "")
    outline = render_outline(scene)
    assert outline.shape == (64, 64, 3) and outline.dtype == np.uint8
    assert np.array_equal(outline[..., 0], outline[..., 2])  # grey: white on black
    ink = outline[..., 0].astype(float) / 255
    assert 0 < ((ink > 0) & (ink < 1)).sum()  # anti-aliased edges
    assert ink.sum() == pytest.approx(2 * np.pi * 14 * 2, rel=0.05)  # perimeter x 2 px
    ys, xs = np.nonzero(ink > 0.5)
    radii = np.hypot(xs + 0.5 - 32, ys + 0.5 - 32)
    assert radii.min() > 12 and radii.max() < 16  # centred on the edge at radius 14
    assert ink[32, 32] == 0 and ink[0, 0] == 0  # neither the inside nor the background is drawn
