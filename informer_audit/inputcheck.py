"""The input check: is this image one the model was made for? (METHOD.md section 8, *ours*.)

One image-level score per image, from what the audit already computed, turned into a conformal
p-value against the calibration images::

    p_high = (1 + #{calibration scores >= s}) / (n + 1)      direction "high"
    p_low  = (1 + #{calibration scores <= s}) / (n + 1)      direction "low"
    p_two  = min(1, 2 * min(p_high, p_low))                   direction "two-sided"

and the image is flagged when ``p <= alpha``. For an image exchangeable with the ``n``
calibration images (drawn from the same distribution, the direction fixed before it is seen),
``P(p <= alpha) <= alpha``: the rank of its score among the ``n + 1`` scores is uniform, ties
counted against the image (Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021). The
two-sided p-value is the Bonferroni combination of the two one-sided ones, so its guarantee is
the same. The smallest p-value is ``1 / (n + 1)`` (two-sided: ``2 / (n + 1)``): with fewer than
``1 / alpha - 1`` calibration images (two-sided: ``2 / alpha - 1``) no image can be flagged.

The scores (:data:`INPUT_SCORES`, :func:`input_scores`), K the audited classes:

================ ==================================================================== =========
score            per image                                                            range
================ ==================================================================== =========
distinctiveness  mean cosine distance between the K class maps,                       [0, 2]
                 ``sum_{k != l} d_kl / (K (K - 1))`` = ``mean_k d_k / (K - 1)``
entropy          mean binary entropy of the class probabilities (bits)                [0, 1]
max_prob         the largest class probability ``max_k p_k``                          [0, 1]
energy           joint energy ``-sum_k log(1 + exp(z_k))`` of the logits              (-inf, 0]
tta_spread       mean over classes of the TTA spread (std of ``p_k``)                 [0, 0.5]
================ ==================================================================== =========

Why the mean distance: orthogonal class maps give 1 whatever K (the paper's sum ``d_k`` grows
with K), and for a fixed K it ranks images exactly as the sum of ``d`` does, so p-values and
AUROCs are the same as for the sum. The energy is the JointEnergy of Wang et al. (2021, "Can
multi-label classification networks know what they don't know?") with the sign of an energy:
they score ``sum_k log(1 + exp(z_k))``, high for familiar inputs; here ``energy`` is its
negative, so, as for the other confidence scores, a less confident model gives a higher value.

Which tail is unusual is not assumed: :class:`InputCheck` takes it from ``direction``, or with
``direction="auto"`` from *probe* images (:func:`probe_copies`): a few calibration images
are scored again after seeded corruptions that make them images the model was not made for
(pure noise, inverted intensities, upside down), and the paired differences (corrupted minus
clean) decide: the tail most copies moved to ("high" or "low"; "two-sided" only on a tie). The
exact two-sided sign test of those differences is reported beside it; below
:data:`PROBE_LEVEL` the evidence is called strong, otherwise weak. The majority decides even on
weak evidence because a wrong tail costs power, not the guarantee, while a two-sided check could
flag nothing on a typical calibration set (it needs ``2 / alpha - 1`` = 199 images at alpha
0.01). The probe images are left out of the calibration
scores, so the direction depends on none of the images the p-values are ranked against and
the guarantee holds exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .baselines import entropy_score
from .errors import EvaluationError, NotFittedError

Floats = NDArray[np.float64]

INPUT_SCORES: tuple[str, ...] = ("distinctiveness", "entropy", "max_prob", "energy", "tta_spread")
"""The image-level scores, in the order the flags CSV lists them."""

SCORE_RANGES: dict[str, tuple[float, float]] = {
    "distinctiveness": (0.0, 2.0),
    "entropy": (0.0, 1.0),
    "max_prob": (0.0, 1.0),
    "energy": (-math.inf, 0.0),
    "tta_spread": (0.0, 0.5),
}
"""The closed interval each score lies in."""

SCORE_TEXT: dict[str, str] = {
    "distinctiveness": "mean cosine distance between the class maps",
    "entropy": "mean binary entropy of the class probabilities",
    "max_prob": "largest class probability",
    "energy": "joint energy of the logits, -sum log(1 + exp(z))",
    "tta_spread": "mean TTA spread of the class probabilities",
}
"""One phrase per score, for tables and messages."""

DIRECTIONS: tuple[str, ...] = ("auto", "high", "low", "two-sided")
"""Values of :class:`InputCheck`'s ``direction``; :meth:`~InputCheck.fit` resolves ``"auto"``."""

FITTED_DIRECTIONS: tuple[str, ...] = ("high", "low", "two-sided")

PROBE_LEVEL = 0.05
"""The sign test's level: below it the probes' evidence for their direction is called strong."""

PROBE_KINDS: tuple[str, ...] = ("noise", "invert", "rotate180")
"""The corruptions of a probe image (:func:`probe_copies`), in order."""

_TOL = 1e-12
"""``p <= alpha`` is decided with this relative slack (``1 / 100`` is ``0.01`` in float, but a
hand-written alpha need not be the float the division gives)."""


def input_scores(
    logits: NDArray[np.floating],
    probs: NDArray[np.floating],
    dist: NDArray[np.floating] | None = None,
    tta: NDArray[np.floating] | None = None,
) -> dict[str, Floats]:
    """The image-level scores that can be computed from what is given.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
        The audited classes' logits.
    probs : ndarray, shape (N, K)
        Their probabilities, ``sigmoid(logits)``.
    dist : ndarray, shape (N, K, K), optional
        Cosine distances between the class maps (gives ``distinctiveness``; needs K >= 2).
    tta : ndarray, shape (N, K), optional
        The TTA spread per class (gives ``tta_spread``).

    Returns
    -------
    dict of str to ndarray, shape (N,), float64
        In :data:`INPUT_SCORES` order: ``distinctiveness`` only with ``dist``, ``tta_spread``
        only with ``tta``.

    Raises
    ------
    EvaluationError
        Shapes that do not fit, non-finite values, probabilities outside [0, 1].
    """
    z = np.asarray(logits, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if z.ndim != 2 or p.shape != z.shape:
        raise EvaluationError(
            f"logits and probs must share one (N, K) shape, got {z.shape} and {p.shape}"
        )
    if not np.isfinite(z).all():
        raise EvaluationError(f"logits has {int(np.sum(~np.isfinite(z)))} non-finite values")
    n, k = z.shape
    out: dict[str, Floats] = {}
    if dist is not None:
        d = np.asarray(dist, dtype=np.float64)
        if d.shape != (n, k, k):
            raise EvaluationError(f"dist must have shape {(n, k, k)}, got {d.shape}")
        if k < 2:
            raise EvaluationError("the mean distance between class maps needs K >= 2 classes")
        if not np.isfinite(d).all():
            raise EvaluationError(f"dist has {int(np.sum(~np.isfinite(d)))} non-finite values")
        off = ~np.eye(k, dtype=bool)
        out["distinctiveness"] = d[:, off].mean(axis=1)
    out["entropy"] = entropy_score(p).mean(axis=1)  # checks p is finite, in [0, 1]
    out["max_prob"] = p.max(axis=1)
    out["energy"] = -np.logaddexp(0.0, z).sum(axis=1)  # log(1 + e^z), without overflow
    if tta is not None:
        t = np.asarray(tta, dtype=np.float64)
        if t.shape != (n, k):
            raise EvaluationError(f"tta must have shape {(n, k)}, got {t.shape}")
        if not np.isfinite(t).all():
            raise EvaluationError(f"tta has {int(np.sum(~np.isfinite(t)))} non-finite values")
        out["tta_spread"] = t.mean(axis=1)
    return out


def sign_test(n_up: int, n_down: int) -> float:
    """Two-sided exact sign test of ``n_up`` against ``n_down`` (ties left out): the p-value.

    ``min(1, 2 * P(X >= max(n_up, n_down)))`` for ``X ~ Binomial(n_up + n_down, 1/2)``; 1 when
    both are 0.
    """
    m = n_up + n_down
    if m == 0:
        return 1.0
    top = max(n_up, n_down)
    tail = sum(math.comb(m, i) for i in range(top, m + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def probe_copies(
    x: NDArray[np.floating],
    mean: Any,
    std: Any,
    seed: int = 0,
) -> NDArray[np.float32]:
    """Corrupted copies of preprocessed images: images the model was not made for.

    The corruptions (:data:`PROBE_KINDS`) act on the pixel value ``u = x * std + mean`` (the
    image divided by the card's scale, in [0, 1] for an 8-bit image) and are normalised back:

    - ``noise``: ``u`` replaced by uniform noise on [0, 1], one value per pixel (the same in
      every channel), drawn from ``numpy.random.default_rng([seed, i])`` for image ``i``;
    - ``invert``: ``1 - u`` (a MONOCHROME1 file read as MONOCHROME2);
    - ``rotate180``: the image upside down (both spatial axes reversed).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Preprocessed model input (:meth:`~.model.OnnxClassifier.preprocess`).
    mean, std : float or sequence of float
        The model card's per-channel normalisation.
    seed : int

    Returns
    -------
    ndarray, shape (N, 3, C, H, W), float32
        The copies of image ``i`` in :data:`PROBE_KINDS` order.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise EvaluationError(f"probe images must have shape (N, C, H, W), got {x.shape}")
    n, c, h, w = x.shape
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,)).reshape(1, c, 1, 1)
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,)).reshape(1, c, 1, 1)
    u = x * s + m
    noise = np.stack([np.random.default_rng([int(seed), i]).random((h, w)) for i in range(n)])[
        :, None
    ].repeat(c, axis=1)
    copies = np.stack([noise, 1.0 - u, u[:, :, ::-1, ::-1]], axis=1)
    return ((copies - m[:, None]) / s[:, None]).astype(np.float32)


class InputCheck:
    """A conformal test of "this image is exchangeable with the calibration images".

    Follows scikit-learn's estimator contract: hyperparameters here, :meth:`fit` returns
    ``self``, fitted attributes end in ``_``.

    Parameters
    ----------
    score : str
        One of :data:`INPUT_SCORES`.
    alpha : float
        Flag when ``p <= alpha``, in (0, 1): the false-alarm rate on exchangeable images is at
        most ``alpha``.
    direction : str
        ``"high"``, ``"low"`` (which tail of the score is unusual), ``"two-sided"``, or
        ``"auto"``: chosen by :meth:`fit` from probe images (see the module docstring).

    Attributes
    ----------
    direction_ : str
        ``"high"``, ``"low"`` or ``"two-sided"``.
    direction_reason_ : str
        Why: "given", or the probe's sign test.
    probe_ : dict or None
        With ``direction="auto"`` and probes: ``n_images``, ``n_higher``, ``n_lower``,
        ``n_tied`` (corrupted copies scored above / below / equal to their clean image) and
        the sign test's ``p_value``.
    calibration_scores_ : ndarray, shape (n,), float64
        The calibration images' scores, sorted.
    """

    def __init__(
        self, score: str = "distinctiveness", alpha: float = 0.01, direction: str = "auto"
    ) -> None:
        self.score = score
        self.alpha = alpha
        self.direction = direction

    def _check_params(self) -> None:
        if self.score not in INPUT_SCORES:
            raise EvaluationError(
                f"input score {self.score!r} is not one of {list(INPUT_SCORES)}", params=("score",)
            )
        check_alpha(self.alpha)
        if self.direction not in DIRECTIONS:
            raise EvaluationError(
                f"input direction {self.direction!r} is not one of {list(DIRECTIONS)}",
                params=("direction",),
            )

    def fit(
        self,
        calibration_scores: NDArray[np.floating],
        *,
        probe_clean: NDArray[np.floating] | None = None,
        probe_shifted: NDArray[np.floating] | None = None,
    ) -> InputCheck:
        """Store the calibration scores and settle the direction.

        Parameters
        ----------
        calibration_scores : ndarray, shape (n,)
            The score of each calibration image (not the probe images).
        probe_clean : ndarray, shape (m,), optional
            With ``direction="auto"``: the score of each probe image.
        probe_shifted : ndarray, shape (m, C), optional
            The scores of its C corrupted copies; NaN where a copy could not be scored.

        Raises
        ------
        EvaluationError
            Invalid hyperparameters, no calibration score, non-finite scores, probe arrays
            that do not fit.
        """
        self._check_params()
        cal = _finite_1d(calibration_scores, "calibration_scores")
        if cal.size == 0:
            raise EvaluationError("the input check needs at least one calibration score")
        self.probe_ = None
        if self.direction != "auto":
            self.direction_ = self.direction
            self.direction_reason_ = "given"
        elif probe_clean is None or probe_shifted is None:
            self.direction_ = "two-sided"
            self.direction_reason_ = "no probe images: two-sided"
        else:
            clean = _finite_1d(probe_clean, "probe_clean")
            shifted = np.asarray(probe_shifted, dtype=np.float64)
            if shifted.ndim != 2 or shifted.shape[0] != clean.size:
                raise EvaluationError(
                    f"probe_shifted must have shape ({clean.size}, C), got {shifted.shape}"
                )
            diff = shifted - clean[:, None]
            scored = np.isfinite(diff)
            up, down = int(np.sum(diff[scored] > 0)), int(np.sum(diff[scored] < 0))
            tied = int(np.sum(diff[scored] == 0))
            p = sign_test(up, down)
            self.probe_ = {
                "n_images": int(clean.size),
                "n_higher": up,
                "n_lower": down,
                "n_tied": tied,
                "p_value": p,
            }
            counts = f"{up} of {up + down + tied} corrupted probe copies scored higher than " + (
                f"their clean image, {down} lower (sign test p = {p:.2g})"
            )
            # The majority decides even on weak evidence: the guarantee holds for any
            # direction chosen without the images ranked against, and a two-sided check of a
            # typical calibration set (n < 199 at alpha 0.01) could never flag. Only a tie
            # leaves it two-sided. Weak evidence is said aloud.
            if up == down:
                self.direction_ = "two-sided"
                self.direction_reason_ = f"{counts}: a tie, two-sided"
            else:
                self.direction_ = "high" if up > down else "low"
                self.direction_reason_ = counts + (
                    ""
                    if p < PROBE_LEVEL
                    else f": weak evidence (not below {PROBE_LEVEL:g}); "
                    "the majority's direction, which a two-sided check could not match in power"
                )
        self.calibration_scores_ = np.sort(cal)
        return self

    # -- applying it --------------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not hasattr(self, "calibration_scores_"):
            raise NotFittedError(
                "this InputCheck is not fitted yet; call fit() or load a monitor file"
            )

    @property
    def n_calibration_(self) -> int:
        """The number of calibration scores."""
        self.check_fitted()
        return int(self.calibration_scores_.size)

    @property
    def min_p_(self) -> float:
        """The smallest p-value any image can get: ``1 / (n + 1)``, two-sided ``2 / (n + 1)``."""
        n = self.n_calibration_
        return min(1.0, (2.0 if self.direction_ == "two-sided" else 1.0) / (n + 1))

    def can_flag(self, alpha: float | None = None) -> bool:
        """Whether any image can reach ``p <= alpha`` (``alpha``: default the fitted one)."""
        a = self.alpha if alpha is None else check_alpha(alpha)
        return self.min_p_ <= a * (1 + _TOL)

    def p_values(self, scores: NDArray[np.floating]) -> Floats:
        """Conformal p-values of new images' scores; shape (M,) -> (M,), in (0, 1]."""
        self.check_fitted()
        s = _finite_1d(scores, "scores")
        cal = self.calibration_scores_
        n = cal.size
        at_least = n - np.searchsorted(cal, s, side="left")  # #{cal >= s}
        at_most = np.searchsorted(cal, s, side="right")  # #{cal <= s}
        high = (1.0 + at_least) / (n + 1)
        low = (1.0 + at_most) / (n + 1)
        if self.direction_ == "high":
            return high
        if self.direction_ == "low":
            return low
        return np.minimum(1.0, 2.0 * np.minimum(high, low))

    def flags(self, scores: NDArray[np.floating], alpha: float | None = None) -> NDArray[np.bool_]:
        """Which images are flagged: ``p <= alpha`` (default the fitted ``alpha``); (M,) -> (M,)."""
        a = self.alpha if alpha is None else check_alpha(alpha)
        return np.asarray(self.p_values(scores) <= a * (1 + _TOL))

    def settings(self, alpha: float | None = None) -> dict[str, Any]:
        """What changes its flags: score, direction, alpha, and the calibration scores."""
        self.check_fitted()
        return {
            "score": self.score,
            "direction": self.direction_,
            "alpha": float(self.alpha if alpha is None else check_alpha(alpha)),
            "calibration_scores": [float(v) for v in self.calibration_scores_],
        }

    def describe(self) -> str:
        """One line: the score, the direction and why, n, alpha, the calibration range."""
        self.check_fitted()
        cal = self.calibration_scores_
        line = (
            f"{self.score} ({SCORE_TEXT[self.score]}), direction {self.direction_} "
            f"({self.direction_reason_}), n = {cal.size} calibration images, "
            f"alpha = {self.alpha:g}, calibration scores {cal[0]:.4g} to {cal[-1]:.4g}"
        )
        if not self.can_flag():
            line += f"; no image can be flagged (smallest p-value {self.min_p_:.3g})"
        return line


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in (0, 1), or :class:`~.errors.EvaluationError`."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise EvaluationError(
            f"the input check's alpha must be a number in (0, 1), got {alpha!r}",
            params=("alpha",),
        )
    return float(alpha)


def needed_calibration(alpha: float, direction: str) -> int:
    """The fewest calibration images with which an image can reach ``p <= alpha``."""
    factor = 2.0 if direction == "two-sided" else 1.0
    return max(1, math.ceil(factor / check_alpha(alpha) * (1 - _TOL)) - 1)


def default_score(has_maps: bool) -> str:
    """The input score a method uses unless told: the class maps' if it has them, else entropy."""
    return "distinctiveness" if has_maps else "entropy"


def available_scores(has_maps: bool, tta: bool) -> tuple[str, ...]:
    """The input scores a method computes: ``distinctiveness`` with maps, ``tta_spread`` for TTA."""
    return tuple(
        s
        for s in INPUT_SCORES
        if (s != "distinctiveness" or has_maps) and (s != "tta_spread" or tta)
    )


def _finite_1d(values: Any, what: str) -> Floats:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise EvaluationError(f"{what} must have shape (n,), got {a.shape}")
    if not np.isfinite(a).all():
        raise EvaluationError(f"{what} has {int(np.sum(~np.isfinite(a)))} non-finite values")
    return a


def score_of(scores: Mapping[str, Floats], name: str) -> Floats:
    """``scores[name]``, or :class:`~.errors.EvaluationError` naming what was computed."""
    if name not in scores:
        raise EvaluationError(
            f"input score {name!r} is not computed by this method; it computes {list(scores)}",
            params=("score",),
        )
    return scores[name]


__all__ = [
    "DIRECTIONS",
    "INPUT_SCORES",
    "PROBE_KINDS",
    "PROBE_LEVEL",
    "SCORE_RANGES",
    "InputCheck",
    "available_scores",
    "check_alpha",
    "default_score",
    "input_scores",
    "needed_calibration",
    "probe_copies",
    "sign_test",
]
