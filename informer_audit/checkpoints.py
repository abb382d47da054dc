"""The PyTorch side of a model: architectures, checkpoints, and the torch module of an ONNX model.

* a registry of buildable architectures (:func:`register_architecture`, ``densenet121``);
* :func:`load_weights`: a checkpoint read safely (``weights_only=True``) and fitted onto a module,
  accepting the usual wrapper layouts and key prefixes, refusing every missing, unexpected or
  misshapen key;
* :func:`torch_module_for`: the torch module of an audited ONNX model from a checkpoint, for the
  exact-gradient adapter (architecture from the ONNX file's export provenance).

torch is imported only when a function needs it; without torch those functions raise
:class:`~.errors.ExportError` saying how to install it.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ExportError, ModelSpecError
from .fileio import sha256_files

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .model import OnnxClassifier

logger = logging.getLogger(__name__)

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
        hints.append("the checkpoint's head has another number of classes than class_names names")
    if any(k.endswith("conv0.weight") for k in keys):
        hints.append("the checkpoint's first convolution takes another number of channels")
    return "; ".join(hints).capitalize()


# -- the torch module of an audited model -------------------------------------------------------
def exported_architecture(model: OnnxClassifier) -> str | None:
    """The architecture the ONNX file's export provenance names, or None."""
    from .model import PROVENANCE_METADATA_KEY

    try:
        arch = json.loads(model.metadata.get(PROVENANCE_METADATA_KEY, "{}")).get("architecture")
    except (ValueError, AttributeError):
        return None
    return str(arch) if arch else None


def torch_module_for(model: OnnxClassifier, weights: str | Path, arch: str | None = None) -> Any:
    """The torch module of ``model`` from a checkpoint, for the exact-gradient adapter.

    Parameters
    ----------
    model : OnnxClassifier
        The audited model: gives the number of classes and channels and, unless ``arch`` is
        given, the architecture (from its export provenance, see :mod:`informer_audit.export`).
    weights : path
        The checkpoint (see :func:`load_weights` for the layouts that load).
    arch : str, optional
        A registered architecture name (:func:`available_architectures`).

    Returns
    -------
    torch.nn.Module
        In eval mode. The adapter checks that it computes the ONNX model's scores.

    Raises
    ------
    ModelSpecError
        No ``arch`` and the ONNX file names none, or an unknown ``arch``.
    CheckpointError
        The checkpoint cannot be read, or does not fit the architecture.
    """
    name = arch or exported_architecture(model)
    if not name:
        raise ModelSpecError(
            f"{model.path} does not say which architecture it was exported from: give arch "
            f"(one of {available_architectures()})",
            params=("arch",),
        )
    architecture = get_architecture(name)
    module = architecture.build(len(model.card.class_names), model.card.channels)
    load_weights(module, weights, architecture.rename_key)
    module.eval()
    return module
