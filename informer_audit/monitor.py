"""Scores -> per-class thresholds (METHOD.md sections 1 and 4): the :class:`FlagMonitor` estimator.

:class:`FlagMonitor` follows scikit-learn's estimator contract: hyperparameters in ``__init__``,
``fit`` returns ``self``, fitted attributes end in ``_``, :class:`NotFittedError` before fit, the
raw score kept apart from the decision. It fits, per class,

* the prediction threshold ``t_k``: the Youden-optimal ROC threshold of ``p_k`` (argmax of
  TPR - FPR; ties go to the highest threshold *(ours)*), ``y_hat_k = 1[p_k >= t_k]``;
* the flag threshold ``tau_k``: on the grid ``0, step, 2 step, ...`` up to the first grid value
  at or above the largest score (and the largest score the method can give), the value whose
  flags, once swapped (``y_hat' = 1 - y_hat`` where flagged), give the highest F1; ties go to
  the ``tau`` that flags fewest *(ours)*, so ``tau = 0`` (flag nothing) wins unless something
  beats it. A class without positive labels flags nothing: no swap can give it a true positive.
  "Flag nothing" is ``tau = 0`` below and the top of the grid above.

INFORMER flags when ``d_k < tau_k`` (``direction="below"``); the baselines of section 5 reuse the
same machinery with ``direction="above"`` (entropy, TTA spread). The monitor file (versioned JSON
bound to the model's fingerprint and settings, never pickled) is :mod:`.monitorfile`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .errors import NotFittedError
from .numerics import logit

if TYPE_CHECKING:
    from .scorers import Scorer

DIRECTIONS = ("below", "above")

PREDICT_NOTHING = math.nextafter(1.0, 2.0)
"""Prediction threshold that no probability reaches (Youden's optimum was 'predict nothing')."""


# -- prediction thresholds ----------------------------------------------------------------------
def youden_threshold(y: NDArray[Any], p: NDArray[np.floating]) -> float | None:
    """Youden-optimal threshold of one class.

    Parameters
    ----------
    y : ndarray, shape (N,)
        0/1 labels.
    p : ndarray, shape (N,)
        Probabilities (any score on which ``p >= t`` predicts positive).

    Returns
    -------
    float or None
        The ROC threshold maximising TPR - FPR (the highest one among ties), or ``None`` when
        ``y`` has no positives or no negatives (the ROC curve is undefined).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y, dtype=float)
    if y.size == 0 or y.min() == y.max():
        return None
    fpr, tpr, thresholds = roc_curve(y, np.asarray(p, dtype=float), drop_intermediate=False)
    # Compare J = TP/P - FP/N exactly, as the integer TP*N - FP*P: in floats, equal J values
    # (e.g. 2/3 - 0 and 1 - 1/3) differ in the last bit and would break the tie rule.
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    tps = np.rint(tpr * n_pos).astype(np.int64)
    fps = np.rint(fpr * n_neg).astype(np.int64)
    best = int(np.argmax(tps * n_neg - fps * n_pos))  # first maximum = highest threshold
    t = float(thresholds[best])
    return PREDICT_NOTHING if not math.isfinite(t) else t


def f1_threshold(y: NDArray[np.floating], p: NDArray[np.floating]) -> float:
    """The threshold on ``p`` whose predictions ``p >= t`` give the highest F1 on ``(y, p)``.

    Candidates are the distinct values of ``p`` and :data:`PREDICT_NOTHING`; ties go to the
    highest threshold (fewest positive predictions). With no positive label, F1 cannot be
    above 0: predict nothing.
    """
    yb = np.asarray(y) > 0.5
    pf = np.asarray(p, dtype=np.float64)
    if not yb.any():
        return PREDICT_NOTHING
    order = np.argsort(-pf, kind="stable")
    ps, ys = pf[order], yb[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # predicting "p >= ps[i]" includes all ties of ps[i]
    tp, fp, cut = tp[last], fp[last], ps[last]
    fn = int(yb.sum()) - tp
    # Compare F1 = 2TP / (2TP + FP + FN) exactly, as fractions with integer terms.
    num, den = 2 * tp, 2 * tp + fp + fn
    best = 0
    for i in range(1, len(cut)):
        if num[i] * den[best] > num[best] * den[i]:
            best = i
    if num[best] == 0:
        return PREDICT_NOTHING
    return float(cut[best])


# -- flag thresholds ----------------------------------------------------------------------------
def _confusion(y: NDArray[np.bool_], yhat: NDArray[np.bool_]) -> tuple[int, int, int, int]:
    tp = int(np.sum(y & yhat))
    fp = int(np.sum(~y & yhat))
    fn = int(np.sum(y & ~yhat))
    tn = int(np.sum(~y & ~yhat))
    return tp, fp, fn, tn


def f1_from_counts(tp: Any, fp: Any, fn: Any) -> Any:
    """F1 = 2TP / (2TP + FP + FN); NaN where undefined (no positives, none predicted)."""
    tp, fp, fn = (np.asarray(v, dtype=float) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def threshold_grid(
    scores: NDArray[np.floating], step: float, at_least: float | None = None
) -> NDArray[np.float64]:
    """``0, step, 2 step, ...`` up to the first grid value at or above ``max(scores)``.

    With ``at_least`` (the largest score the method can give), the grid reaches at least the
    first grid value at or above it too. Grid values are computed as ``j * step`` (integers
    times the step), not by accumulation.
    """
    top = float(np.max(scores)) if np.size(scores) else 0.0
    if at_least is not None:
        top = max(top, float(at_least))
    n = max(0, math.ceil(round(top / step, 9)))
    return np.arange(n + 1, dtype=np.float64) * step


def scan_flag_thresholds(
    y: NDArray[Any],
    yhat: NDArray[Any],
    scores: NDArray[np.floating],
    *,
    step: float = 0.001,
    direction: str = "below",
    score_max: float | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """F1 after swapping, for every threshold of the grid.

    Parameters
    ----------
    y, yhat : ndarray, shape (N,)
        Labels and predictions (0/1) of one class.
    scores : ndarray, shape (N,)
        The monitor's raw score (``d_k`` for INFORMER).
    step : float
        Grid step.
    direction : {"below", "above"}
        Flag when ``score < tau`` or when ``score > tau``.
    score_max : float, optional
        The largest score the method can give (:meth:`.scorers.Scorer.score_range`); the
        grid reaches it (:func:`threshold_grid`).

    Returns
    -------
    taus, f1, n_flags : ndarrays, shape (G,)
        The grid, F1 after swapping the flagged predictions (NaN where undefined), and the
        number of flagged images at each threshold.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    y_b = np.asarray(y) > 0.5
    yhat_b = np.asarray(yhat) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    taus = threshold_grid(s, step, score_max)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    if direction == "below":
        n_flags = np.searchsorted(s_sorted, taus, side="left")  # #{s < tau}
        seq = order  # flagged set = the n lowest scores
    else:
        n_flags = len(s) - np.searchsorted(s_sorted, taus, side="right")  # #{s > tau}
        seq = order[::-1]  # flagged set = the n highest scores
    # Cumulative counts over the flagging order, so each grid point costs O(1): a swap turns
    # flagged TP into FN, FN into TP, FP into TN and TN into FP.
    tp0, fp0, fn0, _ = _confusion(y_b, yhat_b)
    zero = np.zeros(1, dtype=np.int64)
    c_tp = np.concatenate([zero, np.cumsum(y_b[seq] & yhat_b[seq])])
    c_fp = np.concatenate([zero, np.cumsum(~y_b[seq] & yhat_b[seq])])
    c_fn = np.concatenate([zero, np.cumsum(y_b[seq] & ~yhat_b[seq])])
    c_tn = np.concatenate([zero, np.cumsum(~y_b[seq] & ~yhat_b[seq])])
    tp = tp0 - c_tp[n_flags] + c_fn[n_flags]
    fp = fp0 - c_fp[n_flags] + c_tn[n_flags]
    fn = fn0 - c_fn[n_flags] + c_tp[n_flags]
    return taus, f1_from_counts(tp, fp, fn), n_flags.astype(np.int64)


def best_flag_threshold(
    y: NDArray[Any],
    yhat: NDArray[Any],
    scores: NDArray[np.floating],
    *,
    step: float = 0.001,
    direction: str = "below",
    score_max: float | None = None,
) -> float:
    """The grid threshold with the highest F1 after swapping; ties flag fewest.

    Returns the threshold that flags nothing (0 for ``below``, the top of the grid for
    ``above``: the first grid value at or above the largest score, and at or above
    ``score_max`` when given) when no threshold beats it, and whenever ``y`` has no positive
    labels. Without positives TP is 0 whatever is swapped, so F1 is 0 or undefined
    (``TP + FP + FN = 0``) at every threshold: no swap can be better than flagging nothing,
    and a swap that turns an undefined F1 into 0 must not count as one.
    """
    taus, f1, n_flags = scan_flag_thresholds(
        y, yhat, scores, step=step, direction=direction, score_max=score_max
    )
    nothing = float(taus[0] if direction == "below" else taus[-1])
    if not (np.asarray(y) > 0.5).any():
        return nothing
    # With a positive label 2TP + FP + FN >= 1 after any swap, so F1 is defined everywhere.
    f1 = np.where(np.isfinite(f1), f1, -np.inf)
    best = f1.max()
    # Equal rationals computed from different counts can differ in the last bit.
    candidates = np.flatnonzero(f1 >= best - 1e-12)
    fewest = n_flags[candidates].min()
    candidates = candidates[n_flags[candidates] == fewest]
    # Among thresholds that flag the same images, keep the one nearest "flag nothing".
    pick = candidates[0] if direction == "below" else candidates[-1]
    return float(taus[pick])


# -- the estimator ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassFit:
    """What the calibration set showed for one class (for tables and the monitor file)."""

    name: str
    n: int
    n_pos: int
    prediction_threshold: float
    flag_threshold: float
    n_flags: int
    f1_before: float
    f1_after: float
    sensitivity_before: float
    sensitivity_after: float
    specificity_before: float
    specificity_after: float
    note: str = ""


@dataclass(frozen=True)
class ColumnRule:
    """One class's fitted rule (:meth:`FlagMonitor.fit_column`).

    Attributes
    ----------
    prediction_threshold, flag_threshold : float
    state : object
        The fitted flag-score model of the class (the learned flagger's coefficients), or None.
    scores : ndarray, shape (N,)
        The flag scores the flag threshold was fitted on.
    note : str
        What was unusual about the class (no positive labels, ...); "" otherwise.
    """

    prediction_threshold: float
    flag_threshold: float
    state: Any
    scores: NDArray[np.float64]
    note: str = ""


def _rates(y: NDArray[np.bool_], yhat: NDArray[np.bool_]) -> tuple[float, float, float]:
    tp, fp, fn, tn = _confusion(y, yhat)
    f1 = float(f1_from_counts(tp, fp, fn))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return f1, sens, spec


class FlagMonitor:
    """Per-class prediction and flag thresholds on one raw score.

    Parameters
    ----------
    method : str
        Name of the score (``"informer"`` for class distinctiveness ``d``).
    direction : {"below", "above"}
        Flag when the score is below (INFORMER: low distinctiveness) or above the threshold.
    grid_step : float
        Step of the threshold grid (0.001 in the paper).

    Attributes
    ----------
    class_names_ : list of str, length K
    prediction_thresholds_ : ndarray, shape (K,)
    flag_thresholds_ : ndarray, shape (K,)
    fits_ : list of ClassFit
    """

    uses_probabilities: ClassVar[bool] = False
    """The flag score depends on the probabilities (and the prediction threshold)."""
    uses_distances: ClassVar[bool] = False
    """The flag score reads the K x K distances between the class maps."""

    def __init__(
        self, method: str = "informer", direction: str = "below", grid_step: float = 0.001
    ) -> None:
        self.method = method
        self.direction = direction
        self.grid_step = grid_step

    def _check_params(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not (self.grid_step > 0 and math.isfinite(self.grid_step)):
            raise ValueError(f"grid_step must be a positive number, got {self.grid_step}")

    def fit(
        self,
        scores: NDArray[np.floating],
        y: NDArray[np.floating],
        probs: NDArray[np.floating],
        class_names: Sequence[str],
        *,
        dist: NDArray[np.floating] | None = None,
    ) -> FlagMonitor:
        """Fit prediction thresholds on ``probs`` and flag thresholds on the flag scores.

        Parameters
        ----------
        scores : ndarray, shape (N, K)
            Raw monitor score per image and class (``d`` for INFORMER).
        y : ndarray, shape (N, K)
            Labels 0/1; NaN where an image has no label for a class (left out of that class).
        probs : ndarray, shape (N, K)
            The model's probabilities.
        class_names : sequence of str, length K
        dist : ndarray, shape (N, K, K), optional
            Cosine distances between the class maps; needed by monitors whose flag score
            reads them (:attr:`uses_distances`, the learned flagger).

        Attributes set
        --------------
        calibration_scores_ : ndarray, shape (N, K)
            The flag scores the flag thresholds were fitted on (for a learned flagger, its
            out-of-fold probabilities); NaN where an image has no label for a class.
        """
        self._check_params()
        scores, y, probs = (np.asarray(a, dtype=np.float64) for a in (scores, y, probs))
        if not (scores.shape == y.shape == probs.shape) or scores.ndim != 2:
            raise ValueError(
                f"scores, y and probs must share one (N, K) shape, got {scores.shape}, "
                f"{y.shape}, {probs.shape}"
            )
        n, k = scores.shape
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} columns")
        dist = self._check_dist(dist, n, k)
        pred_t = np.empty(k)
        flag_t = np.empty(k)
        fitted = np.full((n, k), np.nan)
        fits, states = [], []
        for j in range(k):
            keep = np.isfinite(y[:, j])
            row = None if dist is None else dist[keep, j]
            if row is not None:
                row = np.delete(row, j, axis=1)  # distances to the K - 1 other classes
            rule = self.fit_column(j, y[keep, j] > 0.5, probs[keep, j], scores[keep, j], row, k)
            pred_t[j], flag_t[j] = rule.prediction_threshold, rule.flag_threshold
            fitted[keep, j] = rule.scores
            states.append(rule.state)
            name = str(class_names[j])
            fits.append(self._class_fit(name, y[keep, j] > 0.5, probs[keep, j], rule))
        self.class_names_ = [str(c) for c in class_names]
        self.prediction_thresholds_ = pred_t
        self.flag_thresholds_ = flag_t
        self.states_ = states
        self.fits_ = fits
        self.calibration_scores_ = fitted
        return self

    def _check_dist(
        self, dist: NDArray[np.floating] | None, n: int, k: int
    ) -> NDArray[np.float64] | None:
        if dist is None:
            if self.uses_distances:
                raise ValueError(
                    f"method {self.method!r} reads the K x K distances between the class maps: "
                    "pass dist (shape (N, K, K))"
                )
            return None
        out = np.asarray(dist, dtype=np.float64)
        if out.shape != (n, k, k):
            raise ValueError(f"dist must have shape {(n, k, k)}, got {out.shape}")
        return out

    # -- one class ----------------------------------------------------------------------------
    def fit_column(
        self,
        j: int,
        y: NDArray[np.bool_],
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        dist_row: NDArray[np.float64] | None = None,
        n_classes: int = 1,
    ) -> ColumnRule:
        """Fit one class: its prediction threshold, flag score model and flag threshold.

        The cross-fitted estimate of :mod:`.crossfit` calls this on resampled subsets.

        Parameters
        ----------
        j : int
            The class's position among the audited classes.
        y : ndarray of bool, shape (N,)
            The class's labels (labelled images only).
        p, s : ndarray, shape (N,)
            Probabilities and raw scores.
        dist_row : ndarray, shape (N, K - 1), optional
            Row ``j`` of the distance matrix without its diagonal: the distances to the other
            classes' maps (:attr:`uses_distances`).
        n_classes : int
            Audited classes (the range of a pairwise score grows with it).
        """
        note = ""
        t = youden_threshold(y, p)
        if t is None:
            t = 0.5
            what = "positive" if not y.any() else "negative"
            note = f"no {what} labels among {len(y)}: prediction threshold 0.5"
        yhat = p >= t
        fit_scores, state = self._fit_scores(j, y, yhat, p, s, t, dist_row)
        spec = _spec_of(self.method)
        # The grid reaches the method's largest score, so that for direction "above" the
        # threshold that flags nothing here flags nothing on images scored higher than these.
        score_max = spec.score_range(n_classes)[1] if spec is not None else None
        if score_max is not None and not math.isfinite(score_max):
            score_max = None
        tau = best_flag_threshold(
            y, yhat, fit_scores, step=self.grid_step, direction=self.direction, score_max=score_max
        )
        if not y.any():
            # best_flag_threshold returned the threshold that flags nothing: TP is 0 whatever
            # is swapped, so no swap can raise F1 (0, or undefined if nothing is predicted).
            what = f"no positive labels among {len(y)}" if len(y) else "no labelled images"
            f1_b = _rates(y, yhat)[0]
            f1_text = "undefined" if math.isnan(f1_b) else f"{f1_b:g}"
            note = (
                f"{what}: prediction threshold 0.5; F1 {f1_text} and no swap can raise it: "
                "nothing flagged"
            )
        return ColumnRule(float(t), float(tau), state, fit_scores, note)

    def _fit_scores(
        self,
        j: int,
        y: NDArray[np.bool_],
        yhat: NDArray[np.bool_],
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        t: float,
        dist_row: NDArray[np.float64] | None,
    ) -> tuple[NDArray[np.float64], Any]:
        """The scores one class's flag threshold is fitted on, and the fitted score model.

        The raw score itself, with no model, here; subclasses transform it (the distance to
        the prediction threshold) or learn a model of it (the learned flagger).
        """
        return s, None

    def column_scores(
        self,
        j: int,
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        dist_row: NDArray[np.float64] | None = None,
        *,
        rule: ColumnRule | None = None,
    ) -> NDArray[np.float64]:
        """Flag scores of class ``j`` for new images (``rule``: a :meth:`fit_column` result
        instead of the fitted class ``j``)."""
        return np.asarray(s, dtype=np.float64)

    def _class_fit(
        self, name: str, y: NDArray[np.bool_], p: NDArray[np.float64], rule: ColumnRule
    ) -> ClassFit:
        yhat = p >= rule.prediction_threshold
        flagged = self._flag_column(rule.scores, rule.flag_threshold)
        f1_b, sens_b, spec_b = _rates(y, yhat)
        f1_a, sens_a, spec_a = _rates(y, yhat ^ flagged)
        return ClassFit(
            name,
            int(len(y)),
            int(y.sum()),
            rule.prediction_threshold,
            rule.flag_threshold,
            int(flagged.sum()),
            f1_b,
            f1_a,
            sens_b,
            sens_a,
            spec_b,
            spec_a,
            rule.note,
        )

    def cross_fit_template(self) -> FlagMonitor:
        """An unfitted monitor with this one's settings, for refitting on parts of the data
        (:mod:`.crossfit`)."""
        return type(self)(self.method, self.direction, self.grid_step)

    def _flag_column(self, s: NDArray[np.float64], tau: float) -> NDArray[np.bool_]:
        return s < tau if self.direction == "below" else s > tau

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the monitor is fitted (or loaded)."""
        if not hasattr(self, "flag_thresholds_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() or load a monitor file"
            )

    def predict(self, probs: NDArray[np.floating]) -> NDArray[np.bool_]:
        """The model's predictions, ``probs >= t_k``; shape (N, K) -> (N, K) bool."""
        self.check_fitted()
        return np.asarray(probs, dtype=np.float64) >= self.prediction_thresholds_

    def flag_scores(
        self,
        scores: NDArray[np.floating],
        probs: NDArray[np.floating] | None = None,
        dist: NDArray[np.floating] | None = None,
    ) -> NDArray[np.float64]:
        """The scores the flag thresholds are compared with; (N, K) -> (N, K).

        The raw scores themselves for INFORMER and the baselines; the distance to the
        prediction threshold for ``margin`` (needs ``probs``); the learned flagger's
        probability that the prediction is wrong for ``learned`` (needs ``probs`` and ``dist``).
        """
        self.check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        if not (self.uses_probabilities or self.uses_distances):
            return s
        if probs is None:
            raise ValueError(f"method {self.method!r} flags on the probabilities: pass probs")
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != s.shape:
            raise ValueError(f"probs have shape {p.shape}, scores {s.shape}")
        d = self._check_dist(dist, *s.shape) if self.uses_distances else None
        out = np.empty_like(s)
        for j in range(s.shape[1]):
            row = None if d is None else np.delete(d[:, j], j, axis=1)
            out[:, j] = self.column_scores(j, p[:, j], s[:, j], row)
        return out

    def decision_function(
        self,
        scores: NDArray[np.floating],
        probs: NDArray[np.floating] | None = None,
        dist: NDArray[np.floating] | None = None,
    ) -> NDArray[np.float64]:
        """Signed margin to the flag threshold; positive means flagged. (N, K) -> (N, K)."""
        return self.margin_of(self.flag_scores(scores, probs, dist))

    def margin_of(self, flag_scores: NDArray[np.floating]) -> NDArray[np.float64]:
        """Signed margin of flag scores (:meth:`flag_scores`, a flags CSV's score columns) to
        the flag threshold; positive means flagged."""
        self.check_fitted()
        s = np.asarray(flag_scores, dtype=np.float64)
        return self.flag_thresholds_ - s if self.direction == "below" else s - self.flag_thresholds_

    def flags_of(self, flag_scores: NDArray[np.floating]) -> NDArray[np.bool_]:
        """Which flag scores (:meth:`flag_scores`, a flags CSV's score columns) are flagged."""
        self.check_fitted()
        s = np.asarray(flag_scores, dtype=np.float64)
        return s < self.flag_thresholds_ if self.direction == "below" else s > self.flag_thresholds_

    def flag(
        self,
        scores: NDArray[np.floating],
        probs: NDArray[np.floating] | None = None,
        dist: NDArray[np.floating] | None = None,
    ) -> NDArray[np.bool_]:
        """Which predictions are flagged; shape (N, K) -> (N, K) bool."""
        return self.flags_of(self.flag_scores(scores, probs, dist))

    def audit(
        self,
        probs: NDArray[np.floating],
        scores: NDArray[np.floating],
        dist: NDArray[np.floating] | None = None,
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
        """Predictions, flags and audited predictions (flagged ones swapped), each (N, K) bool."""
        yhat = self.predict(probs)
        flags = self.flag(scores, probs, dist)
        return yhat, flags, yhat ^ flags


class MarginMonitor(FlagMonitor):
    """Flags predictions close to their decision threshold: ``|logit p_k - logit t_k|`` low.

    The distance to the prediction threshold on the logit scale, a baseline that knows the
    threshold (entropy and MSP measure the distance to 0.5, wherever ``t_k`` is). Probabilities
    and the threshold are clipped to ``[1e-12, 1 - 1e-12]`` first (:func:`.numerics.logit`).
    """

    uses_probabilities = True

    def __init__(
        self, method: str = "margin", direction: str = "below", grid_step: float = 0.001
    ) -> None:
        super().__init__(method, direction, grid_step)

    def _fit_scores(
        self,
        j: int,
        y: NDArray[np.bool_],
        yhat: NDArray[np.bool_],
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        t: float,
        dist_row: NDArray[np.float64] | None,
    ) -> tuple[NDArray[np.float64], Any]:
        return threshold_margin(p, t), None

    def column_scores(
        self,
        j: int,
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        dist_row: NDArray[np.float64] | None = None,
        *,
        rule: ColumnRule | None = None,
    ) -> NDArray[np.float64]:
        t = rule.prediction_threshold if rule is not None else self.prediction_thresholds_[j]
        return threshold_margin(p, float(t))


def threshold_margin(p: NDArray[np.floating], t: float) -> NDArray[np.float64]:
    """``|logit p - logit t|``: how far a probability lies from its decision threshold."""
    return np.abs(logit(np.asarray(p, dtype=np.float64)) - logit(np.asarray(t)))


def _spec_of(name: str) -> type[Scorer] | None:
    """The registered spec of a method or of a variant; ``None`` if unknown."""
    # .scorers imports this module (make_monitor returns a FlagMonitor): import on use.
    from .scorers import scorer_class

    try:
        return scorer_class(name)
    except ValueError:  # EvaluationError
        return None


__all__ = [
    "DIRECTIONS",
    "PREDICT_NOTHING",
    "ClassFit",
    "ColumnRule",
    "FlagMonitor",
    "MarginMonitor",
    "best_flag_threshold",
    "f1_from_counts",
    "f1_threshold",
    "scan_flag_thresholds",
    "threshold_grid",
    "threshold_margin",
    "youden_threshold",
]
