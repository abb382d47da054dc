"""Youden thresholds, flag thresholds and the monitor file, against hand-computed cases."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from informer_audit.binding import check_binding
from informer_audit.errors import MonitorFormatError, MonitorMismatchError, NotFittedError
from informer_audit.monitor import (
    FlagMonitor,
    best_flag_threshold,
    scan_flag_thresholds,
    threshold_grid,
    youden_threshold,
)
from informer_audit.monitorfile import load_monitor, save_monitor

# -- Youden -------------------------------------------------------------------------------------


def test_youden_hand_computed():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.35, 0.8, 0.6, 0.9])
    # t = 0.8: TPR 2/3, FPR 0 -> J = 0.667; t = 0.35: TPR 1, FPR 1/3 -> J = 0.667 (tie);
    # t = 0.6: TPR 2/3, FPR 1/3 -> 0.333. The tie goes to the highest threshold.
    assert youden_threshold(y, p) == pytest.approx(0.8)


def test_youden_second_tie_and_perfect_separation():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.2, 0.4, 0.5, 0.45, 0.7, 0.9])
    # t = 0.7: TPR 2/3, FPR 0 -> J = 2/3; t = 0.45: TPR 1, FPR 1/3 -> J = 2/3 (a tie);
    # t = 0.9: J = 1/3. The tie goes to the highest threshold, 0.7.
    assert youden_threshold(y, p) == pytest.approx(0.7)
    y2 = np.array([0, 0, 1, 1])
    p2 = np.array([0.1, 0.2, 0.3, 0.4])
    assert youden_threshold(y2, p2) == pytest.approx(0.3)  # perfect separation


def test_youden_undefined_without_positives_or_negatives():
    assert youden_threshold(np.zeros(4), np.linspace(0, 1, 4)) is None
    assert youden_threshold(np.ones(4), np.linspace(0, 1, 4)) is None


# -- flag thresholds ----------------------------------------------------------------------------


def test_grid_reaches_the_largest_score():
    g = threshold_grid(np.array([0.0, 0.0123]), 0.001)
    assert g[0] == 0 and g[-1] == pytest.approx(0.013) and len(g) == 14
    assert threshold_grid(np.array([0.002]), 0.001)[-1] == pytest.approx(0.002)


def test_scan_matches_sklearn_f1_everywhere():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    yhat = rng.integers(0, 2, 60)
    d = rng.uniform(0, 0.3, 60).round(3)  # ties on the grid on purpose
    for direction in ("below", "above"):
        taus, f1, n_flags = scan_flag_thresholds(y, yhat, d, direction=direction)
        for tau, f, n in zip(taus, f1, n_flags, strict=True):
            flags = d < tau if direction == "below" else d > tau
            assert n == flags.sum()
            assert f == pytest.approx(f1_score(y, yhat ^ flags, zero_division=0))


def test_flag_threshold_hand_computed():
    # Two wrong predictions with low d, two right ones with higher d.
    y = np.array([1, 0, 1, 0, 1])
    yhat = np.array([0, 1, 1, 0, 1])
    d = np.array([0.10, 0.20, 0.50, 0.60, 0.70])
    # tau <= 0.1 flags nothing: TP 2 FP 1 FN 1 -> F1 = 4/6. tau in (0.1, 0.2] flags image 0:
    # TP 3 FP 1 FN 0 -> 6/7. tau in (0.2, 0.5] flags 0, 1: TP 3 FP 0 FN 0 -> 1. Higher flags
    # right predictions and loses. Best: the smallest grid tau above 0.2, i.e. 0.201.
    assert best_flag_threshold(y, yhat, d) == pytest.approx(0.201)


def test_ties_flag_fewest():
    y = np.array([0, 0, 0, 1])
    yhat = np.array([1, 0, 1, 1])
    d = np.array([0.1, 0.2, 0.3, 0.4])
    # nothing flagged: TP 1, FP 2 -> F1 = 1/2. Flag {0} (FP -> TN): TP 1, FP 1 -> 2/3.
    # Flag {0, 1} (TN -> FP): back to 1/2. Flag {0, 1, 2} (FP -> TN): 2/3 again, a tie.
    # The tie goes to the threshold that flags fewest: one image, tau = 0.101.
    taus, f1, n_flags = scan_flag_thresholds(y, yhat, d)
    assert f1[np.isclose(taus, 0.101)][0] == pytest.approx(2 / 3)
    assert f1[np.isclose(taus, 0.301)][0] == pytest.approx(2 / 3)
    assert best_flag_threshold(y, yhat, d) == pytest.approx(0.101)


def test_flat_f1_keeps_flag_nothing():
    y = np.array([1, 1, 0])
    yhat = np.array([1, 1, 0])
    d = np.array([0.5, 0.6, 0.7])
    # Already perfect: every flag makes it worse, so tau = 0 (flag nothing).
    assert best_flag_threshold(y, yhat, d) == 0.0


def test_flag_nothing_when_nothing_helps():
    y = np.array([1, 0, 1, 0])
    yhat = np.array([1, 0, 0, 1])
    d = np.array([0.1, 0.2, 0.9, 0.8])  # the wrong ones have the HIGH distinctiveness
    assert best_flag_threshold(y, yhat, d) == 0.0


def test_class_without_positives_flags_nothing():
    y = np.zeros(5)
    yhat = np.array([1, 0, 1, 0, 0])
    d = np.linspace(0.1, 0.5, 5)
    assert best_flag_threshold(y, yhat, d) == 0.0
    mon = FlagMonitor().fit(
        np.column_stack([d, d]),
        np.column_stack([y, [1, 0, 1, 0, 1]]),
        np.column_stack([d, d]),
        ["none", "some"],
    )
    fit = mon.fits_[0]
    assert fit.flag_threshold == 0.0 and fit.n_flags == 0 and fit.n_pos == 0
    assert "no positive labels" in fit.note
    assert fit.prediction_threshold == 0.5


def test_above_direction_for_baselines():
    y = np.array([1, 0, 1, 0, 1])
    yhat = np.array([0, 1, 1, 0, 1])
    h = np.array([0.9, 0.8, 0.5, 0.4, 0.3])  # entropy: high means unsure
    tau = best_flag_threshold(y, yhat, h, direction="above")
    assert 0.5 <= tau < 0.8
    # ties flag fewest: the largest tau that flags the same two images
    assert tau == pytest.approx(0.799)


# -- the estimator ------------------------------------------------------------------------------


def toy_fit():
    rng = np.random.default_rng(7)
    n = 80
    y = rng.integers(0, 2, (n, 3)).astype(float)
    probs = np.clip(0.5 * y + rng.uniform(0, 0.6, (n, 3)), 0, 1)
    d = rng.uniform(0, 4, (n, 3))
    y[3, 1] = np.nan  # no label for this image and class
    return FlagMonitor().fit(d, y, probs, ["A", "B", "C"]), d, y, probs


def test_fit_predict_flag_audit():
    mon, d, y, probs = toy_fit()
    assert mon.fits_[1].n == 79 and mon.fits_[0].n == 80
    yhat, flags, audited = mon.audit(probs, d)
    np.testing.assert_array_equal(yhat, probs >= mon.prediction_thresholds_)
    np.testing.assert_array_equal(flags, d < mon.flag_thresholds_)
    np.testing.assert_array_equal(audited, yhat ^ flags)
    for j, fit in enumerate(mon.fits_):
        keep = np.isfinite(y[:, j])
        assert fit.f1_before == pytest.approx(f1_score(y[keep, j], yhat[keep, j]))
        assert fit.f1_after == pytest.approx(f1_score(y[keep, j], audited[keep, j]))
        assert fit.f1_after >= fit.f1_before  # tau = 0 is always a candidate
    np.testing.assert_array_equal(mon.decision_function(d) > 0, flags)


def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        FlagMonitor().flag(np.zeros((1, 2)))


BINDING = {
    "model_sha256": "ab" * 32,
    "class_names": ["A", "B", "C"],
    "audited_classes": ["A", "B", "C"],
    "preprocessing": {"image_size": [16, 16], "channels": 3, "mean": [0.5], "std": [0.25]},
    "saliency": {"name": "fd", "patch_size": 16, "scheme": "central", "step": 0.001},
}


def test_monitor_json_round_trip(tmp_path):
    mon, d, y, probs = toy_fit()
    path = tmp_path / "m.json"
    save_monitor(path, mon, BINDING, {"n_images": 80})
    loaded = load_monitor(path)
    mon2, binding, cal = loaded.monitor, loaded.binding, loaded.calibration
    assert binding == BINDING and cal == {"n_images": 80}
    np.testing.assert_array_equal(mon2.prediction_thresholds_, mon.prediction_thresholds_)
    np.testing.assert_array_equal(mon2.flag_thresholds_, mon.flag_thresholds_)
    for a, b in zip(mon.audit(probs, d), mon2.audit(probs, d), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(mon.fits_, mon2.fits_, strict=True):
        # every stored statistic survives the round trip (NaN, stored as null, included)
        np.testing.assert_equal(dataclasses.astuple(a), dataclasses.astuple(b))
    # saving twice gives the same bytes
    path2 = tmp_path / "m2.json"
    save_monitor(path2, mon2, binding, cal)
    assert path.read_bytes() == path2.read_bytes()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t[: len(t) // 2], "not valid monitor JSON"),
        (lambda t: t.replace('"schema_version": 1', '"schema_version": 2'), "schema_version 2"),
        (lambda t: t.replace('"format": "informer-audit-monitor"', '"format": "x"'), "not an"),
        (lambda t: t.replace('"flag_threshold"', '"flag_thresh"'), "flag_threshold"),
        (lambda t: t.replace('"model_sha256"', '"model"'), "binding"),
    ],
)
def test_damaged_monitor_files_are_refused(tmp_path, edit, match):
    mon, *_ = toy_fit()
    path = tmp_path / "m.json"
    save_monitor(path, mon, BINDING)
    path.write_text(edit(path.read_text()))
    with pytest.raises(MonitorFormatError, match=match):
        load_monitor(path)


def test_binding_mismatch_names_the_field():
    check_binding(BINDING, json.loads(json.dumps(BINDING)))
    other = json.loads(json.dumps(BINDING))
    other["saliency"]["patch_size"] = 32
    with pytest.raises(MonitorMismatchError, match=r"saliency\.patch_size is 16 .* but 32"):
        check_binding(BINDING, other, "m.json")
    other = json.loads(json.dumps(BINDING))
    other["model_sha256"] = "cd" * 32
    with pytest.raises(MonitorMismatchError, match="model_sha256"):
        check_binding(BINDING, other)
    other = json.loads(json.dumps(BINDING))
    other["audited_classes"] = ["A", "C", "B"]
    with pytest.raises(MonitorMismatchError, match="audited_classes"):
        check_binding(BINDING, other)
