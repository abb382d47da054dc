"""The learned flagger (``--method learned``): a logistic model of "this prediction is wrong".

The paper's discussion proposes "directly using the cosine distances from the pairwise
comparison in conjunction with a machine learning classification model". Per class ``k``,
:class:`LearnedMonitor` fits a scikit-learn logistic regression (features standardised, L2
penalty, its strength chosen by an inner stratified cross-validation on the log-loss) of
``wrong_k = 1[yhat_k != y_k]`` on the features of :func:`flagger_features`:

* ``d_k``, the class distinctiveness;
* the K - 1 cosine distances from class ``k``'s map to the other classes' maps (row ``k`` of
  the K x K matrix without its diagonal);
* ``logit p_k``, the distance to the prediction threshold ``|logit p_k - logit t_k|`` and the
  prediction ``yhat_k`` (what the model's confidence says).

It flags when the predicted probability that the prediction is wrong is above ``tau_k``
(``direction="above"``). ``tau_k`` is fitted (same grid and swap rule as every method) on the
*out-of-fold* probabilities of the calibration images: each image's probability comes from a
model fitted without it (stratified k-fold cross-fitting), never from a model that has seen it.
The model kept for new images is then fitted on every calibration image.

The fitted model is plain numbers (feature means and scales, coefficients, intercept, the
chosen strength) that the monitor file stores as JSON; :func:`flagger_probability` computes the
probabilities from them in numpy, both at calibration time and at flag time, so ``flag``
reproduces them exactly. A class whose calibration set has fewer than 2 wrong (or 2 right)
predictions has no model: a constant probability (the error rate), which flags nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .monitor import ColumnRule, FlagMonitor
from .numerics import logit, sigmoid

Floats = NDArray[np.float64]

STRENGTHS = tuple(float(c) for c in np.logspace(-3, 2, 6))
"""Inverse L2 strengths ``C`` the inner cross-validation chooses from (0.001 ... 100)."""
OUTER_SPLITS = 5
"""Folds of the cross-fitting that gives the calibration images out-of-fold probabilities."""
INNER_SPLITS = 5
"""Folds of the inner cross-validation that chooses ``C``."""


@dataclass(frozen=True)
class FlaggerModel:
    """One class's fitted logistic model (or a constant), as stored in the monitor file.

    Attributes
    ----------
    mean, scale : tuple of float
        Feature standardisation: ``(x - mean) / scale``.
    coef : tuple of float
        Coefficients of the standardised features (empty for a constant model).
    intercept : float
        Log-odds at the mean feature vector; a constant model's probability is its sigmoid.
    strength : float or None
        The chosen inverse L2 strength ``C``; ``None`` for a constant model.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    strength: float | None

    @property
    def constant(self) -> bool:
        return not self.coef

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "strength": self.strength,
        }

    @classmethod
    def from_dict(cls, data: Any, n_features: int) -> FlaggerModel:
        """Rebuild a model; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("an object with mean, scale, coef, intercept and strength")
        keys = {"mean", "scale", "coef", "intercept", "strength"}
        if set(data) != keys:
            raise ValueError(f"exactly the fields {sorted(keys)}, got {sorted(data)}")
        arrays = {}
        for key in ("mean", "scale", "coef"):
            v = data[key]
            if not isinstance(v, list) or not all(_is_number(e) for e in v):
                raise ValueError(f"{key}: an array of finite numbers")
            arrays[key] = tuple(float(e) for e in v)
        constant = not arrays["coef"]
        want = 0 if constant else n_features
        for key in ("mean", "scale", "coef"):
            if len(arrays[key]) != want:
                raise ValueError(
                    f"{key}: {want} numbers (one per feature"
                    + (", none for a constant model" if want == 0 else "")
                    + f"), got {len(arrays[key])}"
                )
        if any(s <= 0 for s in arrays["scale"]):
            raise ValueError("scale: positive numbers")
        if not _is_number(data["intercept"]):
            raise ValueError("intercept: a finite number")
        strength = data["strength"]
        if constant:
            if strength is not None:
                raise ValueError("strength: null for a constant model")
        elif not (_is_number(strength) and strength > 0):
            raise ValueError("strength: a positive number")
        return cls(
            arrays["mean"],
            arrays["scale"],
            arrays["coef"],
            float(data["intercept"]),
            None if strength is None else float(strength),
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def feature_names(n_classes: int) -> list[str]:
    """Names of the features, in order (``dist_1 ... dist_{K-1}``: the other classes)."""
    return [
        "d",
        *(f"dist_{i}" for i in range(1, n_classes)),
        "logit_p",
        "abs_margin",
        "predicted",
    ]


def flagger_features(s: Floats, dist_row: Floats, p: Floats, t: float) -> NDArray[np.float64]:
    """The features of one class: (N,) d, (N, K - 1) distances, (N,) p, threshold -> (N, K + 3).

    See :func:`feature_names` for the columns.
    """
    z = logit(np.asarray(p, dtype=np.float64))
    margin = np.abs(z - logit(np.asarray(t)))
    yhat = (np.asarray(p) >= t).astype(np.float64)
    return np.column_stack([np.asarray(s, dtype=np.float64), dist_row, z, margin, yhat])


def flagger_probability(model: FlaggerModel, x: NDArray[np.float64]) -> Floats:
    """The model's probability that each prediction is wrong, (N, F) -> (N,), in numpy."""
    if model.constant:
        return np.full(x.shape[0], float(sigmoid(np.asarray(model.intercept))))
    zx = (x - np.asarray(model.mean)) / np.asarray(model.scale)
    return sigmoid(zx @ np.asarray(model.coef) + model.intercept)


def _minority(wrong: NDArray[np.bool_]) -> int:
    n_wrong = int(wrong.sum())
    return min(n_wrong, wrong.size - n_wrong)


def _constant(wrong: NDArray[np.bool_]) -> FlaggerModel:
    rate = float(np.clip(wrong.mean() if wrong.size else 0.0, 1e-6, 1 - 1e-6))
    return FlaggerModel((), (), (), float(math.log(rate / (1 - rate))), None)


def _fit_at(x: Floats, wrong: NDArray[np.bool_], strength: float) -> FlaggerModel:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    zx = (x - mean) / scale
    lr = LogisticRegression(C=strength, solver="newton-cholesky", max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on separable folds
        lr.fit(zx, wrong.astype(int))
    return FlaggerModel(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in lr.coef_[0]),
        float(lr.intercept_[0]),
        float(strength),
    )


def _log_loss(wrong: NDArray[np.bool_], q: Floats) -> float:
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(wrong, np.log(q), np.log1p(-q))))


def choose_strength(x: Floats, wrong: NDArray[np.bool_], *, seed: int = 0) -> float | None:
    """The ``C`` of :data:`STRENGTHS` with the lowest inner cross-validated log-loss.

    ``None`` when the minority class has fewer than 2 images (no model can be fitted).
    Ties go to the strongest penalty (the smallest ``C``).
    """
    from sklearn.model_selection import StratifiedKFold

    m = _minority(wrong)
    if m < 2:
        return None
    folds = list(
        StratifiedKFold(min(INNER_SPLITS, m), shuffle=True, random_state=seed).split(x, wrong)
    )
    losses = []
    for c in STRENGTHS:
        oof = np.empty(len(wrong))
        for train, test in folds:
            oof[test] = flagger_probability(_fit_model(x[train], wrong[train], c), x[test])
        losses.append(_log_loss(wrong, oof))
    return STRENGTHS[int(np.argmin(np.round(losses, 12)))]


def _fit_model(x: Floats, wrong: NDArray[np.bool_], strength: float) -> FlaggerModel:
    return _fit_at(x, wrong, strength) if _minority(wrong) >= 1 else _constant(wrong)


def fit_flagger(
    x: Floats, wrong: NDArray[np.bool_], *, strength: float | None = None, seed: int = 0
) -> FlaggerModel:
    """Fit one class's model on every row.

    ``strength`` fixed, or chosen by :func:`choose_strength`; a constant model (the error
    rate) when fewer than 2 predictions are wrong (or right).
    """
    if strength is None:
        strength = choose_strength(x, wrong, seed=seed)
    if strength is None or _minority(wrong) < 2:
        return _constant(wrong)
    return _fit_at(x, wrong, strength)


def out_of_fold(
    x: Floats, wrong: NDArray[np.bool_], *, strength: float | None = None, seed: int = 0
) -> Floats:
    """Out-of-fold probabilities: each row's from a model fitted without its fold.

    Stratified :data:`OUTER_SPLITS`-fold cross-fitting (fewer folds when the minority class
    is smaller); each fold's model chooses its own strength on its training rows unless
    ``strength`` is given. With fewer than 2 wrong (or right) predictions, every row gets the
    constant error rate.
    """
    from sklearn.model_selection import StratifiedKFold

    m = _minority(wrong)
    if m < 2:
        return flagger_probability(_constant(wrong), x)
    out = np.empty(len(wrong))
    splitter = StratifiedKFold(min(OUTER_SPLITS, m), shuffle=True, random_state=seed)
    for train, test in splitter.split(x, wrong):
        model = fit_flagger(x[train], wrong[train], strength=strength, seed=seed)
        out[test] = flagger_probability(model, x[test])
    return out


class LearnedMonitor(FlagMonitor):
    """Flags when a per-class logistic model says the prediction is probably wrong.

    Parameters
    ----------
    method, direction, grid_step
        As :class:`~.monitor.FlagMonitor` (``"learned"``, ``"above"``).
    seed : int
        Seed of the stratified folds (cross-fitting and the choice of strength).
    strengths : sequence of float, optional
        Fix the inverse L2 strength per class instead of choosing it by inner cross-validation
        (the cross-fitted estimate of :mod:`.crossfit` reuses the strengths chosen on the
        whole calibration set).

    Attributes
    ----------
    states_ : list of FlaggerModel
        The fitted model of each class.
    """

    uses_probabilities = True
    uses_distances = True

    def __init__(
        self,
        method: str = "learned",
        direction: str = "above",
        grid_step: float = 0.001,
        *,
        seed: int = 0,
        strengths: Sequence[float | None] | None = None,
    ) -> None:
        super().__init__(method, direction, grid_step)
        self.seed = seed
        self.strengths = None if strengths is None else list(strengths)

    def cross_fit_template(self) -> LearnedMonitor:
        """Unfitted, with the strength each class chose on the whole calibration set.

        Refitting on the training part of every fold of every repeat then costs a few logistic
        fits instead of a nested cross-validation each; only the choice of ``C`` (one of
        :data:`STRENGTHS`) has seen the held-out images.
        """
        self.check_fitted()
        return LearnedMonitor(
            self.method,
            self.direction,
            self.grid_step,
            seed=self.seed,
            strengths=[m.strength for m in self.states_],
        )

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
        if dist_row is None:
            raise ValueError("the learned flagger needs the distances between the class maps")
        x = flagger_features(s, dist_row, p, t)
        wrong = yhat != y
        fixed = None if self.strengths is None else self.strengths[j]
        # Nested: each outer fold chooses its own strength on its training rows (unless fixed).
        oof = out_of_fold(x, wrong, strength=fixed, seed=self.seed)
        model = fit_flagger(x, wrong, strength=fixed, seed=self.seed)
        return oof, model

    def column_scores(
        self,
        j: int,
        p: NDArray[np.float64],
        s: NDArray[np.float64],
        dist_row: NDArray[np.float64] | None = None,
        *,
        rule: ColumnRule | None = None,
    ) -> NDArray[np.float64]:
        if dist_row is None:
            raise ValueError("the learned flagger needs the distances between the class maps")
        t = rule.prediction_threshold if rule is not None else self.prediction_thresholds_[j]
        model = rule.state if rule is not None else self.states_[j]
        return flagger_probability(model, flagger_features(s, dist_row, p, float(t)))


__all__ = [
    "INNER_SPLITS",
    "OUTER_SPLITS",
    "STRENGTHS",
    "FlaggerModel",
    "LearnedMonitor",
    "choose_strength",
    "feature_names",
    "fit_flagger",
    "flagger_features",
    "flagger_probability",
    "out_of_fold",
]
