"""Evaluation: metrics after swapping, bootstrap, t-tests, AUROC/AURC/AUGRC and the report."""

from __future__ import annotations

import csv
import io
import sys

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from informer_audit.baselines import entropy_score, msp_score
from informer_audit.errors import EvaluationError, ReportError
from informer_audit.evaluation import NO_AUDIT, RETUNED, ScoredSet, evaluate_methods
from informer_audit.evaluation_report import REPORT_FILES, write_evaluation_report
from informer_audit.metrics import (
    augrc,
    aurc,
    bootstrap_indices,
    bootstrap_mean_f1,
    failure_auroc,
    failure_metrics,
    paired_ttest,
    risk_coverage_curve,
    significance_stars,
    swap_metrics,
)

# -- metrics after swapping ---------------------------------------------------------------------


def test_swap_metrics_hand_computed():
    nan = np.nan
    y = np.array([[1, 1], [0, nan], [1, 0], [0, 0], [1, nan]])
    yhat = np.array([[0, 1], [1, 1], [1, 1], [0, 0], [1, 0]], dtype=bool)
    flags = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [0, 0]], dtype=bool)
    before = swap_metrics(y, yhat)
    # A: TP 2 FP 1 FN 1 TN 1. B (rows 0, 2, 3 labelled): TP 1 FP 1 FN 0 TN 1.
    np.testing.assert_allclose(before.f1, [4 / 6, 2 / 3])
    np.testing.assert_allclose(before.sensitivity, [2 / 3, 1.0])
    np.testing.assert_allclose(before.specificity, [1 / 2, 1 / 2])
    np.testing.assert_array_equal(before.n_flags, [0, 0])
    after = swap_metrics(y, yhat, flags)
    # A: rows 0 and 1 swapped -> TP 3 FP 0 FN 0 TN 2. B: row 2 swapped (row 1 is unlabelled).
    np.testing.assert_allclose(after.f1, [1.0, 1.0])
    np.testing.assert_allclose(after.specificity, [1.0, 1.0])
    np.testing.assert_array_equal(after.n_flags, [2, 1])
    np.testing.assert_array_equal(after.n, [5, 3])
    assert after.mean_f1 == pytest.approx(1.0)


def test_undefined_metrics_are_nan_and_means_skip_them():
    y = np.array([[0, 1], [0, 0], [0, 1]], dtype=float)
    yhat = np.array([[0, 1], [0, 0], [0, 0]], dtype=bool)
    m = swap_metrics(y, yhat)
    assert np.isnan(m.f1[0]) and np.isnan(m.sensitivity[0]) and m.specificity[0] == 1.0
    assert m.mean_f1 == pytest.approx(2 / 3)  # class B only: TP 1 FN 1


def test_swap_metrics_refuses_bad_input():
    with pytest.raises(EvaluationError, match="0, 1 or NaN"):
        swap_metrics(np.array([[2.0]]), np.array([[True]]))
    with pytest.raises(EvaluationError, match="shape"):
        swap_metrics(np.zeros((2, 2)), np.zeros((2, 3), dtype=bool))


# -- bootstrap and t-tests ----------------------------------------------------------------------


def test_bootstrap_indices_seeded_with_replacement():
    idx = bootstrap_indices(50, 30, seed=4)
    assert idx.shape == (30, 50) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() <= 49
    np.testing.assert_array_equal(idx, bootstrap_indices(50, 30, seed=4))
    np.testing.assert_array_equal(idx, np.random.default_rng(4).integers(0, 50, size=(30, 50)))
    assert not np.array_equal(idx, bootstrap_indices(50, 30, seed=5))
    assert all(len(np.unique(row)) < 50 for row in idx)  # repeats: drawn with replacement
    assert bootstrap_indices(7).shape == (30, 7)  # default: 30 sets of the test-set size
    for bad in ({"n": 0}, {"n": 5, "n_sets": 0}, {"n": 5, "seed": -1}, {"n": 2.5}):
        with pytest.raises(EvaluationError):
            bootstrap_indices(**bad)


def test_bootstrap_mean_f1_hand_computed():
    y = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    audited = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    idx = np.array([[0, 1, 2], [0, 0, 1], [2, 2, 2]])
    got = bootstrap_mean_f1(y, audited, idx)
    # Set 0: A TP 1 FP 1 FN 1 -> 1/2, B TP 2 -> 1; set 1: A TP 2 FP 1 -> 4/5, B TP 1 -> 1;
    # set 2: A FN 3 -> 0, B TP 3 -> 1.
    np.testing.assert_allclose(got, [(0.5 + 1) / 2, (0.8 + 1) / 2, 0.5])
    assert swap_metrics(y, audited).mean_f1 == pytest.approx(got[0])


def test_paired_ttest_is_scipys_ttest_rel():
    a = np.array([0.5, 0.6, 0.7, 0.65])
    b = np.array([0.45, 0.58, 0.6, 0.66])
    stat, p = paired_ttest(a, b)
    ref = ttest_rel(a, b)
    assert (stat, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    # By hand: d = (0.05, 0.02, 0.1, -0.01), mean 0.04, sd 0.0469042 -> t = 0.04 / (sd / 2).
    assert stat == pytest.approx(1.705606, rel=1e-6)
    stat, p = paired_ttest(a, a)  # no variance: NaN, no warning escapes
    assert np.isnan(stat) and np.isnan(p)
    with pytest.raises(EvaluationError):
        paired_ttest(a, b[:3])


def test_significance_stars():
    assert [significance_stars(p) for p in (0.0005, 0.001, 0.005, 0.03, 0.2, np.nan)] == [
        "***",
        "***",
        "**",
        "*",
        "",
        "",
    ]


# -- AUROC, AURC, AUGRC -------------------------------------------------------------------------


def test_risk_coverage_hand_computed():
    kappa = np.array([0.9, 0.8, 0.7, 0.6])
    wrong = np.array([0, 1, 0, 1], dtype=bool)
    c = risk_coverage_curve(wrong, kappa)
    np.testing.assert_allclose(c.coverage, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(c.selective_risk, [0, 0, 1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(c.generalized_risk, [0, 0, 1 / 4, 1 / 4, 1 / 2])
    # Trapezoids of width 1/4: (0 + 0 + 1/2 + 1/2 + 1/3 + 1/3 + 1/2) / 8 = 13/48.
    assert aurc(wrong, kappa) == pytest.approx(13 / 48)
    # (0 + 1/4 + 1/2 + 3/4) / 8 = 3/16.
    assert augrc(wrong, kappa) == pytest.approx(3 / 16)
    # Wrong scores (-kappa) above right ones in 3 of the 4 (wrong, right) pairs.
    assert failure_auroc(wrong, -kappa) == pytest.approx(0.75)


def test_risk_coverage_with_ties():
    kappa = np.array([0.9, 0.8, 0.8, 0.6])
    wrong = np.array([0, 1, 0, 1], dtype=bool)
    c = risk_coverage_curve(wrong, kappa)
    # The tied pair is accepted together: no point at coverage 1/2.
    np.testing.assert_allclose(c.coverage, [0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(c.selective_risk, [0, 0, 1 / 3, 1 / 2])
    # 1/4 * 0 + 1/2 * (0 + 1/3) / 2 + 1/4 * (1/3 + 1/2) / 2 = 3/16.
    assert aurc(wrong, kappa) == pytest.approx(3 / 16)
    # 1/2 * (0 + 1/4) / 2 + 1/4 * (1/4 + 1/2) / 2 = 5/32.
    assert augrc(wrong, kappa) == pytest.approx(5 / 32)
    assert failure_auroc(wrong, -kappa) == pytest.approx(0.875)  # the tied pair counts 1/2
    swapped = [0, 2, 1, 3]  # the order within a tie does not matter
    assert aurc(wrong[swapped], kappa[swapped]) == pytest.approx(3 / 16)
    assert augrc(wrong[swapped], kappa[swapped]) == pytest.approx(5 / 32)


def test_perfect_worst_and_flat_orderings():
    kappa = np.array([0.9, 0.8, 0.7, 0.6])
    best = np.array([0, 0, 1, 1], dtype=bool)  # the failures are the least confident
    assert aurc(best, kappa) == pytest.approx(7 / 48)
    assert augrc(best, kappa) == pytest.approx(0.5**2 / 2)
    assert failure_auroc(best, -kappa) == 1.0
    worst = best[::-1]
    assert aurc(worst, kappa) == pytest.approx(41 / 48)
    assert augrc(worst, kappa) == pytest.approx(0.5 * 0.5 + 0.5**2 / 2)
    assert failure_auroc(worst, -kappa) == 0.0
    flat = np.full(5, 0.3)
    w = np.array([1, 0, 0, 1, 0], dtype=bool)
    assert aurc(w, flat) == pytest.approx(0.4) and augrc(w, flat) == pytest.approx(0.2)
    right = np.zeros(4, dtype=bool)
    assert aurc(right, kappa) == 0.0 and augrc(right, kappa) == 0.0
    assert np.isnan(failure_auroc(right, -kappa))


def test_augrc_identity_with_auroc():
    # AUGRC = (1 - AUROC) rho (1 - rho) + rho^2 / 2 (Traub et al. 2024), ties included.
    rng = np.random.default_rng(5)
    for _ in range(5):
        wrong = rng.uniform(size=40) < 0.3
        kappa = rng.integers(0, 8, 40) / 8.0  # many ties
        rho = wrong.mean()
        auroc = roc_auc_score(wrong, -kappa)
        expected = (1 - auroc) * rho * (1 - rho) + rho**2 / 2
        assert augrc(wrong, kappa) == pytest.approx(expected)


def test_failure_metrics_orientation_and_missing_labels():
    y = np.array([[1, np.nan], [0, np.nan], [1, np.nan], [0, np.nan]])
    yhat = np.array([[1, 0], [1, 0], [1, 0], [0, 0]], dtype=bool)  # class A wrong: row 1
    kappa = np.array([0.9, 0.2, 0.5, 0.7])
    below = failure_metrics(y, yhat, np.stack([kappa, kappa], 1), "below")
    above = failure_metrics(y, yhat, np.stack([-kappa, -kappa], 1), "above")
    for f in (below, above):
        assert f.auroc[0] == 1.0 and f.augrc[0] == pytest.approx(0.25**2 / 2)
        assert f.aurc[0] == pytest.approx(aurc(np.array([0, 1, 0, 0], bool), kappa))
        assert np.isnan(f.auroc[1]) and np.isnan(f.aurc[1]) and f.curves[1] is None
        np.testing.assert_array_equal(f.n, [4, 0])
        np.testing.assert_array_equal(f.n_wrong, [1, 0])
        assert f.mean_auroc == 1.0
    with pytest.raises(EvaluationError, match="direction"):
        failure_metrics(y, yhat, np.zeros((4, 2)), "sideways")
    with pytest.raises(EvaluationError, match="non-finite"):
        failure_metrics(y, yhat, np.full((4, 2), np.nan), "below")


# -- evaluate_methods ---------------------------------------------------------------------------


def hand_sets() -> tuple[ScoredSet, ScoredSet]:
    """One class. Youden on calibration: 0.8 (ties with 0.3; the highest wins)."""
    cal_p = np.array([[0.9], [0.8], [0.3], [0.7], [0.2], [0.1]])
    cal_y = np.array([[1], [1], [1], [0], [0], [0]], dtype=float)
    cal_d = np.array([[1.0], [1.0], [0.1], [1.0], [1.0], [1.0]])  # the one error has low d
    test_p = np.array([[0.85], [0.75], [0.5], [0.1]])
    test_y = np.array([[1], [0], [1], [0]], dtype=float)
    test_d = np.array([[1.0], [1.0], [0.05], [0.5]])
    cal = ScoredSet(cal_y, cal_p, {"entropy": entropy_score(cal_p), "informer_x": cal_d})
    test = ScoredSet(test_y, test_p, {"entropy": entropy_score(test_p), "informer_x": test_d})
    return cal, test


def test_evaluate_methods_hand_computed():
    cal, test = hand_sets()
    res = evaluate_methods(cal, test, ["A"], n_bootstrap=5, seed=0)
    assert res.methods == ["informer_x", "entropy"] and res.rows[0] == NO_AUDIT
    assert res.prediction_thresholds[0] == pytest.approx(0.8)
    # informer: flag d < tau; flagging calibration row 2 alone gives F1 1: tau = 0.101.
    assert res.monitors["informer_x"].flag_thresholds_[0] == pytest.approx(0.101)
    # entropy: H(0.3) = H(0.7) = 0.8813 must both be flagged (F1 6/7 > 4/5); ties go to the
    # highest tau that flags the same two, 0.881.
    assert res.monitors["entropy"].flag_thresholds_[0] == pytest.approx(0.881)
    assert res.monitors["informer_x"].method == "informer"
    # Test: yhat = (1, 0, 0, 0), row 2 is a missed positive: F1 2/3 without audit. Both
    # monitors flag row 2 only (d 0.05 < 0.101; H(0.5) = 1 > 0.881): F1 1.
    t1 = res.table1()
    assert t1.columns == ("method", "A", "mean_f1")
    got = {row[0]: row[1:] for row in t1.rows}
    # retuned: the F1-optimal calibration threshold is 0.3 (TP 3, FP 1: F1 6/7 > 4/5 at 0.8);
    # on the test set p >= 0.3 gives (1, 1, 1, 0): TP 2, FP 1, FN 0, F1 0.8, and two
    # predictions differ from no_audit's.
    assert res.retuned_thresholds[0] == 0.3
    assert got == {
        NO_AUDIT: (pytest.approx(2 / 3), pytest.approx(2 / 3)),
        RETUNED: (pytest.approx(0.8), pytest.approx(0.8)),
        "informer_x": (1.0, 1.0),
        "entropy": (1.0, 1.0),
    }
    assert {r[0]: r[-1] for r in res.flags_table().rows} == {
        NO_AUDIT: 0,
        RETUNED: 2,
        "informer_x": 1,
        "entropy": 1,
    }
    sens = {r[0]: r[1] for r in res.sensitivity_table().rows}
    assert sens[NO_AUDIT] == pytest.approx(0.5) and sens["entropy"] == 1.0


def random_sets(seed: int = 0, n_cal: int = 60, n_test: int = 40, k: int = 3):
    rng = np.random.default_rng(seed)

    def one(n: int) -> ScoredSet:
        y = rng.integers(0, 2, (n, k)).astype(float)
        y[rng.uniform(size=(n, k)) < 0.05] = np.nan
        p = np.clip(0.35 * np.nan_to_num(y) + rng.uniform(0, 0.65, (n, k)), 0, 1)
        scores = {
            "informer_fd": rng.uniform(0, 2 * (k - 1), (n, k)).round(3),
            "entropy": entropy_score(p),
            "tta": rng.uniform(0, 0.2, (n, k)),
            "msp": msp_score(p),
            "informer_lime": rng.uniform(0, 2 * (k - 1), (n, k)),
        }
        return ScoredSet(y, p, scores)

    return one(n_cal), one(n_test)


def test_evaluation_rows_agree_with_the_monitors():
    cal, test = random_sets()
    classes = ["A", "B", "C"]
    res = evaluate_methods(cal, test, classes, n_bootstrap=6, seed=3)
    assert res.informer_methods == ["informer_fd", "informer_lime"]
    assert res.baseline_methods == ["entropy", "tta", "msp"]
    for name in res.methods:
        mon = res.monitors[name]
        yhat, flags, audited = mon.audit(test.probs, test.scores[name])
        m = swap_metrics(test.y, yhat, flags)
        np.testing.assert_array_equal(res.test[name].f1, m.f1)
        np.testing.assert_array_equal(res.test[name].n_flags, m.n_flags)
        boot = bootstrap_mean_f1(test.y, audited, res.bootstrap_indices)
        np.testing.assert_array_equal(res.bootstrap_mean_f1[name], boot)
    np.testing.assert_array_equal(res.bootstrap_indices, bootstrap_indices(40, 6, 3))
    pairs = [(t.informer, t.baseline) for t in res.ttests]
    assert pairs == [
        (i, b) for i in res.informer_methods for b in ["entropy", "tta", "msp", NO_AUDIT]
    ]
    for t in res.ttests:
        ref = ttest_rel(res.bootstrap_mean_f1[t.informer], res.bootstrap_mean_f1[t.baseline])
        assert t.statistic == pytest.approx(ref.statistic, nan_ok=True)
        assert t.p_value == pytest.approx(ref.pvalue, nan_ok=True)


def test_a_monitor_that_flags_nothing_ties_no_audit():
    cal, test = random_sets(seed=1)
    k = cal.y.shape[1]
    # A constant d is never below tau = 0 and no tau beats flagging nothing on it.
    cal = ScoredSet(cal.y, cal.probs, {"informer_flat": np.ones_like(cal.probs)})
    test = ScoredSet(test.y, test.probs, {"informer_flat": np.ones_like(test.probs)})
    res = evaluate_methods(cal, test, list("ABC")[:k], n_bootstrap=3)
    rows = {r[0]: r[1:] for r in res.table1().rows}
    assert rows["informer_flat"] == rows[NO_AUDIT]
    assert res.test["informer_flat"].n_flags.sum() == 0
    assert res.baseline_methods == [] and res.ttests[0].baseline == NO_AUDIT
    assert np.isnan(res.ttests[0].p_value)


def test_evaluate_methods_refusals():
    cal, test = random_sets()
    classes = ["A", "B", "C"]
    other = ScoredSet(test.y, test.probs, {"entropy": test.scores["entropy"]})
    with pytest.raises(EvaluationError, match="same methods"):
        evaluate_methods(cal, other, classes)
    bad = dict(test.scores, tta=np.full_like(test.probs, np.nan))
    with pytest.raises(EvaluationError, match="non-finite"):
        evaluate_methods(cal, ScoredSet(test.y, test.probs, bad), classes)
    with pytest.raises(EvaluationError, match="columns"):
        evaluate_methods(cal, test, ["A", "B"])
    with pytest.raises(EvaluationError, match="n_bootstrap"):
        evaluate_methods(cal, test, classes, n_bootstrap=1)
    with pytest.raises(EvaluationError, match="contradicts"):
        evaluate_methods(cal, test, classes, directions={"entropy": "below"})
    s = {"custom": cal.scores["tta"]}
    with pytest.raises(EvaluationError, match="unknown monitor method"):
        evaluate_methods(ScoredSet(cal.y, cal.probs, s), ScoredSet(cal.y, cal.probs, s), classes)
    res = evaluate_methods(
        ScoredSet(cal.y, cal.probs, s),
        ScoredSet(cal.y, cal.probs, s),
        classes,
        directions={"custom": "above"},
        n_bootstrap=2,
    )
    assert res.monitors["custom"].direction == "above" and res.baseline_methods == ["custom"]
    no = ScoredSet(cal.y, cal.probs, {NO_AUDIT: cal.scores["tta"]})
    with pytest.raises(EvaluationError, match="reserved"):
        evaluate_methods(no, no, classes, directions={NO_AUDIT: "above"})


# -- the report ---------------------------------------------------------------------------------


def read_csv(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


def test_write_report_files_headers_and_reproducibility(tmp_path):
    cal, test = random_sets(seed=2)
    res = evaluate_methods(cal, test, ["A", "B", "C"], n_bootstrap=4, seed=1)
    prov = {"model": "m.onnx", "saliency": {"fd": {"patch_size": 16}}}
    written = write_evaluation_report(res, tmp_path / "a", title="Eval", provenance=prov)
    assert sorted(p.name for p in written) == sorted(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(REPORT_FILES)  # no temps
    out = tmp_path / "a"
    t1 = read_csv(out / "table1.csv")
    assert t1[0] == ["method", "A", "B", "C", "mean_f1"]
    assert [r[0] for r in t1[1:]] == [NO_AUDIT, RETUNED, *res.methods]
    assert float(t1[1][4]) == pytest.approx(res.test[NO_AUDIT].mean_f1, rel=1e-7)
    boot = read_csv(out / "bootstrap.csv")
    assert boot[0] == ["bootstrap", "method", "mean_f1"] and len(boot) == 1 + 4 * 7
    paired = read_csv(out / "paired_bootstrap.csv")
    assert paired[0] == [
        "method", "versus", "difference", "low", "high", "p_value", "n_resamples"
    ]  # fmt: skip
    # every row against no_audit (6), retuned and the 2 informer rows against the best baseline
    assert len(paired) == 1 + 6 + 3
    info = read_csv(out / "information.csv")
    assert len(info) == 1 + 5 * 3 and info[0][:2] == ["method", "class"]
    assert read_csv(out / "failure_metrics.csv")[0] == ["method", "class", "auroc", "aurc", "augrc"]
    fm = read_csv(out / "failure_metrics.csv")[1:]
    assert len(fm) == 5 * 4 and [r[1] for r in fm[:4]] == ["A", "B", "C", "mean"]
    assert read_csv(out / "sensitivity.csv")[0][-1] == "mean_sensitivity"
    assert read_csv(out / "specificity.csv")[0][-1] == "mean_specificity"
    assert read_csv(out / "flags.csv")[0] == ["method", "A", "B", "C", "total"]
    tt = read_csv(out / "ttests.csv")
    assert tt[0] == [
        "informer",
        "baseline",
        "mean_difference",
        "statistic",
        "p_value",
        "n_bootstrap",
    ]
    assert len(tt) == 1 + 2 * 4
    assert (out / "bootstrap_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert report.startswith("# Eval\n") and "m.onnx" in report and "flags nothing" in report
    assert "bootstrap_boxplot.png" in report and "risk_coverage.png" in report
    write_evaluation_report(res, tmp_path / "b", title="Eval", provenance=prov)
    for name in REPORT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_write_report_without_plots_and_without_matplotlib(tmp_path, monkeypatch):
    cal, test = hand_sets()
    res = evaluate_methods(cal, test, ["A"], n_bootstrap=3)
    written = write_evaluation_report(res, tmp_path / "np", plots=False)
    assert not any(p.suffix == ".png" for p in written)
    assert ".png" not in (tmp_path / "np" / "report.md").read_text()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match="matplotlib"):
        write_evaluation_report(res, tmp_path / "x")
    assert not (tmp_path / "x").exists()
