"""LRP class maps: rules against hand-computed values, canonization, conservation, both routes."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import (
    NIH,
    REF_CARD,
    REF_MODEL,
    calibrate,
    card_dict,
    flag,
    invoke,
    needs_shared,
    read_rows,
)
from informer_audit.errors import SaliencyError
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import available_adapters, get_adapter

torch = pytest.importorskip("torch", reason="the lrp adapter needs torch")
try:  # through the adapter's own import, which copes with a missing torchvision
    from informer_audit.adapters.onnx_torch import import_onnx2torch

    import_onnx2torch()
except SaliencyError as exc:
    pytest.skip(f"converting ONNX graphs needs onnx2torch: {exc}", allow_module_level=True)

from informer_audit.adapters.gradient import TORCH_ARCH, TORCH_WEIGHTS  # noqa: E402
from informer_audit.adapters.lrp import (  # noqa: E402
    COMPOSITES,
    Conservation,
    RelevanceGraph,
    import_zennit,
    relevance_maps,
)

pytestmark = pytest.mark.torch
nn = torch.nn
EPS = 1e-6


def stab(z: np.ndarray) -> np.ndarray:
    """zennit's stabiliser, z + eps sign(z) with sign(0) = 1."""
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each pair of maps (N, K, ...)."""
    a, b = a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture
def inputs():
    return np.random.default_rng(5).normal(0, 1, (5, 3, 16, 16)).astype(np.float32)


def randomize_batch_norms(net: nn.Module, seed: int = 0, shift: bool = True) -> nn.Module:
    """Random running statistics and affine parameters (a fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            if shift:
                m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
            else:  # x * scale only: merged into a convolution, no bias appears
                m.running_mean.zero_()
                m.bias.data.zero_()
    return net.eval()


class DenseBlockNet(nn.Module):
    """A small DenseNet: conv-BN-ReLU-maxpool stem, one dense layer (pre-activation BatchNorm
    after a concatenation), a transition (conv + average pooling), global pooling, a head."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.norm0 = nn.BatchNorm2d(4)
        self.pool0 = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 1, bias=bias)
        self.norm2 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 3, 3, padding=1, bias=bias)
        self.norm3 = nn.BatchNorm2d(7)
        self.conv3 = nn.Conv2d(7, 5, 1, bias=bias)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(5, 3, bias=bias)

    def forward(self, x):
        y = self.pool0(torch.relu(self.norm0(self.conv0(x))))
        new = self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(self.norm1(y))))))
        t = self.pool(self.conv3(torch.relu(self.norm3(torch.cat([y, new], 1)))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(torch.relu(t), 1).flatten(1))


def dense_block_net(seed: int = 0, bias: bool = False, shift: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    net = randomize_batch_norms(DenseBlockNet(bias), seed, shift=True)
    if not shift:  # the mergeable BatchNorms scale only; the pre-activation ones keep shifts
        for m in (net.norm0, net.norm2):
            m.running_mean.zero_()
            m.bias.data.zero_()
    return net


def export(net: nn.Module, path: Path, size: int = 16, classes: int = 3) -> Path:
    """``net`` as an ONNX file (legacy exporter, dynamic batch) with its model card."""
    with warnings.catch_warnings():  # the legacy exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = "informer_audit.model_card"
    entry.value = json.dumps(card_dict([f"c{i}" for i in range(classes)], size, 3))
    onnx.save(proto, str(path))
    return path


# -- the adapter ----------------------------------------------------------------------------------
def test_registered_with_graph_access_and_the_gradient_adapters_torch_options():
    cls = available_adapters()["lrp"]
    assert cls.access == "graph"
    assert {TORCH_WEIGHTS, TORCH_ARCH} <= set(cls.options)
    assert get_adapter("lrp", batch_size=3).settings() == {
        "name": "lrp",
        "composite": "epsilon-plus-flat",
        "epsilon": 1e-6,
    }
    assert sorted(COMPOSITES) == ["epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"composite": "alpha-beta"}, "composite must be one of"),
        ({"epsilon": 0}, "epsilon must be a positive number"),
        ({"epsilon": float("nan")}, "epsilon must be a positive number"),
        ({"epsilon": "small"}, "epsilon must be a positive number"),
        ({"batch_size": 0}, "batch_size"),
        ({"module": "densenet121"}, "torch.nn.Module"),
    ],
)
def test_invalid_settings(kw, match):
    with pytest.raises(SaliencyError, match=match):
        get_adapter("lrp", **kw)


def test_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(SaliencyError, match="pip install"):
        get_adapter("lrp")


# -- rules against hand-computed values -----------------------------------------------------------
def epsilon_maps(x: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """LRP-epsilon by hand on conftest's ``Flatten -> [MatMul W1 -> Tanh] -> MatMul W + b``:
    the maps (N, K, ...) and the logits; tanh passes relevance on unchanged."""
    n = x.shape[0]
    a = x.reshape(n, -1).astype(np.float64)
    w1, w, b = params["W1"], params["W"], params["b"]
    h = np.tanh(a @ w1) if w1 is not None else a
    z = h @ w + b
    r_h = h[:, None, :] * w.T[None] * (z / stab(z))[:, :, None]  # (N, K, Hd)
    if w1 is None:
        return r_h.reshape(n, -1, *x.shape[1:]), z
    pre = a @ w1
    r_x = a[:, None, :] * np.einsum("ij,nkj->nki", w1, r_h / stab(pre)[:, None, :])
    return r_x.reshape(n, -1, *x.shape[1:]), z


@pytest.mark.parametrize("hidden", [None, 7])
def test_epsilon_rule_equals_hand_computed_maps(tiny_model, inputs, hidden):
    path, params = tiny_model(hidden=hidden)
    adapter = get_adapter("lrp")  # the dense layers keep LRP-epsilon (no flat rule: no conv)
    maps = adapter.explain(OnnxClassifier(path, device="cpu"), inputs)
    expected, z = epsilon_maps(inputs, params)
    assert maps.shape == (5, 3, 3, 16, 16) and maps.dtype == np.float64
    assert rel_err(maps, expected) < 1e-5
    # what the bias takes is lost: sum of the map = (z - b) z / (z + eps sign z)
    conservation = adapter.last_conservation
    assert isinstance(conservation, Conservation)
    np.testing.assert_allclose(conservation.explained, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conservation.ratio, (z - params["b"]) / stab(z), rtol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [{"layout": "NHWC"}, {"batch": 2}, {"sigmoid_output": True}],
    ids=["nhwc", "fixed-batch", "probabilities"],
)
def test_model_variants_give_the_hand_computed_maps(tiny_model, inputs, kw):
    path, params = tiny_model(hidden=6, **kw)
    maps = get_adapter("lrp", batch_size=3).explain(OnnxClassifier(path, device="cpu"), inputs)
    assert rel_err(maps, epsilon_maps(inputs, params)[0]) < 1e-4


class ConvReLU(nn.Module):
    """Conv 2x2 (1 -> 2 channels, no padding, no bias) -> ReLU -> dense (8 -> 2, no bias)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(1, 2, 2, bias=False)
        self.fc = nn.Linear(8, 2, bias=False)
        self.conv.weight.data = torch.randn(2, 1, 2, 2, generator=g)
        self.fc.weight.data = torch.randn(2, 8, generator=g)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def conv_relu_by_hand(x: np.ndarray, net: ConvReLU, first: str, bounds=(-3.0, 3.0)) -> np.ndarray:
    """Maps (K, 3, 3) of one 1x3x3 image by explicit sums: LRP-epsilon in the dense layer, then
    the ``first`` rule (zplus, flat or zbox) in the convolution."""
    w = net.conv.weight.detach().double().numpy()[:, 0]  # (2, 2, 2)
    fc = net.fc.weight.detach().double().numpy()
    conv = np.array([[[(x[i : i + 2, j : j + 2] * w[c]).sum() for j in range(2)] for i in range(2)]
                     for c in range(2)])  # fmt: skip
    y = np.maximum(conv, 0).reshape(-1)
    z = fc @ y
    maps = np.zeros((2, 3, 3))
    low, high = bounds
    for k in range(2):
        r_y = (y * fc[k] * z[k] / stab(z[k])).reshape(2, 2, 2)
        for c in range(2):
            for i in range(2):
                for j in range(2):
                    patch, wc = x[i : i + 2, j : j + 2], w[c]
                    if first == "zplus":
                        parts = np.maximum(patch, 0) * np.maximum(wc, 0)
                        parts += np.minimum(patch, 0) * np.minimum(wc, 0)
                    elif first == "flat":
                        parts = np.ones((2, 2))
                    else:  # zbox
                        parts = patch * wc - low * np.maximum(wc, 0) - high * np.minimum(wc, 0)
                    maps[k, i : i + 2, j : j + 2] += parts / stab(parts.sum()) * r_y[c, i, j]
    return maps


@pytest.mark.parametrize(
    ("composite", "first"),
    [("epsilon-plus", "zplus"), ("epsilon-plus-flat", "flat"), ("epsilon-gamma-box", "zbox")],
)
def test_first_convolution_rules_equal_hand_computed_maps(composite, first):
    net = ConvReLU().eval()
    x = torch.tensor(np.random.default_rng(2).normal(0, 1, (2, 1, 3, 3)), dtype=torch.float32)
    bounds = (torch.tensor(-3.0), torch.tensor(3.0))
    out, maps = relevance_maps(net, x, composite, bounds=bounds)
    assert maps.shape == (2, 2, 1, 3, 3)
    for n in range(2):
        expected = conv_relu_by_hand(x[n, 0].double().numpy(), net, first)
        np.testing.assert_allclose(maps[n, :, 0].double().numpy(), expected, rtol=1e-4, atol=1e-6)


def test_maps_equal_zennits_where_zennit_applies():
    try:
        zennit = import_zennit()
    except SaliencyError as exc:
        pytest.skip(str(exc))
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat

    assert zennit is not None
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3),
    )  # fmt: skip
    randomize_batch_norms(net)
    x = torch.randn(4, 3, 8, 8)
    low, high = torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0)
    theirs = {
        "epsilon-plus-flat": EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
        "epsilon-plus": EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]),
        "epsilon-gamma-box": EpsilonGammaBox(
            low=low.expand_as(x), high=high.expand_as(x), canonizers=[SequentialMergeBatchNorm()]
        ),
    }
    for name, composite in theirs.items():
        _, ours = relevance_maps(net, x, name, bounds=(low, high))
        for k in range(3):
            with Gradient(model=net, composite=composite) as attributor:
                _, rel = attributor(x, lambda o, k=k: torch.eye(3)[[k] * 4] * o)
            assert rel_err(ours[:, k].numpy(), rel.numpy()) < 1e-4, (name, k)


# -- canonization and conservation ----------------------------------------------------------------
def test_mergeable_batch_norms_are_merged_and_the_function_is_unchanged():
    net = dense_block_net(bias=True)
    x = torch.randn(3, 3, 8, 8)
    graph = RelevanceGraph(net, x)
    # norm0 and norm2 follow a convolution: merged; norm1 and norm3 follow a max pooling and
    # a concatenation: kept, as element-wise affine maps
    assert [name for name, _, _ in graph.linear_layers()] == [
        "norm0", "norm2", "conv2", "pool", "fc"
    ]  # fmt: skip
    assert [name for name, kind, first in graph.linear_layers() if first] == ["norm0"]
    assert sorted(op.node.name for op in graph.ops if op.kind == "affine") == ["norm1", "norm3"]
    out, _ = graph.relevance(x, lambda o: o, COMPOSITES["epsilon-plus-flat"])
    np.testing.assert_allclose(out.numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_merged_batch_norm_gives_the_maps_of_the_hand_merged_network():
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    tail = [nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3)]
    net = randomize_batch_norms(nn.Sequential(conv, bn, *tail))
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # the merge, written out
    merged = nn.Conv2d(3, 4, 3, padding=1)
    merged.weight.data = conv.weight * scale[:, None, None, None]
    merged.bias.data = (conv.bias - bn.running_mean) * scale + bn.bias
    by_hand = nn.Sequential(merged, *tail).eval()
    x = torch.randn(2, 3, 8, 8)
    np.testing.assert_allclose(net(x).detach(), by_hand(x).detach(), rtol=1e-5, atol=1e-6)
    for composite in COMPOSITES:
        bounds = (torch.tensor(-4.0), torch.tensor(4.0))
        _, a = relevance_maps(net, x, composite, bounds=bounds)
        _, b = relevance_maps(by_hand, x, composite, bounds=bounds)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_relevance_is_conserved_without_biases(composite):
    # concatenation, max and average pooling, pre-activation BatchNorm with shifts (relevance
    # passed on unchanged): nothing absorbs relevance when no linear layer has a bias
    net = dense_block_net(seed=1, shift=False)
    x = torch.randn(4, 3, 8, 8)
    out, maps = relevance_maps(net, x, composite, bounds=(torch.tensor(-5.0), torch.tensor(5.0)))
    ratio = maps.sum(dim=(2, 3, 4)) / out
    np.testing.assert_allclose(ratio.numpy(), 1.0, atol=1e-4)


def test_biases_absorb_relevance_and_the_ratio_says_how_much():
    net = dense_block_net(seed=1, bias=True)
    x = torch.randn(4, 3, 8, 8)
    out, maps = relevance_maps(net, x)
    ratio = (maps.sum(dim=(2, 3, 4)) / out).numpy()
    assert np.all(np.abs(ratio - 1) > 1e-3)
    conservation = Conservation(maps.sum(dim=(2, 3, 4)).double().numpy(), out.double().numpy())
    np.testing.assert_allclose(conservation.ratio, ratio, rtol=1e-5)
    assert conservation.summary(["a", "b", "c"]).splitlines()[0].startswith("a: relevance/score")
    silent = Conservation(np.zeros((1, 2)), np.array([[0.0, 2.0]]))
    assert np.isnan(silent.ratio[0, 0]) and silent.ratio[0, 1] == 0
    assert "no image with a non-zero score" in silent.summary()


def test_operations_without_a_rule_are_refused_by_name():
    class Squares(nn.Module):
        def forward(self, x):
            return (x * x).flatten(1)[:, :3]

    with pytest.raises(SaliencyError, match=r"no relevance rule for node 'mul'") as err:
        RelevanceGraph(Squares(), torch.randn(2, 3, 4, 4))
    assert err.value.params == ("saliency",)


# -- through ONNX ---------------------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path):
    net = dense_block_net(seed=2, bias=True)
    return net, OnnxClassifier(export(net, tmp_path / "block.onnx"), device="cpu")


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_converted_onnx_graph_gives_the_maps_of_the_torch_network(exported, inputs, composite):
    net, model = exported
    converted = get_adapter("lrp", composite=composite).explain(model, inputs)
    direct = get_adapter("lrp", composite=composite, module=net).explain(model, inputs)
    assert cosines(converted, direct).min() >= 0.99999
    assert rel_err(converted, direct) < 1e-4


def test_maps_do_not_depend_on_the_batch_and_repeat_exactly(exported, inputs):
    _, model = exported
    one = get_adapter("lrp", batch_size=1).explain(model, inputs)
    many = get_adapter("lrp", batch_size=4).explain(model, inputs)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6 * np.abs(many).max())
    again = get_adapter("lrp", batch_size=4).explain(model, inputs)
    np.testing.assert_array_equal(many, again)


def test_progress_reports_images(exported, inputs):
    _, model = exported
    calls = []
    get_adapter("lrp", batch_size=2).explain(
        model, inputs, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_module_that_is_another_model_is_refused(exported, inputs):
    _, model = exported
    other = dense_block_net(seed=3, bias=True)
    with pytest.raises(SaliencyError, match="does not compute the same scores"):
        get_adapter("lrp", module=other).explain(model, inputs)


def test_zennit_import_leaves_no_placeholder_behind():
    try:
        import_zennit()
    except SaliencyError as exc:
        pytest.skip(str(exc))
    mod = sys.modules.get("torchvision")
    assert mod is None or hasattr(mod, "__file__")  # a real torchvision, or none at all


# -- the command line -----------------------------------------------------------------------------
def test_cli_calibrate_flag_and_evaluate_with_lrp(labelled, tmp_path):
    env = labelled()
    lrp = ("--saliency", "lrp", "--lrp-composite", "epsilon-plus")
    ok = calibrate(env, tmp_path / "m.json", saliency=lrp)
    assert ok.exit_code == 0, ok.output
    saliency = json.loads((tmp_path / "m.json").read_text())["binding"]["saliency"]
    assert saliency == {"name": "lrp", "composite": "epsilon-plus", "epsilon": 1e-6}
    flagged = flag({**env, "monitor": tmp_path / "m.json"}, tmp_path / "flags")
    assert flagged.exit_code == 0, flagged.output
    r = invoke(
        "evaluate", env["model"], "--calib-images", env["val"], "--calib-labels", env["labels"],
        "--test-images", env["val"], "--test-labels", env["labels"], "-o", tmp_path / "ev",
        "--methods", "informer,entropy", "--saliency", "fd,lrp", "--patch-size", 10,
        "--bootstrap", 3, "--no-plots", "--device", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [row["method"] for row in read_rows(tmp_path / "ev" / "table1.csv")]
    assert rows == ["no_audit", "retuned", "informer_fd", "informer_lrp", "entropy"]


# -- the reference model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    if not (NIH.is_dir() and REF_MODEL.is_file()):
        pytest.skip(f"needs the shared NIH data and reference model in {NIH.parents[1]}")
    from informer_audit.images import load_image

    model = OnnxClassifier(REF_MODEL, card_file=REF_CARD, device="cpu")
    paths = sorted((NIH / "images").rglob("*.png"))[:2]
    return model, model.preprocess([load_image(p) for p in paths])


@needs_shared
@pytest.mark.shared
def test_reference_checkpoint_and_converted_onnx_give_the_same_maps(reference):
    from informer_audit.checkpoints import torch_module_for

    model, x = reference
    net = torch_module_for(model, REF_MODEL.with_suffix(".pt"), "densenet121")
    converted = get_adapter("lrp")
    a = converted.explain(model, x)
    b = get_adapter("lrp", module=net).explain(model, x)
    assert cosines(a, b).min() >= 0.9999
    conservation = converted.last_conservation
    assert conservation is not None
    print("\nLRP epsilon-plus-flat, reference DenseNet121, 2 NIH images:")
    print(conservation.summary(model.card.class_names))
    # DenseNet's pre-activation BatchNorms pass relevance on; the biases of the merged
    # BatchNorms take the rest (zennit without canonization: 0.42-0.96)
    assert np.all((conservation.ratio > 0.0) & (conservation.ratio < 1.0))


@needs_shared
@pytest.mark.shared
def test_cli_lrp_on_the_reference_checkpoint(tmp_path):
    import csv

    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    with (NIH / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][:4]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *classes])
        writer.writerows([r["path"], *(r[c] for c in classes)] for r in rows)
    r = invoke(
        "calibrate", REF_MODEL, "--model-card", REF_CARD, "--images", NIH, "--labels", labels,
        "--saliency", "lrp", "--torch-weights", REF_MODEL.with_suffix(".pt"),
        "--torch-arch", "densenet121", "--device", "cpu", "-o", tmp_path / "m.json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
