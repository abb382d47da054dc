"""Tests of informer_audit.model: the model card and the ONNX Runtime classifier wrapper.

Every ONNX file is built here or in ``conftest.py`` with ``onnx.helper`` under ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import build_linear_model, card_dict
from informer_audit.errors import DeviceUnavailableError, InformerAuditError, ModelSpecError
from informer_audit.model import OnnxClassifier
from informer_audit.modelcard import CARD_FIELDS, CARD_METADATA_KEY, ModelCard, resolve_card

CLASSES = ["A", "B", "C"]
GRAY_128 = (128 / 255 - 0.5) / 0.25  # the hand-computed normalised value of a 128 pixel


def full_card(**changes) -> dict:
    """A valid 3-class, 3-channel, 16 px card (as conftest's tiny model carries), with changes."""
    card = card_dict(CLASSES, 16, 3)
    card.update(changes)
    return card


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- small graph builders for odd models ---------------------------------------------------------


def save_graph(
    path: Path,
    nodes: list,
    inputs: list,
    outputs: list,
    *,
    card: dict | None = None,
    initializers: tuple = (),
) -> Path:
    graph = helper.make_graph(nodes, "odd", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if card is not None:
        entry = model.metadata_props.add()
        entry.key = CARD_METADATA_KEY
        entry.value = json.dumps(card)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def image_info(name: str, shape: list, elem: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def mean_pool_model(path: Path, card: dict, *, shape=("N", 3, "H", "W"), elem=TensorProto.FLOAT):
    """Output k = mean of input channel k (a ReduceMean over H, W): 3 classes, 3 channels."""
    nodes = []
    src = "image"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    nodes.append(helper.make_node("ReduceMean", [src], ["scores"], axes=[2, 3], keepdims=0))
    return save_graph(
        path,
        nodes,
        [image_info("image", list(shape), elem)],
        [image_info("scores", ["N", 3])],
        card=card,
    )


# -- ModelCard.from_dict -------------------------------------------------------------------------


def test_card_round_trips_through_to_dict_and_to_json():
    data = full_card(
        mean=[0.1, 0.2, 0.3],
        std=[0.4, 0.5, 0.6],
        scale=1.0,
        layout="NHWC",
        output="probabilities",
        image_size=[16, 24],
        resize="float",  # to_dict writes every field, the optional resize too
    )
    card = ModelCard.from_dict(data)
    assert card.class_names == ("A", "B", "C")
    assert card.image_size == (16, 24)
    assert card.channels == 3
    assert card.layout == "NHWC"
    assert card.scale == 1.0
    assert card.mean == (0.1, 0.2, 0.3)
    assert card.std == (0.4, 0.5, 0.6)
    assert card.output == "probabilities"
    assert card.resize == "float"
    assert card.to_dict() == data
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_dict(json.loads(card.to_json())) == card
    assert json.loads(card.to_json()) == data


def test_card_info_fields_are_accepted_and_case_is_normalised():
    card = ModelCard.from_dict(full_card(layout="nhwc", output="Logits", name="m", version="1"))
    assert (card.layout, card.output) == ("NHWC", "logits")


@pytest.mark.parametrize("mean, std", [([0.5], [0.25]), (0.5, 0.25)])
def test_card_single_mean_std_broadcast_to_channels(mean, std):
    card = ModelCard.from_dict(full_card(mean=mean, std=std))
    assert card.mean == (0.5, 0.5, 0.5)
    assert card.std == (0.25, 0.25, 0.25)
    gray = ModelCard.from_dict(full_card(channels=1, mean=mean, std=std))
    assert gray.mean == (0.5,) and gray.std == (0.25,)


def test_card_single_int_image_size_is_square():
    assert ModelCard.from_dict(full_card(image_size=20)).image_size == (20, 20)


@pytest.mark.parametrize(
    "change, field, detail",
    [
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"channels": 2, "mean": [0.5], "std": [0.25]}, "channels", "got 2"),
        ({"layout": "CHW"}, "layout", "'CHW'"),
        ({"output": "scores"}, "output", "'scores'"),
        ({"std": 0}, "std", "positive"),
        ({"std": [0.25, 0.0, 0.25]}, "std", "positive"),
        ({"image_size": [-16, 16]}, "image_size", "-16"),
        ({"image_size": 0}, "image_size", "positive"),
        ({"class_names": ["A", "B", "A"]}, "class_names", "distinct"),
        ({"class_names": []}, "class_names", "distinct"),
        ({"class_names": ["A", " ", "C"]}, "class_names", "non-empty"),
        ({"mean": [0.5, 0.5]}, "mean", "got 2"),
        ({"std": [0.1, 0.2, 0.3, 0.4]}, "std", "got 4"),
        ({"mean": [float("nan")] * 3}, "mean", "finite"),
        ({"scale": 0}, "scale", "positive"),
        ({"scale": float("inf")}, "scale", "positive"),
    ],
)
def test_card_invalid_field_is_refused_naming_it(change, field, detail):
    with pytest.raises(ModelSpecError) as info:
        ModelCard.from_dict(full_card(**change), source="the-card")
    msg = str(info.value)
    assert msg.startswith("the-card:")
    assert field in msg
    assert detail in msg


@pytest.mark.parametrize("missing", ["std", "class_names", "output"])
def test_card_missing_field_is_refused_naming_it(missing):
    data = full_card()
    del data[missing]
    with pytest.raises(ModelSpecError, match=rf"missing field\(s\) \['{missing}'\]"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(
    "change",
    [
        {"image_size": "big"},
        {"image_size": [16]},
        {"channels": "three"},
        {"mean": None},
        {"class_names": 5},
        {"image_size": float("inf")},
        {"channels": float("inf")},
        {"image_size": [16.7, 16]},
        {"channels": 3.9},
        {"channels": True},
        {"image_size": "16"},
    ],
)
def test_card_malformed_value_is_a_model_spec_error(change):
    with pytest.raises(ModelSpecError, match="malformed field value"):
        ModelCard.from_dict(full_card(**change))


@pytest.mark.parametrize("data", [[1, 2], "card", None])
def test_card_that_is_not_an_object_is_refused(data):
    with pytest.raises(ModelSpecError, match="expected a JSON/TOML object"):
        ModelCard.from_dict(data)


def test_model_spec_error_is_both_informer_and_value_error():
    with pytest.raises(InformerAuditError):
        ModelCard.from_dict(full_card(channels=7))
    with pytest.raises(ValueError):
        ModelCard.from_dict(full_card(channels=7))


# -- card files ----------------------------------------------------------------------------------

TOML_CARD = """\
class_names = ["A", "B", "C"]
image_size = [16, 16]
channels = 3
layout = "NCHW"
scale = 255
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
output = "logits"
"""


def test_card_file_json_and_toml_are_read(tmp_path):
    from_json = ModelCard.from_file(write_json(tmp_path / "card.json", full_card()))
    toml_path = tmp_path / "card.toml"
    toml_path.write_text(TOML_CARD, encoding="utf-8")
    from_toml = ModelCard.from_file(toml_path)
    assert from_json == from_toml == ModelCard.from_dict(full_card())
    upper = tmp_path / "CARD.TOML"
    upper.write_text(TOML_CARD, encoding="utf-8")
    assert ModelCard.from_file(upper) == from_toml


@pytest.mark.parametrize(
    "name, text",
    [
        ("card.json", '{"class_names": ["A", "B"], '),
        ("card.json", "class_names = ['A']\n"),  # TOML in a .json file
        ("card.toml", '{"class_names": ["A"]}'),  # JSON in a .toml file
        ("card.toml", "class_names = [\n"),
    ],
)
def test_unparsable_card_file_names_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelSpecError, match="cannot parse the model card") as info:
        ModelCard.from_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelSpecError) as info:
        resolve_card({}, card_file=path)
    assert str(path) in str(info.value)


def test_card_file_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_bytes(b'{"class_names": ["\xff\xfe"]}')
    with pytest.raises(ModelSpecError, match="cannot parse") as info:
        ModelCard.from_file(path)
    assert str(path) in str(info.value)


def test_missing_card_file_names_the_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ModelSpecError, match="not found") as info:
        resolve_card({}, card_file=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ['["A", "B"]', '"card"', "42", "null"])
def test_card_file_that_is_not_an_object_is_a_model_spec_error(tmp_path, text):
    path = tmp_path / "card.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelSpecError) as info:
        resolve_card({CARD_METADATA_KEY: json.dumps(full_card())}, card_file=path)
    assert str(path) in str(info.value)


def test_invalid_card_file_content_names_the_file(tmp_path):
    path = write_json(tmp_path / "card.json", full_card(layout="CHW"))
    with pytest.raises(ModelSpecError, match="layout") as info:
        ModelCard.from_file(path)
    assert str(path) in str(info.value)


# -- resolve_card --------------------------------------------------------------------------------


def test_resolve_card_precedence_field_by_field(tmp_path):
    meta = {CARD_METADATA_KEY: json.dumps(full_card(scale=255, layout="NCHW"))}
    card_file = write_json(
        tmp_path / "card.json", {"class_names": ["X", "Y", "Z"], "scale": 1.0, "mean": [0.0]}
    )
    overrides = {"scale": 2.0, "image_size": [8, 12], "channels": None, "std": None}
    card, origin = resolve_card(meta, card_file, overrides)
    assert card.class_names == ("X", "Y", "Z")  # card file over metadata
    assert card.scale == 2.0  # options over card file over metadata
    assert card.image_size == (8, 12)  # options over metadata
    assert card.mean == (0.0, 0.0, 0.0)  # card file over metadata
    assert card.std == (0.25, 0.25, 0.25)  # None option ignored: metadata kept
    assert card.channels == 3 and card.layout == "NCHW" and card.output == "logits"
    assert origin.index("ONNX metadata") < origin.index("card") < origin.index("options")
    assert str(card_file) in origin
    assert "image_size" in origin and "scale" in origin and "std" not in origin


def test_resolve_card_metadata_alone():
    card, origin = resolve_card({CARD_METADATA_KEY: json.dumps(full_card()), "other": "x"})
    assert card == ModelCard.from_dict(full_card())
    assert origin == "ONNX metadata"


def test_resolve_card_options_alone_can_give_everything():
    card, origin = resolve_card({}, None, full_card())
    assert card == ModelCard.from_dict(full_card())
    assert origin.startswith("options")


def test_resolve_card_nothing_lists_missing_fields_and_model_card_option():
    with pytest.raises(ModelSpecError) as info:
        resolve_card({"unrelated": "1"}, source="m.onnx")
    msg = str(info.value)
    assert msg.startswith("m.onnx:")
    assert "card_file=CARD.json" in msg and "--" not in msg
    assert info.value.params == ("card_file", *CARD_FIELDS)
    assert str(list(CARD_FIELDS)) in msg
    assert "no metadata, no card" in msg


def test_resolve_card_partial_lists_only_the_missing_fields(tmp_path):
    partial = full_card()
    del partial["mean"], partial["output"]
    card_file = write_json(tmp_path / "card.json", partial)
    with pytest.raises(ModelSpecError) as info:
        resolve_card({}, card_file)
    msg = str(info.value)
    assert "missing ['mean', 'output']" in msg
    assert "card_file=" in msg and info.value.params == ("card_file", "mean", "output")
    assert str(card_file) in msg


@pytest.mark.parametrize("value, detail", [("{not json", "not valid JSON"), ("[1, 2]", "object")])
def test_resolve_card_bad_metadata_is_refused(value, detail):
    with pytest.raises(ModelSpecError, match=detail) as info:
        resolve_card({CARD_METADATA_KEY: value}, source="m.onnx")
    assert CARD_METADATA_KEY in str(info.value)


def test_resolve_card_bad_metadata_is_refused_even_with_a_full_card(tmp_path):
    card_file = write_json(tmp_path / "card.json", full_card())
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        resolve_card({CARD_METADATA_KEY: "{"}, card_file)


def test_resolve_card_invalid_merged_value_is_refused():
    with pytest.raises(ModelSpecError, match="channels"):
        resolve_card({CARD_METADATA_KEY: json.dumps(full_card())}, None, {"channels": 2})


# -- OnnxClassifier: where the card comes from ---------------------------------------------------


def test_classifier_card_from_metadata(tiny_model):
    path, params = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    assert clf.card == ModelCard.from_dict(params["card"])
    assert clf.card_source == "ONNX metadata"
    assert clf.metadata[CARD_METADATA_KEY] == json.dumps(params["card"])


def test_classifier_card_file_overrides_metadata(tiny_model, tmp_path):
    path, params = tiny_model()
    card_file = write_json(tmp_path / "vendor.json", {"class_names": ["X", "Y", "Z"]})
    clf = OnnxClassifier(path, card_file=card_file, device="cpu")
    assert clf.card.class_names == ("X", "Y", "Z")
    assert clf.card.image_size == (16, 16) and clf.card.mean == (0.5, 0.5, 0.5)
    assert "ONNX metadata" in clf.card_source and str(card_file) in clf.card_source


def test_classifier_full_card_file_changes_preprocessing(tiny_model, tmp_path):
    path, _ = tiny_model()
    card_file = write_json(tmp_path / "vendor.json", full_card(mean=[0.0], std=[1.0], scale=1.0))
    clf = OnnxClassifier(path, card_file=card_file, device="cpu")
    batch = clf.preprocess([np.full((16, 16, 3), 128, np.float32)])
    np.testing.assert_allclose(batch, 128.0)


def test_classifier_overrides_beat_card_file_and_metadata(tiny_model, tmp_path):
    path, _ = tiny_model()
    card_file = write_json(tmp_path / "vendor.json", {"class_names": ["X", "Y", "Z"]})
    clf = OnnxClassifier(
        path,
        card_file=card_file,
        overrides={"class_names": ["P", "Q", "R"], "layout": None},
        device="cpu",
    )
    assert clf.card.class_names == ("P", "Q", "R")
    assert clf.card.layout == "NCHW"


def test_classifier_without_metadata_or_card_is_refused(tiny_model, tmp_path):
    path, params = tiny_model(metadata=False)
    with pytest.raises(ModelSpecError) as info:
        OnnxClassifier(path, device="cpu")
    msg = str(info.value)
    assert str(path) in msg and "card_file=" in msg and "class_names" in msg
    # ... and the same model works once a card is given.
    card_file = write_json(tmp_path / "card.json", params["card"])
    clf = OnnxClassifier(path, card_file=card_file, device="cpu")
    assert clf.card == ModelCard.from_dict(params["card"])
    assert clf.metadata == {}


def test_classifier_toml_card_file(tiny_model, tmp_path):
    path, _ = tiny_model(metadata=False)
    toml_path = tmp_path / "card.toml"
    toml_path.write_text(TOML_CARD, encoding="utf-8")
    assert OnnxClassifier(path, card_file=toml_path, device="cpu").card.class_names == (
        "A",
        "B",
        "C",
    )


# -- OnnxClassifier: cards that contradict the graph ---------------------------------------------


def test_card_channels_contradicting_graph_names_the_axis(tiny_model, tmp_path):
    path, _ = tiny_model(channels=3)
    card_file = write_json(tmp_path / "gray.json", full_card(channels=1, mean=[0.5], std=[0.25]))
    with pytest.raises(ModelSpecError) as info:
        OnnxClassifier(path, card_file=card_file, device="cpu")
    msg = str(info.value)
    assert "axis 1 is 3, expected 1" in msg
    assert "channels=1" in msg


def test_card_image_size_contradicting_graph_names_the_axis(tiny_model):
    path, _ = tiny_model(size=16)
    with pytest.raises(ModelSpecError, match="axis 2 is 16, expected 32"):
        OnnxClassifier(path, overrides={"image_size": [32, 32]}, device="cpu")
    with pytest.raises(ModelSpecError, match="axis 3 is 16, expected 20"):
        OnnxClassifier(path, overrides={"image_size": [16, 20]}, device="cpu")


def test_card_layout_contradicting_graph_names_the_axis(tiny_model):
    path, _ = tiny_model(channels=3, size=16)
    # An NCHW (3, 16, 16) graph read as NHWC expects (16, 16, 3): axis 1 is 3, expected 16.
    with pytest.raises(ModelSpecError, match="axis 1 is 3, expected 16"):
        OnnxClassifier(path, overrides={"layout": "NHWC"}, device="cpu")


def test_card_class_count_contradicting_output_is_refused(tiny_model):
    path, _ = tiny_model(classes=("A", "B", "C"))
    with pytest.raises(ModelSpecError, match="3 classes but the model card names 2"):
        OnnxClassifier(path, overrides={"class_names": ["A", "B"]}, device="cpu")


def test_symbolic_dims_accept_any_card_size(tmp_path):
    path = mean_pool_model(tmp_path / "pool.onnx", full_card(image_size=[12, 20]))
    clf = OnnxClassifier(path, device="cpu")
    assert clf.input.shape[2:] == ("H", "W")
    x = clf.preprocess([np.full((30, 50, 3), 128, np.float32)])
    assert x.shape == (1, 3, 12, 20)
    np.testing.assert_allclose(clf.logits(x), GRAY_128, atol=1e-5)


# -- OnnxClassifier: files and graphs it refuses -------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).bytes(2000),
        np.random.default_rng(1).bytes(64),
        b"this is a text file, not an ONNX model\n" * 5,
        b"",
    ],
    ids=["random-2000", "random-64", "text", "empty"],
)
def test_non_onnx_file_is_refused(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelSpecError, match="not a readable ONNX model") as info:
        OnnxClassifier(path, overrides=full_card(), device="cpu")
    assert str(path) in str(info.value)


def test_missing_model_file_is_refused(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelSpecError, match="model file not found") as info:
        OnnxClassifier(path, overrides=full_card(), device="cpu")
    assert str(path) in str(info.value)


def test_folder_as_model_is_refused(tmp_path):
    with pytest.raises(ModelSpecError, match="not found"):
        OnnxClassifier(tmp_path, overrides=full_card(), device="cpu")


def two_input_model(path: Path) -> Path:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["scores"], axes=[2, 3], keepdims=0),
    ]
    inputs = [image_info("a", ["N", 3, 16, 16]), image_info("b", ["N", 3, 16, 16])]
    return save_graph(path, nodes, inputs, [image_info("scores", ["N", 3])], card=full_card())


def rank2_input_model(path: Path) -> Path:
    nodes = [helper.make_node("Identity", ["image"], ["scores"])]
    return save_graph(
        path,
        nodes,
        [image_info("image", ["N", 3])],
        [image_info("scores", ["N", 3])],
        card=full_card(),
    )


def int64_input_model(path: Path) -> Path:
    return mean_pool_model(path, full_card(), shape=("N", 3, 16, 16), elem=TensorProto.INT64)


def rank3_output_model(path: Path) -> Path:
    nodes = [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[3], keepdims=0)]
    return save_graph(
        path,
        nodes,
        [image_info("image", ["N", 3, 16, 16])],
        [image_info("scores", ["N", 3, 16])],
        card=full_card(),
    )


def two_output_model(path: Path, second: int) -> Path:
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Identity", ["pooled"], ["scores"]),
        helper.make_node("ReduceMean", ["image"], ["other"], axes=[1, 3], keepdims=0),
    ]
    return save_graph(
        path,
        nodes,
        [image_info("image", ["N", 3, 16, 16])],
        [image_info("other", ["N", second]), image_info("scores", ["N", 3])],
        card=full_card(),
    )


def test_of_several_outputs_the_one_of_shape_batch_k_is_used(tmp_path):
    model = OnnxClassifier(two_output_model(tmp_path / "two.onnx", 16), device="cpu")
    assert model.output.name == "scores"
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(model.logits(x), x.mean(axis=(2, 3)), rtol=1e-5)


def test_several_outputs_that_fit_are_refused(tmp_path):
    # Two outputs of shape (N, 3) for a 3-class card: which holds the scores is not knowable.
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["a"], axes=[2, 3], keepdims=0),
        helper.make_node("Identity", ["a"], ["b"]),
    ]
    path = save_graph(
        tmp_path / "ambiguous.onnx",
        nodes,
        [image_info("image", ["N", 3, 16, 16])],
        [image_info("a", ["N", 3]), image_info("b", ["N", 3])],
        card=full_card(),
    )
    with pytest.raises(ModelSpecError, match="has 2 outputs"):
        OnnxClassifier(path, device="cpu")


def test_card_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("\ufeff" + json.dumps(full_card()), encoding="utf-8")
    assert ModelCard.from_file(path).class_names == tuple(CLASSES)


@pytest.mark.parametrize(
    "build, detail",
    [
        (two_input_model, "exactly one image input, found 2"),
        (rank2_input_model, "expected a rank-4 image batch"),
        (int64_input_model, "tensor(int64); expected a float image tensor"),
        (rank3_output_model, r"expected (batch, 3) scores"),
    ],
    ids=["two-inputs", "rank2-input", "int64-input", "rank3-output"],
)
def test_unsupported_graph_is_refused(tmp_path, build, detail):
    path = build(tmp_path / "odd.onnx")
    with pytest.raises(ModelSpecError) as info:
        OnnxClassifier(path, device="cpu")
    assert detail in str(info.value)
    assert str(path) in str(info.value)


def test_float16_input_is_fed_float16(tmp_path):
    path = mean_pool_model(
        tmp_path / "half.onnx", full_card(), shape=("N", 3, 16, 16), elem=TensorProto.FLOAT16
    )
    clf = OnnxClassifier(path, device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    expected = x.astype(np.float16).astype(np.float32).mean(axis=(2, 3))
    np.testing.assert_allclose(clf.logits(x), expected, rtol=1e-5, atol=1e-5)


# -- OnnxClassifier: inference -------------------------------------------------------------------


def analytic_logits(x: np.ndarray, params: dict) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64) @ params["W"] + params["b"]


def test_logits_equal_the_linear_model(tiny_model):
    path, params = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    x = np.random.default_rng(1).normal(size=(5, 3, 16, 16)).astype(np.float32)
    out = clf.logits(x)
    assert out.dtype == np.float64 and out.shape == (5, 3)
    np.testing.assert_allclose(out, analytic_logits(x, params), rtol=1e-4, atol=1e-5)
    assert clf.n_forward == 5


@pytest.mark.parametrize("fixed", [1, 4])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 9])
def test_fixed_batch_models_take_any_number_of_images(tmp_path, fixed, n):
    rng = np.random.default_rng(2)
    w, b = rng.normal(0, 0.05, (3 * 16 * 16, 3)), rng.normal(0, 0.1, 3)
    card = full_card()
    dyn = build_linear_model(tmp_path / "dyn.onnx", w, b, channels=3, size=16, card=card)
    fix = build_linear_model(
        tmp_path / "fix.onnx", w, b, channels=3, size=16, batch=fixed, card=card
    )
    clf_dyn = OnnxClassifier(dyn, device="cpu")
    clf_fix = OnnxClassifier(fix, device="cpu")
    assert clf_dyn.fixed_batch is None
    assert clf_fix.fixed_batch == fixed
    x = rng.normal(size=(n, 3, 16, 16)).astype(np.float32)
    got = clf_fix.logits(x)
    assert got.shape == (n, 3)
    np.testing.assert_allclose(got, clf_dyn.logits(x), rtol=0, atol=1e-6)
    assert clf_fix.n_forward == n


def test_nhwc_model_gets_nhwc_input(tiny_model):
    nchw, _ = tiny_model(name="nchw.onnx", seed=3)
    nhwc, _ = tiny_model(name="nhwc.onnx", seed=3, layout="NHWC")
    clf_nchw = OnnxClassifier(nchw, device="cpu")
    clf_nhwc = OnnxClassifier(nhwc, device="cpu")
    assert clf_nhwc.card.layout == "NHWC"
    assert clf_nhwc.input.shape[1:] == (16, 16, 3)
    x = np.random.default_rng(4).normal(size=(3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(clf_nhwc.logits(x), clf_nchw.logits(x), rtol=0, atol=1e-6)


def test_nhwc_model_distinguishes_channels(tmp_path):
    """Per-channel means through an NHWC graph: wrong transposition would mix the channels."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[1, 2], keepdims=0)]
    path = save_graph(
        tmp_path / "nhwc_pool.onnx",
        nodes,
        [image_info("image", ["N", 16, 16, 3])],
        [image_info("scores", ["N", 3])],
        card=full_card(layout="NHWC"),
    )
    clf = OnnxClassifier(path, device="cpu")
    x = np.zeros((2, 3, 16, 16), np.float32)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 2.0, 3.0
    np.testing.assert_allclose(clf.logits(x), [[1.0, 2.0, 3.0]] * 2, atol=1e-6)


def test_probability_output_is_mapped_back_to_logits(tiny_model):
    path, params = tiny_model(sigmoid_output=True)
    clf = OnnxClassifier(path, device="cpu")
    assert clf.card.output == "probabilities"
    x = np.random.default_rng(5).normal(size=(6, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(clf.logits(x), analytic_logits(x, params), rtol=1e-4, atol=1e-5)


def test_saturated_probabilities_give_finite_clipped_logits(tmp_path):
    w = np.zeros((3 * 16 * 16, 3))
    path = build_linear_model(
        tmp_path / "sat.onnx",
        w,
        np.array([100.0, -100.0, 0.0]),
        channels=3,
        size=16,
        card=full_card(output="probabilities"),
        sigmoid_output=True,
    )
    out = OnnxClassifier(path, device="cpu").logits(np.zeros((2, 3, 16, 16), np.float32))
    bound = math.log((1 - 1e-12) / 1e-12)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], bound, rtol=1e-3)
    np.testing.assert_allclose(out[:, 1], -bound, rtol=1e-3)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-6)


# -- preprocess ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 16, 1), (16, 16, 3), (40, 24, 1), (9, 13, 3)])
def test_preprocess_constant_gray_hand_computed(tiny_model, shape):
    path, _ = tiny_model(channels=3, size=16)
    clf = OnnxClassifier(path, device="cpu")
    batch = clf.preprocess([np.full(shape, 128, np.float32)] * 2)
    assert batch.dtype == np.float32
    assert batch.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(batch, GRAY_128, rtol=0, atol=1e-5)


def test_preprocess_per_channel_mean_std_in_nchw_order(tiny_model, tmp_path):
    path, _ = tiny_model()
    card_file = write_json(
        tmp_path / "c.json", full_card(mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25], scale=255)
    )
    clf = OnnxClassifier(path, card_file=card_file, device="cpu")
    image = np.zeros((16, 16, 3), np.float32)
    image[..., 0], image[..., 1], image[..., 2] = 51.0, 102.0, 255.0
    batch = clf.preprocess([image])
    np.testing.assert_allclose(batch[0, 0], 0.2 / 1.0, atol=1e-6)
    np.testing.assert_allclose(batch[0, 1], (0.4 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(batch[0, 2], (1.0 - 1.0) / 0.25, atol=1e-6)


def test_preprocess_resizes_to_the_card_size(tmp_path):
    path = mean_pool_model(tmp_path / "pool.onnx", full_card(image_size=[12, 20]))
    clf = OnnxClassifier(path, device="cpu")
    yy, xx = np.mgrid[0:30, 0:50]
    plane = (yy * 5 + xx * 2).astype(np.float32)
    image = np.stack([plane, 255 - plane, plane / 2], axis=2).astype(np.float32)
    batch = clf.preprocess([image])
    assert batch.shape == (1, 3, 12, 20)
    for c in range(3):
        ref = np.asarray(
            Image.fromarray(image[:, :, c]).resize((20, 12), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        np.testing.assert_allclose(batch[0, c], (ref / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_preprocess_rgb_on_gray_card_uses_luminance(tiny_model):
    path, _ = tiny_model(channels=1)
    clf = OnnxClassifier(path, device="cpu")
    image = np.empty((16, 16, 3), np.float32)
    image[..., 0], image[..., 1], image[..., 2] = 200.0, 100.0, 50.0
    batch = clf.preprocess([image])
    assert batch.shape == (1, 1, 16, 16)
    lum = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    np.testing.assert_allclose(batch, (lum / 255 - 0.5) / 0.25, rtol=0, atol=1e-5)


def test_preprocess_refuses_non_canonical_image(tiny_model):
    path, _ = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    with pytest.raises(ValueError, match="canonical"):
        clf.preprocess([np.zeros((16, 16), np.float32)])


def test_preprocess_then_logits_end_to_end(tiny_model):
    path, params = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    x = clf.preprocess([np.full((16, 16, 1), 128, np.float32)])
    expected = np.full(3 * 16 * 16, GRAY_128) @ params["W"] + params["b"]
    np.testing.assert_allclose(clf.logits(x)[0], expected, rtol=1e-4, atol=1e-5)


# -- sha256 --------------------------------------------------------------------------------------


def test_sha256_is_the_file_digest_and_follows_a_weight_byte(tiny_model, tmp_path):
    path, params = tiny_model()
    data = path.read_bytes()
    clf = OnnxClassifier(path, device="cpu")
    assert clf.sha256 == hashlib.sha256(data).hexdigest()
    raw = params["W"].astype(np.float32).tobytes()
    at = data.find(raw)
    assert at > 0 and data.count(raw) == 1
    changed = bytearray(data)
    changed[at] ^= 0x01  # lowest mantissa byte of W[0, 0]
    other = tmp_path / "changed.onnx"
    other.write_bytes(bytes(changed))
    clf2 = OnnxClassifier(other, device="cpu")
    assert clf2.sha256 == hashlib.sha256(bytes(changed)).hexdigest()
    assert clf2.sha256 != clf.sha256


# -- device --------------------------------------------------------------------------------------


def test_device_cpu(tiny_model):
    path, _ = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    assert clf.providers == ["CPUExecutionProvider"]
    assert clf.device == "cpu"
    assert "CPU" in clf.device_note


def test_device_auto_on_this_machine_says_what_it_chose(tiny_model):
    path, _ = tiny_model()
    clf = OnnxClassifier(path, device="auto")
    assert (
        clf.providers[0]
        == {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[clf.device]
    )
    assert clf.device_note.startswith(clf.device.upper())


@pytest.mark.parametrize(
    "machine, device, note, providers",
    [
        ("cpu-build", "auto", "no CUDA provider", ["CPUExecutionProvider"]),
        ("no-gpu", "auto", "auto: CUDA provider present but could not be created", None),
        ("gpu", "auto", "CUDA (auto)", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("gpu", "cuda", "CUDA (requested)", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("gpu", "cpu", "CPU (requested)", ["CPUExecutionProvider"]),
    ],
)
def test_device_choice_with_and_without_a_gpu(
    tiny_model, onnx_providers, machine, device, note, providers
):
    path, params = tiny_model()
    onnx_providers(machine)
    clf = OnnxClassifier(path, device=device)
    assert clf.device == ("cuda" if note.startswith("CUDA") else "cpu")
    assert note in clf.device_note
    assert clf.providers == (providers or ["CPUExecutionProvider"])
    x = np.zeros((1, 3, 16, 16), np.float32)
    np.testing.assert_allclose(clf.logits(x)[0], params["b"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("machine", ["cpu-build", "no-gpu"])
def test_device_cuda_without_gpu_raises(tiny_model, onnx_providers, machine):
    path, _ = tiny_model()
    onnx_providers(machine)
    with pytest.raises(DeviceUnavailableError, match="cuda") as info:
        OnnxClassifier(path, device="cuda")
    assert not isinstance(info.value, ModelSpecError)  # exit code 3, not 2
    assert "cpu" in str(info.value)  # says what to use instead


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:0", ""])
def test_unknown_device_is_refused(tiny_model, device):
    path, _ = tiny_model()
    with pytest.raises(ModelSpecError, match="unknown device") as info:
        OnnxClassifier(path, device=device)
    assert repr(device) in str(info.value)


# -- external data -------------------------------------------------------------------------------


def save_external(model_path: Path, target: Path, location: str) -> Path:
    """Re-save ``model_path`` at ``target`` with all initializers in the file ``location``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return target


def test_external_data_inside_folder_loads_and_is_fingerprinted(tiny_model, tmp_path):
    inline, params = tiny_model()
    model_path = save_external(inline, tmp_path / "ext" / "model.onnx", "model.onnx.data")
    data_path = tmp_path / "ext" / "model.onnx.data"
    assert data_path.is_file()
    assert model_path.stat().st_size < inline.stat().st_size  # the weights really moved out
    clf = OnnxClassifier(model_path, device="cpu")
    expected = hashlib.sha256(model_path.read_bytes() + data_path.read_bytes()).hexdigest()
    assert clf.sha256 == expected
    assert clf.sha256 != hashlib.sha256(model_path.read_bytes()).hexdigest()
    x = np.random.default_rng(6).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(clf.logits(x), analytic_logits(x, params), rtol=1e-4, atol=1e-5)
    # One changed byte of the data file changes the fingerprint.
    data = bytearray(data_path.read_bytes())
    data[0] ^= 0x01
    data_path.write_bytes(bytes(data))
    assert OnnxClassifier(model_path, device="cpu").sha256 != clf.sha256


def test_external_data_in_a_subfolder_is_allowed(tiny_model, tmp_path):
    inline, _ = tiny_model()
    (tmp_path / "ext" / "weights").mkdir(parents=True)
    model_path = save_external(inline, tmp_path / "ext" / "model.onnx", "weights/w.bin")
    clf = OnnxClassifier(model_path, device="cpu")
    data = (tmp_path / "ext" / "weights" / "w.bin").read_bytes()
    assert clf.sha256 == hashlib.sha256(model_path.read_bytes() + data).hexdigest()


def relocate_external(model_path: Path, location: str) -> None:
    """Point every external tensor of ``model_path`` at ``location`` (data not moved)."""
    model = onnx.load(str(model_path), load_external_data=False)
    n = 0
    for tensor in model.graph.initializer:
        assert tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                n += 1
    assert n > 0
    onnx.save(model, str(model_path), save_as_external_data=False)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tiny_model, tmp_path, where):
    inline, _ = tiny_model()
    model_path = save_external(inline, tmp_path / "ext" / "model.onnx", "w.bin")
    outside = tmp_path / "outside.bin"
    os.replace(tmp_path / "ext" / "w.bin", outside)
    if where == "parent":
        location = "../outside.bin"
    elif where == "absolute":
        location = str(outside.resolve())
    else:
        location = "link.bin"
        try:
            (tmp_path / "ext" / "link.bin").symlink_to(outside)
        except OSError as exc:  # pragma: no cover - platforms without symlinks
            pytest.skip(f"cannot create a symlink here: {exc}")
    relocate_external(model_path, location)
    with pytest.raises(ModelSpecError, match="inside the model's folder") as info:
        OnnxClassifier(model_path, device="cpu")
    assert repr(location) in str(info.value)


def test_external_data_file_missing_is_refused(tiny_model, tmp_path):
    inline, _ = tiny_model()
    model_path = save_external(inline, tmp_path / "ext" / "model.onnx", "w.bin")
    (tmp_path / "ext" / "w.bin").unlink()
    with pytest.raises(ModelSpecError, match="external data file 'w.bin' not found"):
        OnnxClassifier(model_path, device="cpu")


# -- describe ------------------------------------------------------------------------------------


def test_describe_has_what_the_cli_prints(tiny_model, tmp_path):
    path, params = tiny_model()
    clf = OnnxClassifier(path, device="cpu")
    info = clf.describe()
    for key in (
        "input",
        "output",
        "batch",
        "card",
        "providers",
        "device_note",
        "sha256",
        "device",
        "card_source",
        "path",
    ):
        assert key in info, key
    assert info["input"]["name"] == "image"
    assert info["input"]["type"] == "tensor(float)"
    assert tuple(info["input"]["shape"][1:]) == (3, 16, 16)
    assert info["output"]["name"] == "logits"
    assert info["batch"] == "dynamic"
    assert info["card"] == ModelCard.from_dict(params["card"]).to_dict()
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["device"] == "cpu"
    assert info["device_note"] == clf.device_note
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["metadata_keys"] == [CARD_METADATA_KEY]
    json.dumps(info)  # plain data
    rng = np.random.default_rng(0)
    fixed = build_linear_model(
        tmp_path / "fixed.onnx",
        rng.normal(size=(768, 3)),
        np.zeros(3),
        channels=3,
        size=16,
        batch=4,
        card=full_card(),
    )
    assert OnnxClassifier(fixed, device="cpu").describe()["batch"] == "fixed 4"


@pytest.mark.parametrize("machine", ["no-gpu", "gpu"])
def test_cuda_probe_leaves_ort_logging_and_stderr_as_they_were(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    onnx_providers: Callable[[str], None],
    machine: str,
) -> None:
    """The probe silences ORT's CUDA failure print without touching its global log severity
    (ORT has no getter, so a changed severity could not be given back) and restores fd 2."""
    import onnxruntime as ort

    onnx_providers(machine)
    calls: list[int] = []
    monkeypatch.setattr(ort, "set_default_logger_severity", lambda level: calls.append(level))
    card = card_dict(["A", "B", "C"], 4, 3)
    weights = np.random.default_rng(0).normal(size=(3 * 4 * 4, 3))
    path = build_linear_model(
        tmp_path / "m.onnx", weights, np.zeros(3), channels=3, size=4, card=card
    )
    before = os.fstat(2)
    OnnxClassifier(path, device="auto")
    after = os.fstat(2)
    assert calls == []
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
