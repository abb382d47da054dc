"""PyTorch image classifier -> verified ONNX file that carries its own model card.

The auditor needs nothing but the ONNX file when the file says how to feed it: class names,
input size, channels, layout, scale, mean/std and output kind are written into the ONNX
``metadata_props`` under :data:`~informer_audit.model.CARD_METADATA_KEY`, and where the weights
came from (tool and torch versions, architecture, checkpoint SHA-256 or seeded random
initialisation, opset) under :data:`~informer_audit.model.PROVENANCE_METADATA_KEY`. No timestamp
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
import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CheckpointError, ExportError, ModelSpecError
from .fileio import sha256_files, write_temp

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .model import ModelCard

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
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
"""Keys under which training scripts nest the state_dict (Lightning, common loops, timm)."""
CHECKPOINT_PREFIXES = ("module.", "model.")
"""Key prefixes added by ``nn.DataParallel``/DDP (``module.``) and Lightning (``model.``)."""

_TORCH_HINT = (
    "PyTorch is needed to export a model: install it with `pip install torch` "
    "(CPU wheels: `pip install torch --index-url https://download.pytorch.org/whl/cpu`) or "
    '`pip install "informer-audit[torch]"`'
)
# torchvision's own rename of pre-0.3 DenseNet checkpoints (``_load_state_dict`` in
# torchvision/models/densenet.py): "denselayer1.norm.1.weight" -> "denselayer1.norm1.weight".
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# torch's weights_only unpickler names the class it refused: "GLOBAL __main__.Config was not
# an allowed global" (torch >= 2.4) or "Unsupported global: GLOBAL ..." (older).
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_MAX_LISTED = 20
_N_DUMMY = 2  # the traced batch; verification uses another size to prove the axis is dynamic


# -- torch, lazily ------------------------------------------------------------------------------
def require_torch() -> ModuleType:
    """The ``torch`` module, or :class:`ExportError` saying how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise ExportError(f"{_TORCH_HINT} ({exc})") from exc
    return torch


# -- architecture registry ----------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """A buildable classifier architecture whose checkpoints :func:`load_weights` reads.

    Attributes
    ----------
    name : str
        Registry name (the ``informer-audit export`` ARCH choice).
    build : callable
        ``build(num_classes, in_channels)`` returns a randomly initialised ``torch.nn.Module``
        mapping ``(N, in_channels, H, W)`` to logits ``(N, num_classes)``.
    description : str
        One line for help texts.
    rename_key : callable or None
        Maps one checkpoint key to this architecture's name for it (old naming schemes).
    """

    name: str
    build: Callable[[int, int], nn.Module]
    description: str
    rename_key: Callable[[str], str] | None = None


ARCHITECTURES: dict[str, Architecture] = {}
"""Registered architectures by name; add to it with :func:`register_architecture`."""


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Add an architecture to :data:`ARCHITECTURES` (refuses to shadow one unless ``replace``)."""
    if arch.name in ARCHITECTURES and not replace:
        raise ModelSpecError(
            f"architecture {arch.name!r} is already registered; pass replace=True to replace it"
        )
    ARCHITECTURES[arch.name] = arch
    return arch


def available_architectures() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``, or :class:`ModelSpecError` listing the choices."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelSpecError(
            f"unknown architecture {name!r}; choose one of {available_architectures()}"
        ) from None


def _build_densenet121(num_classes: int, in_channels: int) -> nn.Module:
    from .densenet import densenet121

    return densenet121(num_classes, in_channels)


def rename_legacy_densenet_key(key: str) -> str:
    """torchvision's rename of old DenseNet keys: ``...denselayerN.norm.1.weight`` -> ``norm1``."""
    match = _LEGACY_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


register_architecture(
    Architecture(
        "densenet121",
        _build_densenet121,
        "DenseNet121 (torchvision layout), linear multi-label head, logits",
        rename_legacy_densenet_key,
    )
)


# -- checkpoints --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_weights` read.

    Attributes
    ----------
    path : Path
    sha256 : str
        SHA-256 of the checkpoint file's bytes.
    layout : str
        How the weights were found, e.g. ``"checkpoint['state_dict'], prefix 'model.' stripped"``.
    n_tensors : int
        Tensors loaded into the module.
    """

    path: Path
    sha256: str
    layout: str
    n_tensors: int


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read a checkpoint file safely and unwrap its state_dict.

    The file is read with ``torch.load(..., weights_only=True)``: only tensors and plain
    containers are unpickled, never arbitrary Python objects (which could run code).

    Parameters
    ----------
    path
        A ``torch.save`` file holding a state_dict, or a dict holding one under ``state_dict``,
        ``model_state_dict`` or ``model`` (possibly nested).

    Returns
    -------
    (dict, str)
        The state_dict (key -> tensor, keys as stored) and where in the file it was found.

    Raises
    ------
    CheckpointError
        File missing or unreadable, holding pickled objects beyond tensors, or no state_dict.
    """
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (the file is empty)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = _BLOCKED_GLOBAL.search(str(exc))
        if blocked is None:  # not an object it refused: bytes it cannot read at all
            detail = _unpickler_detail(str(exc))
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (torch.load with weights_only=True: "
                f"{detail}); expected a file written by torch.save"
            ) from exc
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects besides tensors "
            f"(first: {blocked.group(1)}), e.g. a whole model saved with torch.save(model), or a "
            "training checkpoint with custom objects in it; unpickling them could run arbitrary "
            "code. Re-save only the weights, where you trust the file: "
            "`torch.save(model.state_dict(), 'weights.pt')`"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, zipfile/EOF/OS errors for bad files
        detail = str(exc) or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from exc
    for w in caught:  # e.g. "Detected pickle protocol 4": torch's concern, not the user's
        logger.debug("torch.load(%s): %s", path, w.message)
    where = "checkpoint"
    for _ in range(4):  # e.g. {"model": {"state_dict": ...}}; deeper nesting is not a layout
        if not isinstance(obj, Mapping):
            break
        wrapper = next(
            (k for k in CHECKPOINT_WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None
        )
        if wrapper is None:
            break
        obj, where = obj[wrapper], f"{where}[{wrapper!r}]"
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors) in {where}, "
            f"got {type(obj).__name__}"
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not obj:
        raise CheckpointError(
            f"{path}: {where} is not a state_dict: "
            + (
                f"{len(not_tensors)} entries are not tensors ({_listing(not_tensors)}); "
                if not_tensors
                else "it is empty; "
            )
            + "expected name -> tensor, or a dict holding one under "
            + str(list(CHECKPOINT_WRAPPER_KEYS))
        )
    layout = "bare state_dict" if where == "checkpoint" else where
    return {str(k): v for k, v in obj.items()}, layout


def match_state_dict(
    state_dict: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    rename_key: Callable[[str], str] | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Map checkpoint keys onto a module's keys, stripping wrapper prefixes and old names.

    A key that is not one of the module's is retried without a leading ``module.`` / ``model.``
    (repeatedly, so ``module.model.`` works too) and through ``rename_key``; keys that still do
    not match are kept as they are (and reported as unexpected by :func:`load_weights`).

    Parameters
    ----------
    state_dict
        Checkpoint key -> tensor.
    expected
        The module's ``state_dict()``.
    rename_key
        The architecture's rename of old key names, if any.

    Returns
    -------
    (dict, list of str)
        The re-keyed state_dict and notes on what was changed (for the provenance record).
    """
    rename = rename_key or (lambda k: k)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    stripped: set[str] = set()
    n_renamed = 0
    for key, value in state_dict.items():
        candidate, removed = key, ""
        while True:
            if candidate in expected:
                break
            renamed = rename(candidate)
            if renamed in expected:
                n_renamed += 1
                candidate = renamed
                break
            prefix = next((p for p in CHECKPOINT_PREFIXES if candidate.startswith(p)), None)
            if prefix is None:
                break
            candidate, removed = candidate[len(prefix) :], removed + prefix
        if candidate not in expected:
            candidate = key  # unmatched: report it under the name the file gives it
        elif removed:
            stripped.add(removed)
        if candidate in out:
            raise CheckpointError(
                f"checkpoint keys {origin[candidate]!r} and {key!r} both map to {candidate!r}"
            )
        out[candidate], origin[candidate] = value, key
    notes = [f"prefix {p!r} stripped" for p in sorted(stripped)]
    if n_renamed:
        notes.append(f"{n_renamed} old-style keys renamed")
    return out, notes


def load_weights(
    module: nn.Module,
    path: str | Path,
    rename_key: Callable[[str], str] | None = None,
) -> CheckpointInfo:
    """Load a checkpoint into ``module``; every missing, unexpected or misshapen key is an error.

    Accepted layouts: a bare state_dict; a dict holding it under ``state_dict``,
    ``model_state_dict`` or ``model``; keys prefixed ``module.`` (DataParallel/DDP) or ``model.``
    (Lightning); old key names through ``rename_key`` (e.g. :func:`rename_legacy_densenet_key`).
    A missing BatchNorm ``num_batches_tracked`` counter (absent from old checkpoints) is allowed:
    inference does not use it.

    Parameters
    ----------
    module
        The freshly built model; its parameters and buffers are overwritten.
    path
        The checkpoint file.
    rename_key
        The architecture's rename of old key names.

    Returns
    -------
    CheckpointInfo

    Raises
    ------
    CheckpointError
        Unsafe or unreadable file, no state_dict, or keys/shapes that do not fit the module.
    """
    path = Path(path)
    raw, where = read_checkpoint(path)
    expected = module.state_dict()
    state_dict, notes = match_state_dict(raw, expected, rename_key)
    missing = [
        k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(shapes)}")
        hint = _shape_hint(mismatched)
        raise CheckpointError(
            f"{path}: the weights in {where} do not fit the model: "
            + "; ".join(problems)
            + (f". {hint}" if hint else "")
        )
    try:
        # strict=True after our own check: belt and braces, and BatchNorm fills in an absent
        # num_batches_tracked itself.
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: torch refused the weights: {exc}") from exc
    layout = ", ".join([where, *notes])
    logger.info("loaded %d tensors from %s (%s)", len(state_dict), path, layout)

    return CheckpointInfo(path, sha256_files([path]), layout, len(state_dict))


def _unpickler_detail(message: str) -> str:
    """The informative line of torch's long weights_only error ("Unsupported operand 100")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else "unpickling failed"


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _shape_hint(mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> str:
    keys = {k for k, _, _ in mismatched}
    hints = []
    if any(k.startswith("classifier.") for k in keys):
        hints.append("the checkpoint's head has another number of classes than --classes names")
    if any(k.endswith("conv0.weight") for k in keys):
        hints.append("the checkpoint's first convolution takes another number of channels")
    return "; ".join(hints).capitalize()


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
        A :class:`~informer_audit.model.ModelCard` or a card mapping (validated either way).
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
    from .model import CARD_METADATA_KEY, PROVENANCE_METADATA_KEY, ModelCard

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
            "give exactly one of: a checkpoint (weights / --weights CKPT), or random_init "
            "(--random-init, for tests and timing)"
            + ("; got both" if weights is not None else "; got neither")
        )
    if (mean is None) != (std is None):
        # Half a default would silently pair the user's mean with ImageNet's std.
        raise ModelSpecError("give both mean and std (--mean, --std), or neither")
    if mean is None and channels != 3:
        raise ModelSpecError(
            f"a {channels}-channel model needs its normalisation stated: give mean and std "
            "(--mean, --std); there is no conventional default for grayscale input"
        )
    size = [image_size] if isinstance(image_size, int) else list(image_size)
    from .model import ModelCard

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
