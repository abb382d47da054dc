"""Metrics of the paper's evaluation (METHOD.md section 6), on arrays.

* after swapping the flagged predictions: per-class F1, sensitivity and specificity and their
  means over classes (:func:`swap_metrics`);
* the bootstrap: test sets drawn with replacement (:func:`bootstrap_indices`), the mean F1 of
  each (:func:`bootstrap_mean_f1`), paired t-tests (:func:`paired_ttest`);
* threshold-free failure detection: AUROC of a score for "the prediction is wrong", AURC and
  AUGRC (:func:`risk_coverage_curve`, :func:`failure_metrics`).

Conventions *(ours)*: a class with no labelled image, or a metric whose denominator is zero
(F1 with no positives and none predicted, sensitivity without positives, AUROC when every
prediction is right), is NaN, and means over classes skip NaN classes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import EvaluationError
from .monitor import DIRECTIONS, f1_from_counts

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


# -- input checks -------------------------------------------------------------------------------
def as_labels(y: Any, what: str = "y") -> FloatArray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 2:
        raise EvaluationError(f"{what} must have shape (N, K), got {arr.shape}")
    known = arr[np.isfinite(arr)]
    if np.isinf(arr).any() or not np.isin(known, (0.0, 1.0)).all():
        bad = sorted({float(v) for v in arr[~np.isnan(arr)] if v not in (0.0, 1.0)})[:5]
        raise EvaluationError(f"{what} must hold 0, 1 or NaN (no label), found {bad}")
    return arr


def as_bools(a: Any, what: str, shape: tuple[int, ...]) -> BoolArray:
    arr = np.asarray(a)
    if arr.shape != shape:
        raise EvaluationError(f"{what} must have shape {shape} (like y), got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise EvaluationError(f"{what} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def as_finite(a: Any, what: str, shape: tuple[int, ...]) -> FloatArray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != shape:
        raise EvaluationError(f"{what} must have shape {shape} (like y), got {arr.shape}")
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise EvaluationError(
            f"{what} has {bad} non-finite values; leave out the images that could not be scored"
        )
    return arr


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise EvaluationError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    return direction


def nanmean(a: Any, axis: int = -1) -> Any:
    """Mean over ``axis`` of the finite values; NaN where there are none (without a warning)."""
    arr = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(arr)
    count = ok.sum(axis=axis)
    total = np.where(ok, arr, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _count(mask: BoolArray) -> IntArray:
    """Per-class counts of a (N, K) mask."""
    return np.asarray(mask.sum(axis=0), dtype=np.int64)


def ratio(num: IntArray, den: IntArray) -> FloatArray:
    num_f, den_f = num.astype(np.float64), den.astype(np.float64)
    return np.where(den > 0, num_f / np.where(den > 0, den_f, 1.0), np.nan)


# -- metrics after swapping ---------------------------------------------------------------------
@dataclass(frozen=True)
class SwapMetrics:
    """Per-class outcome of predictions after swapping the flagged ones.

    Attributes
    ----------
    f1, sensitivity, specificity : ndarray, shape (K,)
        NaN where undefined (F1: no positives and none predicted; sensitivity: no positives;
        specificity: no negatives).
    tp, fp, fn, tn : ndarray, shape (K,), int
        Confusion counts after swapping, over the labelled images of each class.
    n_flags : ndarray, shape (K,), int
        Flagged predictions among the labelled images of each class.
    n : ndarray, shape (K,), int
        Labelled images per class.
    """

    f1: FloatArray
    sensitivity: FloatArray
    specificity: FloatArray
    tp: IntArray
    fp: IntArray
    fn: IntArray
    tn: IntArray
    n_flags: IntArray
    n: IntArray

    @property
    def mean_f1(self) -> float:
        """Mean F1 over the classes where it is defined (NaN if none)."""
        return float(nanmean(self.f1))

    @property
    def mean_sensitivity(self) -> float:
        return float(nanmean(self.sensitivity))

    @property
    def mean_specificity(self) -> float:
        return float(nanmean(self.specificity))


def swap_metrics(y: Any, yhat: Any, flags: Any | None = None) -> SwapMetrics:
    """F1, sensitivity and specificity per class after swapping flagged predictions.

    ``yhat' = yhat XOR flags``; ``F1 = 2TP / (2TP + FP + FN)``, ``sensitivity = TP / (TP + FN)``,
    ``specificity = TN / (TN + FP)``, each over the images labelled for that class.

    Parameters
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    yhat : ndarray, shape (N, K), bool
        The model's predictions.
    flags : ndarray, shape (N, K), bool, optional
        The monitor's flags; ``None`` flags nothing (the ``no_audit`` row).

    Returns
    -------
    SwapMetrics
    """
    y = as_labels(y)
    yhat_b = as_bools(yhat, "yhat", y.shape)
    flags_b = np.zeros(y.shape, dtype=bool) if flags is None else as_bools(flags, "flags", y.shape)
    valid = np.isfinite(y)
    pos = valid & (y > 0.5)
    neg = valid & ~pos
    audited = yhat_b ^ flags_b
    tp, fn = _count(pos & audited), _count(pos & ~audited)
    fp, tn = _count(neg & audited), _count(neg & ~audited)
    return SwapMetrics(
        f1=np.asarray(f1_from_counts(tp, fp, fn), dtype=np.float64),
        sensitivity=ratio(tp, tp + fn),
        specificity=ratio(tn, tn + fp),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        n_flags=_count(valid & flags_b),
        n=_count(valid),
    )


# -- bootstrap and t-tests ----------------------------------------------------------------------
def bootstrap_indices(n: int, n_sets: int = 30, seed: int = 0) -> IntArray:
    """Indices of ``n_sets`` bootstrap sets of ``n`` images, drawn with replacement.

    ``numpy.random.default_rng(seed).integers(0, n, size=(n_sets, n))``: the same ``seed`` gives
    the same sets on every machine (numpy's Generator streams are stable across platforms).

    Returns
    -------
    ndarray, shape (n_sets, n), int64, values in ``0 .. n - 1``
    """
    for name, value, low in (("n", n, 1), ("n_sets", n_sets, 1), ("seed", seed, 0)):
        if not (isinstance(value, int | np.integer) and not isinstance(value, bool)):
            raise EvaluationError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise EvaluationError(f"{name} must be >= {low}, got {value}")
    rng = np.random.default_rng(int(seed))
    return rng.integers(0, int(n), size=(int(n_sets), int(n)), dtype=np.int64)


def bootstrap_mean_f1(y: Any, audited: Any, indices: Any) -> FloatArray:
    """Mean F1 over classes of each bootstrap set.

    Parameters
    ----------
    y : ndarray, shape (N, K)
        Labels, NaN where missing.
    audited : ndarray, shape (N, K), bool
        Predictions after swapping.
    indices : ndarray, shape (B, n)
        Rows of ``y`` in each set (:func:`bootstrap_indices`).

    Returns
    -------
    ndarray, shape (B,)
        Mean over the classes whose F1 is defined in that set (NaN if none).
    """
    y = as_labels(y)
    a = as_bools(audited, "audited", y.shape)
    idx = np.asarray(indices)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise EvaluationError(f"indices must be an integer (B, n) array, got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= y.shape[0]):
        raise EvaluationError(f"indices must lie in 0..{y.shape[0] - 1}")
    valid = np.isfinite(y)
    pos = valid & (y > 0.5)
    neg = valid & ~pos
    pos_b, neg_b, a_b = pos[idx], neg[idx], a[idx]  # (B, n, K)
    tp = np.sum(pos_b & a_b, axis=1)
    fp = np.sum(neg_b & a_b, axis=1)
    fn = np.sum(pos_b & ~a_b, axis=1)
    return np.asarray(nanmean(f1_from_counts(tp, fp, fn), axis=1), dtype=np.float64)


@dataclass(frozen=True)
class TTest:
    """A paired t-test of one INFORMER variant against one comparator over the bootstrap sets.

    Attributes
    ----------
    informer, baseline : str
        Method names (``baseline`` may be ``no_audit``).
    mean_difference : float
        Mean over sets of ``mean_f1[informer] - mean_f1[baseline]``.
    statistic, p_value : float
        ``scipy.stats.ttest_rel(informer, baseline)`` (two-sided); NaN when the differences are
        all equal (e.g. both flag nothing).
    n : int
        Number of bootstrap sets.
    """

    informer: str
    baseline: str
    mean_difference: float
    statistic: float
    p_value: float
    n: int

    @property
    def stars(self) -> str:
        return significance_stars(self.p_value)


def paired_ttest(a: Any, b: Any) -> tuple[float, float]:
    """Two-sided paired t-test, ``scipy.stats.ttest_rel(a, b)``.

    Parameters
    ----------
    a, b : ndarray, shape (B,)
        Paired samples (the mean F1 of two methods on the same bootstrap sets).

    Returns
    -------
    (statistic, p_value) : floats
        NaN when the differences have no variance.
    """
    from scipy.stats import ttest_rel

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape or a_arr.size < 2:
        raise EvaluationError(
            f"a paired t-test needs two 1-D samples of the same length >= 2, got {a_arr.shape} "
            f"and {b_arr.shape}"
        )
    with warnings.catch_warnings():
        # Constant differences (e.g. two monitors that both flag nothing) give NaN with a
        # "catastrophic cancellation" warning; NaN says it already.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_rel(a_arr, b_arr)
    return float(res.statistic), float(res.pvalue)


def significance_stars(p: float) -> str:
    """``***`` for p <= 0.001, ``**`` for p <= 0.01 (the paper's Fig. 3), ``*`` for p <= 0.05."""
    if not math.isfinite(p):
        return ""
    return "***" if p <= 0.001 else "**" if p <= 0.01 else "*" if p <= 0.05 else ""


# -- threshold-free failure detection -----------------------------------------------------------
@dataclass(frozen=True)
class RiskCoverageCurve:
    """Risk-coverage points of one confidence score, by ascending coverage.

    Attributes
    ----------
    coverage : ndarray, shape (P,)
        ``0``, then the fraction accepted at each distinct confidence threshold, ending at 1.
    selective_risk : ndarray, shape (P,)
        Errors among the accepted / number accepted; at coverage 0 it repeats the value of
        the first threshold (the convention of fd-shifts, Jaeger et al. 2023).
    generalized_risk : ndarray, shape (P,)
        Errors among the accepted / all samples; 0 at coverage 0 (Traub et al. 2024).
    """

    coverage: FloatArray
    selective_risk: FloatArray
    generalized_risk: FloatArray


def _binary(wrong: Any, what: str = "wrong") -> BoolArray:
    arr = np.asarray(wrong)
    if arr.ndim != 1:
        raise EvaluationError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise EvaluationError(f"{what} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def risk_coverage_curve(wrong: Any, confidence: Any) -> RiskCoverageCurve:
    """Risk-coverage curve of a confidence score, evaluated at its distinct values.

    Accepting the samples with ``confidence >= c`` for each distinct value ``c``, from the highest
    down, gives the operating points ``cov(c) = #accepted / n``, the selective risk
    ``SR(c) = #(accepted and wrong) / #accepted`` (Geifman & El-Yaniv 2017) and the generalized
    risk ``GR(c) = #(accepted and wrong) / n`` (Traub et al. 2024). Tied samples are accepted or
    rejected together, so ties never depend on the sort order. The points ``(0, SR of the first
    threshold)`` and ``(0, 0)`` close the curves at coverage 0, as fd-shifts does.

    Parameters
    ----------
    wrong : ndarray, shape (n,), bool
        Whether each prediction is wrong.
    confidence : ndarray, shape (n,)
        Higher means more confident that the prediction is right.

    Returns
    -------
    RiskCoverageCurve
    """
    w = _binary(wrong)
    kappa = as_finite(confidence, "confidence", w.shape)
    n = w.size
    if n == 0:
        raise EvaluationError("a risk-coverage curve needs at least one sample")
    order = np.argsort(-kappa, kind="stable")
    k_sorted = kappa[order]
    errors = np.cumsum(w[order], dtype=np.int64)
    # The last position of each group of equal confidences (sorted descending).
    ends = np.append(np.flatnonzero(k_sorted[1:] != k_sorted[:-1]), n - 1)
    accepted = (ends + 1).astype(np.float64)
    err = errors[ends].astype(np.float64)
    selective = err / accepted
    return RiskCoverageCurve(
        coverage=np.concatenate([[0.0], accepted / n]),
        selective_risk=np.concatenate([[selective[0]], selective]),
        generalized_risk=np.concatenate([[0.0], err / n]),
    )


def _trapezoid(y: FloatArray, x: FloatArray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aurc(wrong: Any, confidence: Any) -> float:
    """Area under the selective-risk-coverage curve.

    ``AURC = sum_i (cov_i - cov_{i-1}) (SR_i + SR_{i-1}) / 2`` over the points of
    :func:`risk_coverage_curve` (trapezoids between distinct thresholds, the selective risk held
    flat from the first threshold to coverage 0): fd-shifts' ``aurc`` (Jaeger et al. 2023,
    Traub et al. 2024), unscaled (fd-shifts shows it times 1000). Lower is better. Without ties it
    is ``(1/n) [sum_{i=2..n} (SR(i) + SR(i-1)) / 2 + SR(1)]`` with ``SR(i) = E_i / i`` and
    ``E_i`` the errors among the ``i`` most confident; Geifman & El-Yaniv's sum
    ``(1/n) sum_i SR(i)`` is the same curve by right endpoints and differs by
    ``(SR(1) - SR(n)) / 2n``.
    """
    c = risk_coverage_curve(wrong, confidence)
    return _trapezoid(c.selective_risk, c.coverage)


def augrc(wrong: Any, confidence: Any) -> float:
    """Area under the generalized-risk-coverage curve (Traub et al. 2024).

    ``AUGRC = sum_i (cov_i - cov_{i-1}) (GR_i + GR_{i-1}) / 2`` over the points of
    :func:`risk_coverage_curve`, ``GR = #(accepted and wrong) / n``: the average risk of an
    undetected failure. Lower is better. It equals
    ``(1 - AUROC) * rho * (1 - rho) + rho**2 / 2`` with ``rho`` the error rate and AUROC that of
    the score for "wrong" (ties counted as 1/2); 0 when nothing is wrong.
    """
    c = risk_coverage_curve(wrong, confidence)
    return _trapezoid(c.generalized_risk, c.coverage)


def failure_auroc(wrong: Any, score: Any) -> float:
    """AUROC of ``score`` (higher = more likely wrong) for ``wrong``; NaN if one outcome only."""
    from sklearn.metrics import roc_auc_score

    w = _binary(wrong)
    s = as_finite(score, "score", w.shape)
    if w.all() or not w.any():
        return float("nan")
    return float(roc_auc_score(w, s))


@dataclass(frozen=True)
class FailureMetrics:
    """Threshold-free failure detection of one score, per class.

    Attributes
    ----------
    auroc, aurc, augrc : ndarray, shape (K,)
        NaN for a class without labelled images (AUROC also when all its predictions are
        right, or all wrong).
    n, n_wrong : ndarray, shape (K,), int
        Labelled images and wrong predictions per class.
    curves : tuple of RiskCoverageCurve or None, length K
    """

    auroc: FloatArray
    aurc: FloatArray
    augrc: FloatArray
    n: IntArray
    n_wrong: IntArray
    curves: tuple[RiskCoverageCurve | None, ...]

    @property
    def mean_auroc(self) -> float:
        return float(nanmean(self.auroc))

    @property
    def mean_aurc(self) -> float:
        return float(nanmean(self.aurc))

    @property
    def mean_augrc(self) -> float:
        return float(nanmean(self.augrc))


def failure_metrics(y: Any, yhat: Any, score: Any, direction: str) -> FailureMetrics:
    """AUROC, AURC and AUGRC of a monitor score for "the prediction is wrong", per class.

    ``wrong = (yhat != y)`` over the labelled images of each class. The score is oriented so that
    higher means more likely wrong: ``w = score`` for ``direction="above"`` (entropy, TTA),
    ``w = -score`` for ``"below"`` (INFORMER, MSP); the confidence of the risk-coverage curves is
    ``-w``.

    Parameters
    ----------
    y : ndarray, shape (N, K)
        Labels, NaN where missing.
    yhat : ndarray, shape (N, K), bool
        The model's predictions (before any swap).
    score : ndarray, shape (N, K)
        The monitor's raw score.
    direction : {"below", "above"}
        The direction in which the monitor flags.

    Returns
    -------
    FailureMetrics
    """
    y = as_labels(y)
    yhat_b = as_bools(yhat, "yhat", y.shape)
    s = as_finite(score, "score", y.shape)
    w_score = s if check_direction(direction) == "above" else -s
    k = y.shape[1]
    auroc_k, aurc_k, augrc_k = (np.full(k, np.nan) for _ in range(3))
    n_k = np.zeros(k, dtype=np.int64)
    wrong_k = np.zeros(k, dtype=np.int64)
    curves: list[RiskCoverageCurve | None] = []
    for j in range(k):
        keep = np.isfinite(y[:, j])
        wrong = yhat_b[keep, j] != (y[keep, j] > 0.5)
        n_k[j], wrong_k[j] = keep.sum(), wrong.sum()
        if not keep.any():
            curves.append(None)
            continue
        curve = risk_coverage_curve(wrong, -w_score[keep, j])
        curves.append(curve)
        auroc_k[j] = failure_auroc(wrong, w_score[keep, j])
        aurc_k[j] = _trapezoid(curve.selective_risk, curve.coverage)
        augrc_k[j] = _trapezoid(curve.generalized_risk, curve.coverage)
    return FailureMetrics(auroc_k, aurc_k, augrc_k, n_k, wrong_k, tuple(curves))


__all__ = [
    "FailureMetrics",
    "RiskCoverageCurve",
    "SwapMetrics",
    "TTest",
    "augrc",
    "aurc",
    "bootstrap_indices",
    "bootstrap_mean_f1",
    "failure_auroc",
    "failure_metrics",
    "paired_ttest",
    "risk_coverage_curve",
    "significance_stars",
    "swap_metrics",
]
