"""The streaming auditor: chunking invariance, per-file failures, non-finite model output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import card_dict, write_images
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.audit import Auditor
from informer_audit.distinctiveness import cosine_distance_matrix, distinctiveness
from informer_audit.errors import LabelFormatError
from informer_audit.model import OnnxClassifier
from informer_audit.numerics import sigmoid
from informer_audit.scorers import InformerScorer


def nan_for_dark_images_model(path, size=16):
    """z = x W + log(mean(x)): NaN for images whose normalised mean is negative (dark ones)."""
    rng = np.random.default_rng(0)
    d = 3 * size * size
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("ReduceMean", ["flat", "axes"], ["m"], keepdims=1),
        helper.make_node("Log", ["m"], ["lm"]),
        helper.make_node("Add", ["mm", "lm"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (d, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key = "informer_audit.model_card"
    entry.value = json.dumps(card_dict(["A", "B", "C"], size, 3))
    onnx.save(model, str(path))
    return path


def test_results_do_not_depend_on_chunking(tmp_path, tiny_model):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    images = write_images(tmp_path / "imgs", 7)
    items = [(p.name, p) for p in images]
    fd = FiniteDifferenceIxG(patch_size=4)
    one = list(Auditor(model, InformerScorer(fd), images_per_chunk=1, keep_maps=True).run(items))
    many = list(Auditor(model, InformerScorer(fd), images_per_chunk=5, keep_maps=True).run(items))
    assert [r.key for r in one] == [p.name for p in images]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a.d, b.d, rtol=1e-6)
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-6)
        # the stored pieces agree with each other
        np.testing.assert_allclose(a.probs, sigmoid(a.logits))
        np.testing.assert_allclose(a.dist, cosine_distance_matrix(a.maps[None])[0])
        np.testing.assert_allclose(a.d, distinctiveness(a.dist[None])[0])


def test_class_subset_uses_only_those_maps(tmp_path, tiny_model):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    items = [(p.name, p) for p in write_images(tmp_path / "imgs", 2)]
    fd = FiniteDifferenceIxG(patch_size=4)
    full = list(Auditor(model, InformerScorer(fd), keep_maps=True).run(items))
    sub = list(Auditor(model, InformerScorer(fd), ["C", "A"], keep_maps=True).run(items))
    for f, s in zip(full, sub, strict=True):
        np.testing.assert_allclose(s.maps, f.maps[[2, 0]])
        assert s.d[0] == pytest.approx(f.dist[2, 0])  # K = 2: d_C = d_CA


def test_bad_files_are_recorded_and_the_rest_scored(tmp_path, tiny_model):
    path, _ = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    good = write_images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"GIF89a not really")
    items = [(p.name, p) for p in [good[0], bad, good[1], tmp_path / "gone.png", good[2]]]
    scorer = InformerScorer(FiniteDifferenceIxG(patch_size=8))
    results = list(Auditor(model, scorer, images_per_chunk=2).run(items))
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert "bad.png" in results[1].error and "not found" in results[3].error


def test_non_finite_model_output_fails_only_those_images(tmp_path):
    model = OnnxClassifier(nan_for_dark_images_model(tmp_path / "nan.onnx"), device="cpu")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, value in [("bright.png", 230), ("dark.png", 10), ("bright2.png", 200)]:
        arr = np.full((16, 16), value, dtype=np.uint8)
        arr[::3, ::2] = value - 8  # some texture so the maps are not degenerate
        Image.fromarray(arr).save(folder / name)
    items = [(n, folder / n) for n in ("bright.png", "dark.png", "bright2.png")]
    results = list(Auditor(model, InformerScorer(FiniteDifferenceIxG(patch_size=8))).run(items))
    assert [r.ok for r in results] == [True, False, True]
    assert "non-finite" in results[1].error
    assert np.isfinite(results[0].d).all() and np.isfinite(results[2].d).all()


def test_auditor_needs_two_distinct_model_classes(tiny_model):
    path, _ = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    fd = FiniteDifferenceIxG()
    with pytest.raises(LabelFormatError, match="at least 2 classes"):
        Auditor(model, InformerScorer(fd), ["A"])
    with pytest.raises(LabelFormatError, match="must be distinct model classes"):
        Auditor(model, InformerScorer(fd), ["A", "Z"])
    with pytest.raises(LabelFormatError, match="must be distinct model classes"):
        Auditor(model, InformerScorer(fd), ["A", "A"])


def test_sigmoid_is_stable():
    z = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    p = sigmoid(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[1:4], 1 / (1 + np.exp(-z[1:4])))
    assert p[0] == 0.0 and p[-1] == 1.0
