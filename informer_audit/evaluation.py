"""Evaluation as in the paper (METHOD.md section 6), on arrays.

Everything here works on arrays that the caller has computed: labels ``y`` (N, K) with NaN where
an image has no label for a class, probabilities ``probs`` (N, K), and one raw score (N, K) per
monitor method (INFORMER's ``d`` per saliency adapter, entropy, TTA spread, MSP; see
:mod:`.baselines`). No model, no images; :func:`write_report` is the only function that writes.

:func:`evaluate_methods` fits one :class:`~.monitor.FlagMonitor` per method on the calibration set
(Youden prediction thresholds, then flag thresholds on the 0.001 grid, best F1 after swapping,
ties flag fewest) and reports on the test set:

* per-class F1, sensitivity and specificity after swapping the flagged predictions, and their
  means over classes (the paper's Table 1, S1, S2), with a ``no_audit`` row: the model's own
  predictions, nothing swapped. A monitor that flags nothing ties ``no_audit`` exactly, so the
  number of flags is reported beside every row;
* a bootstrap (B test sets drawn with replacement to the test-set size, default 30), the mean F1
  of every set and method, and paired t-tests of each INFORMER variant against each baseline and
  against ``no_audit`` (Fig. 3);
* threshold-free failure detection per class: AUROC of the score for "the prediction is wrong",
  AURC and AUGRC (:func:`risk_coverage_curve`).

Conventions *(ours)*: a class with no labelled image, or a metric whose denominator is zero
(F1 with no positives and none predicted, sensitivity without positives, AUROC when every
prediction is right), is NaN, and means over classes skip NaN classes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .baselines import make_monitor, method_spec
from .errors import EvaluationError, ReportError
from .fileio import atomic_write_bytes, atomic_write_text
from .monitor import DIRECTIONS, FlagMonitor, f1_from_counts

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

NO_AUDIT = "no_audit"
"""Row name of the model's own predictions, nothing flagged or swapped."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


# -- input checks -------------------------------------------------------------------------------
def _labels(y: Any, what: str = "y") -> FloatArray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 2:
        raise EvaluationError(f"{what} must have shape (N, K), got {arr.shape}")
    known = arr[np.isfinite(arr)]
    if np.isinf(arr).any() or not np.isin(known, (0.0, 1.0)).all():
        bad = sorted({float(v) for v in arr[~np.isnan(arr)] if v not in (0.0, 1.0)})[:5]
        raise EvaluationError(f"{what} must hold 0, 1 or NaN (no label), found {bad}")
    return arr


def _bools(a: Any, what: str, shape: tuple[int, ...]) -> BoolArray:
    arr = np.asarray(a)
    if arr.shape != shape:
        raise EvaluationError(f"{what} must have shape {shape} (like y), got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise EvaluationError(f"{what} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _finite(a: Any, what: str, shape: tuple[int, ...]) -> FloatArray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != shape:
        raise EvaluationError(f"{what} must have shape {shape} (like y), got {arr.shape}")
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise EvaluationError(
            f"{what} has {bad} non-finite values; leave out the images that could not be scored"
        )
    return arr


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise EvaluationError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    return direction


def _nanmean(a: Any, axis: int = -1) -> Any:
    """Mean over ``axis`` of the finite values; NaN where there are none (without a warning)."""
    arr = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(arr)
    count = ok.sum(axis=axis)
    total = np.where(ok, arr, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _count(mask: BoolArray) -> IntArray:
    """Per-class counts of a (N, K) mask."""
    return np.asarray(mask.sum(axis=0), dtype=np.int64)


def _ratio(num: IntArray, den: IntArray) -> FloatArray:
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
        return float(_nanmean(self.f1))

    @property
    def mean_sensitivity(self) -> float:
        return float(_nanmean(self.sensitivity))

    @property
    def mean_specificity(self) -> float:
        return float(_nanmean(self.specificity))


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
    y = _labels(y)
    yhat_b = _bools(yhat, "yhat", y.shape)
    flags_b = np.zeros(y.shape, dtype=bool) if flags is None else _bools(flags, "flags", y.shape)
    valid = np.isfinite(y)
    pos = valid & (y > 0.5)
    neg = valid & ~pos
    audited = yhat_b ^ flags_b
    tp, fn = _count(pos & audited), _count(pos & ~audited)
    fp, tn = _count(neg & audited), _count(neg & ~audited)
    return SwapMetrics(
        f1=np.asarray(f1_from_counts(tp, fp, fn), dtype=np.float64),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
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
    y = _labels(y)
    a = _bools(audited, "audited", y.shape)
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
    return np.asarray(_nanmean(f1_from_counts(tp, fp, fn), axis=1), dtype=np.float64)


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
    kappa = _finite(confidence, "confidence", w.shape)
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
    s = _finite(score, "score", w.shape)
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
        return float(_nanmean(self.auroc))

    @property
    def mean_aurc(self) -> float:
        return float(_nanmean(self.aurc))

    @property
    def mean_augrc(self) -> float:
        return float(_nanmean(self.augrc))


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
    y = _labels(y)
    yhat_b = _bools(yhat, "yhat", y.shape)
    s = _finite(score, "score", y.shape)
    w_score = s if _direction(direction) == "above" else -s
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


# -- tables -------------------------------------------------------------------------------------
def _csv_cell(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "nan" if math.isnan(v) else f"{float(v):.8g}"
    return str(v)


def _md_cell(v: Any, fmt: str) -> str:
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "n/a" if math.isnan(v) else format(float(v), fmt)
    return str(v).replace("|", "\\|")


@dataclass(frozen=True)
class Table:
    """A small table: column names and rows of plain values (str, int, float; NaN undefined).

    Rendered to CSV (:meth:`to_csv`, floats with 8 significant digits, NaN as ``nan``), to
    Markdown (:meth:`to_markdown`) or to a pandas DataFrame (:meth:`to_frame`).
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return buf.getvalue()

    def to_markdown(self, fmt: str = ".3f", formats: Mapping[str, str] | None = None) -> str:
        """Markdown table; floats use ``formats[column]`` or ``fmt``."""
        formats = formats or {}
        fmts = [formats.get(c, fmt) for c in self.columns]
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        for row in self.rows:
            lines.append(
                "| " + " | ".join(_md_cell(v, f) for v, f in zip(row, fmts, strict=True)) + " |"
            )
        return "\n".join(lines) + "\n"

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([list(r) for r in self.rows], columns=list(self.columns))


# -- the evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredSet:
    """Labels, probabilities and monitor scores of one image set (calibration or test).

    Attributes
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    probs : ndarray, shape (N, K)
        The model's probabilities.
    scores : mapping of str to ndarray, shape (N, K)
        Raw score per method name: a registered method (``entropy``, ``tta``, ``msp``,
        ``informer``) or a variant ``<method>_<label>`` (``informer_fd``, ``informer_lime``).
        Rows are the same images as ``y``; every value must be finite.
    """

    y: Any
    probs: Any
    scores: Mapping[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """Outcome of :func:`evaluate_methods`. Tables come from the methods below.

    Attributes
    ----------
    class_names : list of str, length K
    methods : list of str
        The evaluated monitors: INFORMER variants first, then the baselines, each group in the
        order given.
    informer_methods, baseline_methods : list of str
    directions : dict of str to str
        Flag direction per method.
    monitors : dict of str to FlagMonitor
        Fitted on the calibration set, per method; save them with
        :func:`~.monitor.save_monitor` to apply one with ``flag``.
    prediction_thresholds : ndarray, shape (K,)
        Youden thresholds on the calibration set (shared by every method).
    test : dict of str to SwapMetrics
        Test-set metrics after swapping, per row name (``no_audit`` and every method).
    n_calibration, n_test : int
    grid_step : float
    seed : int
    bootstrap_indices : ndarray, shape (B, n_test)
    bootstrap_mean_f1 : dict of str to ndarray, shape (B,)
        Per row name.
    ttests : list of TTest
        Every INFORMER variant against every baseline, then against ``no_audit``.
    failure : dict of str to FailureMetrics
        Per method (``no_audit`` has no score).
    """

    class_names: list[str]
    methods: list[str]
    informer_methods: list[str]
    baseline_methods: list[str]
    directions: dict[str, str]
    monitors: dict[str, FlagMonitor]
    prediction_thresholds: FloatArray
    test: dict[str, SwapMetrics]
    n_calibration: int
    n_test: int
    grid_step: float
    seed: int
    bootstrap_indices: IntArray
    bootstrap_mean_f1: dict[str, FloatArray]
    ttests: list[TTest]
    failure: dict[str, FailureMetrics]

    @property
    def rows(self) -> list[str]:
        """Row names of the per-method tables: ``no_audit``, then :attr:`methods`."""
        return [NO_AUDIT, *self.methods]

    @property
    def n_bootstrap(self) -> int:
        return int(self.bootstrap_indices.shape[0])

    def _per_class(self, attr: str, mean_name: str) -> Table:
        rows = []
        for name in self.rows:
            m = self.test[name]
            values = getattr(m, attr)
            rows.append((name, *(float(v) for v in values), float(_nanmean(values))))
        return Table(("method", *self.class_names, mean_name), tuple(rows))

    def table1(self) -> Table:
        """Paper's Table 1: ``method``, F1 after swapping per class, ``mean_f1``."""
        return self._per_class("f1", "mean_f1")

    def sensitivity_table(self) -> Table:
        """Sensitivity after swapping: ``method``, per class, ``mean_sensitivity``."""
        return self._per_class("sensitivity", "mean_sensitivity")

    def specificity_table(self) -> Table:
        """Specificity after swapping: ``method``, per class, ``mean_specificity``."""
        return self._per_class("specificity", "mean_specificity")

    def flags_table(self) -> Table:
        """Flags on the test set: ``method``, per class (labelled images), ``total``."""
        rows = []
        for name in self.rows:
            n_flags = self.test[name].n_flags
            rows.append((name, *(int(v) for v in n_flags), int(n_flags.sum())))
        return Table(("method", *self.class_names, "total"), tuple(rows))

    def thresholds_table(self) -> Table:
        """Fitted thresholds: the prediction thresholds, then each method's flag thresholds."""
        rows: list[tuple[Any, ...]] = [
            ("prediction (Youden)", "", *(float(t) for t in self.prediction_thresholds))
        ]
        for name in self.methods:
            mon = self.monitors[name]
            rows.append((name, mon.direction, *(float(t) for t in mon.flag_thresholds_)))
        return Table(("threshold", "flag_when", *self.class_names), tuple(rows))

    def bootstrap_table(self) -> Table:
        """Long format: ``bootstrap`` (0-based set number), ``method``, ``mean_f1``."""
        rows = [
            (b, name, float(self.bootstrap_mean_f1[name][b]))
            for b in range(self.n_bootstrap)
            for name in self.rows
        ]
        return Table(("bootstrap", "method", "mean_f1"), tuple(rows))

    def bootstrap_summary_table(self) -> Table:
        """Per method: median, quartiles, mean and range of the bootstrap mean F1."""
        rows = []
        for name in self.rows:
            v = self.bootstrap_mean_f1[name]
            v = v[np.isfinite(v)]
            if v.size:
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                stats = (float(med), float(q1), float(q3), float(v.mean()), v.min(), v.max())
            else:
                stats = (math.nan,) * 6
            rows.append((name, *(float(s) for s in stats)))
        return Table(("method", "median", "q1", "q3", "mean", "min", "max"), tuple(rows))

    def ttest_table(self) -> Table:
        """``informer``, ``baseline``, ``mean_difference``, ``statistic``, ``p_value``, ``n``."""
        rows = tuple(
            (t.informer, t.baseline, t.mean_difference, t.statistic, t.p_value, t.n)
            for t in self.ttests
        )
        return Table(
            ("informer", "baseline", "mean_difference", "statistic", "p_value", "n_bootstrap"),
            rows,
        )

    def failure_table(self) -> Table:
        """``method``, ``class`` (each class, then ``mean``), ``auroc``, ``aurc``, ``augrc``."""
        rows: list[tuple[Any, ...]] = []
        for name in self.methods:
            f = self.failure[name]
            for j, c in enumerate(self.class_names):
                rows.append((name, c, float(f.auroc[j]), float(f.aurc[j]), float(f.augrc[j])))
            rows.append((name, "mean", f.mean_auroc, f.mean_aurc, f.mean_augrc))
        return Table(("method", "class", "auroc", "aurc", "augrc"), tuple(rows))

    def errors_table(self) -> Table:
        """The model's errors on the test set per class: ``class``, ``n``, ``n_wrong``, rate."""
        m = self.test[NO_AUDIT]
        wrong = m.fp + m.fn
        rows = tuple(
            (c, int(m.n[j]), int(wrong[j]), float(_ratio(wrong, m.n)[j]))
            for j, c in enumerate(self.class_names)
        )
        return Table(("class", "n", "n_wrong", "error_rate"), rows)


def _method_roles(
    names: Sequence[str], directions: Mapping[str, str] | None, grid_step: float
) -> tuple[dict[str, str], dict[str, FlagMonitor], list[str], list[str]]:
    dirs: dict[str, str] = {}
    monitors: dict[str, FlagMonitor] = {}
    informer: list[str] = []
    baselines: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name or name == NO_AUDIT:
            raise EvaluationError(f"invalid method name {name!r} ({NO_AUDIT!r} is reserved)")
        given = (directions or {}).get(name)
        try:
            spec = method_spec(name)
        except EvaluationError:
            if given is None:
                raise
            # A method the registry does not know, flagged in the direction the caller gives.
            monitor = FlagMonitor(method=name, direction=_direction(given), grid_step=grid_step)
            is_informer = name.startswith("informer")
        else:
            if given is not None and given != spec.direction:
                raise EvaluationError(
                    f"method {name!r} flags {spec.direction!r} its threshold ({spec.name}); "
                    f"directions[{name!r}] = {given!r} contradicts it"
                )
            monitor = make_monitor(name, grid_step=grid_step)
            is_informer = spec.name == "informer"
        dirs[name] = monitor.direction
        monitors[name] = monitor
        (informer if is_informer else baselines).append(name)
    return dirs, monitors, informer, baselines


def _check_set(s: ScoredSet, what: str, k: int) -> tuple[FloatArray, FloatArray]:
    y = _labels(s.y, f"{what} y")
    if y.shape[1] != k:
        raise EvaluationError(f"{what} y has {y.shape[1]} columns for {k} classes")
    if y.shape[0] == 0:
        raise EvaluationError(f"the {what} set has no images")
    probs = _finite(s.probs, f"{what} probs", y.shape)
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise EvaluationError(f"{what} probs must lie in [0, 1]")
    return y, probs


def evaluate_methods(
    calibration: ScoredSet,
    test: ScoredSet,
    class_names: Sequence[str],
    *,
    directions: Mapping[str, str] | None = None,
    grid_step: float = 0.001,
    n_bootstrap: int = 30,
    seed: int = 0,
) -> Evaluation:
    """Fit every method on the calibration set and evaluate it on the test set.

    Parameters
    ----------
    calibration, test : ScoredSet
        The same method names in both; K columns everywhere.
    class_names : sequence of str, length K
    directions : mapping of str to {"below", "above"}, optional
        Flag direction of methods the registry does not know (:data:`.baselines.METHODS`);
        for registered methods and their variants it may only repeat the registry.
    grid_step : float
        Step of the flag-threshold grid (0.001 in the paper).
    n_bootstrap : int
        Number of bootstrap test sets (>= 2, for the t-tests).
    seed : int
        Seed of :func:`bootstrap_indices`.

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        Shapes that differ, labels other than 0/1/NaN, non-finite probabilities or scores,
        method sets that differ between the two sets, unknown methods without a direction.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0 or len(set(names)) != k:
        raise EvaluationError(f"class_names must be distinct and non-empty, got {names}")
    if not (isinstance(n_bootstrap, int | np.integer) and n_bootstrap >= 2):
        raise EvaluationError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}")
    if not (isinstance(grid_step, int | float) and grid_step > 0 and math.isfinite(grid_step)):
        raise EvaluationError(f"grid_step must be a positive number, got {grid_step!r}")
    cal_y, cal_p = _check_set(calibration, "calibration", k)
    test_y, test_p = _check_set(test, "test", k)
    cal_names, test_names = list(calibration.scores), list(test.scores)
    if not cal_names:
        raise EvaluationError("no monitor scores given: scores must name at least one method")
    if set(cal_names) != set(test_names):
        raise EvaluationError(
            f"the calibration set has scores for {cal_names}, the test set for {test_names}; "
            "both need the same methods"
        )
    dirs, monitors, informer, baselines = _method_roles(cal_names, directions, float(grid_step))
    methods = informer + baselines

    # The prediction thresholds depend only on y and probs; a monitor on an all-zero score with
    # direction "below" has tau = 0 everywhere: it fits them and flags nothing.
    reference = FlagMonitor(NO_AUDIT, "below", float(grid_step))
    reference.fit(np.zeros_like(cal_p), cal_y, cal_p, names)
    yhat = reference.predict(test_p)

    swapped: dict[str, SwapMetrics] = {NO_AUDIT: swap_metrics(test_y, yhat)}
    audited: dict[str, BoolArray] = {NO_AUDIT: yhat}
    failure: dict[str, FailureMetrics] = {}
    for name in methods:
        cal_s = _finite(calibration.scores[name], f"calibration scores[{name!r}]", cal_y.shape)
        test_s = _finite(test.scores[name], f"test scores[{name!r}]", test_y.shape)
        monitor = monitors[name].fit(cal_s, cal_y, cal_p, names)
        flags = monitor.flag(test_s)
        swapped[name] = swap_metrics(test_y, yhat, flags)
        audited[name] = yhat ^ flags
        failure[name] = failure_metrics(test_y, yhat, test_s, dirs[name])
        logger.debug("%s: %d flags on the test set", name, int(flags.sum()))

    idx = bootstrap_indices(test_y.shape[0], int(n_bootstrap), seed)
    boot = {row: bootstrap_mean_f1(test_y, audited[row], idx) for row in [NO_AUDIT, *methods]}
    ttests = []
    for inf in informer:
        for base in [*baselines, NO_AUDIT]:
            stat, p = paired_ttest(boot[inf], boot[base])
            diff = float(np.mean(boot[inf] - boot[base]))
            ttests.append(TTest(inf, base, diff, stat, p, int(n_bootstrap)))
    return Evaluation(
        class_names=names,
        methods=methods,
        informer_methods=informer,
        baseline_methods=baselines,
        directions=dirs,
        monitors=monitors,
        prediction_thresholds=np.asarray(reference.prediction_thresholds_, dtype=np.float64),
        test=swapped,
        n_calibration=int(cal_y.shape[0]),
        n_test=int(test_y.shape[0]),
        grid_step=float(grid_step),
        seed=int(seed),
        bootstrap_indices=idx,
        bootstrap_mean_f1=boot,
        ttests=ttests,
        failure=failure,
    )


# -- the report ---------------------------------------------------------------------------------
REPORT_FILES = (
    "table1.csv",
    "sensitivity.csv",
    "specificity.csv",
    "flags.csv",
    "thresholds.csv",
    "bootstrap.csv",
    "ttests.csv",
    "failure_metrics.csv",
    "bootstrap_boxplot.png",
    "risk_coverage.png",
    "report.md",
)
"""Files :func:`write_report` writes (the two PNGs only with ``plots=True``)."""

_INFORMER_COLOUR = "#3b75af"
_BASELINE_COLOUR = "#a6a6a6"
_DASHES = ("--", ":", "-.")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No "Software" entry (it carries the matplotlib version): same inputs, same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _stars_reference(result: Evaluation) -> str | None:
    """The baseline the box plot's stars compare against (the paper: predictive entropy)."""
    if "entropy" in result.baseline_methods:
        return "entropy"
    return result.baseline_methods[0] if result.baseline_methods else None


def bootstrap_boxplot(result: Evaluation) -> bytes:
    """The paper's Fig. 3 as PNG bytes: bootstrap mean F1 per method, stars vs. entropy."""
    from matplotlib.figure import Figure

    rows = result.rows
    data = [v[np.isfinite(v)] for v in (result.bootstrap_mean_f1[r] for r in rows)]
    fig = Figure(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 4.2))
    ax = fig.add_subplot()
    positions = np.arange(1, len(rows) + 1)
    parts = ax.boxplot(data, positions=positions, widths=0.6, patch_artist=True)
    for box, name in zip(parts["boxes"], rows, strict=True):
        colour = _INFORMER_COLOUR if name in result.informer_methods else _BASELINE_COLOUR
        box.set_facecolor("white" if name == NO_AUDIT else colour)
    for median in parts["medians"]:
        median.set_color("black")
    ax.set_xticks(positions, rows, rotation=20, ha="right")
    ax.set_ylabel("mean F1 over classes")
    ref = _stars_reference(result)
    title = f"Bootstrap: {result.n_bootstrap} sets of {result.n_test} test images"
    if ref is not None and result.informer_methods:
        levels = "* p<=0.05, ** p<=0.01, *** p<=0.001"
        title += f"\n(stars: two-sided paired t-test vs {ref}; {levels})"
        finite = [d for d in data if d.size]
        low = min((float(d.min()) for d in finite), default=0.0)
        high = max((float(d.max()) for d in finite), default=1.0)
        margin = 0.06 * max(high - low, 1e-3)
        for t in result.ttests:
            i = rows.index(t.informer)
            if t.baseline == ref and t.stars and data[i].size:
                top = float(data[i].max()) + margin / 3
                ax.text(positions[i], top, t.stars, ha="center", va="bottom", fontsize=12)
        ax.set_ylim(low - margin, high + 2 * margin)  # room for the stars
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def risk_coverage_plot(result: Evaluation) -> bytes:
    """Selective risk against coverage, one panel per class, one curve per method (PNG)."""
    from matplotlib.figure import Figure

    k = len(result.class_names)
    ncols = min(k, 3)
    nrows = -(-k // ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j, cname in enumerate(result.class_names):
        ax = axes[j // ncols][j % ncols]
        for i, name in enumerate(result.methods):
            curve = result.failure[name].curves[j]
            if curve is None:
                continue
            # Baselines dashed, each its own pattern: entropy and MSP rank images alike (both
            # are monotone in |p - 0.5|), so their curves coincide and must stay visible.
            style = "-" if name in result.informer_methods else _DASHES[i % len(_DASHES)]
            ax.plot(curve.coverage, curve.selective_risk, style, label=name, linewidth=1.4)
        ax.set_title(cname, fontsize=10)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("coverage")
        ax.set_ylabel("selective risk")
        ax.grid(alpha=0.3)
    for j in range(k, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    lines = ["| item | value |", "|---|---|"]
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines.append("| " + _md_cell(str(key), "") + " | " + _md_cell(text, "") + " |")
    return lines


def render_report(
    result: Evaluation, *, title: str, provenance: Mapping[str, Any], plots: bool = True
) -> str:
    """The Markdown report: provenance, every table, and links to the plots (``plots``)."""
    classes = result.class_names
    flags_total = {r[0]: r[-1] for r in result.flags_table().rows}
    t1 = result.table1()
    t1_flags = Table((*t1.columns, "flags"), tuple((*row, flags_total[row[0]]) for row in t1.rows))
    method_lines = [
        f"- `{m}`: flags when the score is {result.directions[m]} its class threshold"
        + (" (INFORMER)" if m in result.informer_methods else " (baseline)")
        for m in result.methods
    ]
    ref = _stars_reference(result)
    out = [
        f"# {title}",
        "",
        "## Provenance",
        "",
        *_provenance_lines({**provenance, "informer-audit": __version__}),
        "",
        "## Setup",
        "",
        f"- Classes: {', '.join(classes)}.",
        f"- Calibration set: {result.n_calibration} images. On it, each class gets its "
        "prediction threshold (Youden index) and each method its flag thresholds (grid step "
        f"{result.grid_step:g}, best F1 after swapping the flagged predictions, ties flag "
        "fewest).",
        f"- Test set: {result.n_test} images; every number below is measured on it.",
        *method_lines,
        f"- Bootstrap: {result.n_bootstrap} test sets of {result.n_test} images drawn with "
        f"replacement (seed {result.seed}).",
        "",
        "> **How to read this.** `no_audit` is the model's own predictions with nothing swapped: "
        "the reference every monitor must beat. A monitor that flags nothing ties `no_audit` "
        "exactly, so check the flag counts: a tie with 0 flags is abstention, not equal skill. "
        "Means are over the classes where the metric is defined.",
        "",
        "## Table 1: F1 after swapping",
        "",
        t1_flags.to_markdown(".3f"),
        "## Sensitivity after swapping (the paper's Table S2)",
        "",
        result.sensitivity_table().to_markdown(".3f"),
        "## Specificity after swapping (the paper's Table S1)",
        "",
        result.specificity_table().to_markdown(".3f"),
        "## Flags on the test set",
        "",
        "Flagged predictions among the labelled images of each class.",
        "",
        result.flags_table().to_markdown(),
        "## Thresholds fitted on the calibration set",
        "",
        result.thresholds_table().to_markdown(".4g"),
        "## Bootstrap",
        "",
        *(["![Bootstrap mean F1 per method](bootstrap_boxplot.png)", ""] if plots else []),
        result.bootstrap_summary_table().to_markdown(".3f"),
        "### Paired t-tests",
        "",
        "Two-sided `scipy.stats.ttest_rel` over the bootstrap mean F1s, each INFORMER variant "
        "against each baseline and against `no_audit` (p n/a: the differences do not vary)."
        + (f" The box plot's stars compare against `{ref}`." if ref else ""),
        "",
        Table(
            ("informer", "vs", "mean_difference", "t", "p_value", ""),
            tuple(
                (t.informer, t.baseline, t.mean_difference, t.statistic, t.p_value, t.stars)
                for t in result.ttests
            ),
        ).to_markdown(".3f", {"p_value": ".3g"}),
        "## Failure detection (threshold-free)",
        "",
        'For each class, "the prediction is wrong" (before any swap) against each method\'s '
        "score, oriented so that a higher score means more likely wrong. AUROC: higher is "
        "better, 0.5 is chance. AURC: area under selective risk (errors among the accepted / "
        "accepted) against coverage; AUGRC: area under generalized risk (accepted and wrong / "
        "all) against coverage (Traub et al. 2024); lower is better for both. Curves are "
        "evaluated at the distinct score values, trapezoids between them.",
        "",
        Table(
            ("method", "mean_auroc", "mean_aurc", "mean_augrc"),
            tuple(
                (
                    m,
                    result.failure[m].mean_auroc,
                    result.failure[m].mean_aurc,
                    result.failure[m].mean_augrc,
                )
                for m in result.methods
            ),
        ).to_markdown(".4f"),
        "Per class:",
        "",
        result.failure_table().to_markdown(".4f"),
        "The model's errors on the test set:",
        "",
        result.errors_table().to_markdown(".3f"),
        *(["![Risk-coverage curves per class](risk_coverage.png)", ""] if plots else []),
        "## Files",
        "",
        *(
            f"- `{name}`"
            for name in REPORT_FILES
            if name != "report.md" and (plots or not name.endswith(".png"))
        ),
        "",
    ]
    return "\n".join(out)


def write_report(
    result: Evaluation,
    outdir: str | Path,
    *,
    title: str = "INFORMER evaluation",
    provenance: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the tables, the plots and the Markdown report into ``outdir``.

    Files (:data:`REPORT_FILES`): ``table1.csv`` (``method``, one column per class with the F1
    after swapping, ``mean_f1``), ``sensitivity.csv``, ``specificity.csv`` (same layout, last
    column ``mean_sensitivity`` / ``mean_specificity``), ``flags.csv`` (``method``, flags per
    class, ``total``), ``thresholds.csv``, ``bootstrap.csv`` (``bootstrap``, ``method``,
    ``mean_f1``), ``ttests.csv`` (``informer``, ``baseline``, ``mean_difference``,
    ``statistic``, ``p_value``, ``n_bootstrap``), ``failure_metrics.csv`` (``method``,
    ``class`` incl. ``mean``, ``auroc``, ``aurc``, ``augrc``), ``bootstrap_boxplot.png``,
    ``risk_coverage.png`` and ``report.md``. Each is written atomically (temporary file and
    rename). The same ``result``, ``title`` and ``provenance`` give byte-identical files: no
    timestamps, PNGs without the software tag.

    Parameters
    ----------
    result : Evaluation
    outdir : path
        Created if missing; files already there are replaced.
    title : str
        The report's heading.
    provenance : mapping, optional
        Shown in the report in the given order (model file and SHA-256, label files, saliency
        settings, seeds, ...): values that are not strings are shown as JSON.
    plots : bool
        Write the two PNGs (needs matplotlib).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ReportError
        When ``plots`` is true and matplotlib is not installed.
    """
    outdir = Path(outdir)
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise ReportError(
                "the evaluation plots need matplotlib (pip install matplotlib); "
                "or write the report without plots"
            ) from exc
    outdir.mkdir(parents=True, exist_ok=True)
    tables = {
        "table1.csv": result.table1(),
        "sensitivity.csv": result.sensitivity_table(),
        "specificity.csv": result.specificity_table(),
        "flags.csv": result.flags_table(),
        "thresholds.csv": result.thresholds_table(),
        "bootstrap.csv": result.bootstrap_table(),
        "ttests.csv": result.ttest_table(),
        "failure_metrics.csv": result.failure_table(),
    }
    written = []
    for name, table in tables.items():
        atomic_write_text(outdir / name, table.to_csv())
        written.append(outdir / name)
    if plots:
        for name, render in (
            ("bootstrap_boxplot.png", bootstrap_boxplot),
            ("risk_coverage.png", risk_coverage_plot),
        ):
            atomic_write_bytes(outdir / name, render(result))
            written.append(outdir / name)
    report = render_report(result, title=title, provenance=dict(provenance or {}), plots=plots)
    atomic_write_text(outdir / "report.md", report)
    written.append(outdir / "report.md")
    logger.info("evaluation report written to %s (%d files)", outdir, len(written))
    return written
