"""The logistic link and the probability clip, defined once.

Models that output probabilities are read as logits ``logit(clip(p, PROB_EPS, 1 - PROB_EPS))``
(finite differences, LIME's logit target and exact gradients all differentiate that), and
probabilities are ``sigmoid(z)`` of the audited logits everywhere.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

PROB_EPS = 1e-12
"""Probabilities are clipped to ``[PROB_EPS, 1 - PROB_EPS]`` before the logit."""


def sigmoid(z: NDArray[np.floating]) -> NDArray[np.float64]:
    """Numerically stable logistic function, elementwise, float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logit(p: NDArray[np.floating]) -> NDArray[np.float64]:
    """``log(p / (1 - p))`` of probabilities clipped to ``[PROB_EPS, 1 - PROB_EPS]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(q) - np.log1p(-q)


__all__ = ["PROB_EPS", "logit", "sigmoid"]
