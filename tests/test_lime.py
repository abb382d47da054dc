"""LIME saliency: equal to lime's own explainer, seeded per image, all classes from one fit."""

from __future__ import annotations

import os

# tqdm reads its TQDM_* environment when it is first imported (by lime): silence lime's bar.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image
from sklearn.linear_model import Ridge

from conftest import build_linear_model, card_dict
from informer_audit.adapters.lime import LimeSaliency, image_random_state, weighted_ridge
from informer_audit.audit import Auditor
from informer_audit.errors import SaliencyError
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import adapter_from_settings, available_adapters, get_adapter
from informer_audit.scorers import InformerScorer

# Quickshift settings that cut a 32 px test image into ~16 segments (lime's defaults, tuned for
# photographs, leave it in 1-2 segments); the equivalence test also runs lime's defaults at 64 px.
FINE = {"kernel_size": 2, "max_dist": 20, "ratio": 0.5}
MEAN, STD = 0.5, 0.25  # conftest's card: (pixel / 255 - 0.5) / 0.25


def blocky_pixels(seed: int, size: int, channels: int, blocks: int = 4) -> np.ndarray:
    """A (size, size, channels) 8-bit-scale image of random flat blocks plus a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (blocks, blocks, 3)).astype(np.uint8)
    big = Image.fromarray(base).resize((size, size), Image.Resampling.NEAREST)
    arr = np.asarray(big, dtype=np.float64)[:, :, :channels]
    arr = arr + rng.normal(0, 6, arr.shape)
    return np.clip(arr, 0, 255).astype(np.float32)


def make_model(tmp_path, size=32, channels=3, k=3, hidden=6, seed=0, name="m.onnx"):
    """A small tanh network with logits of order 1, so probabilities are not saturated."""
    rng = np.random.default_rng(seed)
    d = channels * size * size
    w1 = rng.normal(0, 1 / np.sqrt(d), (d, hidden))
    w = rng.normal(0, 2.0, (hidden, k))
    b = rng.normal(0, 0.1, k)
    card = card_dict([f"C{i}" for i in range(k)], size, channels)
    path = build_linear_model(
        tmp_path / name, w, b, channels=channels, size=size, hidden=w1, card=card
    )
    return OnnxClassifier(path, device="cpu")


def images(model: OnnxClassifier, n: int, seed: int = 0) -> np.ndarray:
    size, c = model.card.image_size[0], model.card.channels
    return model.preprocess([blocky_pixels(seed + i, size, c) for i in range(n)])


def to_unit_rgb(x_i: np.ndarray) -> np.ndarray:
    """One preprocessed (C, H, W) input -> the (H, W, 3) float64 [0, 1] image lime is given."""
    rgb = (x_i.astype(np.float64) * STD + MEAN).transpose(1, 2, 0)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


def lime_classifier(model: OnnxClassifier, target: str):
    """lime's classifier_fn: (B, H, W, 3) [0, 1] images -> (B, K) scores of the ONNX model."""

    def fn(batch: np.ndarray) -> np.ndarray:
        x = ((batch - MEAN) / STD).transpose(0, 3, 1, 2)[:, : model.card.channels]
        z = model.logits(x.astype(np.float32))
        return 1.0 / (1.0 + np.exp(-z)) if target == "probability" else z

    return fn


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path)


# -- equivalence with lime -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, channels, segmentation, fill, target",
    [
        (64, 3, "default", "mean", "probability"),
        (32, 3, "fine", "mean", "probability"),
        (32, 3, "fine", 40.0, "probability"),
        (32, 3, "fine", "mean", "logit"),
        (32, 1, "fine", "mean", "probability"),
        (32, 3, "slic", "mean", "probability"),
    ],
)
def test_coefficients_equal_lime_explain_instance(
    tmp_path, size, channels, segmentation, fill, target
):
    model = make_model(tmp_path, size=size, channels=channels)
    x = images(model, 2)
    k = len(model.card.class_names)
    params: dict = {"num_samples": 150, "fill": fill, "target": target, "batch_size": 40}
    if segmentation == "fine":
        params.update(FINE)
    elif segmentation == "slic":
        params.update(segmentation="slic", n_segments=12, compactness=10.0)
    maps = LimeSaliency(**params).explain(model, x)
    assert maps.shape == (2, k, size, size)
    for i in range(2):
        # lime, given the image's random state, draws the same segmentation seed and masks.
        explainer = LimeImageExplainer(kernel_width=0.25, random_state=image_random_state(0, x[i]))
        segmentation_fn = None  # lime's own default: quickshift 4 / 200 / 0.2
        if segmentation == "fine":
            # lime hands the seed it draws first only to its default segmentation: replay it.
            seed = image_random_state(0, x[i]).randint(0, high=1000)
            segmentation_fn = SegmentationAlgorithm("quickshift", random_seed=seed, **FINE)
        elif segmentation == "slic":
            segmentation_fn = SegmentationAlgorithm(
                "slic", n_segments=12, compactness=10.0, start_label=0
            )
        explanation = explainer.explain_instance(
            to_unit_rgb(x[i]),
            lime_classifier(model, target),
            labels=range(k),
            top_labels=None,
            hide_color=None if fill == "mean" else float(fill) / 255.0,
            num_samples=150,
            batch_size=10,
            segmentation_fn=segmentation_fn,
        )
        segments = explanation.segments
        assert len(np.unique(segments)) >= 5  # a real test needs several segments
        for cls in range(k):
            pairs = explanation.local_exp[cls]
            assert len(pairs) == len(np.unique(segments))  # lime kept every segment
            for seg, coef in pairs:
                np.testing.assert_allclose(maps[i, cls][segments == seg], coef, rtol=0, atol=1e-6)


def test_weighted_ridge_equals_sklearn_per_column():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (120, 9)).astype(float)
    y = rng.normal(size=(120, 4))
    w = rng.uniform(0.05, 1.0, 120)
    coef, intercept = weighted_ridge(x, y, w, alpha=1.0)
    assert coef.shape == (9, 4) and intercept.shape == (4,)
    for k in range(4):
        ridge = Ridge(alpha=1.0, fit_intercept=True).fit(x, y[:, k], sample_weight=w)
        np.testing.assert_allclose(coef[:, k], ridge.coef_, rtol=0, atol=1e-10)
        np.testing.assert_allclose(intercept[k], ridge.intercept_, rtol=0, atol=1e-10)


# -- seeding and invariance ----------------------------------------------------------------------
def test_same_image_and_seed_give_identical_maps(model):
    x = images(model, 3)
    a = LimeSaliency(num_samples=60, **FINE).explain(model, x)
    b = LimeSaliency(num_samples=60, **FINE).explain(model, x)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_maps_do_not_depend_on_batch_size(model, batch_size):
    x = images(model, 3)
    reference = LimeSaliency(num_samples=60, batch_size=32, **FINE).explain(model, x)
    maps = LimeSaliency(num_samples=60, batch_size=batch_size, **FINE).explain(model, x)
    np.testing.assert_allclose(maps, reference, rtol=1e-6, atol=1e-9)


def test_maps_do_not_depend_on_neighbours_or_order(model):
    x = images(model, 4)
    lime = LimeSaliency(num_samples=60, batch_size=25, **FINE)
    together = lime.explain(model, x)
    order = np.array([2, 0, 3, 1])
    shuffled = lime.explain(model, x[order])
    alone = lime.explain(model, x[1:2])
    np.testing.assert_allclose(shuffled, together[order], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(alone, together[1:2], rtol=1e-6, atol=1e-9)


def test_other_seed_draws_other_masks(model):
    x = images(model, 2)
    a = LimeSaliency(num_samples=60, seed=0, **FINE).explain(model, x)
    b = LimeSaliency(num_samples=60, seed=1, **FINE).explain(model, x)
    assert not np.allclose(a, b)
    # Different noise, same underlying explanation: the maps still agree in direction.
    for i in range(2):
        for k in range(a.shape[1]):
            assert np.corrcoef(a[i, k].ravel(), b[i, k].ravel())[0, 1] > 0.5
    masks_a = image_random_state(0, x[0]).randint(0, 2, 100)
    masks_b = image_random_state(1, x[0]).randint(0, 2, 100)
    assert not np.array_equal(masks_a, masks_b)


def test_random_state_depends_on_content_not_position(model):
    x = images(model, 2)
    copy = np.array(x[0], copy=True)
    assert np.array_equal(
        image_random_state(5, x[0]).randint(0, 2**31, 8),
        image_random_state(5, copy).randint(0, 2**31, 8),
    )
    assert not np.array_equal(
        image_random_state(5, x[0]).randint(0, 2**31, 8),
        image_random_state(5, x[1]).randint(0, 2**31, 8),
    )


# -- what the perturbed inputs look like -------------------------------------------------------
class Recorder:
    """Wraps model.logits to keep every batch the adapter sends."""

    def __init__(self, model: OnnxClassifier) -> None:
        self.batches: list[np.ndarray] = []
        self._logits = model.logits

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(x, copy=True))
        return self._logits(x)


@pytest.mark.parametrize("fill", ["mean", 0.0, 200.0])
def test_hidden_segments_take_the_fill(model, monkeypatch, fill):
    x = images(model, 1)
    recorder = Recorder(model)
    monkeypatch.setattr(model, "logits", recorder)
    lime = LimeSaliency(num_samples=30, fill=fill, batch_size=100, **FINE)
    lime.explain(model, x)
    sent = np.concatenate(recorder.batches)
    plan = lime._plan(model, x[0])
    assert sent.shape == (len(plan.unique), *x.shape[1:])  # each distinct mask once
    # the all-ones mask (sample 0) is the image itself
    np.testing.assert_array_equal(sent[plan.inverse[0]], x[0])
    shown = np.isclose(sent, x[0][None], atol=0)
    if fill == "mean":
        segments = lime._plan(model, x[0]).segments
        expected = np.empty_like(x[0])
        for s in np.unique(segments):
            expected[:, segments == s] = x[0][:, segments == s].mean(axis=1, keepdims=True)
        hidden_ok = np.isclose(sent, expected[None], rtol=0, atol=1e-6)
    else:
        value = (fill / 255.0 - MEAN) / STD  # the pixel value in model-input units
        hidden_ok = np.isclose(sent, np.float32(value), rtol=0, atol=1e-6)
    assert (shown | hidden_ok).all()
    assert (~shown).any()  # something was hidden


def test_fill_changes_the_maps(model):
    x = images(model, 2)
    mean = LimeSaliency(num_samples=60, **FINE).explain(model, x)
    black = LimeSaliency(num_samples=60, fill=0.0, **FINE).explain(model, x)
    assert not np.allclose(mean, black)


# -- a model whose answer we know ------------------------------------------------------------------
def test_region_model_gives_coefficients_only_in_its_region(tmp_path):
    """logit_0 sums the left half of the image, logit_1 the right half, logit_2 both, negated.

    With a constant fill and the logit target, hiding segment s moves logit k by exactly
    c_ks = sum_{i in s} w_ki (x_i - fill): LIME's coefficients must follow c_ks.
    """
    size, c = 32, 3
    w_img = np.zeros((c, size, size, 3))
    w_img[:, :, : size // 2, 0] = 0.01
    w_img[:, :, size // 2 :, 1] = 0.01
    w_img[:, :, :, 2] = -0.005
    weights = w_img.reshape(-1, 3)
    path = build_linear_model(
        tmp_path / "region.onnx",
        weights,
        np.zeros(3),
        channels=c,
        size=size,
        card=card_dict(["left", "right", "all"], size, c),
    )
    model = OnnxClassifier(path, device="cpu")
    x = images(model, 2)
    lime = LimeSaliency(num_samples=400, fill=0.0, target="logit", **FINE)
    maps = lime.explain(model, x)
    fill = (0.0 - MEAN) / STD
    for i in range(2):
        segments = lime._plan(model, x[i]).segments
        contribution = (w_img.transpose(3, 0, 1, 2) * (x[i] - fill)[None]).sum(axis=1)  # (K,H,W)
        for k in range(3):
            per_segment = np.bincount(segments.ravel(), contribution[k].ravel())
            expected = per_segment[segments]
            assert np.corrcoef(maps[i, k].ravel(), expected.ravel())[0, 1] > 0.99
        left, right = maps[i, 0][:, : size // 2], maps[i, 0][:, size // 2 :]
        # Segments lying wholly in the other half get (almost) nothing.
        whole_right = [s for s in np.unique(segments) if (segments == s)[:, : size // 2].sum() == 0]
        assert whole_right
        for s in whole_right:
            assert abs(maps[i, 0][segments == s][0]) < 0.02 * np.abs(left).max()
        assert left.max() > 0 and right.max() < left.max()
        assert (maps[i, 2] <= 1e-3 * np.abs(maps[i, 2]).max()).all()  # negative weights


# -- accounting ----------------------------------------------------------------------------------
def test_forward_passes_and_progress(model):
    x = images(model, 3)
    lime = LimeSaliency(num_samples=50, batch_size=32, **FINE)
    calls: list[tuple[int, int]] = []
    model.n_forward = 0
    lime.explain(model, x, logits=model.logits(x), progress=lambda d, t: calls.append((d, t)))
    assert model.n_forward == 3 + 3 * 50  # the caller's logits, then num_samples per image
    assert lime.forward_passes(32, 32) == 50
    assert calls[-1] == (150, 150)
    assert [d for d, _ in calls] == [32, 64, 96, 128, 150]  # batches span images


def test_one_channel_model_and_slic(tmp_path):
    model = make_model(tmp_path, channels=1, name="gray.onnx")
    x = images(model, 2)
    lime = LimeSaliency(num_samples=40, segmentation="slic", n_segments=16)
    maps = lime.explain(model, x)
    assert maps.shape == (2, 3, 32, 32) and np.isfinite(maps).all()
    segments = lime._plan(model, x[0]).segments
    assert 6 <= segments.max() + 1 <= 30  # roughly the n_segments asked for
    assert segments.min() == 0
    for s in np.unique(segments):  # one value per segment and class
        assert np.ptp(maps[0][:, segments == s], axis=1).max() == 0


def test_runs_inside_the_auditor(tmp_path, model):
    from conftest import write_images

    paths = write_images(tmp_path / "imgs", 3, size=32, mode="RGB")
    auditor = Auditor(
        model, InformerScorer(get_adapter("lime", num_samples=30, **FINE)), keep_maps=True
    )
    results = list(auditor.run([(p.name, p) for p in paths]))
    assert all(r.ok for r in results)
    assert results[0].maps is not None and results[0].maps.shape == (3, 32, 32)
    assert results[0].d is not None and np.all((results[0].d >= 0) & (results[0].d <= 4))


# -- settings ------------------------------------------------------------------------------------
def test_registry_and_settings():
    assert available_adapters()["lime"] is LimeSaliency
    lime = get_adapter("lime", num_samples=500, batch_size=8, seed=3)
    assert LimeSaliency.access == "scores"
    assert lime.settings() == {
        "name": "lime",
        "fill": "mean",
        "kernel_size": 4.0,
        "kernel_width": 0.25,
        "max_dist": 200.0,
        "num_samples": 500,
        "ratio": 0.2,
        "seed": 3,
        "segmentation": "quickshift",
        "target": "probability",
    }
    slic = LimeSaliency(segmentation="slic", fill=12)
    assert slic.settings()["n_segments"] == 50 and slic.settings()["fill"] == 12.0
    assert "kernel_size" not in slic.settings()
    assert lime.params()["batch_size"] == 8
    rebuilt = adapter_from_settings(lime.settings(), batch_size=16)
    assert rebuilt.settings() == lime.settings() and rebuilt.params()["batch_size"] == 16


def test_defaults_follow_lime():
    lime = LimeSaliency()
    assert (lime.kernel_size, lime.max_dist, lime.ratio) == (4.0, 200.0, 0.2)
    assert lime.kernel_width == 0.25 and lime.fill == "mean" and lime.target == "probability"
    assert lime.num_samples == 1000
    assert LimeSaliency(fill="40").fill == 40.0  # as a CLI option passes it


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 1}, "num_samples must be an integer >= 2, got 1"),
        ({"num_samples": 10.5}, "num_samples"),
        ({"num_samples": True}, "num_samples"),
        ({"segmentation": "felzenszwalb"}, r"segmentation must be one of \['quickshift', 'slic'\]"),
        ({"kernel_size": 0}, "kernel_size must be a positive number"),
        ({"max_dist": float("nan")}, "max_dist"),
        ({"ratio": 1.5}, r"ratio must be a number in \[0, 1\]"),
        ({"n_segments": 0}, "n_segments"),
        ({"compactness": -1}, "compactness"),
        ({"fill": "black"}, r"fill must be 'mean' or a pixel value in \[0, 255\], got 'black'"),
        ({"fill": 300}, "fill"),
        ({"fill": None}, "fill"),
        ({"fill": float("nan")}, "fill"),
        ({"fill": True}, "fill"),
        ({"kernel_width": 0}, "kernel_width"),
        ({"target": "prob"}, r"target must be one of \['probability', 'logit'\]"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(SaliencyError, match=match):
        LimeSaliency(**kwargs)


def test_wrong_input_shape_is_refused(model):
    with pytest.raises(SaliencyError, match=r"expected preprocessed input of shape \(N, 3, H, W\)"):
        LimeSaliency(num_samples=10).explain(model, np.zeros((2, 1, 32, 32), np.float32))


def test_repeated_masks_are_scored_once_with_the_same_maps(model, monkeypatch):
    """Few segments make masks repeat; scoring each distinct mask once changes nothing."""
    x = images(model, 2)
    lime = LimeSaliency(num_samples=200, segmentation="slic", n_segments=4, compactness=10.0)
    plans = [lime._plan(model, x[i]) for i in range(2)]
    distinct = sum(len(p.unique) for p in plans)
    assert distinct < 2 * 200  # 4 segments: at most 16 distinct masks per image
    model.n_forward = 0
    maps = lime.explain(model, x)
    assert model.n_forward == distinct
    # Reference: score all 200 masks of each image, repeats included, and fit the same ridge.
    for i, plan in enumerate(plans):
        shown = plan.masks[:, plan.segments][:, None]  # (200, 1, H, W)
        perturbed = np.where(shown, x[i][None], plan.fill[None]).astype(np.float32)
        z = model.logits(perturbed)
        coef, _ = weighted_ridge(plan.masks, 0.5 * (1 + np.tanh(0.5 * z)), plan.weights, 1.0)
        np.testing.assert_allclose(maps[i], coef.T[:, plan.segments], rtol=1e-6, atol=1e-9)
