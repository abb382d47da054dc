"""Class saliency maps -> class distinctiveness (METHOD.md section 3).

``cos_kl = <S_k, S_l> / (|S_k| |S_l|)``, ``d_kl = 1 - cos_kl`` in [0, 2],
``d_k = sum_{l != k} d_kl`` in [0, 2(K-1)]. Maps keep their sign and are flattened over every
axis after the class axis. A map of zero norm has no direction: its pairs take ``cos = 0``
(``d_kl = 1``) and still count *(ours)*. The diagonal ``d_kk`` is 0 by definition.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def cosine_distance_matrix(maps: NDArray[np.floating]) -> NDArray[np.float64]:
    """Pairwise cosine distances between the class maps of each image.

    Parameters
    ----------
    maps : ndarray, shape (N, K, ...)
        One saliency map per image and class, any trailing shape (patch grid, C x H x W, ...).

    Returns
    -------
    ndarray, shape (N, K, K), float64
        Symmetric, zero diagonal, values in [0, 2].
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"expected maps of shape (N, K, ...), got {maps.shape}")
    n, k = maps.shape[:2]
    flat = maps.reshape(n, k, -1)
    norms = np.linalg.norm(flat, axis=2)  # (N, K)
    nonzero = norms > 0
    unit = np.where(nonzero[:, :, None], flat / np.where(nonzero, norms, 1.0)[:, :, None], 0.0)
    cos = np.einsum("nkd,nld->nkl", unit, unit)
    # Zero-norm maps give zero rows here already (cos = 0); clip rounding beyond [-1, 1].
    dist = 1.0 - np.clip(cos, -1.0, 1.0)
    idx = np.arange(k)
    dist[:, idx, idx] = 0.0
    return dist


def distinctiveness(dist: NDArray[np.floating]) -> NDArray[np.float64]:
    """Class distinctiveness vector from the distance matrices.

    Parameters
    ----------
    dist : ndarray, shape (N, K, K)
        Output of :func:`cosine_distance_matrix`.

    Returns
    -------
    ndarray, shape (N, K), float64
        ``d_k = sum_{l != k} d_kl``.
    """
    dist = np.asarray(dist, dtype=np.float64)
    k = dist.shape[-1]
    off_diagonal = ~np.eye(k, dtype=bool)
    return np.where(off_diagonal, dist, 0.0).sum(axis=-1)
