"""Shared fixtures: tiny ONNX classifiers built by the tests themselves, and the shared data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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

CLASSES = ("A", "B", "C")
PATCH_8 = ("--patch-size", 8)
"""The default saliency options of the CLI helpers: FD on 8-pixel patches (fast, not degenerate)."""

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


CARD = card_dict(list(CLASSES), 16, 3)
"""The card of :func:`hidden_model` (and of :func:`labelled_folder`'s model)."""


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


def random_model(
    path: Path,
    classes: Sequence[str] = CLASSES,
    size: int = 16,
    channels: int = 3,
    hidden: int | None = None,
    seed: int = 0,
    metadata: bool = True,
    **kw: Any,
) -> tuple[Path, dict]:
    """A seeded random classifier (``build_linear_model``) with its card in the ONNX metadata.

    Returns (model path, parameters) with keys W (D, K), b (K,), W1 (D, Hd) or None, card.
    """
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
        path, w, b, channels=channels, size=size, hidden=w1, card=card if metadata else None, **kw
    )
    return path, {"W": w, "b": b, "W1": w1, "card": card}


@pytest.fixture(autouse=True)
def _private_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the batch-size probe's cache (and anything else cached per user) out of ~/.cache,
    and out of the test's own ``tmp_path`` (tests check that nothing but outputs appear there)."""
    cache = tmp_path_factory.mktemp("ia-cache")
    monkeypatch.setenv("INFORMER_AUDIT_CACHE_DIR", str(cache))


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., tuple[Path, dict]]:
    """Factory for :func:`random_model` under ``tmp_path`` (``name`` is the file name)."""

    def make(name: str = "tiny.onnx", **kw: Any) -> tuple[Path, dict]:
        return random_model(tmp_path / name, **kw)

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


# -- the CLI and a labelled data set ---------------------------------------------------------------
def invoke(*args: Any) -> Any:
    """Run ``informer-audit ARGS`` in-process with click's runner (arguments go through str)."""
    from click.testing import CliRunner

    from informer_audit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (flags, scores, tables) as dicts keyed by its header."""
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def write_labels(
    path: Path,
    names: Sequence[str],
    classes: Sequence[str] = CLASSES,
    seed: int = 4,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A label CSV ``path,<classes>[,<extra columns>]``: seeded random 0/1 labels per name."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *classes, *(extra or {})])
        for name in names:
            w.writerow([name, *rng.integers(0, 2, len(classes)), *(extra or {}).values()])
    return path


def hidden_model(path: Path, classes: Sequence[str] = CLASSES, seed: int = 1, **kw: Any) -> Path:
    """The CLI tests' model: :func:`random_model` with 5 hidden units on 16x16 RGB."""
    return random_model(path, classes, hidden=5, seed=seed, **kw)[0]


def labelled_folder(
    root: Path,
    *,
    n_val: int = 12,
    n_audit: int = 3,
    classes: Sequence[str] = CLASSES,
    seed: int = 1,
    label_seed: int = 4,
    subdir: str = "",
    labels_in_val: bool = True,
    audit_size: int = 20,
    model_name: str = "model.onnx",
    extra_columns: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """A tiny model and its data: labelled validation images and an unlabelled audit folder.

    Under ``root``: the model (:func:`hidden_model`, seeded by ``seed``, file ``model_name``);
    ``n_val`` images in ``val/[subdir]`` (seed 2, 20x20) and their ``labels.csv`` in ``val/`` (in
    ``root`` with ``labels_in_val=False``; paths relative to ``val/``; random labels seeded by
    ``label_seed``, ``extra_columns`` (name -> value) appended to each row); ``n_audit`` images
    in ``audit/`` (seed 5, ``audit_size`` pixels square). Returns the paths under the keys tmp,
    model, val, labels and audit.
    """
    model = hidden_model(root / model_name, classes, seed=seed)
    val = root / "val"
    labels = (val if labels_in_val else root) / "labels.csv"
    paths = write_images(val / subdir, n_val, size=20, seed=2)
    names = [p.relative_to(val).as_posix() for p in paths]
    write_labels(labels, names, classes, seed=label_seed, extra=extra_columns)
    audit = root / "audit"
    write_images(audit, n_audit, size=audit_size, seed=5)
    return {"tmp": root, "model": model, "val": val, "labels": labels, "audit": audit}


@pytest.fixture
def labelled(tmp_path: Path) -> Callable[..., dict[str, Path]]:
    """Factory for :func:`labelled_folder` under ``tmp_path``."""

    def make(**kw: Any) -> dict[str, Path]:
        return labelled_folder(tmp_path, **kw)

    return make


def calibrate_args(
    env: Mapping[str, Path],
    out: Path,
    *extra: Any,
    model: Path | None = None,
    images: Path | None = None,
    labels: Path | None = None,
    saliency: Sequence[Any] = PATCH_8,
) -> list[Any]:
    """``calibrate`` on the CPU for a :func:`labelled_folder` (each path can be replaced)."""
    return [
        "calibrate", model or env["model"], "--images", images or env["val"],
        "--labels", labels or env["labels"], "-o", out, *saliency, "--device", "cpu", *extra,
    ]  # fmt: skip


def flag_args(
    env: Mapping[str, Path],
    out: Path,
    *extra: Any,
    model: Path | None = None,
    monitor: Path | None = None,
    images: Path | None = None,
) -> list[Any]:
    """``flag`` on the CPU for a :func:`labelled_folder` (default monitor: ``env["monitor"]``)."""
    return [
        "flag", model or env["model"], "--monitor", monitor or env["monitor"],
        "--images", images or env["audit"], "-o", out, "--device", "cpu", *extra,
    ]  # fmt: skip


def calibrate(env: Mapping[str, Path], out: Path, *extra: Any, **paths: Any) -> Any:
    """Run :func:`calibrate_args` through :func:`invoke`."""
    return invoke(*calibrate_args(env, out, *extra, **paths))


def flag(env: Mapping[str, Path], out: Path, *extra: Any, **paths: Any) -> Any:
    """Run :func:`flag_args` through :func:`invoke`."""
    return invoke(*flag_args(env, out, *extra, **paths))


# -- ONNX Runtime with and without a GPU ---------------------------------------------------------
@pytest.fixture
def onnx_providers(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make ONNX Runtime look like a build with, or without, a usable CUDA provider.

    Call it with ``"cpu-build"`` (no CUDA provider listed), ``"no-gpu"`` (the provider is listed
    but sessions come back on the CPU, as ONNX Runtime does without a GPU or the CUDA libraries)
    or ``"gpu"`` (sessions asked for CUDA report it first). Every session really runs on the
    CPU, so both branches of the device choice run on any machine.
    """
    import onnxruntime as ort

    real = ort.InferenceSession

    def use(kind: str) -> None:
        assert kind in ("cpu-build", "no-gpu", "gpu"), kind
        listed = ["CPUExecutionProvider"]
        if kind != "cpu-build":
            listed.insert(0, "CUDAExecutionProvider")

        class Session:
            def __init__(self, path: str, sess_options: Any = None, providers: Any = None):
                self._cuda = kind == "gpu" and list(providers or [])[:1] == [listed[0]]
                self._real = real(path, sess_options=sess_options, providers=listed[-1:])

            def get_providers(self) -> list[str]:
                return listed if self._cuda else listed[-1:]

            def __getattr__(self, name: str) -> Any:
                return getattr(self._real, name)

        monkeypatch.setattr(ort, "get_available_providers", lambda: list(listed))
        monkeypatch.setattr(ort, "InferenceSession", Session)

    return use


# -- a fresh interpreter ---------------------------------------------------------------------------
CLI_MAIN = "import sys; from informer_audit.cli import main; sys.argv[0] = 'informer-audit'; main()"
"""``python -c CLI_MAIN ARGS`` runs the installed CLI like the ``informer-audit`` script."""


def run_python(
    *args: object, cwd: Path, env: Mapping[str, str | None] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a new interpreter, run from ``cwd`` (a temporary folder).

    From the repository root, ``python -c`` and ``python -m`` would import the source folder
    instead of the installed package; from ``cwd`` and without ``PYTHONPATH`` (unless ``env``
    gives one) the test runs whatever ``informer_audit`` is installed, editable or not.
    ``env`` adds to the environment; a ``None`` value removes the variable.
    """
    merged = {**os.environ, "PYTHONPATH": None, **(env or {})}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env={k: v for k, v in merged.items() if v is not None},
        capture_output=True,
        text=True,
        **kw,
    )


def count_loads(monkeypatch: pytest.MonkeyPatch, stop_at: int = 0) -> list[Path]:
    """Log every image the audit loads (one load per scored image; cached or journaled images
    are never loaded); with ``stop_at``, the ``stop_at``-th load raises KeyboardInterrupt."""
    from informer_audit import audit

    calls: list[Path] = []
    real = audit.load_image

    def load(path: Any) -> Any:
        calls.append(Path(path))
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(audit, "load_image", load)
    return calls
