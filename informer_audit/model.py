"""Canonical images -> model scores: the ONNX classifier wrapper.

The model's :class:`~informer_audit.modelcard.ModelCard` (from :mod:`.modelcard`) says how to
feed it and how to read its output; a card that contradicts the graph's static shapes is refused.

:class:`OnnxClassifier` holds ONE ONNX Runtime session for the model's lifetime. Adapters hand it
batches in NCHW (the only layout downstream code sees) and get logits back as float64.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DeviceUnavailableError, ModelSpecError
from .fileio import sha256_files
from .images import CanonicalImage, is_8bit, resize, resize_8bit, to_channels, to_channels_8bit
from .modelcard import PROVENANCE_METADATA_KEY, resolve_card
from .numerics import logit

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
MAX_MODEL_BYTES = 4 * 1024**3
"""Models (with their external data) larger than this are refused before loading."""


_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
"""Image input element types ONNX Runtime accepts here, and the numpy type fed to each."""

_OUTPUT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
"""Output element types read as class scores (float logits or probabilities)."""

FLOAT_EPS: dict[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}
"""Machine epsilon (spacing of numbers just above 1) of the floating-point types a graph uses."""

_TYPE_NAMES = {
    "tensor(double)": "float64",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type and shape (ints or symbolic names) of a graph input/output."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]

    @property
    def precision(self) -> str | None:
        """``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``; ``None`` otherwise."""
        return _TYPE_NAMES.get(self.type)


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and, recursively, its subgraphs (If/Loop/Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every stored tensor (initializers, sparse ones, tensor attributes), subgraphs too."""
    import onnx

    for g in _graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _reduced_precision_nodes(graph: Any) -> dict[str, int]:
    """Counts of float16/bfloat16 Cast targets and weights in a graph and its subgraphs.

    Returns
    -------
    dict
        ``{"Cast to float16": n, "float16 weights": m, ...}``, only the non-zero counts.
    """
    import onnx

    reduced = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    counts: dict[str, int] = {}
    for tensor in _tensors(graph):
        if tensor.data_type in reduced:
            key = f"{reduced[tensor.data_type]} weights"
            counts[key] = counts.get(key, 0) + 1
    for g in _graphs(graph):
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i in reduced:
                    key = f"Cast to {reduced[attr.i]}"
                    counts[key] = counts.get(key, 0) + 1
    return counts


def _external_data_files(model_path: Path, graph: Any) -> list[Path]:
    """External data files the model references, checked to stay inside the model's folder."""
    import onnx

    folder = model_path.parent.resolve()
    files: set[Path] = set()
    tensors = list(_tensors(graph))
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        rel = Path(location)
        target = (folder / rel).resolve()
        if rel.is_absolute() or ".." in rel.parts or folder not in target.parents:
            raise ModelSpecError(
                f"{model_path}: external data location {location!r} of tensor {tensor.name!r} "
                "must be a relative path inside the model's folder"
            )
        if not target.is_file():
            raise ModelSpecError(f"{model_path}: external data file {location!r} not found")
        files.add(target)
    return sorted(files)


class OnnxClassifier:
    """One ONNX image classifier, one long-lived ONNX Runtime session.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    card_file
        Optional model card file (JSON/TOML) that overrides the ONNX metadata.
    overrides
        Optional card fields (e.g. from CLI options) that override both.
    device
        ``"auto"`` (CUDA when ONNX Runtime can really create it, else CPU, saying so),
        ``"cpu"`` or ``"cuda"`` (fails with :class:`DeviceUnavailableError` when it cannot).
    threads
        ONNX Runtime intra-op threads (``None``: ONNX Runtime's default).
    fallback_card
        Card fields used where metadata, card file and overrides are all silent (the monitor's
        card at ``flag`` time: the monitor is bound to this very model file anyway).

    Attributes
    ----------
    card : ModelCard
    sha256 : str
        Fingerprint of the model file (and its external data files).
    input, output : TensorInfo
    reduced_precision : tuple of str
        Where the model computes in float16 or bfloat16: its input, its output, Cast nodes to
        those types or weights stored in them (empty for a float32/float64 model). Adapters
        whose accuracy depends on resolving small differences (finite differences) read it.
    precision_eps : float
        Machine epsilon of the least precise of those types (float32's, 1.2e-7, when none).
    fixed_batch : int or None
        The batch size the graph requires, or ``None`` for a dynamic batch axis.
    device : str
        ``"cpu"`` or ``"cuda"``: what the session really runs on.
    device_note : str
        Human-readable account of how the device was chosen.
    n_forward : int
        Number of images passed through the session so far (for benchmarks and tests).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        card_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str = "auto",
        threads: int | None = None,
        fallback_card: Mapping[str, Any] | None = None,
        fallback_source: str = "monitor",
    ) -> None:
        import onnx

        self.path = Path(path)
        if device not in DEVICES:
            raise ModelSpecError(f"unknown device {device!r}; choose one of {list(DEVICES)}")
        if not self.path.is_file():
            raise ModelSpecError(f"{self.path}: model file not found")
        size = self.path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelSpecError(
                f"{self.path}: {size} bytes exceeds the model size limit of {MAX_MODEL_BYTES} bytes"
            )
        try:
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError, ... for non-ONNX files
            raise ModelSpecError(f"{self.path}: not a readable ONNX model ({exc})") from exc
        if not proto.graph.node:
            raise ModelSpecError(f"{self.path}: not a readable ONNX model (the graph has no nodes)")
        external = _external_data_files(self.path, proto.graph)
        total = size + sum(p.stat().st_size for p in external)
        if total > MAX_MODEL_BYTES:
            raise ModelSpecError(
                f"{self.path}: model with external data is {total} bytes, over the limit of "
                f"{MAX_MODEL_BYTES} bytes"
            )
        self.metadata: dict[str, str] = {p.key: p.value for p in proto.metadata_props}
        self.opsets = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}
        self.producer = f"{proto.producer_name} {proto.producer_version}".strip()
        self.files: list[Path] = [self.path, *external]
        """The model file and its external data files (inputs no output may overwrite)."""
        self.sha256 = sha256_files([self.path, *external])
        self.card, self.card_source = resolve_card(
            self.metadata,
            card_file,
            overrides,
            source=str(self.path),
            fallback=fallback_card,
            fallback_source=fallback_source,
        )
        inner = _reduced_precision_nodes(proto.graph)
        del proto
        self._session, self.device, self.device_note = _make_session(self.path, device, threads)
        self.providers: list[str] = list(self._session.get_providers())
        self.input, self.output = self._check_io()
        self.reduced_precision: tuple[str, ...] = tuple(
            [
                f"{kind} {t.name!r} is {t.type}"
                for kind, t in (("input", self.input), ("output", self.output))
                if t.precision in ("float16", "bfloat16")
            ]
            + [f"{n} {what} inside the graph" for what, n in sorted(inner.items())]
        )
        types = {t.precision or "float32" for t in (self.input, self.output)}
        types |= {word for what in inner for word in what.split() if word in FLOAT_EPS}
        self.precision_eps = max(FLOAT_EPS[t] for t in types)
        batch = self.input.shape[0]
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        self._np_dtype = _INPUT_DTYPES[self.input.type]
        self.n_forward = 0
        c = self.card.channels
        self._mean = np.asarray(self.card.mean, dtype=np.float32).reshape(1, 1, c)
        self._std = np.asarray(self.card.std, dtype=np.float32).reshape(1, 1, c)

    # -- graph checks -------------------------------------------------------------------------
    def _check_io(self) -> tuple[TensorInfo, TensorInfo]:
        inputs = [TensorInfo(i.name, i.type, tuple(i.shape)) for i in self._session.get_inputs()]
        outputs = [TensorInfo(o.name, o.type, tuple(o.shape)) for o in self._session.get_outputs()]
        where = str(self.path)
        if len(inputs) != 1:
            raise ModelSpecError(
                f"{where}: expected exactly one image input, found {len(inputs)}: "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        inp = inputs[0]
        if inp.type not in _INPUT_DTYPES:
            raise ModelSpecError(
                f"{where}: input {inp.name!r} has type {inp.type}; expected a float image tensor "
                f"({', '.join(_INPUT_DTYPES)})"
            )
        if len(inp.shape) != 4:
            raise ModelSpecError(
                f"{where}: input {inp.name!r} has shape {list(inp.shape)}; expected a rank-4 "
                f"image batch ({self.card.layout})"
            )
        card = self.card
        h, w = card.image_size
        expected = (card.channels, h, w) if card.layout == "NCHW" else (h, w, card.channels)
        for axis, (got, want) in enumerate(zip(inp.shape[1:], expected, strict=True), start=1):
            if isinstance(got, int) and got > 0 and got != want:
                raise ModelSpecError(
                    f"{where}: input {inp.name!r} has shape {list(inp.shape)}, but the model card "
                    f"({self.card_source}) describes {card.layout} with channels={card.channels}, "
                    f"image_size={list(card.image_size)}: axis {axis} is {got}, expected {want}"
                )
        if not outputs:
            raise ModelSpecError(f"{where}: the model has no outputs")
        k = len(card.class_names)
        out = outputs[0]
        # scikit-learn classifiers converted by skl2onnx end in a ZipMap: one {class: prob}
        # dictionary per image, which ONNX Runtime returns as a Python list, not a tensor.
        maps = [o for o in outputs if o.type.startswith(("seq(map(", "map("))]
        fits = [
            o
            for o in outputs
            if o.type.startswith("tensor(") and len(o.shape) == 2 and o.shape[1] == k
        ]
        if maps and len(fits) != 1:
            zipmap = maps[0]
            raise ModelSpecError(
                f"{where}: output {zipmap.name!r} has type {zipmap.type}: a sequence of "
                "{class: probability} dictionaries (a ZipMap, as skl2onnx writes for scikit-learn "
                f"classifiers), not a (batch, {k}) tensor of scores. Export without the ZipMap: "
                "skl2onnx.to_onnx(clf, X, options={id(clf): {'zipmap': False}}) (or "
                "options={'zipmap': False}) gives a float tensor of probabilities"
            )
        if len(outputs) > 1:
            # Several outputs (e.g. logits and features): take the one of shape (batch, K) only
            # when exactly one fits; anything else would be a guess.
            if len(fits) != 1:
                raise ModelSpecError(
                    f"{where}: the model has {len(outputs)} outputs "
                    f"{[(o.name, list(o.shape)) for o in outputs]}; expected exactly one of shape "
                    f"(batch, {k}) holding the class scores"
                )
            out = fits[0]
        if out.type not in _OUTPUT_TYPES:
            raise ModelSpecError(
                f"{where}: output {out.name!r} has type {out.type}; expected float logits or "
                f"probabilities ({', '.join(_OUTPUT_TYPES)}), one score per class (a model that "
                "outputs class labels or decisions cannot be audited: export its scores)"
            )
        if len(out.shape) != 2:
            raise ModelSpecError(
                f"{where}: output {out.name!r} has shape {list(out.shape)}; expected "
                f"(batch, {k}) scores, one per class"
            )
        if isinstance(out.shape[1], int) and out.shape[1] != k:
            raise ModelSpecError(
                f"{where}: output {out.name!r} has {out.shape[1]} classes but the model card names "
                f"{k}: {list(card.class_names)}"
            )
        return inp, out

    # -- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[CanonicalImage]) -> NDArray[np.float32]:
        """Canonical images -> normalised model input batch.

        Each image is converted to the card's channels and resized to its ``image_size``, then
        divided by ``scale`` and normalised with ``(x - mean) / std`` (float32). With the card's
        ``resize`` at ``"uint8"`` (the default), an image of an 8-bit file (a
        :class:`~.images.LoadedImage` from :func:`~.images.load_image`; :func:`~.images.is_8bit`)
        is converted and resized by Pillow on the 8-bit image, as a PIL or torchvision pipeline
        does (:func:`~.images.to_channels_8bit` before resizing when it loses channels,
        :func:`~.images.resize_8bit`, replication to RGB after); every other image (16-bit,
        float, DICOM grayscale; a plain ndarray; every image with ``"resize": "float"``) in
        float (:func:`~.images.to_channels`, :func:`~.images.resize`).

        Parameters
        ----------
        images : sequence of ndarray, each (H_i, W_i, C_i), float32 on the 8-bit scale

        Returns
        -------
        ndarray, shape (N, C, H, W), float32
            Always NCHW; :meth:`logits` converts to the model's own layout.
        """
        card = self.card
        batch = np.empty((len(images), card.channels, *card.image_size), dtype=np.float32)
        for i, image in enumerate(images):
            if image.ndim != 3:
                raise ValueError(f"expected a canonical (H, W, C) image, got shape {image.shape}")
            if card.resize == "uint8" and is_8bit(image):
                x = image if image.shape[2] <= card.channels else to_channels_8bit(image, 1)
                x = to_channels(resize_8bit(x, card.image_size), card.channels)
            else:
                x = resize(to_channels(image, card.channels), card.image_size)
            x = (x / np.float32(card.scale) - self._mean) / self._std
            batch[i] = x.transpose(2, 0, 1)
        return batch

    # -- inference ----------------------------------------------------------------------------
    def logits(self, x: NDArray[np.floating]) -> NDArray[np.float64]:
        """Scores on the logit scale for a batch, in as few session runs as the graph allows.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W)

        Returns
        -------
        ndarray, shape (N, K), float64
            Logits; a model that outputs probabilities is mapped back with ``logit(p)``
            (probabilities clipped to [1e-12, 1 - 1e-12]).

        Raises
        ------
        ModelSpecError
            When the card says ``probabilities`` but the model returns values outside [0, 1]
            (beyond rounding): the card contradicts the model, and clipping would silently turn
            logits into 0 and 1.
        """
        n = x.shape[0]
        if self.card.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=self._np_dtype)
        if self.fixed_batch is None:
            out = self._run(x)
        else:
            b = self.fixed_batch
            parts = []
            for start in range(0, n, b):
                chunk = x[start : start + b]
                m = chunk.shape[0]
                if m < b:  # pad a short last batch with copies of its first row
                    chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - m, axis=0)])
                parts.append(self._run(chunk)[:m])
            out = np.concatenate(parts) if parts else np.empty((0, len(self.card.class_names)))
        self.n_forward += n
        out = out.astype(np.float64)
        if self.card.output == "probabilities":
            self._check_probabilities(out)
            out = logit(out)
        return out

    def _check_probabilities(self, out: NDArray[np.float64]) -> None:
        finite = out[np.isfinite(out)]  # NaN/Inf are the caller's per-image failure, not this
        if not finite.size:
            return
        # Rounding may put a probability a hair outside [0, 1]; allow one unit of the output
        # type's precision (and never less than 1e-6).
        tol = max(1e-6, FLOAT_EPS.get(self.output.precision or "float32", 0.0))
        lo, hi = float(finite.min()), float(finite.max())
        if lo < -tol or hi > 1.0 + tol:
            raise ModelSpecError(
                f"{self.path}: the model card ({self.card_source}) says output "
                f"{self.output.name!r} holds probabilities, but the model returned values in "
                f"[{lo:.4g}, {hi:.4g}]: these look like logits; set the output kind "
                "to 'logits' "
                '(overrides={"output": "logits"}, or "output": "logits" in the model card)',
                params=("output",),
            )

    def _run(self, x: NDArray[Any]) -> NDArray[Any]:
        result = self._session.run([self.output.name], {self.input.name: x})[0]
        k = len(self.card.class_names)
        if result.ndim != 2 or result.shape != (x.shape[0], k):
            raise ModelSpecError(
                f"{self.path}: output {self.output.name!r} returned shape {result.shape}, "
                f"expected ({x.shape[0]}, {k})"
            )
        return result

    def describe(self) -> dict[str, Any]:
        """Everything ``informer-audit info`` shows, as plain data."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "producer": self.producer,
            "opsets": self.opsets,
            "input": {"name": self.input.name, "type": self.input.type, "shape": self.input.shape},
            "output": {
                "name": self.output.name,
                "type": self.output.type,
                "shape": self.output.shape,
            },
            "batch": "dynamic" if self.fixed_batch is None else f"fixed {self.fixed_batch}",
            "precision": {"eps": self.precision_eps, "reduced": list(self.reduced_precision)},
            "card": self.card.to_dict(),
            "card_source": self.card_source,
            "providers": self.providers,
            "device": self.device,
            "device_note": self.device_note,
            "metadata_keys": sorted(self.metadata),
            "provenance": _provenance(self.metadata),
        }


def _provenance(metadata: Mapping[str, str]) -> Any:
    """The exporter's provenance record, parsed; the raw text when it is not JSON; else None.

    Provenance is shown, never used to preprocess, so a damaged entry is displayed, not refused.
    """
    raw = metadata.get(PROVENANCE_METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 (what C++ libraries print to) to the null device, then restore it."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _make_session(path: Path, device: str, threads: int | None) -> tuple[Any, str, str]:
    import onnxruntime as ort

    def options(quiet: bool) -> Any:
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 4 if quiet else 3
        return so

    def create(providers: list[str], quiet: bool) -> Any:
        # While probing for CUDA, the provider bridge prints its failure through ONNX Runtime's
        # process-wide default logger (the session's log level does not reach it), and we
        # report the outcome ourselves. ORT has no getter for that logger's severity, so
        # setting it would change the caller's choice for good: silence file descriptor 2 for
        # the duration of the call instead, and restore it exactly.
        try:
            with _stderr_silenced() if quiet else contextlib.nullcontext():
                return ort.InferenceSession(
                    str(path), sess_options=options(quiet), providers=providers
                )
        except Exception as exc:  # ORT raises Fail/InvalidGraph/... from its C++ core
            raise ModelSpecError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc

    available = ort.get_available_providers()
    if device == "cpu":
        return create(["CPUExecutionProvider"], False), "cpu", "CPU (requested)"
    if "CUDAExecutionProvider" not in available:
        if device == "cuda":
            raise DeviceUnavailableError(
                "device='cuda': this ONNX Runtime build has no CUDAExecutionProvider "
                f"(available: {available}); install onnxruntime-gpu, or use device='cpu'",
                params=("device",),
            )
        return (
            create(["CPUExecutionProvider"], False),
            "cpu",
            "CPU (this ONNX Runtime build has no CUDA provider)",
        )
    session = create(["CUDAExecutionProvider", "CPUExecutionProvider"], True)
    # ORT falls back to CPU silently when the CUDA libraries are missing: check what it made.
    if session.get_providers()[0] == "CUDAExecutionProvider":
        return session, "cuda", f"CUDA ({'requested' if device == 'cuda' else 'auto'})"
    if device == "cuda":
        raise DeviceUnavailableError(
            "device='cuda': ONNX Runtime could not create the CUDA execution provider on this "
            "machine (no GPU, or the CUDA/cuDNN libraries onnxruntime-gpu needs are missing); "
            "use device='cpu' or device='auto'",
            params=("device",),
        )
    del session
    return (
        create(["CPUExecutionProvider"], False),
        "cpu",
        "CPU (auto: CUDA provider present but could not be created on this machine)",
    )
