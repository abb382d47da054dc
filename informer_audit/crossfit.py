"""Will the monitor help on new images? Evidence from the calibration set alone.

``calibrate`` fits the thresholds on its images and its "F1 before -> after" table is measured
on the same images: in-sample, and optimistic by construction (the flag threshold is the one
that did best there). :func:`out_of_sample` estimates what the whole fit -- Youden prediction
thresholds, the flag-score model of margin or learned, the flag thresholds -- does on images
it has not seen, by repeated stratified k-fold cross-fitting on the calibration set: per class,
fit on k - 1 folds, apply to the held-out fold, until every image has been held out once;
repeat with other fold assignments; pool the held-out predictions of each repeat.

Per class it reports the expected change in F1, sensitivity and specificity (mean over the
repeats) with a 95% percentile interval from a bootstrap over images (the repeats average the
fold-assignment noise out; the bootstrap measures how much another calibration set of the same
size could differ), the expected flag rate, and a verdict:

* ``expected to help``: the whole interval of the F1 change lies above 0;
* ``expected to hurt``: it lies below 0;
* ``flags nothing``: no held-out image was flagged in any repeat;
* ``no evidence``: the interval contains 0.

It works on the scores already computed (no saliency map is recomputed): its cost is a few
hundred threshold fits. :func:`calibration_evidence` adds the stability of each Youden
threshold and whether the score tells anything about errors beyond the model's own confidence
(:mod:`.evidence`); ``calibrate`` stores all three in the monitor file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .monitor import FlagMonitor, f1_from_counts

if TYPE_CHECKING:
    from .scorers import Scorer

Floats = NDArray[np.float64]

VERDICTS = ("expected to help", "no evidence", "expected to hurt", "flags nothing")


@dataclass(frozen=True)
class ClassEstimate:
    """The cross-fitted estimate of one class (NaN where it could not be computed).

    Attributes
    ----------
    name : str
    n, n_pos : int
        Labelled images and positives of the class.
    n_splits, n_repeats : int
        Folds and repeats used (0 when there was no estimate).
    f1_before, f1_after : float
        Mean over the repeats of the held-out F1 without and with the monitor.
    delta_f1, delta_f1_low, delta_f1_high : float
        Expected change in F1 and its interval.
    delta_sensitivity, delta_sensitivity_low, delta_sensitivity_high : float
    delta_specificity, delta_specificity_low, delta_specificity_high : float
    flag_rate : float
        Share of held-out predictions flagged (mean over the repeats).
    verdict : str
        One of :data:`VERDICTS`, or ``"no estimate"``.
    note : str
        Why there is no estimate, when there is none.
    """

    name: str
    n: int
    n_pos: int
    n_splits: int
    n_repeats: int
    f1_before: float
    f1_after: float
    delta_f1: float
    delta_f1_low: float
    delta_f1_high: float
    delta_sensitivity: float
    delta_sensitivity_low: float
    delta_sensitivity_high: float
    delta_specificity: float
    delta_specificity_low: float
    delta_specificity_high: float
    flag_rate: float
    verdict: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``."""
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_ESTIMATES = (
    "f1_before",
    "f1_after",
    "delta_f1",
    "delta_f1_low",
    "delta_f1_high",
    "delta_sensitivity",
    "delta_sensitivity_low",
    "delta_sensitivity_high",
    "delta_specificity",
    "delta_specificity_low",
    "delta_specificity_high",
    "flag_rate",
)


def _no_estimate(name: str, n: int, n_pos: int, why: str) -> ClassEstimate:
    nans: dict[str, Any] = dict.fromkeys(_ESTIMATES, math.nan)
    return ClassEstimate(name, n, n_pos, 0, 0, **nans, verdict="no estimate", note=why)


def _rates(
    w: Floats, y: NDArray[np.bool_], pred: NDArray[np.bool_]
) -> tuple[Floats, Floats, Floats]:
    """F1, sensitivity, specificity per resample and repeat: weights (B, n), pred (R, n)."""
    yy = y[None, :]
    tp = w @ (yy & pred).T.astype(np.float64)
    fp = w @ (~yy & pred).T.astype(np.float64)
    fn = w @ (yy & ~pred).T.astype(np.float64)
    tn = w @ (~yy & ~pred).T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), np.nan)
        spec = np.where(tn + fp > 0, tn / np.where(tn + fp > 0, tn + fp, 1), np.nan)
    return f1_from_counts(tp, fp, fn), sens, spec


def _interval(values: Floats, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not v.size:
        return math.nan, math.nan
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _mean(a: Floats, axis: int) -> Floats:
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(a)
        count = finite.sum(axis=axis)
        total = np.where(finite, a, 0.0).sum(axis=axis)
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def out_of_sample(
    monitor: FlagMonitor,
    scores: Floats,
    y: Floats,
    probs: Floats,
    dist: Floats | None = None,
    *,
    n_splits: int = 5,
    n_repeats: int = 20,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[ClassEstimate]:
    """The cross-fitted estimate of what ``monitor``'s fit does on new images, per class.

    Parameters
    ----------
    monitor : FlagMonitor
        The fitted monitor; its :meth:`~.monitor.FlagMonitor.cross_fit_template` is refitted
        on every training part.
    scores, y, probs : ndarray, shape (N, K)
        What the monitor was fitted on (raw scores, labels with NaN for no label, probs).
    dist : ndarray, shape (N, K, K), optional
        Distances between the class maps (monitors that read them).
    n_splits : int
        Folds (fewer for a class with fewer positives or negatives; no estimate below 2).
    n_repeats : int
        Fold assignments, each seeded ``seed + r``.
    n_resamples : int
        Bootstrap resamples of the images for the intervals.
    level : float
        Coverage of the intervals.
    seed : int

    Returns
    -------
    list of ClassEstimate, one per class
    """
    from sklearn.model_selection import StratifiedKFold

    monitor.check_fitted()
    if not (isinstance(n_splits, int) and n_splits >= 2):
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    if not (isinstance(n_repeats, int) and n_repeats >= 1):
        raise ValueError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    scores, y, probs = (np.asarray(a, dtype=np.float64) for a in (scores, y, probs))
    k = scores.shape[1]
    fitter = monitor.cross_fit_template()
    below = monitor.direction == "below"
    out = []
    for j, name in enumerate(monitor.class_names_):
        keep = np.flatnonzero(np.isfinite(y[:, j]))
        yj = y[keep, j] > 0.5
        pj, sj = probs[keep, j], scores[keep, j]
        dj = None if dist is None else np.delete(np.asarray(dist)[keep, j], j, axis=1)
        n, n_pos = len(yj), int(yj.sum())
        folds = min(n_splits, n_pos, n - n_pos)
        if folds < 2:
            out.append(
                _no_estimate(
                    name,
                    n,
                    n_pos,
                    f"{n_pos} positive and {n - n_pos} negative labels: "
                    "cross-fitting needs at least 2 of each",
                )
            )
            continue
        before = np.empty((n_repeats, n), dtype=bool)
        flagged = np.empty((n_repeats, n), dtype=bool)
        for r in range(n_repeats):
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
            for train, test in splitter.split(np.zeros(n), yj):
                rule = fitter.fit_column(
                    j, yj[train], pj[train], sj[train], None if dj is None else dj[train], k
                )
                fs = fitter.column_scores(
                    j, pj[test], sj[test], None if dj is None else dj[test], rule=rule
                )
                before[r, test] = pj[test] >= rule.prediction_threshold
                tau = rule.flag_threshold
                flagged[r, test] = fs < tau if below else fs > tau
        after = before ^ flagged
        rng = np.random.default_rng(seed)
        w = np.vstack(
            [np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)]
        ).astype(np.float64)  # row 0: the calibration set itself
        f1_b, sens_b, spec_b = (_mean(m, axis=1) for m in _rates(w, yj, before))
        f1_a, sens_a, spec_a = (_mean(m, axis=1) for m in _rates(w, yj, after))
        deltas = (f1_a - f1_b, sens_a - sens_b, spec_a - spec_b)
        cells: list[float] = []
        for delta in deltas:
            cells += [float(delta[0]), *_interval(delta[1:], level)]
        rate = float(flagged.mean())
        lo, hi = cells[1], cells[2]
        if not flagged.any():
            verdict = "flags nothing"
        elif lo > 0:
            verdict = "expected to help"
        elif hi < 0:
            verdict = "expected to hurt"
        else:
            verdict = "no evidence"
        stats = [float(f1_b[0]), float(f1_a[0]), *cells, rate]
        values: dict[str, Any] = dict(zip(_ESTIMATES, stats, strict=True))
        out.append(ClassEstimate(name, n, n_pos, folds, n_repeats, **values, verdict=verdict))
    return out


def calibration_evidence(
    monitor: FlagMonitor,
    scorer: Scorer,
    scores: Floats,
    y: Floats,
    probs: Floats,
    dist: Floats | None = None,
    *,
    n_splits: int = 5,
    n_repeats: int = 20,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """What ``calibrate`` stores in the monitor file's ``evidence``, JSON-ready.

    ``out_of_sample`` (:func:`out_of_sample`), ``thresholds`` (the bootstrap interval of each
    Youden threshold, :func:`.evidence.youden_stability`) and ``information`` (does the flag
    score rank errors, and does it add anything beyond the probability:
    :func:`.evidence.information_beyond_confidence` on the calibration flag scores).
    """
    from .evidence import information_beyond_confidence, youden_stability

    estimates = out_of_sample(
        monitor,
        scores,
        y,
        probs,
        dist,
        n_splits=n_splits,
        n_repeats=n_repeats,
        n_resamples=n_resamples,
        seed=seed,
    )
    fitted = monitor.calibration_scores_
    thresholds, information = [], []
    for j, name in enumerate(monitor.class_names_):
        keep = np.isfinite(y[:, j])
        yj, pj = y[keep, j] > 0.5, probs[keep, j]
        stability = youden_stability(yj, pj, n_resamples=n_resamples, seed=seed)
        thresholds.append({"name": name, **stability.to_dict()})
        yhat = pj >= monitor.prediction_thresholds_[j]
        test = information_beyond_confidence(
            yhat != yj,
            fitted[keep, j],
            pj,
            yhat,
            direction=monitor.direction,
            function_of_p=scorer.function_of_probabilities,
            seed=seed,
        )
        information.append({"name": name, **test.to_dict()})
    return {
        "settings": {
            "n_splits": n_splits,
            "n_repeats": n_repeats,
            "n_resamples": n_resamples,
            "seed": seed,
        },
        "out_of_sample": [e.to_dict() for e in estimates],
        "thresholds": thresholds,
        "information": information,
    }


__all__ = ["VERDICTS", "ClassEstimate", "calibration_evidence", "out_of_sample"]
