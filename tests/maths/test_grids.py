"""Sample grids, pixel for pixel: a white gap between images, tiny images enlarged by nearest neighbour,
one class per row for cycled labels (`--labels all`), in `ddpmkit sample`'s PNG and in training grids."""

import numpy as np
import pytest
from PIL import Image

from ddpmkit.images import GRID_GAP, GRID_GAP_VALUE, class_rows, grid_scale, sample_grid
from helpers import sample_args, train_digits_args


def distinct_images(n, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 250, (n, h, w, c), dtype=np.uint8)  # never the gap's 255


def block(grid, row, col, size):
    """The image at (row, col) of a grid of ``size``-pixel tiles separated and framed by the gap."""
    top, left = GRID_GAP + row * (size + GRID_GAP), GRID_GAP + col * (size + GRID_GAP)
    return grid[top : top + size, left : left + size]


def enlarged(image, s):
    """Nearest-neighbour enlargement written out pixel by pixel (independent of numpy.repeat)."""
    h, w, c = image.shape
    out = np.empty((h * s, w * s, c), image.dtype)
    for i in range(h * s):
        for j in range(w * s):
            out[i, j] = image[i // s, j // s]
    return out


def test_square_grid_blocks_and_gaps():
    imgs = distinct_images(64)
    grid = sample_grid(imgs)
    s = grid_scale(8, 8)
    assert s == 8  # 8x8 digits drawn 64 pixels wide
    size = 8 * s
    assert grid.shape == (8 * size + 9 * GRID_GAP, 8 * size + 9 * GRID_GAP, 1)
    mask = np.ones(grid.shape[:2], bool)  # True where no image is: must be the gap value
    for i in range(64):
        r, c = divmod(i, 8)
        np.testing.assert_array_equal(block(grid, r, c, size), enlarged(imgs[i], s))
        top, left = GRID_GAP + r * (size + GRID_GAP), GRID_GAP + c * (size + GRID_GAP)
        mask[top : top + size, left : left + size] = False
    assert mask.sum() > 0 and np.all(grid[mask] == GRID_GAP_VALUE)


def test_tiny_images_make_a_grid_at_least_256_wide_and_large_ones_stay():
    expected = {(8, 10): 8, (8, 1): 32, (16, 2): 8, (28, 8): 2, (32, 8): 2, (64, 8): 1, (64, 2): 2, (256, 2): 1}
    for (w, ncol), s in expected.items():
        assert grid_scale(w, ncol) == s, (w, ncol)
        assert s * w * ncol >= 256  # every row at least 256 pixels wide
        assert s == 1 or (s - 1) * w * ncol < 256 or s == 64 // w  # no larger than one of the two rules asks
    assert sample_grid(distinct_images(9, 128, 128, 3)).shape == (3 * 128 + 4 * GRID_GAP,) * 2 + (3,)  # as they are


def test_cycled_labels_give_one_class_per_row():
    n, k = 64, 10
    labels = np.arange(n) % k
    imgs = distinct_images(n)
    grid = sample_grid(imgs, labels)
    size = 8 * grid_scale(8, 7)
    assert grid.shape[0] == k * size + (k + 1) * GRID_GAP  # ten rows
    assert grid.shape[1] == 7 * size + 8 * GRID_GAP  # ceil(64 / 10) = 7 columns
    for cls in range(k):
        members = np.flatnonzero(labels == cls)  # 7 for classes 0..3, 6 for the others
        for col, i in enumerate(members):
            np.testing.assert_array_equal(block(grid, cls, col, size), enlarged(imgs[i], size // 8))
        if len(members) < 7:
            assert np.all(block(grid, cls, 6, size) == GRID_GAP_VALUE)  # an empty slot


def test_which_labels_lay_out_by_class():
    assert [r.tolist() for r in class_rows(np.array([0, 1, 2, 0, 1]))] == [[0, 3], [1, 4], [2]]
    assert [r.tolist() for r in class_rows(np.array([5, 2, 5, 2]))] == [[0, 2], [1, 3]]  # --labels 5,2
    assert class_rows(None) is None
    assert class_rows(np.array([3, 3, 3, 3])) is None  # one class: square
    assert class_rows(np.arange(10)) is None  # each class once: square
    assert class_rows(np.array([0, 1, 1, 0])) is None  # not a cycle


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    import yaml

    from conftest import TINY_DIGITS
    from ddpmkit.cli import main

    root = tmp_path_factory.mktemp("grids")
    cfg = dict(TINY_DIGITS, train={**TINY_DIGITS["train"], "steps": 2, "sample_every": 2, "num_grid_samples": 12})
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert main(train_digits_args(root / "tiny.yaml", out)) == 0
    return out


def test_sample_png_is_the_npz_drawn_one_class_per_row(digits_run, tmp_path):
    from ddpmkit.cli import main

    npz, png = tmp_path / "s.npz", tmp_path / "g.png"
    assert (
        main(sample_args(digits_run, "--num", "23", "--labels", "all", "--steps", "3", "--out", npz, "--out", png)) == 0
    )
    with np.load(npz) as z:
        images, labels = z["images"], z["labels"]
    grid = np.asarray(Image.open(png))[:, :, None]
    size = 8 * grid_scale(8, 3)
    assert grid.shape == (10 * size + 11 * GRID_GAP, 3 * size + 4 * GRID_GAP, 1)
    for i, cls in enumerate(labels):
        np.testing.assert_array_equal(block(grid, cls, i // 10, size), enlarged(images[i], size // 8))


def test_training_grid_is_one_class_per_row(digits_run):
    grid = np.asarray(Image.open(digits_run / "samples" / "step_00000002.png"))[:, :, None]
    size = 8 * grid_scale(8, 2)  # 12 samples over 10 classes: 2 columns
    assert grid.shape == (10 * size + 11 * GRID_GAP, 2 * size + 3 * GRID_GAP, 1)
    for cls in range(2, 10):  # classes 2..9 have one sample: the second slot is empty
        assert np.all(block(grid, cls, 1, size) == GRID_GAP_VALUE)
    for cls in range(2):
        assert not np.all(block(grid, cls, 1, size) == GRID_GAP_VALUE)
