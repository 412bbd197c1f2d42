"""The evaluator: its classifier is accurate, its measures are right on clean pictures and
catch wrong ones, pictures in the wrong form are refused, and the judge stays fixed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdcourse
from sdcourse import evaluate as ev
from sdcourse.data import shapes
from sdcourse.evaluate import classifier_accuracy, classify, parse_prompt, prompt_adherence
from sdcourse.images import images_to_tensor, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")


def picture(*objects, background="white"):
    """One uint8 picture (1, 64, 64, 3) of objects given as (colour, shape, size, position)."""
    specs = [dict(zip(("colour", "shape", "size", "position"), o)) for o in objects]
    return shapes.render(shapes.make_scene(specs, background, np.random.default_rng(0)))[None]


# ----------------------------------------------------------------------------- the judge


def test_classifier_is_accurate_on_fresh_pictures():
    acc = classifier_accuracy(n=300, seed=77)
    assert acc["colour"] >= 97 and acc["shape"] >= 97


def test_classifier_knows_the_star():
    scene = shapes.make_scene([{"colour": "purple", "shape": "star"}], background="white")
    guess = classify(shapes.render(scene)[None])[0]
    assert guess == {"colour": "purple", "shape": "star"}


def test_the_fixed_judge_is_the_shipped_file_and_the_default():
    assert ev.CLASSIFIER_PATH == Path(sdcourse.__file__).resolve().parent / "assets" / "shape_classifier.safetensors"
    assert ev.CLASSIFIER_PATH.exists()
    assert ev.load_classifier() is ev.load_classifier(ev.CLASSIFIER_PATH)
    images, _, _ = shapes.make_dataset(8, seed=3, shapes=shapes.ALL_SHAPES, n_objects=1)
    assert classify(images) == classify(images, ev.load_classifier(ev.CLASSIFIER_PATH))


def test_the_fixed_judge_is_never_overwritten():
    with pytest.raises(ValueError, match="fixed judge"):
        ev.save_classifier(ev.ShapeClassifier(), ev.CLASSIFIER_PATH)


def test_another_classifier_by_file_or_run_folder(tmp_path):
    other = ev.ShapeClassifier().eval()
    ev.save_classifier(other, tmp_path / ev.CLASSIFIER_FILE)
    for where in (tmp_path, tmp_path / ev.CLASSIFIER_FILE):
        loaded = ev.load_classifier(where)
        assert loaded is not ev.load_classifier()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), other.state_dict().values()))
    images = picture(("red", "circle", "large", "center"))
    assert classify(images, tmp_path) == classify(images, other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shape_classifier.safetensors"):
        ev.load_classifier(tmp_path / "empty")


# ----------------------------------------------------------------------------- pictures in


def test_classify_accepts_uint8_float_and_pil():
    images, _, _ = shapes.make_dataset(4, seed=1, n_objects=1)
    expected = classify(images)
    assert classify(images.astype(np.float32) / 255) == expected
    assert classify([Image.fromarray(im) for im in images]) == expected
    assert classify(images[:0]) == [] and classify([]) == []


@pytest.mark.parametrize("bad, said", [
    (lambda x: x.astype(np.float32), r"float32 array with values in \[35, 245\] \(pictures in \[0, 255\]\?"),
    (lambda x: x.astype(np.float32) / 127.5 - 1,
     r"float32 array with values in \[-0.\d+, 0.\d+\] \(pictures in \[-1, 1\]\?"),
    (lambda x: x.transpose(0, 3, 1, 2), r"shape \(2, 3, 64, 64\) \(channels first"),
    (lambda x: x[0], r"shape \(64, 64, 3\) \(one picture"),
    (lambda x: x[:, :32, :32], r"shape \(2, 32, 32, 3\)"),
    (lambda x: x.astype(np.int64), "dtype int64"),
    (lambda x: np.full(x.shape, np.nan, np.float32), "NaN"),
    (lambda x: torch.from_numpy(x), "a Tensor"),
    (lambda x: list(x), "a list holding ndarray"),
    (lambda x: [Image.fromarray(x[0]).resize((32, 32))], "PIL images of size 32x32"),
])
def test_pictures_in_the_wrong_form_are_refused(bad, said):
    images, _, _ = shapes.make_dataset(2, seed=1, n_objects=1)
    with pytest.raises(ValueError, match=said) as error:
        classify(bad(images))
    message = str(error.value)
    assert message.startswith("images:") and "allowed: a uint8 array (N, 64, 64, 3)" in message


def test_every_function_that_takes_pictures_checks_them():
    images = picture(("red", "circle", "large", "center")).astype(np.float32) / 127.5 - 1
    for call in (lambda: ev.locate(images), lambda: ev.score_positions(images, ["center"]),
                 lambda: ev.measure_size(images), lambda: ev.score_sizes(images, ["large"]),
                 lambda: ev.object_colours(images),
                 lambda: ev.classify_objects(images),
                 lambda: ev.score_two_objects(images, [[{"colour": "red", "shape": "circle"}] * 2]),
                 lambda: ev.psnr(images, images)):
        with pytest.raises(ValueError, match=r"images: a float32 array with values in \[-0.\d+, 0.\d+\]"):
            call()
    good = picture(("red", "circle", "large", "center"))
    with pytest.raises(ValueError, match="reference: a float32"):
        ev.psnr(good, images)


def test_pictures_to_tensor_and_back_is_exact_and_in_minus_one_to_one():
    pictures = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = images_to_tensor(pictures)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x), pictures)
    assert np.array_equal(to_uint8(x.half()), pictures)
    assert np.array_equal(to_uint8(torch.full((1, 3, 2, 2), 5.0)), np.full((1, 2, 2, 3), 255, np.uint8))  # clamped


# ----------------------------------------------------------------------------- position


def test_position_measure_is_right_on_clean_pictures():
    assert ev.position_measure_accuracy(n=300, seed=5)["position"] == 100.0


@pytest.mark.parametrize("position", list(shapes.POSITIONS))
def test_position_measure_finds_each_position_and_catches_a_wrong_one(position):
    images = picture(("blue", "triangle", "small", position), background="orange")
    assert ev.locate(images)[0]["position"] == position
    wrong = "center" if position != "center" else "top left"
    assert ev.score_positions(images, [position])["position_correct"] == 100.0
    assert ev.score_positions(images, [wrong])["position_correct"] == 0.0


def test_the_centre_zone_is_the_diamond_nearest_the_middle():
    def at(x, y):
        scene = shapes.make_scene([{"colour": "black", "shape": "circle", "size": "small"}], "white")
        scene.objects[0].center, scene.objects[0].radius = (x, y), 6.0
        return ev.locate(shapes.render(scene)[None])[0]

    assert at(42, 32)["position"] == "center"           # |dx| + |dy| = 10 < 16
    assert at(38, 38)["position"] == "center"           # 12
    assert at(42, 42)["position"] == "bottom right"     # 20
    assert at(22, 20)["position"] == "top left"         # 22
    assert at(42, 32)["centroid"] == pytest.approx((42, 32), abs=0.3)


def test_a_blank_picture_has_no_position():
    blank = np.full((1, 64, 64, 3), 128, np.uint8)
    assert ev.locate(blank)[0] == {"position": None, "centroid": None, "pixels": 0}
    assert ev.score_positions(blank, ["center"])["position_correct"] == 0.0


def test_position_prompts_say_what_their_labels_say():
    prompts = ev.position_prompts(20, seed=3)
    assert {p["position"] for p in prompts} == set(shapes.POSITIONS)
    for p in prompts:
        assert ev.parse_position(p["prompt"]) == p["position"]
        assert parse_prompt(p["prompt"]) == {"colour": p["colour"], "shape": p["shape"]}
        assert p["shape"] in shapes.BASE_SHAPES
    with pytest.raises(ValueError, match="names 0 positions"):
        ev.parse_position("a red circle")


# ----------------------------------------------------------------------------- size


def test_size_measure_is_right_on_clean_pictures():
    result = ev.size_measure_accuracy(n=200, seed=5)
    assert result == {"size": 100.0, **{shape: 100.0 for shape in shapes.ALL_SHAPES}}


def one_shape(shape, radius, colour="black", background="white", center=(32.0, 32.0)):
    """One uint8 picture (1, 64, 64, 3) of a shape of this half-width, whatever its size's range."""
    obj = shapes.ShapeObject(colour, shape, "small", "center", center, radius)
    return shapes.render(shapes.Scene([obj], background))[None]


@pytest.mark.parametrize("shape", shapes.ALL_SHAPES)
def test_size_measure_tells_small_from_large_for_every_shape(shape):
    for size in shapes.SIZES:
        images = np.concatenate([picture(("red", shape, size, position), background="gray")
                                 for position in shapes.POSITIONS])
        assert [f["size"] for f in ev.measure_size(images)] == [size] * len(shapes.POSITIONS)
        assert ev.score_sizes(images, [size] * len(images))["size_correct"] == 100.0
    # The half-widths nearest the threshold, at the strongest and the weakest contrast of the palette.
    (_, small_most), (large_least, _) = shapes.RADIUS["small"], shapes.RADIUS["large"]
    for colour, background in (("black", "white"), ("orange", "yellow")):
        for radius, size in ((small_most, "small"), (large_least, "large")):
            found = ev.measure_size(one_shape(shape, radius, colour, background, center=(31.7, 32.4)))[0]
            assert found["size"] == size, (colour, background, radius, found)
            assert abs(found["extent"] - ev.SIZE_THRESHOLD) >= 1.5


def test_size_measure_on_hand_made_pictures():
    def square(side, at=(10, 10)):
        image = np.full((1, 64, 64, 3), 255, np.uint8)
        image[0, at[0] : at[0] + side, at[1] : at[1] + side] = (35, 70, 225)
        return image

    small, large = square(14), square(26)
    assert ev.measure_size(small)[0] == {"size": "small", "extent": 14.0, "pixels": 196}
    assert ev.measure_size(large)[0] == {"size": "large", "extent": 26.0, "pixels": 676}
    assert ev.score_sizes(np.concatenate([small, large]), ["small", "small"]) == \
        {"size_correct": 50.0, "found": ["small", "large"]}
    # The largest piece is measured; specks (under MIN_OBJECT_PIXELS) are no object.
    both = large.copy()
    both[0, 45:59, 45:59] = (35, 70, 225)
    assert ev.measure_size(both)[0]["size"] == "large"
    speck = square(4)
    assert ev.measure_size(speck)[0] == {"size": None, "extent": None, "pixels": 0}
    blank = np.full((1, 64, 64, 3), 128, np.uint8)
    assert ev.measure_size(blank)[0] == {"size": None, "extent": None, "pixels": 0}
    assert ev.score_sizes(blank, ["small"])["size_correct"] == 0.0


def test_size_measure_refuses_bad_input():
    images = picture(("red", "circle", "large", "center"))
    with pytest.raises(ValueError, match=r"images: an array of shape \(64, 64, 3\) \(one picture"):
        ev.measure_size(images[0])
    with pytest.raises(ValueError, match="images: an array of dtype int64"):
        ev.measure_size(images.astype(np.int64))
    with pytest.raises(ValueError, match=r"sizes='medium' is not allowed; choose one of 'small', 'large'"):
        ev.score_sizes(images, ["medium"])
    with pytest.raises(ValueError, match="sizes: 2 names for 1 pictures"):
        ev.score_sizes(images, ["small", "large"])


def test_parse_size_reads_the_sizes_of_evaluation_prompts():
    assert ev.parse_size("a small blue square in the top left") == "small"
    assert ev.parse_size("A LARGE red circle, on a white background") == "large"
    assert ev.parse_size("a red circle") is None
    with pytest.raises(ValueError, match="names 2 sizes; it must name at most one of"):
        ev.parse_size("a small red circle and a large blue square")
    prompts = shapes.evaluation_prompts(64)
    said = [ev.parse_size(p["prompt"]) for p in prompts]
    assert set(said) == {None, "small", "large"}
    for p, size in zip(prompts, said):
        assert (size is not None) == any(f" {s} " in f" {p['prompt']} " for s in shapes.SIZES)
        assert parse_prompt(p["prompt"]) == {"colour": p["colour"], "shape": p["shape"]}  # size left out


# ----------------------------------------------------------------------------- two objects


def test_two_object_measure_is_right_on_clean_pictures():
    result = ev.two_object_measure_accuracy(n=300, seed=5)
    assert result["both_correct"] >= 95  # misses: the generator lets two objects touch now and then
    assert result["two_found"] >= result["both_correct"] - 1


def test_two_objects_in_any_order_and_a_swapped_binding_is_caught():
    images = picture(("red", "circle", "large", "top left"), ("blue", "square", "large", "bottom right"),
                     background="gray")
    red_circle, blue_square = {"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}
    for order in ([red_circle, blue_square], [blue_square, red_circle]):
        assert ev.score_two_objects(images, [order])["both_correct"] == 100.0
    swapped = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"}]
    result = ev.score_two_objects(images, [swapped])
    assert result["both_correct"] == 0.0
    assert result["colours_correct"] == 100.0 and result["shapes_correct"] == 100.0


def test_one_object_where_two_were_asked_for_is_wrong():
    images = picture(("red", "circle", "large", "center"))
    result = ev.score_two_objects(images, [[{"colour": "red", "shape": "circle"}] * 2])
    assert result["both_correct"] == 0.0 and result["two_found"] == 0.0


def test_split_objects_paints_each_alone_on_the_background():
    images = picture(("yellow", "star", "large", "top right"), ("black", "triangle", "small", "bottom left"),
                     background="purple")
    pieces = ev.split_objects(images[0])
    assert len(pieces) == 2
    assert classify(np.stack(pieces)) == [{"colour": "yellow", "shape": "star"},
                                          {"colour": "black", "shape": "triangle"}]  # larger first
    for piece in pieces:
        assert ev.locate(piece[None])[0]["pixels"] < ev.locate(images)[0]["pixels"]


def test_two_object_prompts_say_what_their_labels_say():
    prompts = ev.two_object_prompts(20, seed=3)
    for p in prompts:
        assert ev.parse_two_objects(p["prompt"]) == p["objects"]
        (a, b) = p["objects"]
        assert a["colour"] != b["colour"] and a["shape"] != b["shape"]
    with pytest.raises(ValueError, match="two objects"):
        ev.parse_two_objects("a red circle")


# ----------------------------------------------------------------------------- the VAE


class IdentityVAE(torch.nn.Module):
    """Encode and decode give back the input: nothing is lost."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        class Posterior:
            def mode(self):
                return x

        return type("Out", (), {"latent_dist": Posterior()})()

    def decode(self, z):
        return type("Out", (), {"sample": z})()


def test_vae_round_trip_through_a_lossless_vae_keeps_everything():
    result = ev.vae_round_trip(IdentityVAE(), n_per_cell=6, n_psnr=4)
    assert set(result["shape_kept"]) == set(shapes.ALL_SHAPES)
    for shape in shapes.ALL_SHAPES:
        assert set(result["shape_kept"][shape]) == set(shapes.SIZES)
        assert result["shape_kept"][shape] == result["shape_clean"][shape]
    assert result["psnr_fresh_shapes"] == pytest.approx(100.0)
    assert result["psnr_held_out_photo_crops"] == pytest.approx(100.0)


def test_round_trip_pictures_are_of_the_asked_shape_and_size():
    images = ev.round_trip_pictures("star", "small", 8)
    assert images.shape == (8, 64, 64, 3)
    assert all(g["shape"] == "star" for g in classify(images))
    assert max(ev.locate(images), key=lambda f: f["pixels"])["pixels"] < 250  # small: under ~20 px wide


# ----------------------------------------------------------------------------- adherence


class RedCirclePipe:
    """A stand-in pipeline that draws a large red circle in the centre, whatever the prompt says."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, height, width, num_inference_steps, guidance_scale, generator, output_type):
        self.calls.append({"prompts": prompts, "seeds": len(generator), "steps": num_inference_steps,
                           "guidance_scale": guidance_scale, "output_type": output_type})
        red_circle = picture(("red", "circle", "large", "center")).astype(np.float32) / 255
        return type("Out", (), {"images": np.repeat(red_circle, len(prompts), axis=0)})()


def test_each_adherence_measure_scores_the_pictures_against_its_prompts():
    pipe = RedCirclePipe()
    result = prompt_adherence(pipe, ["a red circle", "a blue square"], seeds=[0, 1, 2], batch_size=4,
                              num_inference_steps=3, return_images=True)
    assert [call["seeds"] for call in pipe.calls] == [4, 2]  # six pictures, in batches of four
    assert pipe.calls[0]["prompts"] == ["a red circle"] * 3 + ["a blue square"]
    assert pipe.calls[0]["steps"] == 3 and pipe.calls[0]["output_type"] == "np"
    assert {k: result[k] for k in ("colour_correct", "shape_correct", "both_correct", "diversity", "n_images")} == \
        {"colour_correct": 50.0, "shape_correct": 50.0, "both_correct": 50.0, "diversity": 0.0, "n_images": 6}
    assert result["images"].shape == (6, 64, 64, 3) and len(result["guesses"]) == 6

    where = ev.position_adherence(pipe, ["a red circle in the center", "a red square in the center",
                                         "a red circle in the top left"], seeds=[0])
    assert where == pytest.approx({"position_correct": 200 / 3, "all_correct": 100 / 3, "n_images": 3})
    two = ev.two_object_adherence(pipe, ["a red circle and a blue square"], seeds=[0, 1], return_images=True)
    assert two["both_correct"] == 0.0 and two["two_found"] == 0.0 and two["n_images"] == 2
    assert two["guesses"] == [[{"colour": "red", "shape": "circle"}]] * 2


def test_prompt_adherence_judges_the_size_where_the_prompt_names_one():
    pipe = RedCirclePipe()  # a large red circle, always
    prompts = ["a large red circle", "a small red circle", "a red circle", "a large blue square",
               {"prompt": "a red circle", "colour": "red", "shape": "circle", "size": "small"},
               {"prompt": "a small red circle", "colour": "red", "shape": "circle", "size": None},
               {"prompt": "a large red circle", "colour": "red", "shape": "circle"}]
    result = prompt_adherence(pipe, prompts, seeds=[0, 1], num_inference_steps=3, return_images=True)
    # Sizes named: large (right), small (wrong), large (right, the square), small (wrong), large (right).
    assert result["n_size_named"] == 10 and result["size_correct"] == 60.0
    # Right in colour and shape: all but the square; of those, the two "small" ones have the size wrong.
    assert result["both_correct"] == pytest.approx(600 / 7) and result["all_correct"] == pytest.approx(400 / 7)
    assert result["sizes"] == ["large"] * 14
    unsized = prompt_adherence(pipe, ["a red circle", "a blue circle"], seeds=[0])
    assert unsized["size_correct"] is None and unsized["n_size_named"] == 0
    assert unsized["all_correct"] == unsized["both_correct"] == 50.0
    with pytest.raises(ValueError, match="size='medium' is not allowed"):
        prompt_adherence(pipe, [{"prompt": "a red circle", "colour": "red", "shape": "circle", "size": "medium"}])
    with pytest.raises(ValueError, match="names 2 sizes"):
        prompt_adherence(pipe, ["a small large red circle"])
    assert len(pipe.calls) == 2  # bad prompts are refused before generating


@pytest.mark.parametrize("argument, value, said", [
    ("num_inference_steps", 0, "num_inference_steps must be at least 1, got 0"),
    ("guidance_scale", -1.0, r"guidance_scale must be a number >= 0, got -1.0"),
    ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
    ("seeds", [], r"seeds=\[\]; give at least one seed"),
    ("seeds", [0, -1], r"seeds\[1\] must be from 0 to 9223372036854775807, got -1"),
    ("seeds", [2**63], r"seeds\[0\] must be from 0 to 9223372036854775807, got 9223372036854775808"),
    ("seeds", [0.5], r"seeds\[0\] must be an integer, got 0.5"),
])
def test_adherence_refuses_bad_settings_before_generating(argument, value, said):
    pipe = RedCirclePipe()
    with pytest.raises(ValueError, match=said):
        prompt_adherence(pipe, ["a red circle"], **{argument: value})
    assert pipe.calls == []


# ----------------------------------------------------------------------------- on the shipped model


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


def test_size_adherence_runs_on_the_embedded_model():
    from sdcourse.pipeline import load_pipeline

    result = prompt_adherence(load_pipeline(), ["a small red circle", "a large blue square"], seeds=[0],
                              num_inference_steps=3, return_images=True)
    assert result["n_size_named"] == 2 and 0 <= result["size_correct"] <= 100
    assert 0 <= result["all_correct"] <= result["both_correct"]
    assert result["all_correct"] <= result["size_correct"]
    assert all(size in ("small", "large", None) for size in result["sizes"])


def test_position_and_two_object_adherence_run_on_the_embedded_model():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    where = ev.position_adherence(pipe, ["a red circle in the top left", ev.position_prompts(1)[0]],
                                  seeds=[0], num_inference_steps=5)
    assert where["n_images"] == 2 and 0 <= where["all_correct"] <= where["position_correct"] <= 100
    two = ev.two_object_adherence(pipe, ["a red circle and a blue square"], seeds=[0, 1], num_inference_steps=5)
    assert two["n_images"] == 2
    assert two["both_correct"] <= min(two["colours_correct"], two["shapes_correct"])


def test_a_16_bit_picture_is_judged_by_the_one_depth_rule():
    """A 16-bit PIL picture is scaled from 0..65535, not clipped to white."""
    from sdcourse.evaluate import as_pictures

    grey = Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16))
    assert grey.mode.startswith("I")
    assert as_pictures([grey]).max() == 128


def test_the_colour_measure_names_the_palette_and_pink_on_clean_pictures():
    accuracy = ev.colour_measure_accuracy(n=200, seed=5)
    assert accuracy["colour"] >= 99.5 and accuracy["pink"] == 100.0


def test_the_colour_measure_on_hand_made_pictures():
    image = np.full((3, 64, 64, 3), 245, np.uint8)  # white
    image[0, 10:30, 10:30] = shapes.HELD_OUT_COLOURS["pink"]
    image[1, 10:30, 10:30] = shapes.COLOURS["red"]
    image[1, 40:44, 40:44] = shapes.HELD_OUT_COLOURS["pink"]  # a speck: the largest piece decides
    image[0, 10, 10:30] = (242, 178, 208)  # an anti-aliased edge, half pink and half white, is outvoted
    assert ev.object_colours(image) == ["pink", "red", None]
