"""Class distinctiveness (METHOD.md section 3) on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from informer_audit.distinctiveness import cosine_distance_matrix, distinctiveness


def d_of(*maps) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype=float)[None]
    dist = cosine_distance_matrix(m)
    return dist[0], distinctiveness(dist)[0]


def test_identical_maps_are_at_distance_zero():
    dist, d = d_of([1, 2, 3], [1, 2, 3], [1, 2, 3])
    np.testing.assert_allclose(dist, 0.0, atol=1e-15)
    np.testing.assert_allclose(d, 0.0, atol=1e-15)


def test_orthogonal_maps_are_at_distance_one():
    dist, d = d_of([1, 0, 0], [0, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(dist, 1.0 - np.eye(3))
    np.testing.assert_allclose(d, [2.0, 2.0, 2.0])  # K - 1 = 2 pairs of distance 1


def test_opposite_maps_are_at_distance_two():
    dist, d = d_of([1, -2], [-1, 2])
    assert dist[0, 1] == pytest.approx(2.0)
    np.testing.assert_allclose(d, [2.0, 2.0])


def test_hand_computed_mixture():
    # cos(a, b) = 1/sqrt(2); cos(a, c) = 0; cos(b, c) = 1/sqrt(2)
    dist, d = d_of([1, 0], [1, 1], [0, 1])
    c = 1 / np.sqrt(2)
    expected = np.array([[0, 1 - c, 1], [1 - c, 0, 1 - c], [1, 1 - c, 0]])
    np.testing.assert_allclose(dist, expected, atol=1e-15)
    np.testing.assert_allclose(d, [2 - c, 2 - 2 * c, 2 - c], atol=1e-15)


def test_scale_invariance_and_sign_kept():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 4, 3, 5))
    scales = np.array([0.001, 7.0, 1e6, 3.0])[None, :, None, None]
    a = cosine_distance_matrix(maps)
    np.testing.assert_allclose(cosine_distance_matrix(maps * scales), a, atol=1e-12)
    # A negative scale flips the direction: distance becomes 2 - distance.
    flipped = maps.copy()
    flipped[:, 0] *= -1
    b = cosine_distance_matrix(flipped)
    np.testing.assert_allclose(b[:, 0, 1:], 2 - a[:, 0, 1:], atol=1e-12)


def test_zero_map_counts_with_cosine_zero():
    dist, d = d_of([0, 0, 0], [1, 2, 3], [1, 2, 3])
    np.testing.assert_allclose(dist, [[0, 1, 1], [1, 0, 0], [1, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(d, [2, 1, 1], atol=1e-15)


def test_flattening_over_all_axes_and_bounds():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(6, 5, 2, 4, 4))
    dist = cosine_distance_matrix(maps)
    flat = maps.reshape(6, 5, -1)
    i, k, m = 3, 1, 4
    cos = flat[i, k] @ flat[i, m] / np.linalg.norm(flat[i, k]) / np.linalg.norm(flat[i, m])
    assert dist[i, k, m] == pytest.approx(1 - cos)
    np.testing.assert_allclose(dist, dist.transpose(0, 2, 1))
    assert dist.min() >= 0 and dist.max() <= 2
    d = distinctiveness(dist)
    assert d.shape == (6, 5)
    assert d.min() >= 0 and d.max() <= 2 * (5 - 1)
    np.testing.assert_allclose(d[i, k], sum(dist[i, k, j] for j in range(5) if j != k))
