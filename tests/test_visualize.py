"""Grids of synthetic images: one row per class, or one row of classes at one image per class."""

import torch
from matplotlib.image import imread

from fedcond.visualize import save_grid


def test_grid_layout_follows_images_per_class(tiny_set, tmp_path):
    two_per_class = imread(save_grid(tiny_set, tmp_path / "ipc2.png"))
    height, width = two_per_class.shape[:2]
    assert height > width  # ten class rows of two images

    first = torch.arange(0, tiny_set.num_images, 2)  # one image of each class
    one_per_class = tiny_set.__class__(**{**tiny_set.__dict__, "images": tiny_set.images[first],
                                          "labels": tiny_set.labels[first], "ipc": 1})
    height, width = imread(save_grid(one_per_class, tmp_path / "ipc1.png")).shape[:2]
    assert width > 3 * height  # one row of ten classes, not a tall column
