"""Does the monitor help? The margin and learned flaggers, the cross-fitted estimate, retuned.

Hand-computed margins and F1-optimal thresholds; the learned flagger's thresholds fitted on
out-of-fold probabilities and its JSON round trip (identical probabilities); the cross-fitted
estimate seeded, reproducible and right on scores that do and do not find the errors; the
evaluation's retuned row, information table (gain 0 for functions of p) and paired bootstrap;
calibrate -> monitor JSON -> flag and report through the CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import calibrate, flag, invoke, read_rows
from informer_audit.baselines import entropy_score, msp_score
from informer_audit.crossfit import out_of_sample
from informer_audit.evaluation import RETUNED, ScoredSet, evaluate_methods
from informer_audit.learned import LearnedMonitor, flagger_features, flagger_probability
from informer_audit.learned import out_of_fold as learned_oof
from informer_audit.monitor import (
    PREDICT_NOTHING,
    MarginMonitor,
    best_flag_threshold,
    f1_threshold,
    threshold_margin,
)
from informer_audit.monitorfile import load_monitor, save_monitor
from informer_audit.numerics import logit
from informer_audit.scorers import make_monitor

CLASSES = ["A", "B", "C"]
BINDING = {
    "model_sha256": "ab" * 32,
    "class_names": CLASSES,
    "audited_classes": CLASSES,
    "preprocessing": {"image_size": [16, 16], "channels": 3},
    "saliency": {"name": "fd", "patch_size": 16, "scheme": "central", "step": 0.001},
    "method": {"name": "learned"},
}


def synthetic(n: int = 120, seed: int = 0):
    """Labels, probabilities, K x K distances and d for 3 classes (distances carry signal)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(float)
    probs = np.clip(0.35 * y + 0.6 * rng.random((n, 3)), 0.01, 0.99)
    half = np.triu(rng.uniform(0.2, 1.8, (n, 3, 3)), 1)
    dist = half + half.transpose(0, 2, 1)
    return y, probs, dist, dist.sum(axis=2)


# -- margin ---------------------------------------------------------------------------------------
def test_margin_is_the_distance_to_the_threshold_on_the_logit_scale():
    # |logit 0.8 - logit 0.5| = ln 4; |logit 0.2 - logit 0.3| = |ln(1/4) - ln(3/7)| = ln(12/7)
    got = threshold_margin(np.array([0.8, 0.2, 0.3]), 0.5)
    np.testing.assert_allclose(got, [math.log(4), math.log(4), math.log(7 / 3)], rtol=1e-12)
    np.testing.assert_allclose(threshold_margin(np.array([0.2]), 0.3), [math.log(12 / 7)])
    # "predict nothing" (t just above 1) is clipped like p: finite, large
    assert np.isfinite(threshold_margin(np.array([0.5]), PREDICT_NOTHING)).all()


def test_margin_monitor_fits_tau_on_the_hand_computed_margins():
    # Youden: t = 0.6 is the unique optimum (TPR 1, FPR 1/4; t = 0.7 and 0.9 give J = 1/2).
    p = np.array([0.95, 0.9, 0.72, 0.7, 0.6, 0.3, 0.2, 0.1])[:, None]
    y = np.array([1, 1, 0, 1, 1, 0, 0, 0], dtype=float)[:, None]
    mon = make_monitor("margin").fit(logit(p), y, p, ["A"])
    assert isinstance(mon, MarginMonitor)
    assert mon.prediction_thresholds_[0] == 0.6
    margins = np.abs(np.log(p[:, 0] / (1 - p[:, 0])) - math.log(0.6 / 0.4))
    np.testing.assert_allclose(mon.flag_scores(logit(p), p)[:, 0], margins, atol=1e-12)
    np.testing.assert_allclose(mon.calibration_scores_[:, 0], margins, atol=1e-12)
    yhat = p[:, 0] >= 0.6
    assert mon.flag_thresholds_[0] == best_flag_threshold(y[:, 0], yhat, margins)
    assert mon.fits_[0].f1_before == pytest.approx(8 / 9)  # TP 4, FP 1, FN 0
    with pytest.raises(ValueError, match="flags on the probabilities"):
        mon.flag(logit(p))


def test_f1_threshold_by_hand():
    # t = 0.7: TP 2, FP 1, FN 0 -> F1 0.8; t = 0.9: TP 1, FN 1 -> 2/3; t = 0.1: 2/3.
    assert f1_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == 0.7
    # ties in F1 go to the highest threshold: t = 0.9 (TP 1, FN 1) and t = 0.5 (TP 2, FP 2)
    # both give 2/3
    assert f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.5]) == 0.9
    assert f1_threshold([0, 0], [0.2, 0.3]) == PREDICT_NOTHING


# -- learned --------------------------------------------------------------------------------------
def test_learned_flag_thresholds_are_fitted_on_out_of_fold_probabilities():
    y, probs, dist, d = synthetic()
    mon = make_monitor("learned").fit(d, y, probs, CLASSES, dist=dist)
    assert isinstance(mon, LearnedMonitor) and mon.direction == "above"
    for j in range(3):
        t = mon.prediction_thresholds_[j]
        x = flagger_features(d[:, j], np.delete(dist[:, j], j, axis=1), probs[:, j], t)
        wrong = (probs[:, j] >= t) != (y[:, j] > 0.5)
        oof = learned_oof(x, wrong, seed=0)
        np.testing.assert_array_equal(mon.calibration_scores_[:, j], oof)
        # ... never the in-sample probabilities of the model kept for new images
        assert not np.allclose(oof, flagger_probability(mon.states_[j], x))
    # flags and the in-sample table are those of the out-of-fold probabilities
    flags = mon.flags_of(mon.calibration_scores_)
    assert [f.n_flags for f in mon.fits_] == flags.sum(axis=0).tolist()


def test_learned_monitor_json_round_trip_gives_identical_probabilities(tmp_path: Path):
    y, probs, dist, d = synthetic()
    mon = make_monitor("learned").fit(d, y, probs, CLASSES, dist=dist)
    path = tmp_path / "learned.json"
    save_monitor(path, mon, BINDING)
    doc = json.loads(path.read_text())
    model = doc["monitor"]["classes"][0]["model"]
    assert len(model["coef"]) == 3 + 3 and model["strength"] > 0  # d, 2 distances, p, |m|, yhat
    back = load_monitor(path).monitor
    new_y, new_p, new_dist, new_d = synthetic(50, seed=9)
    a = mon.flag_scores(new_d, new_p, new_dist)
    b = back.flag_scores(new_d, new_p, new_dist)
    np.testing.assert_array_equal(a, b)  # bit for bit
    np.testing.assert_array_equal(
        mon.flag(new_d, new_p, new_dist), back.flag(new_d, new_p, new_dist)
    )
    # an edited coefficient array is refused, naming the field
    doc["monitor"]["classes"][1]["model"]["coef"] = [1.0]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"classes\[1\]\.model.*coef: 6 numbers"):
        load_monitor(path)


def test_learned_class_with_too_few_errors_is_constant_and_flags_nothing():
    y, probs, dist, d = synthetic()
    probs[:, 2] = np.where(y[:, 2] > 0.5, 0.9, 0.1)  # class C: every prediction right
    mon = make_monitor("learned").fit(d, y, probs, CLASSES, dist=dist)
    assert mon.states_[2].constant and mon.fits_[2].n_flags == 0
    assert not mon.flag(d, probs, dist)[:, 2].any()


# -- the cross-fitted estimate -------------------------------------------------------------------
def _errors_and_scores(n: int = 200, seed: int = 1, informative: bool = True):
    """One class whose errors a score finds (informative) or does not (noise)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    probs = np.clip(np.where(y > 0.5, 0.7, 0.3) + rng.normal(0, 0.25, n), 0.01, 0.99)
    wrong = (probs >= 0.5) != (y > 0.5)
    noise = rng.uniform(0, 4, n)
    d = np.where(wrong, rng.uniform(0, 1, n), rng.uniform(1.5, 4, n)) if informative else noise
    return y[:, None], probs[:, None], d[:, None]


def test_cross_fitting_is_seeded_and_reproducible():
    y, probs, d = _errors_and_scores(informative=False)
    mon = make_monitor("informer").fit(np.c_[d, d], np.c_[y, y], np.c_[probs, probs], ["A", "B"])
    args = (mon, np.c_[d, d], np.c_[y, y], np.c_[probs, probs])
    a = out_of_sample(*args, n_repeats=4, n_resamples=200, seed=3)
    b = out_of_sample(*args, n_repeats=4, n_resamples=200, seed=3)
    c = out_of_sample(*args, n_repeats=4, n_resamples=200, seed=4)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.to_dict() for e in a] != [e.to_dict() for e in c]
    assert a[0].n_splits == 5 and a[0].n_repeats == 4


def test_cross_fitting_tells_a_score_that_finds_errors_from_noise():
    y, probs, d = _errors_and_scores(informative=True)
    mon = make_monitor("informer").fit(d, y, probs, ["A"])
    good = out_of_sample(mon, d, y, probs, n_repeats=5, n_resamples=500)[0]
    assert good.verdict == "expected to help" and good.delta_f1_low > 0
    assert good.delta_f1 > 0.1 and 0 < good.flag_rate < 0.5
    y, probs, noise = _errors_and_scores(informative=False)
    mon = make_monitor("informer").fit(noise, y, probs, ["A"])
    bad = out_of_sample(mon, noise, y, probs, n_repeats=5, n_resamples=500)[0]
    assert bad.verdict in ("no evidence", "expected to hurt", "flags nothing")
    assert bad.delta_f1 < good.delta_f1 - 0.1
    # The in-sample table is optimistic: the noise score "helps" there by construction.
    assert mon.fits_[0].f1_after >= mon.fits_[0].f1_before


def test_cross_fitting_without_enough_positives_gives_no_estimate():
    y, probs, d = _errors_and_scores()
    y[:, 0] = 0
    y[0, 0] = 1  # one positive: cannot stratify into 2 folds
    mon = make_monitor("informer").fit(d, y, probs, ["A"])
    est = out_of_sample(mon, d, y, probs, n_repeats=2, n_resamples=10)[0]
    assert est.verdict == "no estimate" and "1 positive" in est.note
    assert est.to_dict()["delta_f1"] is None


def test_cross_fitting_a_learned_monitor_reuses_its_strengths():
    y, probs, dist, d = synthetic()
    mon = make_monitor("learned").fit(d, y, probs, CLASSES, dist=dist)
    template = mon.cross_fit_template()
    assert template.strengths == [m.strength for m in mon.states_]
    est = out_of_sample(mon, d, y, probs, dist, n_repeats=2, n_resamples=100)
    assert [e.name for e in est] == CLASSES
    assert all(e.verdict != "no estimate" for e in est)


# -- the evaluation ------------------------------------------------------------------------------
def test_evaluation_has_retuned_information_and_paired_rows():
    y, probs, dist, d = synthetic(160, seed=2)
    cal, test = slice(0, 100), slice(100, 160)

    def scored(rows):
        return ScoredSet(
            y=y[rows],
            probs=probs[rows],
            scores={
                "informer_fd": d[rows],
                "learned_fd": d[rows],
                "entropy": entropy_score(probs[rows]),
                "msp": msp_score(probs[rows]),
                "margin": logit(probs[rows]),
            },
            dist={"informer_fd": dist[rows], "learned_fd": dist[rows]},
        )

    ev = evaluate_methods(scored(cal), scored(test), CLASSES, n_resamples=500)
    assert ev.rows == ["no_audit", RETUNED, "informer_fd", "learned_fd", "entropy", "msp", "margin"]
    expected_t = [f1_threshold(y[cal, j], probs[cal, j]) for j in range(3)]
    np.testing.assert_array_equal(ev.retuned_thresholds, expected_t)
    retuned = probs[test] >= np.asarray(expected_t)
    np.testing.assert_array_equal(ev.test[RETUNED].f1, _f1(y[test], retuned))
    info = {(m, c): t for m, c, t in ev.information}
    for method in ("entropy", "msp", "margin"):
        for c in CLASSES:
            t = info[(method, c)]
            assert t.cv_auroc_gain == 0.0 and t.p_value == 1.0 and t.lr_statistic == 0.0
    assert any(info[("informer_fd", c)].lr_statistic > 0 for c in CLASSES)
    pairs = [(a, b) for a, b, _ in ev.paired]
    assert ("informer_fd", "no_audit") in pairs and ("retuned", "no_audit") in pairs
    best = max(("entropy", "msp", "margin"), key=lambda m: ev.test[m].mean_f1)
    assert ("learned_fd", best) in pairs
    table = ev.paired_bootstrap_table()
    row = next(r for r in table.rows if r[:2] == ("informer_fd", "no_audit"))
    diff = ev.test["informer_fd"].mean_f1 - ev.test["no_audit"].mean_f1
    assert row[2] == pytest.approx(diff) and row[3] <= row[2] <= row[4]


def _f1(y, yhat):
    y = y > 0.5
    tp = (y & yhat).sum(0)
    fp = (~y & yhat).sum(0)
    fn = (y & ~yhat).sum(0)
    return 2 * tp / (2 * tp + fp + fn)


# -- through the command line ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["informer", "learned", "margin"])
def test_calibrate_reports_out_of_sample_and_flag_shows_it(labelled, tmp_path, method):
    env = labelled(n_val=24, n_audit=4)
    monitor = tmp_path / f"{method}.json"
    extra = ("--method", method, "--cv-repeats", "3")
    saliency = () if method == "margin" else ("--patch-size", 8)
    r = calibrate(env, monitor, *extra, saliency=saliency)
    assert r.exit_code == 0, r.output
    assert "In-sample: calibration on 24 images" in r.output
    assert "Out-of-sample: expected effect on new images" in r.output
    assert "Information beyond the probability" in r.output
    loaded = load_monitor(monitor)
    ev = loaded.evidence
    assert ev["settings"] == {"n_splits": 5, "n_repeats": 3, "n_resamples": 1000, "seed": 0}
    assert [e["name"] for e in ev["out_of_sample"]] == CLASSES
    out = tmp_path / "flags.csv"
    r = flag({**env, "monitor": monitor}, out, "--report", tmp_path / "report")
    assert r.exit_code == 0, r.output
    assert "calibrate's verdict" in r.output
    html = (tmp_path / "report" / "index.html").read_text()
    assert 'id="evidence"' in html
    rows = read_rows(out)
    score = {"informer": "d", "learned": "pwrong", "margin": "margin"}[method]
    assert all(f"{score}_A" in row for row in rows)
    if method == "learned":  # the CSV's probabilities are the monitor's, recomputed
        mon = loaded.monitor
        for row in rows:
            for j, c in enumerate(CLASSES):
                pw = float(row[f"pwrong_{c}"])
                assert 0.0 <= pw <= 1.0
                assert int(row[f"flag_{c}"]) == int(pw > mon.flag_thresholds_[j])


def test_calibrate_without_the_estimate(labelled, tmp_path):
    env = labelled()
    monitor = tmp_path / "m.json"
    r = calibrate(env, monitor, "--cv-repeats", "0")
    assert r.exit_code == 0, r.output
    assert "Out-of-sample" not in r.output
    assert "evidence" not in json.loads(monitor.read_text())
    assert load_monitor(monitor).evidence == {}


def test_evaluate_has_every_row_and_the_new_tables(labelled, tmp_path):
    env = labelled(n_val=24)
    out = tmp_path / "ev"
    r = invoke(
        "evaluate", env["model"], "--calib-images", env["val"], "--calib-labels", env["labels"],
        "--test-images", env["val"], "--test-labels", env["labels"], "-o", out,
        "--patch-size", 8, "--device", "cpu", "--tta-copies", 2, "--resamples", 300,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    methods = [row["method"] for row in read_rows(out / "table1.csv")]
    assert methods == [
        "no_audit", "retuned", "informer_fd", "learned_fd", "entropy", "tta", "msp", "margin"
    ]  # fmt: skip
    paired = read_rows(out / "paired_bootstrap.csv")
    assert {row["versus"] for row in paired} >= {"no_audit"}
    info = read_rows(out / "information.csv")
    assert {row["method"] for row in info} == set(methods) - {"no_audit", "retuned"}
    for row in info:
        if row["method"] in ("entropy", "msp", "margin"):
            assert float(row["cv_auroc_gain"]) == 0.0 and float(row["p_value"]) == 1.0
    report = (out / "report.md").read_text()
    assert "Paired t-tests (the paper's protocol)" in report
    assert "Paired bootstrap of the difference in mean F1" in report
    assert (out / "monitor_learned_fd.json").is_file() and (out / "monitor_margin.json").is_file()
