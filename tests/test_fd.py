"""Finite-difference Input x Gradient against analytic gradients on test-built ONNX models."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import analytic_ixg, patch_sum
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.errors import SaliencyError
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import available_adapters, get_adapter


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def inputs():
    rng = np.random.default_rng(3)
    return rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("patch", [4, 5, 16])
def test_fd_equals_patch_summed_ixg_on_linear_model(tiny_model, inputs, patch):
    path, params = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    maps = FiniteDifferenceIxG(patch_size=patch, step=1e-2).explain(model, inputs)
    expected = patch_sum(analytic_ixg(inputs, params), patch)
    assert maps.shape == expected.shape == (4, 3, -(-16 // patch), -(-16 // patch))
    assert rel_err(maps, expected) < 1e-4


@pytest.mark.parametrize("step, tol", [(1e-2, 1e-4), (1e-3, 1e-3)])
def test_fd_central_on_nonlinear_model(tiny_model, inputs, step, tol):
    # At h = 1e-3 float32 rounding of the model's outputs dominates (relative ~3e-4 here);
    # at 1e-2 the O(h^2) truncation is still far below 1e-4 for this smooth model.
    path, params = tiny_model(hidden=6)
    model = OnnxClassifier(path, device="cpu")
    maps = FiniteDifferenceIxG(patch_size=4, step=step).explain(model, inputs)
    expected = patch_sum(analytic_ixg(inputs, params), 4)
    assert rel_err(maps, expected) < tol


def test_forward_scheme_is_first_order(tiny_model, inputs):
    path, params = tiny_model(hidden=6)
    model = OnnxClassifier(path, device="cpu")
    expected = patch_sum(analytic_ixg(inputs, params), 4)
    central = FiniteDifferenceIxG(patch_size=4, step=1e-2).explain(model, inputs)
    forward = FiniteDifferenceIxG(patch_size=4, step=1e-2, scheme="forward").explain(model, inputs)
    # Both estimate the same map; the one-sided error is larger (O(h) vs O(h^2)).
    assert rel_err(forward, expected) < 5e-2
    assert rel_err(central, expected) < rel_err(forward, expected)


def test_forward_passes_counted(tiny_model, inputs):
    path, _ = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    fd = FiniteDifferenceIxG(patch_size=8, batch_size=5)
    fd.explain(model, inputs)
    assert fd.forward_passes(16, 16) == 2 * 4
    assert model.n_forward == 4 * 2 * 4  # images x (2 x patches), nothing more
    model.n_forward = 0
    fwd = FiniteDifferenceIxG(patch_size=8, scheme="forward")
    fwd.explain(model, inputs, logits=model.logits(inputs))
    assert model.n_forward == 4 + 4 * 4  # base logits once, then P passes per image


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_maps_do_not_depend_on_batch_size(tiny_model, inputs, batch_size):
    path, _ = tiny_model(hidden=6)
    model = OnnxClassifier(path, device="cpu")
    reference = FiniteDifferenceIxG(patch_size=4, batch_size=32).explain(model, inputs)
    maps = FiniteDifferenceIxG(patch_size=4, batch_size=batch_size).explain(model, inputs)
    np.testing.assert_allclose(maps, reference, rtol=1e-5, atol=1e-7)


def test_maps_of_one_image_do_not_depend_on_its_neighbours(tiny_model, inputs):
    path, _ = tiny_model(hidden=6)
    model = OnnxClassifier(path, device="cpu")
    fd = FiniteDifferenceIxG(patch_size=4, batch_size=7)
    together = fd.explain(model, inputs)
    alone = fd.explain(model, inputs[2:3])
    np.testing.assert_allclose(together[2:3], alone, rtol=1e-5, atol=1e-7)


def test_fixed_batch_model_is_padded(tiny_model, inputs):
    path, params = tiny_model(batch=4, name="fixed.onnx")
    model = OnnxClassifier(path, device="cpu")
    assert model.fixed_batch == 4
    maps = FiniteDifferenceIxG(patch_size=8, step=1e-2, batch_size=3).explain(model, inputs[:3])
    expected = patch_sum(analytic_ixg(inputs[:3], params), 8)
    assert rel_err(maps, expected) < 1e-4


def test_nhwc_model_gives_the_same_maps(tiny_model, inputs):
    path_nchw, params = tiny_model(seed=5)
    path_nhwc, _ = tiny_model(seed=5, layout="NHWC", name="nhwc.onnx")
    a = FiniteDifferenceIxG(patch_size=4).explain(OnnxClassifier(path_nchw, device="cpu"), inputs)
    b = FiniteDifferenceIxG(patch_size=4).explain(OnnxClassifier(path_nhwc, device="cpu"), inputs)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_probability_output_is_mapped_back_to_logits(tiny_model, inputs):
    path, params = tiny_model(sigmoid_output=True, name="probs.onnx")
    model = OnnxClassifier(path, device="cpu")
    maps = FiniteDifferenceIxG(patch_size=8, step=1e-2).explain(model, inputs)
    expected = patch_sum(analytic_ixg(inputs, params), 8)
    assert rel_err(maps, expected) < 1e-3  # logit(sigmoid(z)) loses a little to float32


def test_registry_and_settings():
    assert "fd" in available_adapters()
    fd = get_adapter("fd", patch_size=8, batch_size=4)
    assert fd.settings() == {"name": "fd", "patch_size": 8, "scheme": "central", "step": 0.001}
    with pytest.raises(SaliencyError, match="unknown saliency adapter 'nope'"):
        get_adapter("nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"step": 0.0}, "step"),
        ({"scheme": "backward"}, "scheme"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(SaliencyError, match=match):
        FiniteDifferenceIxG(**kwargs)
