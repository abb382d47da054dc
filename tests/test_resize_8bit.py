"""8-bit sources are converted and resized in 8 bits, as the model was trained; others in float.

The model card's ``resize`` field: ``"uint8"`` (the default) gives an 8-bit file exactly what a
PIL or torchvision training pipeline gives it (``Image.open(f).convert("L").resize(...)``), and
16-bit, float and plain-array images their float precision; ``"float"`` resizes everything in
float, as every monitor written before the field was fitted.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import NIH, REF_CARD, REF_MODEL, invoke, needs_shared, random_model
from informer_audit.binding import check_binding, legacy_binding
from informer_audit.errors import ModelSpecError, MonitorMismatchError
from informer_audit.images import (
    LoadedImage,
    is_8bit,
    load_image,
    resize,
    resize_8bit,
    to_channels_8bit,
)
from informer_audit.model import OnnxClassifier
from informer_audit.modelcard import (
    CARD_DEFAULTS,
    LEGACY_CARD_VALUES,
    ModelCard,
    legacy_card_dict,
    resolve_card,
)

BILINEAR = Image.Resampling.BILINEAR

# Resizing [[0, 255], [0, 255]] to 3 x 3: the middle column is the mean of its two neighbours,
# 127.5 in float; Pillow's 8-bit filter rounds it to the level 128.
EDGE = np.array([[0, 255], [0, 255]], dtype=np.uint8)
EDGE_FLOAT_ROW = [0.0, 127.5, 255.0]
EDGE_8BIT_ROW = [0.0, 128.0, 255.0]


def save_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def normalised(values: list[float] | np.ndarray) -> np.ndarray:
    """What conftest's cards (scale 255, mean 0.5, std 0.25) make of 8-bit-scale values."""
    x = np.asarray(values, dtype=np.float32)
    return (x / np.float32(255) - np.float32(0.5)) / np.float32(0.25)


def classifier(tmp_path: Path, channels: int, size: int, **card: str) -> OnnxClassifier:
    path, _ = random_model(tmp_path / f"m{channels}_{size}.onnx", channels=channels, size=size)
    return OnnxClassifier(path, device="cpu", overrides=card or None)


# -- (a) the reference model's training preprocessing, bit for bit ------------------------------


def training_preprocessing(path: Path, card: dict) -> np.ndarray:
    """The reference model's training input, computed with PIL alone (its README): the 8-bit
    PNG resized to 128 by PIL's bilinear filter in mode "L", /255, replicated to 3 channels,
    ImageNet mean/std; float32 throughout, in the tool's order of operations."""
    h, w = card["image_size"]
    small = Image.open(path).convert("L").resize((w, h), BILINEAR)
    x = np.asarray(small, dtype=np.float32) / np.float32(card["scale"])
    x = np.repeat(x[None], 3, axis=0)
    mean = np.asarray(card["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(card["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


@needs_shared
@pytest.mark.shared
def test_reference_model_input_is_its_training_preprocessing_bit_for_bit() -> None:
    paths = sorted((NIH / "images").glob("*.png"))[::75]  # 9 images across the sample
    assert len(paths) == 9
    card = json.loads(REF_CARD.read_text(encoding="utf-8"))
    model = OnnxClassifier(REF_MODEL, card_file=REF_CARD, device="cpu")
    assert model.card.resize == "uint8"  # the card says nothing: the default
    images = [load_image(p) for p in paths]
    assert all(im.source_bits == 8 and im.shape == (320, 320, 1) for im in images)
    x = model.preprocess(images)
    expected = np.stack([training_preprocessing(p, card) for p in paths])
    assert x.dtype == expected.dtype == np.float32
    assert np.array_equal(x, expected)
    # Float resizing is another input (the test would fail with it): Pillow's 8-bit filter
    # rounds to a level after each of its two passes, so pixels end up more than half a level,
    # but less than one, away from the float result (measured: 0.93 level on these images).
    flt = OnnxClassifier(
        REF_MODEL, card_file=REF_CARD, overrides={"resize": "float"}, device="cpu"
    ).preprocess(images)
    std = np.asarray(card["std"], dtype=np.float32)[:, None, None]
    levels = np.abs(flt - expected) * std * 255
    assert 0.5 < levels.max() < 1.0


# -- (b) tiny 8-bit images, against Pillow's own 8-bit results ----------------------------------


def test_8bit_path_rounds_where_float_keeps_the_fraction(tmp_path: Path) -> None:
    image = load_image(save_png(tmp_path / "edge.png", EDGE))
    assert isinstance(image, LoadedImage) and image.source_bits == 8 and is_8bit(image)
    by_8bit = classifier(tmp_path, 1, 3).preprocess([image])[0, 0]
    by_float = classifier(tmp_path, 1, 3, resize="float").preprocess([image])[0, 0]
    np.testing.assert_array_equal(by_8bit, normalised([EDGE_8BIT_ROW] * 3))
    np.testing.assert_array_equal(by_float, normalised([EDGE_FLOAT_ROW] * 3))


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize(
    "src, dst", [((23, 37), (10, 10)), ((5, 7), (16, 16)), ((9, 40), (12, 12))]
)
def test_8bit_path_equals_pillows_8bit_resize(
    tmp_path: Path, mode: str, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(src) + dst[0])
    shape = (*src, 3) if mode == "RGB" else src
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path = save_png(tmp_path / "noise.png", pixels)
    channels = 3 if mode == "RGB" else 1
    x = classifier(tmp_path, channels, dst[0]).preprocess([load_image(path)])[0]
    ref = np.asarray(Image.open(path).convert(mode).resize((dst[1], dst[0]), BILINEAR))
    ref = ref.reshape(*dst, channels).transpose(2, 0, 1)
    np.testing.assert_array_equal(x, normalised(ref))
    # Not what float resizing gives: some pixels round to another value.
    flt = classifier(tmp_path, channels, dst[0], resize="float").preprocess([load_image(path)])
    assert not np.array_equal(flt[0], x)


def test_gray_source_for_an_rgb_model_is_pillows_rgb_resize(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (21, 13), dtype=np.uint8)
    path = save_png(tmp_path / "gray.png", pixels)
    x = classifier(tmp_path, 3, 8).preprocess([load_image(path)])[0]
    ref = np.asarray(Image.open(path).convert("RGB").resize((8, 8), BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(x, normalised(ref))


def test_rgb_source_for_a_gray_model_is_pillows_rounded_luminance(tmp_path: Path) -> None:
    pixels = np.empty((4, 4, 3), dtype=np.uint8)
    pixels[...] = (200, 100, 50)
    pixels[0, 0] = (10, 20, 30)  # not gray: load_image keeps three channels
    image = load_image(save_png(tmp_path / "rgb.png", pixels))
    assert image.shape == (4, 4, 3)
    # Pillow: (200 * 19595 + 100 * 38470 + 50 * 7471 + 2**15) >> 16 = 124; float: 124.2.
    x = classifier(tmp_path, 1, 4).preprocess([image])[0, 0]
    assert x[1, 1] == normalised([124.0])[0]
    flt = classifier(tmp_path, 1, 4, resize="float").preprocess([image])[0, 0]
    np.testing.assert_allclose(flt[1, 1], normalised([0.299 * 200 + 0.587 * 100 + 0.114 * 50]))
    np.testing.assert_array_equal(to_channels_8bit(image, 1)[1:, 1:, 0], 124.0)
    ref = np.asarray(Image.fromarray(pixels).convert("L").resize((3, 2), BILINEAR))
    np.testing.assert_array_equal(resize_8bit(to_channels_8bit(image, 1), (2, 3))[:, :, 0], ref)


def test_resize_8bit_refuses_values_that_are_not_8_bit() -> None:
    with pytest.raises(ValueError, match="not integers"):
        resize_8bit(np.full((4, 4, 1), 0.5, np.float32), (2, 2))
    with pytest.raises(ValueError, match=r"values in \[0, 300\]"):
        resize_8bit(np.array([[0, 300], [0, 0]], np.float32)[:, :, None], (3, 3))
    image = np.full((4, 4, 3), 7.25, np.float32)
    assert resize_8bit(image, (4, 4)) is image  # nothing to resize: the image itself


def test_only_a_loaded_8bit_source_takes_the_8bit_path(tmp_path: Path) -> None:
    image = load_image(save_png(tmp_path / "edge.png", EDGE))
    model = classifier(tmp_path, 1, 3)
    rounded, fraction = normalised([EDGE_8BIT_ROW] * 3), normalised([EDGE_FLOAT_ROW] * 3)
    # Views and copies keep the source depth; pickling too.
    for same in (
        image[:, :],
        image.copy(),
        image.astype(np.float32),
        pickle.loads(pickle.dumps(image)),
    ):
        assert type(same) is LoadedImage and same.source_bits == 8
        np.testing.assert_array_equal(model.preprocess([same])[0, 0], rounded)
    # A plain ndarray says nothing about its source, and computed values are plain ndarrays.
    plain, computed = np.asarray(image), image * 1.0
    assert type(plain) is np.ndarray and type(computed) is np.ndarray
    for other in (plain, computed):
        np.testing.assert_array_equal(model.preprocess([other])[0, 0], fraction)
    # Edited in place into values that are not 8-bit levels: float, whatever the tag says.
    edited = image.copy()
    edited[0, 0] = 0.25
    assert edited.source_bits == 8 and not is_8bit(edited)
    as_float = model.preprocess([edited])
    np.testing.assert_array_equal(as_float, model.preprocess([np.asarray(edited)]))
    assert as_float[0, 0, 2, 1] == normalised([127.5])[0]  # far from the edit: unrounded


# -- (c) 16-bit and float sources keep their precision ------------------------------------------


def ramp16(h: int = 12, w: int = 50) -> np.ndarray:
    """A 16-bit ramp whose steps (1000 of 65535) fall between 8-bit levels."""
    return (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 100) % 60001


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_source_is_resized_in_float(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"ramp.{fmt}"
    if fmt == "png":
        Image.fromarray(ramp16()).save(path)
    else:
        tifffile.imwrite(path, ramp16())
    image = load_image(path)
    assert image.source_bits == 16 and not is_8bit(image)
    x = classifier(tmp_path, 1, 8).preprocess([image])[0, 0]
    expected = normalised(resize(np.asarray(image), (8, 8))[:, :, 0])
    np.testing.assert_array_equal(x, expected)
    # Not quantised to 8-bit levels: most resized values lie between two levels.
    levels = (x * np.float32(0.25) + np.float32(0.5)) * 255
    assert np.mean(np.abs(levels - np.round(levels)) > 0.01) > 0.5


def test_16bit_source_of_8bit_levels_is_still_resized_in_float(tmp_path: Path) -> None:
    # 0 and 65535 are exactly 0 and 255 on the 8-bit scale: the values cannot tell the source.
    path = tmp_path / "edge16.png"
    Image.fromarray(EDGE.astype(np.uint16) * 257).save(path)
    image = load_image(path)
    np.testing.assert_array_equal(np.asarray(image)[:, :, 0], EDGE)
    assert image.source_bits == 16 and not is_8bit(image)
    x = classifier(tmp_path, 1, 3).preprocess([image])[0, 0]
    np.testing.assert_array_equal(x, normalised([EDGE_FLOAT_ROW] * 3))


def test_float_tiff_is_resized_in_float(tmp_path: Path) -> None:
    path = tmp_path / "edge.tif"
    tifffile.imwrite(path, EDGE.astype(np.float32) / 255)
    image = load_image(path)
    assert image.source_bits == 32 and not is_8bit(image)
    x = classifier(tmp_path, 1, 3).preprocess([image])[0, 0]
    np.testing.assert_allclose(x, normalised([EDGE_FLOAT_ROW] * 3), rtol=0, atol=1e-5)


# -- (d) the card field, and monitors from before it ---------------------------------------------


def card(**changes: object) -> dict:
    base = {
        "class_names": ["A", "B"],
        "image_size": [8, 8],
        "channels": 1,
        "layout": "NCHW",
        "scale": 255,
        "mean": [0.5],
        "std": [0.25],
        "output": "logits",
    }
    return {**base, **changes}


def test_card_resize_defaults_to_uint8_and_accepts_float() -> None:
    assert CARD_DEFAULTS == {"resize": "uint8"} and LEGACY_CARD_VALUES == {"resize": "float"}
    assert ModelCard.from_dict(card()).resize == "uint8"
    assert ModelCard.from_dict(card()).to_dict()["resize"] == "uint8"
    assert ModelCard.from_dict(card(resize="float")).resize == "float"
    assert ModelCard.from_dict(card(resize="UINT8")).resize == "uint8"
    assert ModelCard.from_dict(card(resize="float")).to_dict() == card(resize="float")
    # Optional in every source: metadata without it resolves; an override wins.
    meta = {"informer_audit.model_card": json.dumps(card())}
    assert resolve_card(meta)[0].resize == "uint8"
    assert resolve_card(meta, overrides={"resize": "float"})[0].resize == "float"


@pytest.mark.parametrize("value", ["nearest", 8, None, ""])
def test_card_resize_refuses_other_values(value: object) -> None:
    with pytest.raises(ModelSpecError) as info:
        ModelCard.from_dict(card(resize=value), source="c.json")
    msg = str(info.value)
    assert msg.startswith("c.json: ")
    assert f"resize must be one of ['uint8', 'float'], got {value!r}" in msg


def test_unknown_card_field_lists_resize_among_the_valid_ones() -> None:
    with pytest.raises(ModelSpecError, match=r"valid fields are \[.*'output', 'resize'\]"):
        ModelCard.from_dict(card(resise="float"))


def binding(preprocessing: dict) -> dict:
    return {
        "model_sha256": "0" * 64,
        "class_names": ["A", "B"],
        "audited_classes": ["A", "B"],
        "preprocessing": preprocessing,
        "saliency": {"name": "fd", "patch_size": 4},
    }


def test_a_binding_without_resize_was_fitted_in_float() -> None:
    now = ModelCard.from_dict(card()).to_dict()
    del now["class_names"]
    old = {k: v for k, v in now.items() if k != "resize"}
    assert legacy_card_dict(old) == {**old, "resize": "float"}
    assert list(legacy_card_dict(old)) == [*old, "resize"]  # appended: differences keep order
    assert legacy_binding(binding(old)) == binding({**old, "resize": "float"})
    new = binding(now)
    assert legacy_binding(new) is new
    # Applied to a run with the default: refused, naming the preprocessing difference.
    with pytest.raises(MonitorMismatchError) as info:
        check_binding(binding(old), new, source="m.json")
    msg = str(info.value)
    assert "m.json was fitted for other settings: preprocessing.resize is 'float' in the " in msg
    assert "but 'uint8' for this run" in msg
    assert '"resize": "float" in the card, or overrides={"resize": "float"}' in msg
    assert info.value.params == ("resize",)
    # Reproduced with "resize": "float"; and a monitor fitted that way says so itself.
    check_binding(binding(old), binding({**now, "resize": "float"}))
    with pytest.raises(MonitorMismatchError, match="resize is 'float' in the monitor"):
        check_binding(binding({**now, "resize": "float"}), new)


def test_other_differences_get_no_resize_hint() -> None:
    now = {k: v for k, v in ModelCard.from_dict(card()).to_dict().items() if k != "class_names"}
    with pytest.raises(MonitorMismatchError) as info:
        check_binding(binding({**now, "scale": 1.0}), binding(now))
    assert "preprocessing.scale is 1.0" in str(info.value) and "resize" not in str(info.value)
    assert info.value.params == ()


def test_info_shows_resize_and_takes_the_option(tmp_path: Path) -> None:
    path, _ = random_model(tmp_path / "m.onnx", channels=1, size=8)
    shown = invoke("info", path, "--device", "cpu", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["card"]["resize"] == "uint8"
    given = invoke("info", path, "--device", "cpu", "--json", "--resize", "float")
    assert given.exit_code == 0, given.output
    assert json.loads(given.output)["card"]["resize"] == "float"
    table = invoke("info", path, "--device", "cpu", "--resize", "float")
    assert table.exit_code == 0, table.output
    assert "float: every source in float" in table.output
