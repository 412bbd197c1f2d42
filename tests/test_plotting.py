import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from sdcourse.plotting import (compare_images, image_grid, picture_table, schedule_curves, to_image,
                               trajectory_strip)
from sdcourse.schedules import NoiseSchedule


def test_to_image_understands_the_usual_layouts_and_ranges():
    chw = torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1)
    assert to_image(chw).tolist() == [[[0, 128, 255]]]
    hwc01 = np.full((2, 2, 3), 0.5)
    assert to_image(hwc01).shape == (2, 2, 3) and to_image(hwc01)[0, 0, 0] == 128
    assert to_image(np.zeros((4, 4), dtype=np.uint8)).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="allowed"):
        to_image(np.zeros((2, 5, 5, 5)))


def test_figures_have_the_right_panels():
    images = [torch.rand(3, 8, 8) for _ in range(5)]
    fig = image_grid(images, [f"image {i}" for i in range(5)], ncols=3)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "image 0"
    fig = trajectory_strip(images, [0, 250, 500, 750, 999])
    assert [ax.get_title() for ax in fig.axes] == ["t=0", "t=250", "t=500", "t=750", "t=999"]
    fig = schedule_curves({"linear": NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)})
    assert len(fig.axes[0].lines) == 1
    fig = compare_images(images[0], images[0] + 0.5)
    assert "max 5.00e-01" in fig.axes[2].get_title()
    plt.close("all")


def test_image_grid_wraps_captions_to_the_width_of_a_picture():
    caption = "an orange star in the top right on a white background"
    narrow = image_grid([torch.rand(3, 8, 8)] * 2, [caption] * 2, size=1.15).axes[0].get_title()
    wide = image_grid([torch.rand(3, 8, 8)] * 2, [caption] * 2, size=2.2).axes[0].get_title()
    assert narrow.replace("\n", " ") == caption == wide.replace("\n", " ")
    assert max(map(len, narrow.split("\n"))) <= 15 < max(map(len, wide.split("\n")))  # neighbours' titles never meet
    plt.close("all")


def test_mismatched_captions_are_refused():
    with pytest.raises(ValueError, match="captions has 1 entries for 2 images"):
        image_grid([torch.rand(3, 4, 4)] * 2, ["one"])


def test_picture_table_labels_rows_and_wraps_long_column_labels():
    rows = [[torch.rand(3, 8, 8) for _ in range(3)] for _ in range(2)]
    prompts = ["a red circle", "a large orange triangle in the bottom right", "a blue square"]
    fig = picture_table(rows, ["your build", "shipped"], prompts, size=1.0)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_ylabel() == "your build" and fig.axes[3].get_ylabel() == "shipped"
    long_title = fig.axes[1].get_title()
    assert long_title.replace("\n", " ") == prompts[1] and "\n" in long_title
    assert max(len(line) for line in long_title.split("\n")) <= 14  # fits over a 1-inch column
    assert fig.axes[3].get_title() == ""  # column labels only above the first row
    plt.close("all")


def test_picture_table_writes_notes_under_pictures_or_row_labels_above_rows():
    rows = [[torch.rand(3, 8, 8) for _ in range(2)] for _ in range(2)]
    fig = picture_table(rows, ["3 steps", "25 steps"], ["a red circle", "a blue square"],
                        notes=[["judge: red circle", "judge: blue circle"], ["judge: red circle", "judge: blue square"]])
    assert [ax.get_xlabel().replace("\n", " ") for ax in fig.axes] == [
        "judge: red circle", "judge: blue circle", "judge: red circle", "judge: blue square"]
    assert fig.axes[0].get_title() == "a red circle" and fig.axes[2].get_ylabel() == "25 steps"
    long_labels = ["x_t: what the U-Net is given at each step", "x0 guess: what it makes of it"]
    fig = picture_table(rows, long_labels, ["t=981", "t=1"], row_labels_above=True)
    assert fig.axes[0].get_title(loc="left") == long_labels[0] and fig.axes[2].get_title(loc="left") == long_labels[1]
    assert fig.axes[0].get_ylabel() == ""  # not in the left margin, where it would not fit
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "t=981", "t=1"]  # under the last row
    plt.close("all")


def test_picture_table_refuses_ragged_rows_and_wrong_label_counts():
    picture = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match=r"rows hold \[2, 1\] pictures"):
        picture_table([[picture, picture], [picture]])
    with pytest.raises(ValueError, match="column_labels has 1 entries for 2 columns"):
        picture_table([[picture, picture]], column_labels=["one"])
    with pytest.raises(ValueError, match="rows is empty"):
        picture_table([])
    with pytest.raises(ValueError, match="notes has 2 entries for 1 rows"):
        picture_table([[picture, picture]], notes=[["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match=r"notes rows hold \[1\] texts"):
        picture_table([[picture, picture]], notes=[["a"]])
    with pytest.raises(ValueError, match="notes and row_labels_above=True"):
        picture_table([[picture]], ["row"], notes=[["a"]], row_labels_above=True)
