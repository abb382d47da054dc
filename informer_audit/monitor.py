"""Scores -> per-class thresholds (METHOD.md sections 1 and 4) and the monitor file.

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
same machinery with ``direction="above"`` (entropy, TTA spread). The monitor is saved as versioned
JSON bound to the model's fingerprint and settings, never pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .errors import MonitorFormatError, MonitorMismatchError, NotFittedError
from .fileio import atomic_write_text

if TYPE_CHECKING:
    from .baselines import MethodSpec

MONITOR_FORMAT = "informer-audit-monitor"
SCHEMA_VERSION = 1
DIRECTIONS = ("below", "above")

_NEVER = math.nextafter(1.0, 2.0)
"""Prediction threshold that no probability reaches (Youden's optimum was 'predict nothing')."""


# -- prediction thresholds ----------------------------------------------------------------------
def youden_threshold(y: NDArray[np.floating], p: NDArray[np.floating]) -> float | None:
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
    return _NEVER if not math.isfinite(t) else t


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
    y: NDArray[np.floating],
    yhat: NDArray[np.floating],
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
        The largest score the method can give (:meth:`.baselines.MethodSpec.score_range`); the
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
    y: NDArray[np.floating],
    yhat: NDArray[np.floating],
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
    ) -> FlagMonitor:
        """Fit prediction thresholds on ``probs`` and flag thresholds on ``scores``.

        Parameters
        ----------
        scores : ndarray, shape (N, K)
            Raw monitor score per image and class (``d`` for INFORMER).
        y : ndarray, shape (N, K)
            Labels 0/1; NaN where an image has no label for a class (left out of that class).
        probs : ndarray, shape (N, K)
            The model's probabilities.
        class_names : sequence of str, length K
        """
        self._check_params()
        scores, y, probs = (np.asarray(a, dtype=np.float64) for a in (scores, y, probs))
        if not (scores.shape == y.shape == probs.shape) or scores.ndim != 2:
            raise ValueError(
                f"scores, y and probs must share one (N, K) shape, got {scores.shape}, "
                f"{y.shape}, {probs.shape}"
            )
        k = scores.shape[1]
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} columns")
        spec = _spec_of(self.method)
        # The grid reaches the method's largest score, so that for direction "above" the
        # threshold that flags nothing here flags nothing on images scored higher than these.
        score_max = spec.score_range(k)[1] if spec is not None else None
        pred_t = np.empty(k)
        flag_t = np.empty(k)
        fits = []
        for j in range(k):
            keep = np.isfinite(y[:, j])
            yj, pj, sj = y[keep, j] > 0.5, probs[keep, j], scores[keep, j]
            note = ""
            t = youden_threshold(yj, pj)
            if t is None:
                t = 0.5
                what = "positive" if not yj.any() else "negative"
                note = f"no {what} labels among {len(yj)}: prediction threshold 0.5"
            yhat = pj >= t
            tau = best_flag_threshold(
                yj, yhat, sj, step=self.grid_step, direction=self.direction, score_max=score_max
            )
            flagged = self._flag_column(sj, tau)
            audited = yhat ^ flagged
            f1_b, sens_b, spec_b = _rates(yj, yhat)
            f1_a, sens_a, spec_a = _rates(yj, audited)
            if not yj.any():
                # best_flag_threshold returned the threshold that flags nothing: TP is 0
                # whatever is swapped, so no swap can raise F1 (0, or undefined if nothing is
                # predicted positive either).
                what = f"no positive labels among {len(yj)}" if len(yj) else "no labelled images"
                f1_text = "undefined" if math.isnan(f1_b) else f"{f1_b:g}"
                note = (
                    f"{what}: prediction threshold 0.5; F1 {f1_text} and no swap can raise it: "
                    "nothing flagged"
                )
            pred_t[j], flag_t[j] = t, tau
            fits.append(
                ClassFit(
                    str(class_names[j]),
                    int(len(yj)),
                    int(yj.sum()),
                    t,
                    tau,
                    int(flagged.sum()),
                    f1_b,
                    f1_a,
                    sens_b,
                    sens_a,
                    spec_b,
                    spec_a,
                    note,
                )
            )
        self.class_names_ = [str(c) for c in class_names]
        self.prediction_thresholds_ = pred_t
        self.flag_thresholds_ = flag_t
        self.fits_ = fits
        return self

    def _flag_column(self, s: NDArray[np.float64], tau: float) -> NDArray[np.bool_]:
        return s < tau if self.direction == "below" else s > tau

    def _check_fitted(self) -> None:
        if not hasattr(self, "flag_thresholds_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() or load a monitor file"
            )

    def predict(self, probs: NDArray[np.floating]) -> NDArray[np.bool_]:
        """The model's predictions, ``probs >= t_k``; shape (N, K) -> (N, K) bool."""
        self._check_fitted()
        return np.asarray(probs, dtype=np.float64) >= self.prediction_thresholds_

    def decision_function(self, scores: NDArray[np.floating]) -> NDArray[np.float64]:
        """Signed margin to the flag threshold; positive means flagged. (N, K) -> (N, K)."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        return self.flag_thresholds_ - s if self.direction == "below" else s - self.flag_thresholds_

    def flag(self, scores: NDArray[np.floating]) -> NDArray[np.bool_]:
        """Which predictions are flagged; shape (N, K) -> (N, K) bool."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        return s < self.flag_thresholds_ if self.direction == "below" else s > self.flag_thresholds_

    def audit(
        self, probs: NDArray[np.floating], scores: NDArray[np.floating]
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
        """Predictions, flags and audited predictions (flagged ones swapped), each (N, K) bool."""
        yhat = self.predict(probs)
        flags = self.flag(scores)
        return yhat, flags, yhat ^ flags

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "method": self.method,
            "direction": self.direction,
            "grid_step": self.grid_step,
            "classes": [
                {
                    "name": f.name,
                    "prediction_threshold": float(self.prediction_thresholds_[j]),
                    "flag_threshold": float(self.flag_thresholds_[j]),
                    "calibration": {
                        k: _json_float(v)
                        for k, v in asdict(f).items()
                        if k not in ("name", "prediction_threshold", "flag_threshold")
                    },
                }
                for j, f in enumerate(self.fits_)
            ],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "monitor", *, field: str = ""
    ) -> FlagMonitor:
        """Rebuild a fitted monitor from :meth:`to_dict`, checking every field.

        Parameters
        ----------
        data : mapping
            The ``monitor`` object of a monitor file.
        source : str
            The file it came from, named in every refusal.
        field : str
            Where ``data`` sits in its document (``"monitor"``), prefixed to field names.

        Raises
        ------
        MonitorFormatError
            For anything :meth:`to_dict` cannot have written: a missing or unexpected field,
            a value of another JSON type (``true`` or ``"1.4"`` for a number), a method this
            version does not know or flagging in the other direction, a threshold outside what
            the method's score can take, duplicate class names.
        """
        chk = _Schema(source)
        at = _Fields(field)
        chk.keys(data, at(), required=_MONITOR_FIELDS)
        method = chk.string(data["method"], at("method"))
        spec = _spec_of(method, exact=True)
        if spec is None:
            from .baselines import METHODS

            chk.fail(at("method"), method, f"one of the methods {list(METHODS)}")
        direction = chk.string(data["direction"], at("direction"))
        if direction not in DIRECTIONS:
            chk.fail(at("direction"), direction, f"direction must be one of {DIRECTIONS}")
        if direction != spec.direction:
            chk.fail(
                at("direction"),
                direction,
                f"{spec.direction!r}: method {method!r} flags when its score is "
                f"{spec.direction} the threshold",
            )
        step = chk.number(
            data["grid_step"], at("grid_step"), f"a number in [{_MIN_STEP:g}, 1]", _MIN_STEP, 1.0
        )
        classes = data["classes"]
        if not isinstance(classes, list) or not classes:
            chk.fail(at("classes"), classes, "a non-empty array of class objects")
        lo, hi = spec.score_range(len(classes))
        # The fitted grid ends at the first grid value at or above the largest score
        # (threshold_grid); a millionth of a step more absorbs the float rounding of j * step.
        top = math.ceil(round(hi / step, 9)) * step
        tau_ok = f"a number in [{lo:g}, {top:.10g}] ({method} scores lie in [{lo:g}, {hi:g}])"
        if direction == "below" and lo > 0:
            tau_ok = f"0 (flag nothing) or {tau_ok}"
        mon = cls(method, direction, step)
        names: list[str] = []
        pred_t, flag_t, fits = [], [], []
        for j, entry in enumerate(classes):
            here = _Fields(at(f"classes[{j}]"))
            chk.keys(entry, here(), required=_CLASS_FIELDS)
            name = chk.string(entry["name"], here("name"), "a non-empty string (a class name)")
            if name in names:
                chk.fail(
                    here("name"),
                    name,
                    f"a class name not already used by classes[{names.index(name)}]",
                )
            t = chk.number(
                entry["prediction_threshold"],
                here("prediction_threshold"),
                "a probability in [0, 1] (or 1.0000000000000002: predict nothing)",
                0.0,
                1.0,
                allow=(_NEVER,),
            )
            tau = chk.number(
                entry["flag_threshold"],
                here("flag_threshold"),
                tau_ok,
                lo,
                top + step * 1e-6,
                allow=(0.0,) if direction == "below" else (),
            )
            stats = _calibration_stats(chk, entry["calibration"], _Fields(here("calibration")))
            chk.no_others(entry, here(), _CLASS_FIELDS)
            names.append(name)
            pred_t.append(t)
            flag_t.append(tau)
            fits.append(ClassFit(name=name, prediction_threshold=t, flag_threshold=tau, **stats))
        chk.no_others(data, at(), _MONITOR_FIELDS)
        mon.class_names_ = names
        mon.prediction_thresholds_ = np.asarray(pred_t, dtype=np.float64)
        mon.flag_thresholds_ = np.asarray(flag_t, dtype=np.float64)
        mon.fits_ = fits
        return mon


# -- the monitor file's schema ------------------------------------------------------------------
_MIN_STEP = 1e-9
"""Smallest grid step a monitor file may hold (a finer grid than float rounding is no grid)."""

_MONITOR_FIELDS = ("method", "direction", "grid_step", "classes")
_CLASS_FIELDS = ("name", "prediction_threshold", "flag_threshold", "calibration")
_COUNTS = ("n", "n_pos", "n_flags")
_RATES = (
    "f1_before",
    "f1_after",
    "sensitivity_before",
    "sensitivity_after",
    "specificity_before",
    "specificity_after",
)


def _spec_of(name: str, *, exact: bool = False) -> MethodSpec | None:
    """The registered spec of a method (or of a variant, unless ``exact``); ``None`` if unknown."""
    # .baselines imports this module (make_monitor returns a FlagMonitor): import on use.
    from .baselines import METHODS, method_spec

    if exact:
        return METHODS.get(name)
    try:
        return method_spec(name)
    except ValueError:  # EvaluationError
        return None


class _Fields:
    """Dotted field paths: ``_Fields("monitor")("grid_step") == "monitor.grid_step"``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, name: str = "") -> str:
        if not name:
            return self.prefix or "(the document)"
        if not self.prefix or name.startswith("["):
            return f"{self.prefix}{name}"
        return f"{self.prefix}.{name}"


def _shown(value: Any) -> str:
    """A JSON value as the file spells it, shortened, with its JSON type."""
    kinds = {bool: "boolean", str: "string", int: "number", float: "number", list: "array"}
    kind = "null" if value is None else kinds.get(type(value), "object")
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (ValueError, TypeError, RecursionError):
        text = type(value).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class _Schema:
    """Field-by-field checks of a monitor document; each refusal names the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, found: Any, expected: str) -> NoReturn:
        raise MonitorFormatError(
            f"{self.source}: not a valid monitor (schema {MONITOR_FORMAT} v{SCHEMA_VERSION}): "
            f"{field}: found {_shown(found)}, expected {expected}"
        )

    def missing(self, field: str, expected: str) -> NoReturn:
        raise MonitorFormatError(
            f"{self.source}: not a valid monitor (schema {MONITOR_FORMAT} v{SCHEMA_VERSION}): "
            f"{field} is missing, expected {expected}"
        )

    def keys(
        self,
        value: Any,
        field: str,
        required: Sequence[str],
    ) -> None:
        """``value`` is an object holding ``required`` (see :meth:`no_others` for the rest)."""
        if not isinstance(value, dict):
            self.fail(field, value, f"an object with the fields {list(required)}")
        at = _Fields(field)
        for key in required:
            if key not in value:
                self.missing(at(key), f"an object with the fields {list(required)}")

    def no_others(self, value: Mapping[str, Any], field: str, allowed: Sequence[str]) -> None:
        """Refuse a field the writer never writes (checked after the fields' values)."""
        for key in value:
            if key not in allowed:
                self.fail(
                    _Fields(field)(str(key)),
                    value[key],
                    f"no such field (the fields are {list(allowed)})",
                )

    def string(self, value: Any, field: str, expected: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, value, expected)
        return value

    def number(
        self,
        value: Any,
        field: str,
        expected: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        allow: Sequence[float] = (),
    ) -> float:
        """A JSON number (not ``true``, not ``"1.4"``), finite, in ``[lo, hi]`` or in ``allow``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, value, expected)
        try:
            x = float(value)
        except OverflowError:
            self.fail(field, value, expected)
        if not math.isfinite(x):
            self.fail(field, value, f"a finite number: {expected}")
        if x in allow:
            return x
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            self.fail(field, value, expected)
        return x

    def count(self, value: Any, field: str, hi: int | None = None) -> int:
        """A non-negative JSON integer (``3``, not ``3.0``, ``true`` or ``"3"``), at most ``hi``."""
        expected = "a non-negative integer" + (f" at most {hi}" if hi is not None else "")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(field, value, expected)
        if hi is not None and value > hi:
            self.fail(field, value, expected)
        return value

    def names(self, value: Any, field: str) -> list[str]:
        """A non-empty array of distinct non-empty strings."""
        if not isinstance(value, list) or not value:
            self.fail(field, value, "a non-empty array of class names (strings)")
        seen: list[str] = []
        for i, name in enumerate(value):
            self.string(name, f"{field}[{i}]", "a non-empty string (a class name)")
            if name in seen:
                self.fail(
                    f"{field}[{i}]",
                    name,
                    f"a class name not already at {field}[{seen.index(name)}]",
                )
            seen.append(name)
        return seen


def _calibration_stats(chk: _Schema, value: Any, at: _Fields) -> dict[str, Any]:
    """The :class:`ClassFit` statistics of one class entry (``note`` may be absent)."""
    chk.keys(value, at(), required=(*_COUNTS, *_RATES))
    n = chk.count(value["n"], at("n"))
    out: dict[str, Any] = {"n": n}
    out["n_pos"] = chk.count(value["n_pos"], at("n_pos"), n)
    out["n_flags"] = chk.count(value["n_flags"], at("n_flags"), n)
    for key in _RATES:
        v = value[key]
        # null: undefined (F1 without positives, sensitivity without positives, ...)
        out[key] = (
            float("nan")
            if v is None
            else chk.number(v, at(key), "a rate in [0, 1], or null (undefined)", 0.0, 1.0)
        )
    note = value.get("note", "")
    if not isinstance(note, str):
        chk.fail(at("note"), note, "a string")
    out["note"] = note
    chk.no_others(value, at(), (*_COUNTS, *_RATES, "note"))
    return out


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null means "undefined" (e.g. F1 with no positives)
    return v


# -- the monitor file ---------------------------------------------------------------------------
def save_monitor(
    path: str | Path,
    monitor: FlagMonitor,
    binding: Mapping[str, Any],
    calibration: Mapping[str, Any] | None = None,
) -> None:
    """Write the monitor as JSON, atomically (temp file + rename).

    Parameters
    ----------
    binding
        What the monitor is valid for: ``model_sha256``, ``class_names`` (model outputs),
        ``audited_classes``, ``preprocessing`` (model card) and ``saliency`` settings
        (``None`` for a baseline, whose binding adds ``method``: its name and settings).
    calibration
        Provenance of the fit (number of images, label file, failures).
    """
    doc = {
        "format": MONITOR_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "binding": dict(binding),
        "monitor": monitor.to_dict(),
        "calibration": dict(calibration or {}),
    }
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=False) + "\n")


def load_monitor(path: str | Path) -> tuple[FlagMonitor, dict[str, Any], dict[str, Any]]:
    """Read a monitor file.

    Returns
    -------
    (FlagMonitor, binding, calibration)

    Raises
    ------
    MonitorFormatError
        Missing, truncated or hand-edited files, another format or schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise MonitorFormatError(f"{path}: monitor file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MonitorFormatError(f"{path}: cannot read the monitor file: {exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, a duplicate key, an integer of
        # more digits than Python converts; RecursionError: nesting deeper than the parser goes.
        raise MonitorFormatError(
            f"{path}: not valid monitor JSON (truncated or edited?): {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != MONITOR_FORMAT:
        raise MonitorFormatError(
            f'{path}: not an informer-audit monitor (expected "format": "{MONITOR_FORMAT}")'
        )
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MonitorFormatError(
            f"{path}: monitor schema_version {_short_repr(version)} is not supported; this "
            f"informer-audit {__version__} reads schema_version {SCHEMA_VERSION}. "
            "Re-run calibrate."
        )
    binding = doc.get("binding")
    required = ("model_sha256", "class_names", "audited_classes", "preprocessing", "saliency")
    if not isinstance(binding, dict) or any(k not in binding for k in required):
        lacking = (
            [k for k in required if k not in binding] if isinstance(binding, dict) else required
        )
        raise MonitorFormatError(
            f"{path}: the monitor's 'binding' must hold {list(required)}; "
            + (
                f"found {_shown(binding)}"
                if not isinstance(binding, dict)
                else f"binding.{lacking[0]} is missing"
            )
        )
    chk = _Schema(str(path))
    chk.keys(doc, "", required=("format", "schema_version", "binding", "monitor"))
    chk.no_others(
        doc, "", ("format", "schema_version", "tool_version", "binding", "monitor", "calibration")
    )
    if "tool_version" in doc:
        chk.string(doc["tool_version"], "tool_version", "a version string")
    calibration = doc.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        chk.fail("calibration", calibration, "an object (the fit's provenance) or null")
    monitor = FlagMonitor.from_dict(doc["monitor"], source=str(path), field="monitor")
    _check_binding_fields(chk, binding, monitor)
    if monitor.class_names_ != binding["audited_classes"]:
        raise MonitorFormatError(
            f"{path}: monitor classes {monitor.class_names_} differ from the bound audited "
            f"classes {binding['audited_classes']}"
        )
    return monitor, binding, dict(calibration or {})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a key given twice is an edit (JSON readers keep either one)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {_short_repr(key)} appears twice in one object")
        out[key] = value
    return out


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SHA256_HEX = frozenset("0123456789abcdef")


def _check_binding_fields(chk: _Schema, binding: dict[str, Any], monitor: FlagMonitor) -> None:
    """The binding's fields have the types :meth:`.audit.Auditor.binding` writes."""
    sha = binding["model_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        chk.fail("binding.model_sha256", sha, "a SHA-256 digest: 64 lowercase hex digits")
    outputs = chk.names(binding["class_names"], "binding.class_names")
    audited = chk.names(binding["audited_classes"], "binding.audited_classes")
    for i, name in enumerate(audited):
        if name not in outputs:
            chk.fail(
                f"binding.audited_classes[{i}]",
                name,
                f"one of the model's classes (binding.class_names) {_short_repr(outputs)}",
            )
    if not isinstance(binding["preprocessing"], dict):
        chk.fail("binding.preprocessing", binding["preprocessing"], "an object (the model card)")
    saliency = binding["saliency"]
    if saliency is None:
        if monitor.method == "informer":
            chk.fail(
                "binding.saliency",
                saliency,
                "an object (the saliency settings; null only for a baseline)",
            )
    elif not isinstance(saliency, dict):
        chk.fail("binding.saliency", saliency, "an object (null only for a baseline)")
    elif monitor.method == "informer" and not isinstance(saliency.get("name"), str):
        chk.fail("binding.saliency", saliency, "an object with the saliency adapter's 'name'")
    # A binding without "method" is INFORMER's (files from before the baselines); a baseline's
    # names its method (and settings, e.g. TTA's) and has "saliency": null. A baseline's
    # binding without one loads (check_binding refuses it against any run's binding).
    method = binding.get("method")
    if method is None:
        return
    if not isinstance(method, dict) or method.get("name") != monitor.method:
        chk.fail(
            "binding.method",
            method,
            f"an object whose name is the monitor's method {monitor.method!r} (the binding's "
            "method does not name the monitor's method)",
        )
    if monitor.method == "tta":
        from .baselines import tta_settings

        # The keyword arguments of tta_settings are the TTA settings that change the score.
        for key in tta_settings.__kwdefaults__ or {}:
            if key not in method:
                chk.missing(f"binding.method.{key}", "the TTA setting the monitor was fitted with")
            value = method[key]
            try:
                if isinstance(value, bool):
                    raise ValueError("a number, not true or false")
                tta_settings(**{key: value})
            except ValueError as exc:  # EvaluationError
                chk.fail(f"binding.method.{key}", value, str(exc).split(": ", 1)[-1])


def check_binding(
    found: Mapping[str, Any], expected: Mapping[str, Any], source: str = "monitor"
) -> None:
    """Refuse a monitor fitted for another model or other settings.

    Compares field by field (nested objects included) and names the first field that differs.
    """
    diffs = _diff(found, expected, "")
    if diffs:
        field_name, was, now = diffs[0]
        more = f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else ""
        raise MonitorMismatchError(
            f"{source} was fitted for other settings: {field_name} is {was!r} in the monitor but "
            f"{now!r} for this run{more}. Re-run calibrate for this model and these settings."
        )


def differences(found: Any, expected: Any) -> list[tuple[str, Any, Any]]:
    """Where two JSON-like documents differ: ``(dotted field name, found, expected)`` each.

    Nested objects are compared key by key, lists as wholes, numbers by value (``1 == 1.0``).
    """
    return _diff(found, expected, "")


def _diff(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append((name, a.get(key, "<absent>"), b.get(key, "<absent>")))
            else:
                out.extend(_diff(a[key], b[key], name))
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return [] if list(a) == list(b) else [(prefix, list(a), list(b))]
    if isinstance(a, float | int) and isinstance(b, float | int):
        return [] if float(a) == float(b) else [(prefix, a, b)]
    return [] if a == b else [(prefix, a, b)]
