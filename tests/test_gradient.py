"""Exact Input x Gradient: analytic gradients, conversion of newer opsets, the FD cross-check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REF_CARD, REF_MODEL, analytic_ixg, invoke, needs_shared, patch_sum
from informer_audit.errors import SaliencyError
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import available_adapters, get_adapter

torch = pytest.importorskip("torch", reason="the exact-gradient adapter needs torch")
try:  # through the adapter's own import, which copes with a missing torchvision
    from informer_audit.adapters.onnx_torch import import_onnx2torch

    import_onnx2torch()
except SaliencyError as exc:
    pytest.skip(f"converting ONNX graphs needs onnx2torch: {exc}", allow_module_level=True)

pytestmark = pytest.mark.torch


@pytest.fixture
def inputs():
    return np.random.default_rng(5).normal(0, 1, (5, 3, 16, 16)).astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_registered_as_graph_access():
    cls = available_adapters()["gradient"]
    assert cls.access == "graph"
    assert get_adapter("gradient", batch_size=3).settings() == {"name": "gradient"}


@pytest.mark.parametrize("hidden", [None, 7])
def test_exact_maps_equal_analytic_ixg(tiny_model, inputs, hidden):
    path, params = tiny_model(hidden=hidden)
    model = OnnxClassifier(path, device="cpu")
    maps = get_adapter("gradient").explain(model, inputs)
    expected = analytic_ixg(inputs, params)
    assert maps.shape == expected.shape == (5, 3, 3, 16, 16)
    assert maps.dtype == np.float64
    assert rel_err(maps, expected) < 1e-5


@pytest.mark.parametrize(
    "kw",
    [
        {"layout": "NHWC"},
        {"batch": 2},  # fixed batch of 2: padded chunks, padded rows dropped
        {"sigmoid_output": True},  # probabilities mapped back to logits
    ],
    ids=["nhwc", "fixed-batch", "probabilities"],
)
def test_model_variants_give_the_analytic_maps(tiny_model, inputs, kw):
    path, params = tiny_model(hidden=6, **kw)
    model = OnnxClassifier(path, device="cpu")
    maps = get_adapter("gradient", batch_size=3).explain(model, inputs)
    assert rel_err(maps, analytic_ixg(inputs, params)) < 1e-4


def test_batch_size_does_not_change_maps(tiny_model, inputs):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    one = get_adapter("gradient", batch_size=1).explain(model, inputs)
    many = get_adapter("gradient", batch_size=4).explain(model, inputs)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-7)


def test_progress_reports_images(tiny_model, inputs):
    path, _ = tiny_model()
    calls = []
    get_adapter("gradient", batch_size=2).explain(
        OnnxClassifier(path, device="cpu"), inputs, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def _linear_module(params: dict) -> torch.nn.Module:
    w = torch.tensor(params["W"], dtype=torch.float32)
    b = torch.tensor(params["b"], dtype=torch.float32)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w.clone())
            self.b = torch.nn.Parameter(b.clone())

        def forward(self, x):
            return x.flatten(1) @ self.w + self.b

    return Linear()


def test_module_given_directly(tiny_model, inputs):
    path, params = tiny_model()
    module = _linear_module(params)
    model = OnnxClassifier(path, device="cpu")
    maps = get_adapter("gradient", module=module).explain(model, inputs)
    assert rel_err(maps, analytic_ixg(inputs, params)) < 1e-5
    # The caller's module is left as it was given: trainable parameters stay trainable.
    assert all(p.requires_grad for p in module.parameters())


def test_module_that_is_another_model_is_refused(tiny_model, inputs):
    path, params = tiny_model()
    module = _linear_module({**params, "b": params["b"] + 0.5})
    model = OnnxClassifier(path, device="cpu")
    with pytest.raises(SaliencyError, match="does not compute the same scores"):
        get_adapter("gradient", module=module).explain(model, inputs)


def test_invalid_settings():
    with pytest.raises(SaliencyError, match="batch_size"):
        get_adapter("gradient", batch_size=0)
    with pytest.raises(SaliencyError, match="torch.nn.Module"):
        get_adapter("gradient", module="densenet121")


def test_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(SaliencyError, match="pip install"):
        get_adapter("gradient")


def test_onnx2torch_import_leaves_no_placeholder_behind():
    from informer_audit.adapters.onnx_torch import import_onnx2torch

    import_onnx2torch()
    mod = sys.modules.get("torchvision")
    assert mod is None or hasattr(mod, "__file__")  # a real torchvision, or none at all


# -- graphs from newer exporters -----------------------------------------------------------------
def _opset19_model(path: Path, *, runtime_axes: bool = False, extra: str | None = None) -> Path:
    """Conv -> Relu -> AveragePool-19 -> Split/Concat -> ReduceMean-18 (axes input) -> Cast-19
    -> Reshape(allowzero=1) -> Gemm: the node forms onnx2torch 1.5.15 has no converter for."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "cw"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "cb"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "fb"),
    ]
    axes = "axes"
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "AveragePool",
            ["r"],
            ["p"],
            kernel_shape=[2, 2],
            strides=[2, 2],
            dilations=[1, 1],
            name="pool",
        ),
        helper.make_node("Split", ["p"], ["s1", "s2"], axis=1, num_outputs=2, name="split"),
        helper.make_node("Concat", ["s2", "s1"], ["cat"], axis=1, name="concat"),
    ]
    if runtime_axes:
        nodes.append(helper.make_node("Identity", ["axes"], ["axes_rt"], name="axes_copy"))
        axes = "axes_rt"
    nodes += [
        helper.make_node("ReduceMean", ["cat", axes], ["m"], keepdims=1, name="gap"),
        helper.make_node("Cast", ["m"], ["mc"], to=TensorProto.FLOAT, saturate=1, name="cast"),
        helper.make_node("Reshape", ["mc", "shape"], ["flat"], allowzero=1, name="reshape"),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits" if not extra else "g"]),
    ]
    if extra:
        nodes.append(helper.make_node(extra, ["g"], ["logits"], name="odd_one"))
    graph = helper.make_graph(nodes, "opset19", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    card = {
        "class_names": ["A", "B", "C"],
        "image_size": [16, 16],
        "channels": 3,
        "layout": "NCHW",
        "scale": 255,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "output": "logits",
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = "informer_audit.model_card", __import__("json").dumps(card)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_opset19_graph_is_lowered_and_matches_onnx_runtime(tmp_path, inputs):
    from informer_audit.adapters.onnx_torch import convert_onnx

    path = _opset19_model(tmp_path / "new.onnx")
    model = OnnxClassifier(path, device="cpu")
    net = convert_onnx(path)
    with torch.no_grad():
        z = net(torch.from_numpy(inputs)).double().numpy()
    np.testing.assert_allclose(z, model.logits(inputs), rtol=1e-5, atol=1e-5)
    # and its exact maps agree with finite differences at pixel level (patch 1)
    exact = get_adapter("gradient").explain(model, inputs[:2])
    fd = get_adapter("fd", patch_size=1, step=1e-3).explain(model, inputs[:2])
    summed = patch_sum(exact, 1)
    cos = (summed * fd).sum() / np.linalg.norm(summed) / np.linalg.norm(fd)
    assert cos > 0.999


def test_runtime_axes_are_refused_naming_the_node(tmp_path):
    path = _opset19_model(tmp_path / "rt.onnx", runtime_axes=True)
    model = OnnxClassifier(path, device="cpu")
    with pytest.raises(SaliencyError, match=r"'gap' \(ReduceMean-18\).*run time"):
        get_adapter("gradient").explain(model, np.zeros((1, 3, 16, 16), np.float32))


def test_operator_without_converter_is_refused_naming_the_node(tmp_path):
    path = _opset19_model(tmp_path / "odd.onnx", extra="Hardmax")
    model = OnnxClassifier(path, device="cpu")
    with pytest.raises(SaliencyError, match=r"'odd_one' \(Hardmax-13\).*no converter.*fd"):
        get_adapter("gradient").explain(model, np.zeros((1, 3, 16, 16), np.float32))


# -- the reference model -------------------------------------------------------------------------
@needs_shared
@pytest.mark.slow
def test_fd_agrees_with_exact_maps_on_reference_model():
    from conftest import NIH
    from informer_audit.images import load_image

    model = OnnxClassifier(REF_MODEL, card_file=REF_CARD, device="cpu")
    paths = sorted((NIH / "images").rglob("*.png"))[:2]
    x = model.preprocess([load_image(p) for p in paths])
    exact = patch_sum(get_adapter("gradient").explain(model, x), 16)
    fd = get_adapter("fd", patch_size=16).explain(model, x)
    for i in range(len(paths)):
        for k in range(exact.shape[1]):
            a, b = exact[i, k].ravel(), fd[i, k].ravel()
            cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert cos >= 0.999, (paths[i].name, k, cos)


# -- a PyTorch checkpoint differentiated directly (CLI) ----------------------------------------
def _labelled_subset(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    """The first ``n`` val images of the shared NIH labels, as a plain label CSV."""
    import csv

    from conftest import NIH

    with (NIH / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][:n]
    out = tmp_path / "labels.csv"
    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *classes])
        for r in rows:
            w.writerow([r["path"], *(r[c] for c in classes)])
    return NIH, out


@needs_shared
def test_cli_gradient_on_the_reference_checkpoint(tmp_path):
    images, labels = _labelled_subset(tmp_path)
    weights = REF_MODEL.with_suffix(".pt")
    base = [
        "calibrate", str(REF_MODEL), "--model-card", str(REF_CARD), "--images", str(images),
        "--labels", str(labels), "--saliency", "gradient", "--device", "cpu",
    ]  # fmt: skip
    ok = invoke(*base, "-o", tmp_path / "m.json", "--torch-weights", weights,
                "--torch-arch", "densenet121")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    # The vendor ONNX file names no architecture: --torch-arch is needed.
    no_arch = invoke(*base, "-o", tmp_path / "x.json", "--torch-weights", weights)
    assert no_arch.exit_code == 2 and "--torch-arch" in no_arch.output
    # A checkpoint of another model is refused, not explained.
    import torch

    from informer_audit.densenet import densenet121

    other = tmp_path / "other.pt"
    torch.manual_seed(0)
    torch.save(densenet121(num_classes=5).state_dict(), other)
    bad = invoke(*base, "-o", tmp_path / "y.json", "--torch-weights", other,
                 "--torch-arch", "densenet121")  # fmt: skip
    assert bad.exit_code == 2
    assert "does not compute the same scores" in bad.output
    assert not (tmp_path / "y.json").exists()
