"""The shift benchmark's corruptions, each against a small image checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from informer_audit.corruptions import (
    CORRUPTIONS,
    conditions,
    corrupt,
    corruption_seed,
    corruption_table,
    text_mask,
)
from informer_audit.errors import EvaluationError
from informer_audit.images import LoadedImage

# A 2 x 3 image with distinct values: every geometric corruption is checkable by eye.
SMALL = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)[:, :, None]


def grid(values: list[list[float]]) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, :, None]


def textured(h: int = 40, w: int = 48, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels)).astype(np.float32)


def test_invert_is_255_minus_x():
    x = grid([[0, 1, 2, 3], [100, 127, 128, 255], [7, 8, 9, 10], [250, 251, 252, 253]])
    assert np.array_equal(corrupt(x, "invert"), 255 - x)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rotate90", [[3, 6], [2, 5], [1, 4]]),  # counter-clockwise: the last column on top
        ("rotate180", [[6, 5, 4], [3, 2, 1]]),
        ("hflip", [[3, 2, 1], [6, 5, 4]]),
        ("vflip", [[4, 5, 6], [1, 2, 3]]),
    ],
)
def test_geometric_corruptions_exactly(name, expected):
    assert np.array_equal(corrupt(SMALL, name), grid(expected))


@pytest.mark.parametrize(("severity", "covered"), [(1, 2), (2, 4), (3, 6)])
def test_occlude_blacks_out_the_left_columns(severity, covered):
    x = np.full((4, 8, 1), 90, dtype=np.float32)  # 8 columns: 25, 50, 75 % are 2, 4, 6
    out = corrupt(x, "occlude", severity)
    assert np.all(out[:, :covered] == 0)
    assert np.all(out[:, covered:] == 90)


@pytest.mark.parametrize(("severity", "width"), [(1, 1), (2, 2), (3, 4)])
def test_border_is_a_white_frame_of_the_stated_width(severity, width):
    x = np.full((20, 30, 1), 40, dtype=np.float32)  # shorter side 20: 5, 10, 20 % -> 1, 2, 4
    out = corrupt(x, "border", severity)
    frame = np.ones((20, 30), dtype=bool)
    frame[width:-width, width:-width] = False
    assert np.all(out[frame] == 255)
    assert np.all(out[~frame] == 40)


@pytest.mark.parametrize(
    ("severity", "expected"),
    [(1, [[50, 100], [150, 100]]), (2, [[70, 100], [130, 100]]), (3, [[85, 100], [115, 100]])],
)
def test_contrast_moves_towards_the_mean(severity, expected):
    x = grid([[0, 100], [200, 100]])  # mean 100; c = 0.5, 0.3, 0.15
    assert np.array_equal(corrupt(x, "contrast", severity), grid(expected))


def test_noise_is_seeded_reproducible_and_has_the_stated_sigma():
    x = np.full((200, 200, 1), 128, dtype=np.float32)
    for severity, sigma in ((1, 10.0), (2, 20.0), (3, 40.0)):
        a = corrupt(x, "gaussian_noise", severity, seed=3)
        b = corrupt(x, "gaussian_noise", severity, seed=3)
        assert a.tobytes() == b.tobytes()
        noise = np.asarray(a, dtype=np.float64) - 128
        # rounding adds variance 1/12; clipping at 128 +- 3.2 sigma is negligible
        assert abs(noise.std() - math.sqrt(sigma**2 + 1 / 12)) < 0.03 * sigma
        assert abs(noise.mean()) < 0.03 * sigma
    other_seed = corrupt(x, "gaussian_noise", 2, seed=4)
    assert not np.array_equal(other_seed, corrupt(x, "gaussian_noise", 2, seed=3))


def test_noise_depends_on_the_image_and_is_the_same_in_every_channel():
    grey = np.full((16, 16, 3), 100, dtype=np.float32)
    out = corrupt(grey, "gaussian_noise", 2)
    assert np.array_equal(out[:, :, 0], out[:, :, 1])
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    brighter = np.full((16, 16, 3), 101, dtype=np.float32)
    shifted = np.asarray(corrupt(brighter, "gaussian_noise", 2)) - 1
    assert not np.array_equal(shifted, out)  # another image, another noise field


def test_corruption_seed_depends_on_content_name_severity_and_seed():
    x = textured()
    base = corruption_seed(x, "gaussian_noise", 1, 0)
    assert base == corruption_seed(x.copy(), "gaussian_noise", 1, 0)
    changed = x.copy()
    changed[0, 0, 0] = (changed[0, 0, 0] + 1) % 256
    others = {
        corruption_seed(changed, "gaussian_noise", 1, 0),
        corruption_seed(x, "gaussian_blur", 1, 0),
        corruption_seed(x, "gaussian_noise", 2, 0),
        corruption_seed(x, "gaussian_noise", 1, 1),
        corruption_seed(x.reshape(48, 40, 1), "gaussian_noise", 1, 0),
    }
    assert base not in others and len(others) == 5


def test_blur_keeps_a_constant_image_and_blurs_a_step_by_the_stated_sigma():
    flat = np.full((30, 40, 1), 77, dtype=np.float32)
    for severity in (1, 2, 3):
        assert np.array_equal(corrupt(flat, "gaussian_blur", severity), flat)
    # Step 0 | 255 between columns 99 and 100; shorter side 100, severity 3: sigma = 4 px.
    # A pixel at column j then has 255 * Phi((j - 99.5) / 4) (the sampled kernel is within a
    # level of the continuous one at this sigma).
    step = np.zeros((100, 200, 1), dtype=np.float32)
    step[:, 100:] = 255
    out = corrupt(step, "gaussian_blur", 3)
    for j in (96, 99, 100, 101, 105):
        phi = 0.5 * (1 + math.erf((j - 99.5) / 4 / math.sqrt(2)))
        assert abs(float(out[50, j, 0]) - 255 * phi) <= 1.0, j
    assert np.all(out[:, :10] == 0) and np.all(out[:, -10:] == 255)


def test_jpeg_keeps_a_constant_image_and_loses_more_at_higher_severity():
    flat = np.full((32, 32, 1), 150, dtype=np.float32)
    for severity, quality in ((1, 25), (2, 12), (3, 5)):
        out = np.asarray(corrupt(flat, "jpeg", severity))
        assert out.min() == out.max()  # a constant image has only a DC coefficient
        # which is quantised with the IJG table's step 16 * (5000 / q) / 100, rounded (32, 67,
        # 160 for q = 25, 12, 5); a pixel moves by at most half of it / 8, plus rounding.
        step = (16 * (5000 // quality) + 50) // 100
        assert abs(float(out[0, 0, 0]) - 150) <= step / 16 + 0.5
    x = textured(64, 64)
    errors = [float(np.mean((corrupt(x, "jpeg", s) - x) ** 2)) for s in (1, 2, 3)]
    assert 0 < errors[0] < errors[1] < errors[2]
    rgb = corrupt(textured(16, 24, 3), "jpeg", 2)
    assert rgb.shape == (16, 24, 3)


def test_crop_zoom_keeps_the_centre_at_full_size():
    x = np.full((50, 50, 1), 200, dtype=np.float32)
    x[15:35, 15:35] = 7  # the central 40 %: what severity 3 keeps
    out = corrupt(x, "crop_zoom", 3)
    assert out.shape == x.shape
    assert np.all(out == 7)
    mild = corrupt(x, "crop_zoom", 1)  # the central 80 % still holds some of the 200 ring
    assert mild.shape == x.shape and float(mild.max()) > 7 and float(mild[25, 25, 0]) == 7


def test_burned_text_writes_white_text_and_leaves_the_rest_alone():
    x = np.full((120, 160, 1), 60, dtype=np.float32)
    changed = []
    for severity in (1, 2, 3):
        out = np.asarray(corrupt(x, "burned_text", severity))
        diff = out[:, :, 0] != 60
        assert diff.any() and np.all(out[diff] == 255)
        height, *lines = CORRUPTIONS["burned_text"].level(severity)
        assert np.array_equal(diff, text_mask((120, 160), lines, height))
        rows, cols = np.nonzero(diff)
        assert rows.min() >= round(0.02 * 120) and cols.min() >= round(0.02 * 120)
        changed.append(int(diff.sum()))
    assert changed[0] < changed[1] < changed[2]
    tiny = corrupt(np.zeros((6, 5, 1), dtype=np.float32), "burned_text", 3)  # clipped, no error
    assert tiny.shape == (6, 5, 1)


@pytest.mark.parametrize(("name", "severity"), conditions())
def test_every_output_is_an_8bit_image_and_deterministic(name, severity):
    x = textured(24, 32, 3, seed=1) + np.float32(0.4)  # non-integer input (a 16-bit source)
    before = x.copy()
    a = corrupt(x, name, severity, seed=5)
    b = corrupt(x, name, severity, seed=5)
    assert isinstance(a, LoadedImage) and a.source_bits == 8 and a.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(a, np.rint(a)) and a.min() >= 0 and a.max() <= 255
    assert a.shape == ((32, 24, 3) if name == "rotate90" else x.shape)
    assert np.array_equal(x, before)  # the input is not changed


def test_conditions_grade_some_and_run_the_others_once():
    assert len(conditions()) == 8 * 3 + 5
    assert conditions(["invert", "jpeg"], [2, 3]) == [("invert", 1), ("jpeg", 2), ("jpeg", 3)]
    for names, levels in ((["nope"], [1]), (["jpeg", "jpeg"], [1]), ([], [1]), (["jpeg"], [4]),
                          (["jpeg"], [1, 1]), (["jpeg"], [])):  # fmt: skip
        with pytest.raises(EvaluationError):
            conditions(names, levels)


def test_refusals_name_the_choices():
    with pytest.raises(EvaluationError, match="gaussian_blur"):
        corrupt(SMALL, "sharpen")
    with pytest.raises(EvaluationError, match="severities"):
        corrupt(SMALL, "invert", 2)
    with pytest.raises(EvaluationError, match="canonical"):
        corrupt(np.zeros((4, 4), dtype=np.float32), "invert")


def test_the_documented_table_lists_every_corruption_and_its_levels():
    rows = {name: levels for name, _, levels in corruption_table()}
    assert list(rows) == list(CORRUPTIONS)
    assert rows["gaussian_noise"] == "sigma = 1: 10; 2: 20; 3: 40"
    assert rows["invert"] == "one level"
