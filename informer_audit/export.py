"""PyTorch image classifier -> verified ONNX file that carries its own model card.

The auditor needs nothing but the ONNX file when the file says how to feed it: class names,
input size, channels, layout, scale, mean/std and output kind are written into the ONNX
``metadata_props`` under :data:`~informer_audit.modelcard.CARD_METADATA_KEY`, and where the weights
came from (tool and torch versions, architecture, checkpoint SHA-256 or seeded random
initialisation, opset) under :data:`~informer_audit.modelcard.PROVENANCE_METADATA_KEY`. No timestamp
is written: the same checkpoint and settings give a byte-identical file.

Two entry points:

* :func:`export_architecture` builds a registered architecture (``densenet121``; see
  :func:`register_architecture`), loads a checkpoint with :func:`load_weights` and exports it;
* :func:`export_module` exports any ``torch.nn.Module`` mapping ``(N, C, H, W)`` float32 images
  to ``(N, K)`` class scores, with the same metadata and verification.

Every export is verified before it is reported: the module and ONNX Runtime (through
:class:`~informer_audit.model.OnnxClassifier`, exactly as the auditor will load it) score the same
seeded random inputs, and the largest absolute difference must not exceed the tolerance. The file
is written to a temporary name beside the output and renamed only after it passed, so a failed
export leaves no output (and an existing file at that path untouched).

The legacy TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17 is
used because both ONNX Runtime and onnx2torch (the exact-gradient adapter) handle its graphs;
onnx2torch 1.5.15 cannot convert the dynamo exporter's opset-18+ ReduceMean, AveragePool-19 or
Reshape with ``allowzero``.

This module imports torch only when a function needs it, so that ``informer-audit --help`` and the
architecture registry stay light; without torch, those functions raise :class:`ExportError`
saying how to install it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import __version__
from .checkpoints import (  # noqa: F401  (re-exported: the exporter's historical names)
    ARCHITECTURES,
    CHECKPOINT_PREFIXES,
    CHECKPOINT_WRAPPER_KEYS,
    Architecture,
    CheckpointInfo,
    available_architectures,
    get_architecture,
    load_weights,
    match_state_dict,
    read_checkpoint,
    register_architecture,
    rename_legacy_densenet_key,
    require_torch,
)
from .errors import ExportError, ModelSpecError
from .fileio import write_temp

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .modelcard import ModelCard

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset of exports: handled by ONNX Runtime and by onnx2torch 1.5.15."""
DEFAULT_TOLERANCE = 1e-4
"""Largest accepted absolute difference between torch and ONNX Runtime outputs."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Default normalisation of 3-channel models (torchvision's ImageNet statistics, which the
reference DenseNet121 and most chest X-ray DenseNets are trained with). 1-channel models have no
conventional default and must state theirs."""
INPUT_NAME, OUTPUT_NAME = "image", "logits"
"""Names of the exported graph's input and output."""
_N_DUMMY = 2  # the traced batch; verification uses another size to prove the axis is dynamic


# -- export -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """A verified export.

    Attributes
    ----------
    path : Path
        The ONNX file written.
    sha256 : str
        SHA-256 of the ONNX file (what monitors bind to).
    card : ModelCard
        The model card written into the metadata.
    provenance : dict
        The provenance record written into the metadata.
    max_abs_diff : float
        Largest absolute difference between torch and ONNX Runtime outputs on the check inputs.
    tolerance : float
    n_verified : int
        Number of random inputs compared.
    """

    path: Path
    sha256: str
    card: ModelCard
    provenance: dict[str, Any] = field(repr=False)
    max_abs_diff: float
    tolerance: float
    n_verified: int


def export_module(
    module: nn.Module,
    output: str | Path,
    card: ModelCard | Mapping[str, Any],
    *,
    architecture: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    n_verify: int = 3,
    seed: int = 0,
) -> ExportResult:
    """Export an image classifier module to ONNX with its model card, and verify it.

    Parameters
    ----------
    module
        A float32 ``torch.nn.Module`` mapping ``(N, C, H, W)`` images, normalised as the card
        says, to one ``(N, K)`` tensor of class scores (``K = len(card.class_names)``). It is
        exported in eval mode; its training flag is restored afterwards.
    output
        The ``.onnx`` file to write (parent folders are created; an existing file is replaced
        only by a verified export).
    card
        A :class:`~informer_audit.modelcard.ModelCard` or a card mapping (validated either way).
        ``layout`` must be ``"NCHW"`` (torch's convention); ``output`` says whether the module
        returns logits or probabilities.
    architecture
        Name recorded in the card and provenance (default: the module's class name).
    provenance
        Extra JSON-serialisable provenance (e.g. where the weights came from), merged into the
        record; it may not redefine the exporter's own keys.
    opset
        ONNX opset (default 17: ONNX Runtime and onnx2torch both handle it).
    tolerance
        Largest accepted absolute difference between torch and ONNX Runtime outputs.
    n_verify
        Number of seeded random inputs, ``(n_verify, C, H, W)``, compared in one batch
        (``n_verify != 2`` also proves the batch axis is dynamic, as export traces batch 2).
    seed
        Seed of the verification inputs.

    Returns
    -------
    ExportResult

    Raises
    ------
    ModelSpecError
        Invalid card or settings, or a module whose output does not fit the card.
    ExportError
        torch missing, the export failed, or the verification exceeded the tolerance.
    """
    torch = require_torch()
    from .modelcard import CARD_METADATA_KEY, PROVENANCE_METADATA_KEY, ModelCard

    output = Path(output)
    card = ModelCard.from_dict(
        card.to_dict() if isinstance(card, ModelCard) else card, source="export model card"
    )
    if card.layout != "NCHW":
        raise ModelSpecError(
            f"export model card: layout must be 'NCHW' (torch modules take (N, C, H, W)), "
            f"got {card.layout!r}"
        )
    if output.is_dir():
        raise ModelSpecError(f"{output}: is a folder; give the path of the .onnx file to write")
    if not (tolerance >= 0):
        raise ModelSpecError(f"tolerance must be a non-negative number, got {tolerance}")
    if n_verify < 1:
        raise ModelSpecError(f"n_verify must be at least 1, got {n_verify}")
    if not isinstance(module, torch.nn.Module):
        raise ModelSpecError(f"expected a torch.nn.Module, got {type(module).__name__}")
    params = list(module.parameters()) + list(module.buffers())
    odd = sorted({str(p.dtype) for p in params if p.is_floating_point()} - {"torch.float32"})
    if odd:
        raise ModelSpecError(
            f"the module holds {odd} tensors; export exports float32 models (call module.float())"
        )
    architecture = architecture or type(module).__name__
    record = _provenance(torch, module, architecture, opset, provenance)
    meta_card = {**card.to_dict(), "architecture": architecture}

    was_training = module.training
    module.eval()
    try:
        device = params[0].device if params else torch.device("cpu")
        h, w = card.image_size
        dummy = torch.zeros(_N_DUMMY, card.channels, h, w, device=device)
        _check_module_output(torch, module, dummy, card)
        proto = _trace(torch, module, dummy, opset)
        for key, value in (
            (CARD_METADATA_KEY, json.dumps(meta_card, sort_keys=True)),
            (PROVENANCE_METADATA_KEY, json.dumps(record, sort_keys=True)),
        ):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = (
            f"{architecture} image classifier, {len(card.class_names)} classes "
            f"({card.output}); exported by informer-audit {__version__}"
        )
        data = proto.SerializeToString()
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = write_temp(output, data, suffix=".partial")
        try:
            diff = _verify(torch, module, tmp, card, device, n_verify, seed)
            logger.info("verified %s: max |torch - ORT| = %.3g", output, diff)
            if not (diff <= tolerance):  # NaN fails too
                raise ExportError(
                    f"verification failed: max |torch - ONNX Runtime| = {diff:.3g} on "
                    f"{n_verify} random inputs exceeds the tolerance {tolerance:g}; "
                    f"{output} was not written"
                )
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        module.train(was_training)
    return ExportResult(
        output,
        hashlib.sha256(data).hexdigest(),
        card,
        record,
        diff,
        tolerance,
        n_verify,
    )


def export_architecture(
    architecture: str,
    output: str | Path,
    *,
    class_names: Sequence[str],
    image_size: int | Sequence[int],
    weights: str | Path | None = None,
    random_init: bool = False,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float = 255.0,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Build a registered architecture, load its checkpoint, export and verify it.

    Parameters
    ----------
    architecture
        A name from :func:`available_architectures` (e.g. ``"densenet121"``).
    output
        The ``.onnx`` file to write.
    class_names
        The classes, in the order of the model's outputs; their number sizes the head.
    image_size
        Input size: one number (square) or ``(H, W)``.
    weights
        Checkpoint file (see :func:`load_weights` for the layouts that load).
    random_init
        Export a seeded random initialisation instead (tests, timing); exclusive with
        ``weights`` and recorded in the provenance.
    channels
        Input channels, 1 or 3.
    mean, std
        Per-channel normalisation after dividing by ``scale``. Default for 3 channels: ImageNet's
        (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`); 1-channel models must give theirs.
    scale
        Pixels on the 8-bit scale are divided by this first.
    opset, tolerance
        As in :func:`export_module`.
    seed
        Seed of the random initialisation and of the verification inputs.

    Returns
    -------
    ExportResult
    """
    arch = get_architecture(architecture)
    if (weights is None) == (not random_init):
        raise ModelSpecError(
            "give exactly one of: a checkpoint (weights), or random_init (for tests and timing)"
            + ("; got both" if weights is not None else "; got neither")
        )
    if (mean is None) != (std is None):
        # Half a default would silently pair the user's mean with ImageNet's std.
        raise ModelSpecError("give both mean and std, or neither")
    if mean is None and channels != 3:
        raise ModelSpecError(
            f"a {channels}-channel model needs its normalisation stated: give mean and std; "
            "there is no conventional default for grayscale input"
        )
    size = [image_size] if isinstance(image_size, int) else list(image_size)
    from .modelcard import ModelCard

    card = ModelCard.from_dict(
        {
            "class_names": list(class_names),
            "image_size": size * 2 if len(size) == 1 else size,
            "channels": channels,
            "layout": "NCHW",
            "scale": scale,
            "mean": list(IMAGENET_MEAN if mean is None else mean),
            "std": list(IMAGENET_STD if std is None else std),
            "output": "logits",
        },
        source="export settings",
    )
    torch = require_torch()
    # Seeded without touching the caller's global RNG state (fork_rng restores it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = arch.build(len(card.class_names), card.channels)
    extra: dict[str, Any] = {}
    if weights is not None:
        info = load_weights(module, weights, arch.rename_key)
        extra["checkpoint"] = {
            "file": info.path.name,
            "sha256": info.sha256,
            "layout": info.layout,
            "tensors": info.n_tensors,
        }
        extra["random_init"] = False
    else:
        extra["checkpoint"] = None
        extra["random_init"] = True
        extra["random_init_seed"] = seed
    return export_module(
        module,
        output,
        card,
        architecture=arch.name,
        provenance=extra,
        opset=opset,
        tolerance=tolerance,
        seed=seed,
    )


def _provenance(
    torch: ModuleType,
    module: nn.Module,
    architecture: str,
    opset: int,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    cls = type(module)
    record: dict[str, Any] = {
        "tool": "informer-audit",
        "tool_version": __version__,
        "torch_version": str(torch.__version__),
        "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
        "opset": opset,
        "architecture": architecture,
        "implementation": f"{cls.__module__}.{cls.__qualname__}",
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
    }
    clash = sorted(set(extra or {}) & set(record))
    if clash:
        raise ModelSpecError(f"provenance may not redefine the exporter's keys {clash}")
    record.update(extra or {})
    try:
        json.dumps(record)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"provenance must be JSON-serialisable: {exc}") from exc
    return record


def _check_module_output(
    torch: ModuleType, module: nn.Module, dummy: Tensor, card: ModelCard
) -> None:
    """Run the module once: it must return one (N, K) tensor, K = the card's classes."""
    k = len(card.class_names)
    try:
        with torch.no_grad():
            out = module(dummy)
    except Exception as exc:  # whatever the user's forward raises
        raise ModelSpecError(
            f"the module fails on an input of shape {list(dummy.shape)} (N, C, H, W from the "
            f"model card): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ModelSpecError(
            f"the module must return one tensor of class scores, got {type(out).__name__}"
        )
    if tuple(out.shape) != (dummy.shape[0], k):
        raise ModelSpecError(
            f"the module returns shape {list(out.shape)} for a batch of {dummy.shape[0]}; "
            f"expected ({dummy.shape[0]}, {k}): one score per class of {list(card.class_names)}"
        )


def _trace(torch: ModuleType, module: nn.Module, dummy: Tensor, opset: int) -> Any:
    """Legacy-export ``module`` to an in-memory ONNX ModelProto with a dynamic batch axis."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                (dummy,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as exc:  # torch raises many types (OnnxExporterError, RuntimeError...)
            raise ExportError(
                f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: {exc}"
            ) from exc
    for w in caught:  # e.g. the legacy exporter's deprecation notice: not the user's concern
        logger.debug("torch.onnx.export: %s", w.message)
    try:
        proto = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError
        raise ExportError(f"the exported graph is not a valid ONNX model: {exc}") from exc
    return proto


def _verify(
    torch: ModuleType,
    module: nn.Module,
    path: Path,
    card: ModelCard,
    device: Any,
    n: int,
    seed: int,
) -> float:
    """Max |torch - ONNX Runtime| on ``n`` seeded N(0, 1) inputs (normalised-image scale).

    The file is opened with :class:`~informer_audit.model.OnnxClassifier` on CPU, exactly as the
    auditor opens it, so the card in the metadata is checked against the graph too. Scores are
    compared in the module's own output space (logits, or probabilities).
    """
    import numpy as np

    from .model import OnnxClassifier

    classifier = OnnxClassifier(path, device="cpu")
    if classifier.card != card:
        raise ExportError(f"{path}: the model card read back differs from the one written")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, card.channels, *card.image_size)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x).to(device)).double().cpu().numpy()
    got = classifier.logits(x)
    if card.output == "probabilities":  # logits() mapped them to logits; map back
        got = 1.0 / (1.0 + np.exp(-got))
    return float(np.max(np.abs(got - expected)))
