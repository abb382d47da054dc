"""Baseline scores (entropy, MSP, TTA spread) and their scorers, against hand values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit

from informer_audit import baselines
from informer_audit.baselines import (
    augment_image,
    black_fill,
    box_blur,
    crop_with_padding,
    draw_augmentations,
    entropy_score,
    image_rng,
    msp_score,
    rotate_image,
    tta_copies,
    tta_settings,
    tta_spread,
)
from informer_audit.errors import EvaluationError
from informer_audit.model import OnnxClassifier
from informer_audit.monitorfile import load_monitor, save_monitor
from informer_audit.scorers import ProbabilityScorer, available_scorers, make_monitor, scorer_class

METHODS = available_scorers()
CARD = SimpleNamespace(scale=255.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class RowModel:
    """A numpy 'model' that scores each image on its own (so batching cannot change a bit).

    ``logits = tanh-free linear map of the flattened image``; records every batch size.
    """

    def __init__(self, shape: tuple[int, int, int], k: int = 2, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0, 0.3, (int(np.prod(shape)), k))
        self.card = CARD
        self.batches: list[int] = []

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.shape[0])
        return np.stack([xi.reshape(-1).astype(np.float64) @ self.w for xi in x])


class ConstantModel:
    card = CARD

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.tile([0.3, -1.2], (x.shape[0], 1))


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (5, 3, 12, 12)).astype(np.float32)


# -- scores from probabilities ------------------------------------------------------------------


def test_entropy_hand_computed():
    p = np.array([[0.0, 0.5, 1.0, 0.25, 0.1]])
    # H(0.25) = 0.25 * 2 + 0.75 * log2(4/3) = 0.5 + 0.311278; H(0.1) = 0.1 log2 10 + 0.9 log2 10/9.
    expected = [[0.0, 1.0, 0.0, 0.8112781, 0.4689956]]
    np.testing.assert_allclose(entropy_score(p), expected, atol=1e-7)
    assert entropy_score(p).shape == (1, 5)


def test_msp_hand_computed():
    p = np.array([[0.2, 0.5, 0.9], [0.0, 1.0, 0.65]])
    np.testing.assert_allclose(msp_score(p), [[0.8, 0.5, 0.9], [1.0, 1.0, 0.65]])


def test_entropy_and_msp_rank_alike():
    p = np.random.default_rng(0).uniform(0, 1, (50, 2))
    h, m = entropy_score(p), msp_score(p)
    for j in range(2):
        # Both decrease in |p - 0.5|: opposite orders, so the same ranking of failures.
        np.testing.assert_array_equal(np.argsort(h[:, j]), np.argsort(-m[:, j]))


@pytest.mark.parametrize(
    "bad", [np.array([[0.2, 1.1]]), np.array([[np.nan, 0.5]]), np.array([0.2, 0.3])]
)
def test_probability_scores_refuse_bad_input(bad):
    with pytest.raises(EvaluationError):
        entropy_score(bad)
    with pytest.raises(EvaluationError):
        msp_score(bad)


# -- the registry -------------------------------------------------------------------------------


def test_registry_directions_and_variants():
    assert {m: s.direction for m, s in METHODS.items()} == {
        "informer": "below",
        "learned": "above",
        "entropy": "above",
        "tta": "above",
        "msp": "below",
        "margin": "below",
    }
    assert scorer_class("informer_fd") is METHODS["informer"]
    assert scorer_class("learned_lime") is METHODS["learned"]
    assert scorer_class("tta_t20").name == "tta"
    for bad in ("nope", "nope_x", "no_audit", ""):
        with pytest.raises(EvaluationError, match="unknown monitor method"):
            scorer_class(bad)
    mon = make_monitor("informer_lime", grid_step=0.01)
    assert (mon.method, mon.direction, mon.grid_step) == ("informer", "below", 0.01)
    assert make_monitor("entropy").direction == "above"
    np.testing.assert_array_equal(scorer_class("msp")().score_probabilities([[0.3]]), [[0.7]])
    assert not issubclass(scorer_class("tta"), ProbabilityScorer)  # needs the model


@pytest.mark.parametrize("method", ["entropy", "msp"])
def test_baseline_monitor_uses_the_monitor_json(tmp_path, method):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (40, 2)).astype(float)
    probs = np.clip(0.4 * y + rng.uniform(0, 0.6, (40, 2)), 0, 1)
    scores = scorer_class(method)().score_probabilities(probs)
    mon = make_monitor(method).fit(scores, y, probs, ["A", "B"])
    binding = {
        "model_sha256": "0" * 64,
        "class_names": ["A", "B"],
        "audited_classes": ["A", "B"],
        "preprocessing": {},
        "saliency": {"method": method},
    }
    save_monitor(tmp_path / "m.json", mon, binding)
    back = load_monitor(tmp_path / "m.json").monitor
    assert (back.method, back.direction) == (method, METHODS[method].direction)
    np.testing.assert_array_equal(back.flag(scores), mon.flag(scores))


# -- augmentations, each on a tiny array --------------------------------------------------------


def test_black_fill_is_normalised_zero():
    np.testing.assert_allclose(black_fill(CARD, 3), [-2.0, -2.0, -2.0])
    card = SimpleNamespace(scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    np.testing.assert_allclose(
        black_fill(card, 3), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6
    )
    one = SimpleNamespace(scale=255.0, mean=(0.5,), std=(0.5,))  # one value for all channels
    np.testing.assert_allclose(black_fill(one, 3), [-1.0] * 3)


def test_box_blur_is_a_10x10_mean_with_mirrored_border():
    x = np.zeros((1, 12, 12), np.float32)
    x[0, 6, 6] = 1.0
    out = box_blur(x, 10)
    # An even window covers 5 pixels before and 4 after: rows/cols 2..11 see the pixel once.
    expected = np.zeros((12, 12))
    expected[2:12, 2:12] = 0.01
    np.testing.assert_allclose(out[0], expected, atol=1e-7)
    corner = np.zeros((1, 12, 12), np.float32)
    corner[0, 0, 0] = 1.0
    # Mirror (d c b | a b c d) does not repeat the edge pixel; reflect would count it twice.
    assert box_blur(corner, 10)[0, 0, 0] == pytest.approx(0.01)
    const = np.full((2, 7, 9), 3.5, np.float32)
    np.testing.assert_allclose(box_blur(const, 10), const, rtol=1e-6)


def test_crop_with_padding_shifts_and_fills():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    fill = np.array([-9.0])
    np.testing.assert_array_equal(crop_with_padding(x, (2, 2), 2, fill), x)
    out = crop_with_padding(x, (0, 0), 2, fill)  # content moves 2 down, 2 right
    np.testing.assert_array_equal(out[0, 2:, 2:], x[0, :2, :2])
    assert (out[0, :2, :] == -9).all() and (out[0, :, :2] == -9).all()
    out = crop_with_padding(x, (4, 3), 2, fill)  # out[i, j] = x[i + 2, j + 1]
    np.testing.assert_array_equal(out[0, :2, :3], x[0, 2:, 1:])
    assert (out[0, 2:, :] == -9).all() and (out[0, :, 3] == -9).all()
    with pytest.raises(EvaluationError):
        crop_with_padding(x, (5, 0), 2, fill)


def test_rotation_by_known_angles():
    x = np.arange(50, dtype=np.float32).reshape(2, 5, 5)
    fill = np.array([-1.0, -7.0])
    np.testing.assert_allclose(rotate_image(x, 0.0, fill), x, atol=1e-5)
    # Positive angles turn counter-clockwise, like np.rot90 (and torchvision).
    np.testing.assert_allclose(rotate_image(x, 90.0, fill), np.rot90(x, 1, axes=(1, 2)), atol=1e-4)
    np.testing.assert_allclose(
        rotate_image(x, -90.0, fill), np.rot90(x, -1, axes=(1, 2)), atol=1e-4
    )
    const = np.ones((2, 9, 9), np.float32)
    out = rotate_image(const, 45.0, fill)
    # The centre stays; the corners come from outside the image and take each channel's fill.
    np.testing.assert_allclose(out[:, 4, 4], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, -7.0], atol=1e-6)


def test_augment_image_composes_rotate_blur_crop():
    x = np.random.default_rng(0).normal(0, 1, (3, 10, 10)).astype(np.float32)
    fill = black_fill(CARD, 3)
    got = augment_image(x, 30.0, (1, 5), fill, blur_size=4, padding=3)
    expected = crop_with_padding(box_blur(rotate_image(x, 30.0, fill), 4), (1, 5), 3, fill)
    np.testing.assert_allclose(got, expected)


def test_draws_are_in_range_and_seeded():
    angles, offsets = draw_augmentations(np.random.default_rng(0), 500, max_angle=45, padding=8)
    assert angles.shape == (500,) and offsets.shape == (500, 2)
    assert angles.min() >= -45 and angles.max() <= 45 and angles.min() < -40 < 40 < angles.max()
    assert offsets.min() == 0 and offsets.max() == 16
    a2, o2 = draw_augmentations(np.random.default_rng(0), 500, max_angle=45, padding=8)
    np.testing.assert_array_equal(angles, a2)
    np.testing.assert_array_equal(offsets, o2)


def test_image_rng_depends_on_content_and_seed_only(images):
    draw = lambda x, seed: image_rng(x, seed).uniform(size=3)  # noqa: E731
    np.testing.assert_array_equal(draw(images[0], 0), draw(images[0].copy(), 0))
    np.testing.assert_array_equal(draw(images[0], 0), draw(images[0].astype(np.float64), 0))
    assert not np.array_equal(draw(images[0], 0), draw(images[1], 0))
    assert not np.array_equal(draw(images[0], 0), draw(images[0], 1))


def test_tta_copies_use_the_drawn_angles(monkeypatch):
    x = np.random.default_rng(0).normal(0, 1, (1, 7, 7)).astype(np.float32)
    fill = np.array([0.0], np.float32)
    # Hook the draws: every copy is a 90 degree turn and a centred crop (no shift).
    monkeypatch.setattr(
        baselines,
        "draw_augmentations",
        lambda rng, copies, **kw: (np.full(copies, 90.0), np.full((copies, 2), kw["padding"])),
    )
    copies = tta_copies(x, 0, fill, copies=3, blur_size=1, padding=2)
    assert copies.shape == (3, 1, 7, 7)
    for c in copies:
        np.testing.assert_allclose(c, np.rot90(x, 1, axes=(1, 2)), atol=1e-4)


# -- the TTA spread -----------------------------------------------------------------------------


def test_constant_model_has_zero_spread(images):
    spread = tta_spread(ConstantModel(), images, copies=4)
    assert spread.shape == (5, 2)
    np.testing.assert_array_equal(spread, 0.0)


def test_spread_is_population_std_of_probabilities(images):
    model = RowModel(images.shape[1:])
    spread = tta_spread(model, images, copies=5, seed=3)
    fill = black_fill(CARD, 3)
    for i, img in enumerate(images):
        p = expit(model.logits(tta_copies(img, 3, fill, copies=5)))
        np.testing.assert_allclose(spread[i], p.std(axis=0, ddof=0), rtol=1e-12)
        assert not np.allclose(spread[i], p.std(axis=0, ddof=1))
    assert (spread > 0).all() and (spread <= 0.5).all()


def test_spread_is_seeded_and_independent_of_batching_and_order(images):
    model = RowModel(images.shape[1:])
    ref = tta_spread(model, images, copies=4, seed=7, batch_size=64)
    np.testing.assert_array_equal(ref, tta_spread(model, images, copies=4, seed=7))
    assert not np.array_equal(ref, tta_spread(model, images, copies=4, seed=8))
    order = np.array([3, 0, 4, 2, 1])
    shuffled = tta_spread(model, images[order], copies=4, seed=7, batch_size=5)
    np.testing.assert_array_equal(shuffled, ref[order])
    alone = tta_spread(model, images[2:3], copies=4, seed=7)
    np.testing.assert_array_equal(alone[0], ref[2])


def test_spread_batches_copies_and_reports_progress(images):
    model = RowModel(images.shape[1:])
    progress: list[tuple[int, int]] = []
    tta_spread(
        model, images, copies=10, batch_size=25, on_progress=lambda d, t: progress.append((d, t))
    )
    assert model.batches == [20, 20, 10]  # two images (20 copies) per call, all 50 copies
    assert progress == [(2, 5), (4, 5), (5, 5)]


def test_spread_with_an_onnx_model(tiny_model, images):
    path, _ = tiny_model(size=12, hidden=4)
    model = OnnxClassifier(path, device="cpu")
    spread = tta_spread(model, images, copies=3, seed=0)
    assert spread.shape == (5, 3) and model.n_forward == 15
    assert np.isfinite(spread).all() and (spread > 0).all() and (spread <= 0.5).all()
    # The card's black (mean 0.5, std 0.25 -> -2) is the default fill.
    explicit = tta_spread(model, images, copies=3, seed=0, fill=[-2.0, -2.0, -2.0])
    np.testing.assert_array_equal(spread, explicit)
    alone = tta_spread(model, images[4:], copies=3, seed=0)
    np.testing.assert_allclose(alone[0], spread[4], rtol=1e-5, atol=1e-7)


def test_tta_settings_and_refusals(images):
    s = tta_settings(copies=10, seed=0)
    assert (s["copies"], s["max_angle"], s["blur_size"], s["padding"]) == (10, 45.0, 10, 8)
    model = RowModel(images.shape[1:])
    with pytest.raises(EvaluationError, match="copies"):
        tta_spread(model, images, copies=1)
    with pytest.raises(EvaluationError, match="seed"):
        tta_spread(model, images, seed=-1)
    with pytest.raises(EvaluationError, match="max_angle"):
        tta_settings(max_angle=400)
    with pytest.raises(EvaluationError, match="N, C, H, W"):
        tta_spread(model, images[0])
    with pytest.raises(EvaluationError, match="fill"):
        tta_spread(model, images, fill=[0.0, 0.0])
    with pytest.raises(EvaluationError, match="card"):
        tta_spread(SimpleNamespace(logits=model.logits), images)
