"""Models and settings whose numbers would be silently wrong: each is refused or warned about.

Tables of tiny ONNX models built here (reduced precision, non-float and ZipMap outputs, a card
that calls logits probabilities, a 2-class softmax, one class) and of saliency settings that
leave d meaningless (one patch, few patches, few LIME samples). Every row runs the CLI and
asserts the exit code and a fragment of what it says. A measurement test pins the float16
decision of the finite-difference adapter (adapters/fd.py documents the numbers).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import calibrate_args, card_dict, invoke, write_images
from informer_audit.distinctiveness import cosine_distance_matrix, distinctiveness
from informer_audit.errors import ModelSpecError
from informer_audit.images import load_image
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import get_adapter

CLASSES = ["A", "B", "C"]
F32, F16, F64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE
NP = {F32: np.float32, F16: np.float16, F64: np.float64}


def text(result: Any) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def net(
    path: Path,
    *,
    classes: list[str] = CLASSES,
    size: int | tuple[int, int] = 16,
    io: int = F32,
    inner: int | None = None,
    tail: Callable[[list[Any]], tuple[str, int]] | None = None,
    output: str = "logits",
    seed: int = 1,
    gain: float = 1.0,
    hidden: int = 6,
) -> Path:
    """Flatten -> MatMul -> Tanh -> MatMul + b, computed in ``inner`` with I/O in ``io``.

    ``tail(nodes)`` appends nodes after the logits ``z`` (always in the ``io`` type) and returns
    the output's name and element type. The card goes into the ONNX metadata.
    """
    h, w = (size, size) if isinstance(size, int) else size
    inner = io if inner is None else inner
    rng = np.random.default_rng(seed)
    d, k = 3 * h * w, len(classes)
    weights = {
        "W1": rng.normal(0, gain / np.sqrt(d), (d, hidden)),
        "W": rng.normal(0, gain / np.sqrt(hidden), (hidden, k)),
        "b": rng.normal(0, 0.3, k),
    }
    inits = [numpy_helper.from_array(v.astype(NP[inner]), n) for n, v in weights.items()]
    nodes, src = [], "image"
    if inner != io:
        nodes.append(helper.make_node("Cast", ["image"], ["xc"], to=inner))
        src = "xc"
    nodes += [
        helper.make_node("Flatten", [src], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["th"]),
        helper.make_node("MatMul", ["th", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["zi" if inner != io else "z"]),
    ]
    if inner != io:
        nodes.append(helper.make_node("Cast", ["zi"], ["z"], to=io))
    name, elem = tail(nodes) if tail is not None else ("z", io)
    outputs = [helper.make_tensor_value_info(name, elem, ["N", k])]
    if elem == -1:  # a ZipMap tail: its own output list
        outputs = nodes.pop()
    card = card_dict(classes, h, 3, output=output)
    card["image_size"] = [h, w]
    graph = helper.make_graph(
        nodes,
        "numerics",
        [helper.make_tensor_value_info("image", io, ["N", 3, h, w])],
        outputs,
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "informer_audit.model_card", json.dumps(card)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cast_to(elem: int) -> Callable[[list[Any]], tuple[str, int]]:
    def tail(nodes: list[Any]) -> tuple[str, int]:
        nodes.append(helper.make_node("Cast", ["z"], ["scores"], to=elem))
        return "scores", elem

    return tail


def op(name: str, **attrs: Any) -> Callable[[list[Any]], tuple[str, int]]:
    def tail(nodes: list[Any]) -> tuple[str, int]:
        nodes.append(helper.make_node(name, ["z"], ["scores"], **attrs))
        return "scores", F32

    return tail


def greater_than_zero(nodes: list[Any]) -> tuple[str, int]:
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    nodes.append(helper.make_node("Constant", [], ["zero"], value=zero))
    nodes.append(helper.make_node("Greater", ["z", "zero"], ["scores"]))
    return "scores", TensorProto.BOOL


def zipmap(nodes: list[Any]) -> tuple[str, int]:
    """What skl2onnx writes for a classifier: an int64 label and a ZipMap of probabilities."""
    nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0))
    nodes.append(
        helper.make_node(
            "ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
        )
    )
    seq_map = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(F32, []))
    )
    nodes.append(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("probabilities", seq_map),
        ]
    )
    return "probabilities", -1


def balanced_labels(folder: Path, classes: list[str], n: int = 10) -> Path:
    """``n`` images and a labels CSV in which every class has both labels."""
    paths = write_images(folder, n, size=20, seed=2)
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *classes])
        for i, p in enumerate(paths):
            w.writerow([p.name, *[(i + j) % 2 for j in range(len(classes))]])
    return labels


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("numerics")
    write_images(tmp / "audit", 3, seed=5)
    return {
        "tmp": tmp,
        "labels3": balanced_labels(tmp / "val3", CLASSES),
        "labels2": balanced_labels(tmp / "val2", ["A", "B"]),
        "labels1": balanced_labels(tmp / "val1", ["A"]),
        "audit": tmp / "audit",
    }


INPUT_CHECK = ("--input-direction", "high", "--input-alpha", "0.5")
"""An input check these few calibration images can fit without its own warning (the cases
check which warnings the model's numerics give)."""


def calibrate(data: dict[str, Path], model: Path, labels: str, *extra: Any) -> Any:
    given = {"model": model, "images": data[labels].parent, "labels": data[labels]}
    return invoke(
        *calibrate_args(
            {}, model.with_suffix(".monitor.json"), *INPUT_CHECK, *extra, saliency=(), **given
        )
    )


class Case(NamedTuple):
    id: str
    build: Callable[[Path], Path]
    command: str  # "info" or "calibrate"
    exit_code: int
    message: str  # fragment of the output ("" : nothing to look for)
    extra: tuple[Any, ...] = ()
    labels: str = "labels3"
    absent: str = ""  # a fragment that must not appear


FD8 = ("--patch-size", 8)
CASES = [
    # -- precision: float16 anywhere on the path refuses the default step, says which to use
    Case(
        "float16-output",
        lambda p: net(p, tail=cast_to(F16)),
        "calibrate",
        2,
        "computes in reduced precision (output 'scores' is tensor(float16);",
        FD8,
    ),
    Case(
        "float16-output-default-step-says-which-step",
        lambda p: net(p, tail=cast_to(F16)),
        "calibrate",
        2,
        "step=0.031 (check the maps against exact gradients: a large step meets the network's "
        "curvature), or use saliency='lime' (large perturbations) or 'gradient' (exact) "
        "(command line: --fd-step, --saliency)",
        FD8,
    ),
    Case("float16-input", lambda p: net(p, io=F16), "calibrate", 2, "input 'image'", FD8),
    Case(
        "float16-inside",
        lambda p: net(p, inner=F16),
        "calibrate",
        2,
        "(1 Cast to float16 inside the graph; 3 float16 weights inside the graph)",
        FD8,
    ),
    Case(
        "float16-given-step",
        lambda p: net(p, io=F16),
        "calibrate",
        0,
        "",
        (*FD8, "--fd-step", 0.03),
        absent="warning:",
    ),
    Case(
        "float16-given-step-too-small",
        lambda p: net(p, io=F16),
        "calibrate",
        0,
        "warning: fd: step 0.001 is below sqrt(eps) / 2 = 0.016",
        (*FD8, "--fd-step", 0.001),
    ),
    Case("float16-lime", lambda p: net(p, io=F16), "calibrate", 0, "", ("--saliency", "lime")),
    Case("float16-entropy", lambda p: net(p, io=F16), "calibrate", 0, "", ("--method", "msp")),
    Case("float64", lambda p: net(p, io=F64), "calibrate", 0, "", FD8, absent="warning:"),
    # -- outputs that are not float scores
    Case(
        "int64-output",
        lambda p: net(p, tail=cast_to(TensorProto.INT64)),
        "info",
        2,
        "output 'scores' has type tensor(int64); expected float logits or probabilities",
    ),
    Case(
        "bool-output",
        lambda p: net(p, tail=greater_than_zero),
        "info",
        2,
        "output 'scores' has type tensor(bool); expected float logits or probabilities",
    ),
    Case(
        "string-output",
        lambda p: net(p, tail=cast_to(TensorProto.STRING)),
        "info",
        2,
        "output 'scores' has type tensor(string); expected float logits or probabilities",
    ),
    Case(
        "zipmap-output-info",
        lambda p: net(p, tail=zipmap),
        "info",
        2,
        "output 'probabilities' has type seq(map(int64,tensor(float))): a sequence of",
    ),
    Case(
        "zipmap-output-how-to-export",
        lambda p: net(p, tail=zipmap),
        "info",
        2,
        "options={id(clf): {'zipmap': False}}",
    ),
    # -- a card that the values contradict: refused, never clipped
    Case(
        "logits-declared-probabilities",
        lambda p: net(p, output="probabilities", gain=4.0),
        "calibrate",
        2,
        "holds probabilities, but the model returned values in [",
        FD8,
    ),
    Case(
        "logits-declared-probabilities-says-fix",
        lambda p: net(p, output="probabilities", gain=4.0),
        "calibrate",
        2,
        "these look like logits; set the output kind to 'logits' (overrides={\"output\": "
        '"logits"}, or "output": "logits" in the model card) (command line: --output-kind)',
        ("--method", "entropy"),
    ),
    Case(
        "sigmoid-probabilities",
        lambda p: net(p, output="probabilities", tail=op("Sigmoid")),
        "calibrate",
        0,
        "",
        FD8,
    ),
    # -- settings that leave d meaningless
    Case(
        "patch-as-large-as-the-image",
        lambda p: net(p),
        "calibrate",
        2,
        "fd: patch_size 16 covers the whole 16x16 model input: one patch",
        ("--patch-size", 16),
    ),
    Case(
        "patch-larger-than-the-image",
        lambda p: net(p),
        "calibrate",
        2,
        "choose a patch size below 16",
        ("--patch-size", 40),
    ),
    Case(
        "two-patches",
        lambda p: net(p, size=(16, 32)),
        "calibrate",
        0,
        "warning: fd: patch_size 16 cuts the 16x32 model input into only 2 patches",
        ("--patch-size", 16),
    ),
    Case("four-patches", lambda p: net(p), "calibrate", 0, "", FD8, absent="warning:"),
    Case(
        "lime-10-samples",
        lambda p: net(p),
        "calibrate",
        0,
        "warning: lime: num_samples 10 is below 100",
        ("--saliency", "lime", "--lime-samples", 10),
    ),
    Case(
        "lime-250-samples",
        lambda p: net(p),
        "calibrate",
        0,
        "",
        ("--saliency", "lime", "--lime-samples", 250),
        absent="warning:",
    ),
    Case(
        "two-class-softmax",
        lambda p: net(p, classes=["A", "B"], output="probabilities", tail=op("Softmax", axis=1)),
        "calibrate",
        2,
        "are opposites of each other (cosine distance at least",
        FD8,
        labels="labels2",
    ),
    Case(
        "two-class-softmax-says-why",
        lambda p: net(p, classes=["A", "B"], output="probabilities", tail=op("Softmax", axis=1)),
        "calibrate",
        2,
        "2-class softmax (p_2 = 1 - p_1), so d = 2 on every image",
        ("--saliency", "lime", "--lime-samples", 100),
        labels="labels2",
    ),
    Case(
        "two-class-softmax-entropy",
        lambda p: net(p, classes=["A", "B"], output="probabilities", tail=op("Softmax", axis=1)),
        "calibrate",
        0,
        "",
        ("--method", "entropy"),
        labels="labels2",
    ),
    Case(
        "two-class-sigmoid",
        lambda p: net(p, classes=["A", "B"], output="probabilities", tail=op("Sigmoid")),
        "calibrate",
        0,
        "",
        FD8,
        labels="labels2",
    ),
    # -- one class: the baselines work, INFORMER says why it cannot
    Case(
        "one-class-entropy",
        lambda p: net(p, classes=["A"]),
        "calibrate",
        0,
        "",
        ("--method", "entropy"),
        labels="labels1",
    ),  # fmt: skip
    Case(
        "one-class-tta",
        lambda p: net(p, classes=["A"]),
        "calibrate",
        0,
        "",
        ("--method", "tta", "--tta-copies", 3),
        labels="labels1",
    ),  # fmt: skip
    Case(
        "one-class-informer",
        lambda p: net(p, classes=["A"]),
        "calibrate",
        2,
        "INFORMER's class distinctiveness compares the saliency maps of different classes",
        FD8,
        labels="labels1",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(data: dict[str, Path], case: Case) -> None:
    path = case.build(data["tmp"] / f"{case.id}.onnx")
    if case.command == "info":
        r = invoke("info", path, "--device", "cpu")
    else:
        r = calibrate(data, path, case.labels, *case.extra)
    assert r.exit_code == case.exit_code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert case.message in text(r), r.output
    if case.absent:
        assert case.absent not in r.output


def test_zipmap_model_is_refused_by_flag_too(data: dict[str, Path]) -> None:
    good = net(data["tmp"] / "zip-good.onnx")
    assert calibrate(data, good, "labels3", "--method", "msp").exit_code == 0
    path = net(data["tmp"] / "zip.onnx", tail=zipmap)
    out = data["tmp"] / "zip.csv"
    r = invoke(
        "flag", path, "--monitor", good.with_suffix(".monitor.json"), "--images", data["audit"],
        "-o", out, "--device", "cpu",
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "{'zipmap': False}" in text(r) and "Traceback" not in r.output
    assert not out.exists()


def test_one_class_model_calibrates_and_flags_with_a_baseline(data: dict[str, Path]) -> None:
    path = net(data["tmp"] / "one.onnx", classes=["A"])
    assert calibrate(data, path, "labels1", "--method", "entropy").exit_code == 0
    out = data["tmp"] / "one.csv"
    r = invoke(
        "flag", path, "--monitor", path.with_suffix(".monitor.json"), "--images", data["audit"],
        "-o", out, "--device", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {row["status"] for row in rows} == {"ok"}
    assert "entropy_A" in rows[0]


def test_float16_monitor_flags_with_its_recorded_step(data: dict[str, Path]) -> None:
    path = net(data["tmp"] / "half.onnx", io=F16)
    assert calibrate(data, path, "labels3", *FD8, "--fd-step", 0.03).exit_code == 0
    monitor = json.loads(path.with_suffix(".monitor.json").read_text())
    assert json.dumps(monitor).count('"step": 0.03') >= 1
    r = invoke(
        "flag", path, "--monitor", path.with_suffix(".monitor.json"), "--images", data["audit"],
        "-o", data["tmp"] / "half.csv", "--device", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning:" not in r.output


def test_precision_is_described(data: dict[str, Path]) -> None:
    half = OnnxClassifier(net(data["tmp"] / "d16.onnx", inner=F16), device="cpu")
    full = OnnxClassifier(net(data["tmp"] / "d32.onnx"), device="cpu")
    double = OnnxClassifier(net(data["tmp"] / "d64.onnx", io=F64), device="cpu")
    assert half.precision_eps == 2.0**-10 and half.reduced_precision
    assert full.precision_eps == 2.0**-23 and full.reduced_precision == ()
    assert double.precision_eps == 2.0**-52 and double.reduced_precision == ()
    assert half.describe()["precision"]["reduced"] == list(half.reduced_precision)


def test_probabilities_a_rounding_outside_0_1_are_accepted(tmp_path: Path) -> None:
    """p * (1 + 2e-7) - 1e-7: saturated images give -1e-7 and 1 + 1e-7, within tolerance."""

    def stretched(nodes: list[Any]) -> tuple[str, int]:
        for name, value in (("s", 1 + 2e-7), ("o", 1e-7)):
            const = numpy_helper.from_array(np.array([value], np.float32), name)
            nodes.append(helper.make_node("Constant", [], [name], value=const))
        nodes.append(helper.make_node("Sigmoid", ["z"], ["p"]))
        nodes.append(helper.make_node("Mul", ["p", "s"], ["ps"]))
        nodes.append(helper.make_node("Sub", ["ps", "o"], ["scores"]))
        return "scores", F32

    model = OnnxClassifier(
        net(tmp_path / "m.onnx", output="probabilities", tail=stretched, gain=50.0), device="cpu"
    )
    x = np.random.default_rng(0).normal(0, 3, (16, 3, 16, 16)).astype(np.float32)
    raw = model._session.run(None, {"image": x})[0]
    assert raw.min() < 0 and raw.max() > 1  # the case is real
    assert np.isfinite(model.logits(x)).all()
    bad = OnnxClassifier(net(tmp_path / "l.onnx", output="probabilities", gain=4.0), device="cpu")
    with pytest.raises(ModelSpecError, match=r"values in \[-?\d"):
        bad.logits(x)


# -- the measurement behind the float16 decision (adapters/fd.py, FiniteDifferenceIxG.step) ----
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0] * a.shape[1], -1)
    b = b.reshape(a.shape[0], -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def test_float16_fd_maps_need_the_sqrt_eps_step(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"classes": ["c0", "c1", "c2", "c3"], "size": 32, "gain": 3.0, "seed": 0}
    kw["hidden"] = 32
    exact = OnnxClassifier(net(tmp_path / "f64.onnx", io=F64, **kw), device="cpu")
    half = OnnxClassifier(net(tmp_path / "f16.onnx", io=F16, **kw), device="cpu")
    images = write_images(tmp_path / "img", 6, size=32, seed=3, mode="RGB")
    x = exact.preprocess([load_image(p) for p in images])
    ref = get_adapter("fd", patch_size=8, step=1e-3).explain(exact, x)
    d_ref = distinctiveness(cosine_distance_matrix(ref))

    def measure(step: float) -> tuple[float, float]:
        maps = get_adapter("fd", patch_size=8, step=step).explain(half, x)
        dd = np.abs(distinctiveness(cosine_distance_matrix(maps)) - d_ref).max()
        return float(_cosines(maps, ref).min()), float(dd)

    cos_default, dd_default = measure(1e-3)
    cos_chosen, dd_chosen = measure(float(f"{np.sqrt(half.precision_eps):.2g}"))
    # measured: 1e-3 -> some maps all zero, d off by 0.75; 0.031 -> cosine 0.998, d off by 0.03
    assert cos_default < 0.5 and dd_default > 0.3
    assert cos_chosen > 0.995 and dd_chosen < 0.06
