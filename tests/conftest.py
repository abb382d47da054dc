"""Shared fixtures: tiny ONNX classifiers built by the tests themselves, and the shared data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NIH = SHARED / "data" / "nih-cxr14-621"
REF_MODEL = SHARED / "models" / "densenet121-nih5-128.onnx"
REF_CARD = SHARED / "models" / "densenet121-nih5-128.card.json"

needs_shared = pytest.mark.skipif(
    not (NIH.is_dir() and REF_MODEL.is_file()),
    reason=f"needs the shared NIH data and reference model in {SHARED} (not present)",
)


def card_dict(
    classes: list[str], size: int, channels: int, layout: str = "NCHW", output: str = "logits"
) -> dict:
    return {
        "class_names": classes,
        "image_size": [size, size],
        "channels": channels,
        "layout": layout,
        "scale": 255,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "output": output,
    }


def build_linear_model(
    path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    channels: int,
    size: int,
    batch: int | str = "N",
    layout: str = "NCHW",
    card: dict | None = None,
    hidden: np.ndarray | None = None,
    sigmoid_output: bool = False,
) -> Path:
    """Flatten -> [MatMul hidden -> Tanh] -> MatMul weights + bias, as an ONNX file.

    ``weights`` has shape (D, K) (or (Hd, K) with ``hidden`` of shape (D, Hd)); D = C*H*W in
    NCHW order (the graph transposes NHWC input first).
    """
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    k = weights.shape[1]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k])
    nodes, inits = [], []
    src = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        src = "nchw"
    nodes.append(helper.make_node("Flatten", [src], ["flat"], axis=1))
    src = "flat"
    if hidden is not None:
        inits.append(numpy_helper.from_array(hidden.astype(np.float32), "W1"))
        nodes.append(helper.make_node("MatMul", ["flat", "W1"], ["h"]))
        nodes.append(helper.make_node("Tanh", ["h"], ["th"]))
        src = "th"
    inits.append(numpy_helper.from_array(weights.astype(np.float32), "W"))
    inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
    nodes.append(helper.make_node("MatMul", [src, "W"], ["mm"]))
    out = "z" if sigmoid_output else "logits"
    nodes.append(helper.make_node("Add", ["mm", "b"], [out]))
    if sigmoid_output:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if card is not None:
        entry = model.metadata_props.add()
        entry.key = "informer_audit.model_card"
        entry.value = json.dumps(card)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., tuple[Path, dict]]:
    """Factory for a tiny classifier with its card in the ONNX metadata.

    Returns (model path, parameters) with keys W (D, K), b (K,), W1 (D, Hd) or None, card.
    """

    def make(
        classes: tuple[str, ...] = ("A", "B", "C"),
        size: int = 16,
        channels: int = 3,
        hidden: int | None = None,
        seed: int = 0,
        metadata: bool = True,
        name: str = "tiny.onnx",
        **kw,
    ) -> tuple[Path, dict]:
        rng = np.random.default_rng(seed)
        d = channels * size * size
        k = len(classes)
        w1 = rng.normal(0, 1 / np.sqrt(d), (d, hidden)) if hidden else None
        w = rng.normal(0, 1 / np.sqrt(hidden or d), (hidden or d, k))
        b = rng.normal(0, 0.1, k)
        card = card_dict(
            list(classes),
            size,
            channels,
            kw.get("layout", "NCHW"),
            "probabilities" if kw.get("sigmoid_output") else "logits",
        )
        path = build_linear_model(
            tmp_path / name,
            w,
            b,
            channels=channels,
            size=size,
            hidden=w1,
            card=card if metadata else None,
            **kw,
        )
        return path, {"W": w, "b": b, "W1": w1, "card": card}

    return make


def write_images(
    folder: Path, n: int, size: int = 20, seed: int = 0, mode: str = "L"
) -> list[Path]:
    """``n`` random 8-bit PNG images (smooth random fields, so maps are not degenerate)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.uniform(0, 255, (4, 4))
        img = Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img).astype(float) + rng.normal(0, 20, (size, size))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        if mode != "L":
            im = im.convert(mode)
        p = folder / f"img_{i:03d}.png"
        im.save(p)
        paths.append(p)
    return paths


def patch_sum(full: np.ndarray, s: int) -> np.ndarray:
    """(N, K, C, H, W) -> (N, K, ceil(H/s), ceil(W/s)) sums over channels and patches."""
    n, k, c, h, w = full.shape
    gh, gw = -(-h // s), -(-w // s)
    out = np.zeros((n, k, gh, gw))
    for r in range(gh):
        for q in range(gw):
            block = full[:, :, :, r * s : (r + 1) * s, q * s : (q + 1) * s]
            out[:, :, r, q] = block.sum(axis=(2, 3, 4))
    return out


def analytic_ixg(x: np.ndarray, params: dict) -> np.ndarray:
    """x (N, C, H, W) -> exact x * dz/dx, (N, K, C, H, W), in float64."""
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    w, w1 = params["W"], params["W1"]
    if w1 is None:
        grad = np.broadcast_to(w.T[None], (n, *w.T.shape))  # (N, K, D)
    else:
        act = 1.0 - np.tanh(flat @ w1) ** 2  # (N, Hd)
        grad = np.einsum("dh,nh,hk->nkd", w1, act, w)
    return (grad * flat[:, None, :]).reshape(n, w.shape[1], *x.shape[1:])


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str | None = None,
    preamble: bool = True,
    **elements,
) -> Path:
    """A single-frame DICOM file (Secondary Capture) written with pydicom.

    ``pixels`` is (H, W) or (H, W, 3), uint8/uint16/int16; ``None`` writes no Pixel Data.
    ``elements`` are set on the data set as given (WindowCenter=..., RescaleSlope=...).
    A compressed ``transfer_syntax`` gets ``pixels`` encapsulated as they are (not a real
    codestream: no decoder can read it).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    syntax = UID(transfer_syntax or ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if pixels.ndim == 3:
            ds.PlanarConfiguration = 0
        data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds.PixelData = encapsulate([data]) if syntax.is_compressed else data
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=preamble)
    return path
