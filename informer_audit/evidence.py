"""Does the monitor help? The statistics behind the answer, on arrays.

Three questions an auditor should ask before believing that a monitor improves a classifier,
each answered by a pure function of arrays (labels, probabilities, predictions, scores; no model,
no files):

* **Is the F1 gain real, or luck of this test set?** :func:`paired_bootstrap` resamples the test
  images (10,000 times by default) and reports how the difference in mean F1 between two
  methods varies from one plausible test set to another: a percentile interval and a two-sided
  p-value. Every method is scored on the same resampled images (:func:`paired_bootstrap_many`),
  so the comparison is paired.
* **Does the score know anything the model's probability does not?** At the Youden thresholds
  most errors are false positives, so any function of ``p`` alone (entropy, the maximum softmax
  probability, the distance to the threshold) "detects errors" with a high AUROC, yet flagging by
  it only moves the decision threshold. :func:`information_beyond_confidence` tests whether a
  score predicts the model's errors *beyond* a flexible function of ``p`` and the prediction: a
  likelihood-ratio test of two nested logistic models, and their cross-validated AUROCs.
* **How stable is the decision threshold?** :func:`youden_stability` bootstraps the Youden
  threshold of one class: a wide interval means the calibration set does not pin the threshold
  down, and differences between monitors that amount to moving it are not to be trusted.

Why not the paired t-test over 30 bootstrap test sets (:func:`.evaluation.evaluate_methods`, the
paper's Fig. 3)? The 30 sets are resamples of one test set, not 30 new samples of patients: they
share most of their images, and their spread already *is* the uncertainty of one test set's
result. The t statistic divides the mean difference by ``sd / sqrt(B)``, so it grows with the
square root of the (arbitrary) number of resamples ``B`` while the information in the test set
stays the same: with enough resamples any difference, however small, becomes "significant".
Here the spread of the resampled differences is used as it is: the interval is read off the
resamples, and the p-value counts how many resamples fall on the other side of zero.

Conventions as in :mod:`.metrics`: labels are 0, 1 or NaN (NaN = the image has no label for that
class and is left out of that class), a metric whose denominator is zero is NaN, and means over
classes skip NaN classes. Every result is a frozen dataclass whose ``to_dict()`` gives plain
JSON-ready values (NaN and infinities as ``None``), for a monitor file or a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np

from .errors import EvaluationError
from .metrics import (
    BoolArray,
    FloatArray,
    as_bools,
    as_finite,
    as_labels,
    check_direction,
    nanmean,
)
from .monitor import PREDICT_NOTHING, f1_from_counts, youden_threshold

_CHUNK_ELEMENTS = 1 << 21
"""Bound on resamples x images held at once (a few tens of MB of work arrays)."""

_LOGIT_CLIP = 1e-12
"""Probabilities are clipped to ``[1e-12, 1 - 1e-12]`` before the logit (float32 models give
exact 0 and 1)."""

_FEW = 10
"""Below this many wrong (or right) predictions a note warns that the chi-square p-value of the
likelihood-ratio test is rough."""

_RIDGE = 1e-8
"""Ridge on the logistic coefficients (standardised features): negligible, but it keeps the
maximum-likelihood fit finite when the data are separated."""


# -- shared helpers ---------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (floats, ints, str; NaN and inf as ``None``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(cast(Any, self))}


def _check_int(name: str, value: Any, low: int) -> int:
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool)):
        raise EvaluationError(f"{name} must be an integer, got {value!r}", params=(name,))
    if value < low:
        raise EvaluationError(f"{name} must be >= {low}, got {value}", params=(name,))
    return int(value)


def _check_level(level: Any) -> float:
    ok = isinstance(level, int | float | np.floating) and not isinstance(level, bool)
    if not ok or not 0.0 < float(level) < 1.0:
        raise EvaluationError(
            f"level must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}"
        )
    return float(level)


def _interval(values: FloatArray, level: float) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _multiplicities(rng: np.random.Generator, n: int, size: int) -> FloatArray:
    """``size`` bootstrap resamples of ``n`` images as multiplicity vectors, shape (size, n).

    Row ``b`` counts how often each image was drawn; the draws are
    ``rng.integers(0, n, size=(size, n))``, so consecutive calls continue the stream of
    :func:`.metrics.bootstrap_indices` with the same seed.
    """
    idx = rng.integers(0, n, size=(size, n), dtype=np.int64)
    flat = (idx + n * np.arange(size, dtype=np.int64)[:, None]).ravel()
    return np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.float64)


def _chunks(total: int, n: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return [(start, min(start + step, total)) for start in range(0, total, step)]


# -- 1. paired bootstrap of the mean F1 ------------------------------------------------------------
@dataclass(frozen=True)
class PairedBootstrap(_AsDict):
    """Bootstrap comparison of the mean F1 over classes of two methods on the same test images.

    Read it as: "on this test set, method A's mean F1 is ``mean_difference`` higher than B's; on
    test sets like this one it would plausibly lie between ``low`` and ``high``". An interval
    that contains 0 means the test set cannot tell which method is better.

    Attributes
    ----------
    method_a, method_b : str
        The two methods (``a - b`` is reported).
    mean_f1_a, mean_f1_b : float
        Mean F1 over classes of each method on the test set itself (NaN if no class defines it).
    mean_difference : float
        ``mean_f1_a - mean_f1_b`` on the test set itself: the observed difference.
    bootstrap_mean : float
        Mean of the difference over the valid resamples; far from ``mean_difference`` means the
        difference is driven by a few images.
    low, high : float
        Percentile interval of the resampled differences at ``level`` (for 0.95: the 2.5th and
        97.5th percentiles).
    p_value : float
        Two-sided bootstrap p-value ``min(1, 2 min(#{d <= 0} + 1, #{d >= 0} + 1) / (n_valid + 1))``
        over the resampled differences ``d``: small when nearly every resample shows the same
        sign. It is roughly the smallest ``1 - level`` at which the interval would exclude 0;
        it is *not* the probability that the two methods are equally good. Resamples where the
        two methods agree exactly count on both sides, so two methods that flag the same
        predictions get ``p_value = 1``.
    n_resamples : int
        Resampled test sets drawn.
    n_valid : int
        Resamples where both mean F1s are defined (the others are left out).
    level : float
    seed : int
    """

    method_a: str
    method_b: str
    mean_f1_a: float
    mean_f1_b: float
    mean_difference: float
    bootstrap_mean: float
    low: float
    high: float
    p_value: float
    n_resamples: int
    n_valid: int
    level: float
    seed: int


def _count_matrix(y: FloatArray, audited: Sequence[BoolArray]) -> FloatArray:
    """Indicators (N, 3 K M): per method, the columns of TP, then FP, then FN for each class."""
    valid = np.isfinite(y)
    pos = valid & (y > 0.5)
    neg = valid & ~pos
    blocks = []
    for a in audited:
        blocks += [pos & a, neg & a, pos & ~a]
    return np.concatenate(blocks, axis=1).astype(np.float64)


def _mean_f1(counts: FloatArray, n_methods: int, k: int) -> FloatArray:
    """(B, 3 K M) counts -> (B, M) mean F1 over classes (NaN classes skipped)."""
    c = counts.reshape(counts.shape[0], n_methods, 3, k)
    f1 = f1_from_counts(c[:, :, 0], c[:, :, 1], c[:, :, 2])
    return np.asarray(nanmean(f1, axis=2), dtype=np.float64)


def paired_bootstrap_many(
    y: Any,
    audited: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> list[PairedBootstrap]:
    """:func:`paired_bootstrap` of several pairs of methods on one set of resamples.

    Every method is scored on the same resampled test sets, so the comparisons are paired
    across methods too: the resampled differences are additive (``(a - b) + (b - c) = a - c``
    resample by resample).

    Parameters
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    audited : mapping of str to ndarray, shape (N, K), bool
        Final predictions (after swapping the flagged ones) per method name; the model's own
        predictions under a name such as ``"no_audit"``.
    pairs : sequence of (str, str)
        ``(a, b)`` pairs of names in ``audited``; each reports ``a - b``.
    n_resamples : int
        Resampled test sets (>= 1). The resamples are the rows of
        ``metrics.bootstrap_indices(N, n_resamples, seed)``.
    seed : int
        Seed of ``numpy.random.default_rng``.
    level : float
        Coverage of the percentile interval, strictly between 0 and 1.

    Returns
    -------
    list of PairedBootstrap
        In the order of ``pairs``.

    Raises
    ------
    EvaluationError
        Labels other than 0/1/NaN, predictions of another shape, names not in ``audited``,
        invalid ``n_resamples``, ``seed`` or ``level``.
    """
    y_arr = as_labels(y)
    n, k = y_arr.shape
    if n == 0:
        raise EvaluationError("y has no images to resample")
    b_total = _check_int("n_resamples", n_resamples, 1)
    seed_i = _check_int("seed", seed, 0)
    lvl = _check_level(level)
    pair_list = [tuple(p) for p in pairs]
    if not pair_list:
        raise EvaluationError("pairs must name at least one (a, b) pair")
    names: list[str] = []
    for pair in pair_list:
        if len(pair) != 2:
            raise EvaluationError(f"each pair must be (a, b), got {pair!r}")
        for name in pair:
            if name not in audited:
                raise EvaluationError(
                    f"pairs names {name!r}, which is not in audited (methods: {sorted(audited)})"
                )
            if name not in names:
                names.append(name)
    preds = [as_bools(audited[m], f"audited[{m!r}]", y_arr.shape) for m in names]
    x = _count_matrix(y_arr, preds)
    col = {m: i for i, m in enumerate(names)}
    ia = np.array([col[a] for a, _ in pair_list])
    ib = np.array([col[b] for _, b in pair_list])

    observed = _mean_f1(x.sum(axis=0, keepdims=True), len(names), k)[0]
    diffs = np.empty((b_total, len(pair_list)), dtype=np.float64)
    rng = np.random.default_rng(seed_i)
    for start, stop in _chunks(b_total, n):
        mean_f1 = _mean_f1(_multiplicities(rng, n, stop - start) @ x, len(names), k)
        diffs[start:stop] = mean_f1[:, ia] - mean_f1[:, ib]

    out = []
    for j, (a, b) in enumerate(pair_list):
        d = diffs[:, j]
        d = d[np.isfinite(d)]
        n_valid = int(d.size)
        if n_valid:
            at_most, at_least = int(np.sum(d <= 0.0)), int(np.sum(d >= 0.0))
            p = min(1.0, 2.0 * (min(at_most, at_least) + 1) / (n_valid + 1))
            boot_mean = float(d.mean())
        else:
            p = boot_mean = math.nan
        low, high = _interval(d, lvl)
        fa, fb = float(observed[col[a]]), float(observed[col[b]])
        out.append(
            PairedBootstrap(
                method_a=a,
                method_b=b,
                mean_f1_a=fa,
                mean_f1_b=fb,
                mean_difference=fa - fb,
                bootstrap_mean=boot_mean,
                low=low,
                high=high,
                p_value=p,
                n_resamples=b_total,
                n_valid=n_valid,
                level=lvl,
                seed=seed_i,
            )
        )
    return out


def paired_bootstrap(
    y: Any,
    audited_a: Any,
    audited_b: Any,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedBootstrap:
    """Is method A's mean F1 really higher than method B's on this test set?

    Draws ``n_resamples`` test sets of ``N`` images with replacement from the ``N`` test images
    (the bootstrap: each stands for another test set that could have been collected), computes
    on each the mean F1 over classes of both methods and their difference ``a - b``, and
    summarises the differences: their percentile interval and a two-sided p-value (see
    :class:`PairedBootstrap`). F1 per class is over the labelled images of the resample and NaN
    when undefined; the mean skips NaN classes, as :func:`.metrics.bootstrap_mean_f1`.

    The uncertainty reported is that of *this* test set: the spread of the resampled
    differences, however many resamples are drawn. More resamples make the interval and the
    p-value more precise, not smaller; the paired t-test over a few bootstrap sets instead
    shrinks its standard error as ``1 / sqrt(B)`` and overstates significance.

    Parameters
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    audited_a, audited_b : ndarray, shape (N, K), bool
        Final predictions of the two methods on the same images.
    n_resamples, seed, level
        As for :func:`paired_bootstrap_many`.

    Returns
    -------
    PairedBootstrap
        With ``method_a = "a"``, ``method_b = "b"``.
    """
    return paired_bootstrap_many(
        y,
        {"a": audited_a, "b": audited_b},
        [("a", "b")],
        n_resamples=n_resamples,
        seed=seed,
        level=level,
    )[0]


# -- 2. information beyond the model's confidence ----------------------------------------------
@dataclass(frozen=True)
class InformationTest(_AsDict):
    """Does a monitor score predict the model's errors beyond the model's own probability?

    Attributes
    ----------
    n, n_wrong : int
        Labelled images of the class and wrong predictions among them.
    direction : str
        ``"below"`` (the monitor flags low scores: INFORMER, MSP) or ``"above"`` (entropy, TTA).
    function_of_p : bool
        The score was declared a function of ``p`` alone (no model was fitted for it).
    auroc : float
        AUROC of the score for "the prediction is wrong", oriented so that above 0.5 means that
        wrong predictions look more suspicious to the monitor than right ones (0.5: no better
        than chance). NaN when all predictions are right, or all wrong.
    auroc_pred_pos, auroc_pred_neg : float
        The same within the predicted positives (``yhat = 1``, where the errors are false
        positives) and within the predicted negatives (false negatives). A score that only
        separates the two groups (because errors are mostly false positives) has a high
        ``auroc`` but within-group AUROCs near 0.5. NaN where the group has no wrong or no
        right prediction.
    lr_statistic : float
        Likelihood-ratio statistic ``2 (loglik_full - loglik_base)`` of two logistic models of
        "wrong": the base model uses a smooth (cubic B-spline) function of ``logit p``, the
        prediction and their interaction; the full model adds the score. It measures how much
        better the errors are predicted once the score is known (0: not at all).
    df : int
        Degrees of freedom of the test (1: the score's coefficient).
    p_value : float
        ``chi2(1)`` tail probability of ``lr_statistic``: if the score carried no information
        beyond ``p`` and the prediction, a statistic this large would occur this rarely. Small
        (say below 0.01) is evidence that the score knows something the probability does not;
        large means this test set shows no such evidence (not that there is none). The
        chi-square approximation needs a fair number of errors.
    coefficient : float
        The score's log-odds coefficient in the full model, per standard deviation of the
        oriented score: positive means the more suspicious the score, the more likely an error,
        given ``p``. NaN when no full model was fitted or the data are separated.
    cv_auroc_base, cv_auroc_full : float
        AUROC for "wrong" of the out-of-fold predictions of the base and the full model
        (stratified ``n_splits``-fold cross-validation): how well each predicts errors on images
        it was not fitted on.
    cv_auroc_gain : float
        ``cv_auroc_full - cv_auroc_base``: the score's contribution to error prediction on
        unseen images; about 0 or negative means none.
    n_splits : int
        Folds used (reduced to the number of images in the rarer outcome when that is smaller
        than asked; 0 when no cross-validation was possible).
    note : str
        Why something is NaN or was not computed (empty when nothing needs saying).
    """

    n: int
    n_wrong: int
    direction: str
    function_of_p: bool
    auroc: float
    auroc_pred_pos: float
    auroc_pred_neg: float
    lr_statistic: float
    df: int
    p_value: float
    coefficient: float
    cv_auroc_base: float
    cv_auroc_full: float
    cv_auroc_gain: float
    n_splits: int
    note: str


def _as_1d_bool(a: Any, what: str, n: int | None = None) -> BoolArray:
    arr = np.asarray(a)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = "1-D" if n is None else f"of shape ({n},)"
        raise EvaluationError(f"{what} must be {want}, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise EvaluationError(f"{what} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _auroc(wrong: BoolArray, suspicion: FloatArray) -> float:
    """AUROC of ``suspicion`` for ``wrong`` (ties count 1/2); NaN with one outcome only."""
    from sklearn.metrics import roc_auc_score

    if wrong.size == 0 or wrong.all() or not wrong.any():
        return math.nan
    return float(roc_auc_score(wrong, suspicion))


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def _design(
    logit_fit: FloatArray,
    yhat_fit: BoolArray,
    extra_fit: FloatArray | None,
    logit_new: FloatArray,
    yhat_new: BoolArray,
    extra_new: FloatArray | None,
) -> tuple[FloatArray, FloatArray, int | None]:
    """Standardised design matrices (without intercept) fitted on ``*_fit``, applied to both.

    Columns: a cubic B-spline basis of ``logit p`` (4 knots at its quantiles, linear beyond the
    outer knots), ``yhat``, ``yhat * logit p``, then ``extra`` (the score) if given. Columns that
    are constant on the fitting rows are dropped (the intercept covers them). Returns the two
    matrices and the column of ``extra`` (``None`` if absent or dropped).
    """
    from sklearn.preprocessing import SplineTransformer

    knots = np.unique(np.quantile(logit_fit, np.linspace(0.0, 1.0, 4)))
    cols_fit: list[FloatArray] = []
    cols_new: list[FloatArray] = []
    if knots.size >= 2:
        spline = SplineTransformer(
            knots=knots.reshape(-1, 1), degree=3, extrapolation="linear", include_bias=False
        ).fit(logit_fit[:, None])
        basis_fit = np.asarray(spline.transform(logit_fit[:, None]), dtype=np.float64)
        basis_new = np.asarray(spline.transform(logit_new[:, None]), dtype=np.float64)
        cols_fit += list(basis_fit.T)
        cols_new += list(basis_new.T)
    cols_fit += [yhat_fit.astype(np.float64), yhat_fit * logit_fit]
    cols_new += [yhat_new.astype(np.float64), yhat_new * logit_new]
    if extra_fit is not None and extra_new is not None:
        cols_fit.append(extra_fit)
        cols_new.append(extra_new)
    a_fit, a_new = np.column_stack(cols_fit), np.column_stack(cols_new)
    mu, sd = a_fit.mean(axis=0), a_fit.std(axis=0)
    keep = sd > 1e-12 * np.maximum(1.0, np.abs(mu))
    extra_col = None
    if extra_fit is not None and keep[-1]:
        extra_col = int(np.sum(keep)) - 1
    scale = np.where(keep, sd, 1.0)
    return (a_fit - mu)[:, keep] / scale[keep], (a_new - mu)[:, keep] / scale[keep], extra_col


@dataclass(frozen=True)
class _LogisticFit:
    coef: FloatArray  # intercept first
    loglik: float
    separated: bool

    def predict(self, x: FloatArray) -> FloatArray:
        from scipy.special import expit

        return np.asarray(expit(self.coef[0] + x @ self.coef[1:]), dtype=np.float64)


def _fit_logistic(x: FloatArray, y: BoolArray, max_iter: int = 200) -> _LogisticFit:
    """Maximum-likelihood logistic regression with an intercept (Newton's method).

    A negligible ridge (:data:`_RIDGE`) keeps the coefficients finite under separation; the
    reported log-likelihood is the unpenalised one at the fitted coefficients.
    """
    from scipy.special import expit

    n = x.shape[0]
    a = np.column_stack([np.ones(n), x])
    t = y.astype(np.float64)
    rate = min(max(t.mean(), 1e-6), 1.0 - 1e-6)
    beta = np.zeros(a.shape[1])
    beta[0] = math.log(rate / (1.0 - rate))

    def objective(b: FloatArray) -> float:
        eta = a @ b
        return float(np.sum(np.logaddexp(0.0, eta) - t * eta) + 0.5 * _RIDGE * (b @ b))

    value = objective(beta)
    for _ in range(max_iter):
        mu = expit(a @ beta)
        grad = a.T @ (mu - t) + _RIDGE * beta
        hess = (a * (mu * (1.0 - mu))[:, None]).T @ a + _RIDGE * np.eye(a.shape[1])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = float(grad @ step)
        if not math.isfinite(decrement) or decrement < 1e-12:
            break
        shrink = 1.0
        while shrink > 1e-10:
            candidate = beta - shrink * step
            new_value = objective(candidate)
            if new_value <= value:
                break
            shrink *= 0.5
        else:
            break
        beta, value = candidate, new_value
    eta = a @ beta
    loglik = -float(np.sum(np.logaddexp(0.0, eta) - t * eta))
    separated = bool(np.max(np.abs(t - expit(eta))) < 1e-6)
    return _LogisticFit(coef=beta, loglik=loglik, separated=separated)


def _oof_aurocs(
    wrong: BoolArray,
    logit_p: FloatArray,
    yhat: BoolArray,
    suspicion: FloatArray | None,
    n_splits: int,
    seed: int,
) -> tuple[float, float]:
    """Cross-validated AUROCs of the base and (if ``suspicion``) the full model."""
    from sklearn.model_selection import StratifiedKFold

    oof_base = np.empty(wrong.size)
    oof_full = np.empty(wrong.size)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in folds.split(np.zeros(wrong.size), wrong):
        xb_fit, xb_new, _ = _design(
            logit_p[train], yhat[train], None, logit_p[test], yhat[test], None
        )
        oof_base[test] = _fit_logistic(xb_fit, wrong[train]).predict(xb_new)
        if suspicion is not None:
            xf_fit, xf_new, _ = _design(
                logit_p[train],
                yhat[train],
                suspicion[train],
                logit_p[test],
                yhat[test],
                suspicion[test],
            )
            oof_full[test] = _fit_logistic(xf_fit, wrong[train]).predict(xf_new)
    base = _auroc(wrong, oof_base)
    return base, (_auroc(wrong, oof_full) if suspicion is not None else base)


def information_beyond_confidence(
    wrong: Any,
    score: Any,
    probs: Any,
    yhat: Any,
    *,
    direction: str,
    function_of_p: bool = False,
    n_splits: int = 5,
    seed: int = 0,
) -> InformationTest:
    """Test whether a monitor score predicts the model's errors beyond its probability, one class.

    A score can "detect errors" well (high AUROC) for a reason that has nothing to do with the
    monitor: at the Youden threshold most errors are false positives with middling
    probabilities, so anything that tracks ``p`` ranks them as suspicious. Swapping by such a
    score only moves the decision threshold. The question that matters is whether the score
    adds information once ``p`` is known. Two logistic models of "the prediction is wrong" are
    compared:

    * base: a flexible curve in ``logit p`` (cubic B-spline with 4 knots at the quantiles,
      linear beyond them), the prediction ``yhat`` and ``yhat * logit p``;
    * full: the same plus the (standardised, oriented) score.

    Both are fitted by maximum likelihood. The likelihood-ratio statistic
    ``2 (loglik_full - loglik_base)`` is referred to a chi-square distribution with 1 degree of
    freedom for the p-value; the cross-validated AUROCs of the two models show the size of the
    gain on images the models were not fitted on. The AUROCs of the score itself are reported
    overall and within the predicted positives and negatives.

    Parameters
    ----------
    wrong : ndarray, shape (n,), bool
        Whether each prediction is wrong (``yhat != y``), over the labelled images of the class.
    score : ndarray, shape (n,)
        The monitor's raw score.
    probs : ndarray, shape (n,)
        The model's probabilities for the class, in [0, 1].
    yhat : ndarray, shape (n,), bool
        The model's predictions.
    direction : {"below", "above"}
        Where the monitor flags: ``"below"`` (low score = suspicious: INFORMER's d, MSP) or
        ``"above"`` (entropy, TTA spread). The score is oriented (``-score`` for ``"below"``)
        so that AUROCs above 0.5 and positive coefficients mean "agrees with the monitor".
    function_of_p : bool
        The score is a function of ``p`` alone (entropy, MSP, the distance to the threshold):
        it cannot add anything beyond ``p``, so no full model is fitted and the result says so
        (``lr_statistic = 0``, ``p_value = 1``, ``cv_auroc_full = cv_auroc_base``, gain 0).
    n_splits : int
        Folds of the cross-validation (>= 2), stratified on ``wrong``; reduced to the count of
        the rarer outcome when that is smaller (and at least 2).
    seed : int
        ``random_state`` of the fold shuffle.

    Returns
    -------
    InformationTest
        Degenerate data never raise: what cannot be computed is NaN and the ``note`` says why
        (no labelled images, no wrong or no right predictions, too few of either for
        cross-validation, a constant score, separated data).

    Raises
    ------
    EvaluationError
        Arrays of different lengths, non-finite scores or probabilities, probabilities outside
        [0, 1], invalid ``direction``, ``n_splits`` or ``seed``.
    """
    w = _as_1d_bool(wrong, "wrong")
    n = int(w.size)
    s = as_finite(score, "score", (n,))
    p = as_finite(probs, "probs", (n,))
    if n and (p.min() < 0.0 or p.max() > 1.0):
        raise EvaluationError("probs must lie in [0, 1]")
    yh = _as_1d_bool(yhat, "yhat", n)
    check_direction(direction)
    folds_asked = _check_int("n_splits", n_splits, 2)
    seed_i = _check_int("seed", seed, 0)
    suspicion = s if direction == "above" else -s
    n_wrong = int(w.sum())
    nan = math.nan
    notes: list[str] = []

    def result(**kw: Any) -> InformationTest:
        values: dict[str, Any] = {
            "n": n,
            "n_wrong": n_wrong,
            "direction": direction,
            "function_of_p": bool(function_of_p),
            "auroc": nan,
            "auroc_pred_pos": nan,
            "auroc_pred_neg": nan,
            "lr_statistic": nan,
            "df": 1,
            "p_value": nan,
            "coefficient": nan,
            "cv_auroc_base": nan,
            "cv_auroc_full": nan,
            "cv_auroc_gain": nan,
            "n_splits": 0,
            "note": "; ".join(notes),
        }
        values.update(kw)
        return InformationTest(**values)

    if n == 0:
        notes.append("no labelled images")
        return result()
    if n_wrong in (0, n):
        notes.append(
            f"every prediction is {'right' if n_wrong == 0 else 'wrong'}: there are no errors "
            "to tell from right predictions"
        )
        return result()

    auroc = _auroc(w, suspicion)
    auroc_pos = _auroc(w[yh], suspicion[yh])
    auroc_neg = _auroc(w[~yh], suspicion[~yh])
    for name, value in (("predicted positives", auroc_pos), ("predicted negatives", auroc_neg)):
        if math.isnan(value):
            notes.append(f"the AUROC within the {name} is undefined (no wrong or no right ones)")
    logit_p = _logit(p)
    constant = bool(np.ptp(s) == 0.0)
    adds_nothing = bool(function_of_p) or constant
    if function_of_p:
        notes.append(
            "the score is a function of p alone: it cannot add information beyond p, so no "
            "model with the score was fitted"
        )
    elif constant:
        notes.append("the score is constant: it carries no information")

    # The nested likelihood-ratio test on all images.
    x_base, _, _ = _design(logit_p, yh, None, logit_p, yh, None)
    base_fit = _fit_logistic(x_base, w)
    minority = min(n_wrong, n - n_wrong)
    if base_fit.separated:
        notes.append("p and the prediction alone separate the right and wrong predictions")
    elif minority < _FEW and not adds_nothing:
        notes.append(
            f"only {minority} {'wrong' if n_wrong == minority else 'right'} prediction(s): the "
            "chi-square p-value is a rough approximation"
        )
    if adds_nothing:
        lr, p_value, coefficient = 0.0, 1.0, nan
    else:
        x_full, _, score_col = _design(logit_p, yh, suspicion, logit_p, yh, suspicion)
        full_fit = _fit_logistic(x_full, w)
        lr = max(0.0, 2.0 * (full_fit.loglik - base_fit.loglik))
        from scipy.stats import chi2

        p_value = float(chi2.sf(lr, 1))
        coefficient = nan
        if full_fit.separated and not base_fit.separated:
            notes.append(
                "with the score, the right and wrong predictions are separated perfectly: the "
                "likelihood ratio is at its limit and the coefficient unbounded (NaN)"
            )
        elif not full_fit.separated and score_col is not None:
            coefficient = float(full_fit.coef[1 + score_col])

    # Cross-validated AUROCs, the folds shared by both models.
    folds = min(folds_asked, minority)
    gain_if_nothing = 0.0
    if folds < 2:
        notes.append(
            f"only {minority} {'wrong' if n_wrong == minority else 'right'} prediction(s): "
            "too few for cross-validation"
        )
        cv_base = cv_full = nan
        folds = 0
        gain = gain_if_nothing if adds_nothing else nan
    else:
        if folds < folds_asked:
            notes.append(f"n_splits reduced from {folds_asked} to {folds} (the rarer outcome)")
        cv_base, cv_full = _oof_aurocs(
            w, logit_p, yh, None if adds_nothing else suspicion, folds, seed_i
        )
        gain = gain_if_nothing if adds_nothing else cv_full - cv_base
    return result(
        auroc=auroc,
        auroc_pred_pos=auroc_pos,
        auroc_pred_neg=auroc_neg,
        lr_statistic=lr,
        p_value=p_value,
        coefficient=coefficient,
        cv_auroc_base=cv_base,
        cv_auroc_full=cv_full,
        cv_auroc_gain=gain,
        n_splits=folds,
    )


def information_table_rows(
    y: Any,
    probs: Any,
    yhat: Any,
    scores: Mapping[str, Any],
    directions: Mapping[str, str],
    function_of_p: Mapping[str, bool],
    class_names: Sequence[str],
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> list[tuple[str, str, InformationTest]]:
    """:func:`information_beyond_confidence` for every method and class.

    Per class, the images without a label for it are left out, and ``wrong = (yhat != y)``.

    Parameters
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    probs : ndarray, shape (N, K)
        The model's probabilities.
    yhat : ndarray, shape (N, K), bool
        The model's predictions (before any swap).
    scores : mapping of str to ndarray, shape (N, K)
        Raw score per method.
    directions : mapping of str to {"below", "above"}
        Flag direction of every method in ``scores``.
    function_of_p : mapping of str to bool
        Methods whose score is a function of ``p`` alone (entropy, MSP); a method missing here
        counts as ``False``.
    class_names : sequence of str, length K
    n_splits, seed
        As for :func:`information_beyond_confidence`.

    Returns
    -------
    list of (method, class, InformationTest)
        Methods in the order of ``scores``, each with its classes in order.

    Raises
    ------
    EvaluationError
        Shapes that differ, a method without a direction, ``class_names`` of the wrong length,
        and whatever :func:`information_beyond_confidence` refuses.
    """
    y_arr = as_labels(y)
    shape = y_arr.shape
    p = as_finite(probs, "probs", shape)
    yh = as_bools(yhat, "yhat", shape)
    names = [str(c) for c in class_names]
    if len(names) != shape[1]:
        raise EvaluationError(
            f"class_names has {len(names)} names for {shape[1]} classes", params=("class_names",)
        )
    rows: list[tuple[str, str, InformationTest]] = []
    for method, raw in scores.items():
        if method not in directions:
            raise EvaluationError(
                f"directions has no entry for method {method!r} ('below' or 'above')"
            )
        s = as_finite(raw, f"scores[{method!r}]", shape)
        for j, cls in enumerate(names):
            keep = np.isfinite(y_arr[:, j])
            wrong = yh[keep, j] != (y_arr[keep, j] > 0.5)
            test = information_beyond_confidence(
                wrong,
                s[keep, j],
                p[keep, j],
                yh[keep, j],
                direction=directions[method],
                function_of_p=bool(function_of_p.get(method, False)),
                n_splits=n_splits,
                seed=seed,
            )
            rows.append((method, cls, test))
    return rows


# -- 3. stability of the Youden threshold --------------------------------------------------------
@dataclass(frozen=True)
class ThresholdInterval(_AsDict):
    """Bootstrap interval of one class's Youden prediction threshold.

    Attributes
    ----------
    threshold : float
        The Youden threshold on all labelled images (NaN when they hold one label value only).
    low, high : float
        Percentile interval at ``level`` of the thresholds refitted on resampled image sets.
        A wide interval means the data do not pin the threshold down.
    n : int
        Labelled images.
    n_resamples : int
        Resamples drawn.
    n_valid : int
        Resamples with both label values (a threshold is defined).
    n_skipped : int
        Resamples with one label value only, left out.
    level : float
    seed : int
    """

    threshold: float
    low: float
    high: float
    n: int
    n_resamples: int
    n_valid: int
    n_skipped: int
    level: float
    seed: int


def _youden_weighted(y: BoolArray, p: FloatArray, weights: FloatArray) -> FloatArray:
    """Youden thresholds of resamples given as multiplicities, shape (B, n) -> (B,).

    The same thresholds as :func:`.monitor.youden_threshold` on each resample (the highest
    threshold among ties of TPR - FPR, compared exactly in integers; ``PREDICT_NOTHING`` when
    predicting nothing is best); NaN where a resample has one label value only. A value of ``p``
    absent from a resample gives the same counts as the next higher present value (or "predict
    nothing"), which comes first, so it never wins a tie: the thresholds agree with the ROC
    curve of the resample itself.
    """
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    ends = np.append(np.flatnonzero(ps[1:] != ps[:-1]), ps.size - 1)
    w = np.rint(weights[:, order]).astype(np.int64)
    tps = np.cumsum(w * ys, axis=1)[:, ends]
    fps = np.cumsum(w * ~ys, axis=1)[:, ends]
    n_pos, n_neg = tps[:, -1:], fps[:, -1:]
    j = np.concatenate([np.zeros((w.shape[0], 1), dtype=np.int64), tps * n_neg - fps * n_pos], 1)
    candidates = np.concatenate([[PREDICT_NOTHING], ps[ends]])
    out = candidates[np.argmax(j, axis=1)]
    undefined = (n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)
    return np.where(undefined, np.nan, out)


def youden_stability(
    y: Any, p: Any, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> ThresholdInterval:
    """How well does the data pin down one class's Youden prediction threshold?

    Resamples the labelled images with replacement ``n_resamples`` times, refits the Youden
    threshold (:func:`.monitor.youden_threshold`: the ``p`` cut-off maximising sensitivity +
    specificity - 1) on each, and reports the percentile interval of the refitted thresholds.
    Resamples with one label value only have no threshold; they are skipped and counted.

    Parameters
    ----------
    y : ndarray, shape (N,)
        0/1 labels of one class, NaN for unlabelled images (left out).
    p : ndarray, shape (N,)
        The model's probabilities for the class (finite on the labelled images).
    n_resamples : int
        Resamples (>= 1); drawn as ``numpy.random.default_rng(seed).integers(0, n, (B, n))``
        over the ``n`` labelled images.
    seed : int
    level : float
        Coverage of the interval, strictly between 0 and 1.

    Returns
    -------
    ThresholdInterval

    Raises
    ------
    EvaluationError
        Arrays of other shapes, labels other than 0/1/NaN, non-finite probabilities of
        labelled images, invalid ``n_resamples``, ``seed`` or ``level``.
    """
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim != 1:
        raise EvaluationError(f"y must be 1-D (one class), got shape {y_arr.shape}")
    y_arr = as_labels(y_arr[:, None])[:, 0]
    p_raw = np.asarray(p, dtype=np.float64)
    if p_raw.shape != y_arr.shape:
        raise EvaluationError(f"p must have shape {y_arr.shape} (like y), got {p_raw.shape}")
    b_total = _check_int("n_resamples", n_resamples, 1)
    seed_i = _check_int("seed", seed, 0)
    lvl = _check_level(level)
    keep = np.isfinite(y_arr)
    labels = y_arr[keep] > 0.5
    probs = as_finite(p_raw[keep], "p", labels.shape)
    n = int(labels.size)
    if n == 0:
        return ThresholdInterval(math.nan, math.nan, math.nan, 0, b_total, 0, b_total, lvl, seed_i)
    full = youden_threshold(labels.astype(np.float64), probs)
    rng = np.random.default_rng(seed_i)
    thresholds = np.empty(b_total)
    for start, stop in _chunks(b_total, n):
        thresholds[start:stop] = _youden_weighted(
            labels, probs, _multiplicities(rng, n, stop - start)
        )
    valid = thresholds[np.isfinite(thresholds)]
    low, high = _interval(valid, lvl)
    return ThresholdInterval(
        threshold=math.nan if full is None else float(full),
        low=low,
        high=high,
        n=n,
        n_resamples=b_total,
        n_valid=int(valid.size),
        n_skipped=b_total - int(valid.size),
        level=lvl,
        seed=seed_i,
    )


__all__ = [
    "InformationTest",
    "PairedBootstrap",
    "ThresholdInterval",
    "information_beyond_confidence",
    "information_table_rows",
    "paired_bootstrap",
    "paired_bootstrap_many",
    "youden_stability",
]
