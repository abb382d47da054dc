"""informer-audit: flag the predictions a deployed image classifier cannot tell apart.

Data flows one way: image files (:mod:`.images`) -> model scores (:mod:`.model`, its card in
:mod:`.modelcard`) -> class saliency maps (:mod:`.saliency` and the adapters in
:mod:`informer_audit.adapters`) -> distinctiveness (:mod:`.distinctiveness`) -> monitor
(:mod:`.monitor`, its file in :mod:`.monitorfile`; the scores it can be fitted on in
:mod:`.scorers`) -> audits (:mod:`.audit`, per-image score cache :mod:`.cache`) -> evaluation
(:mod:`.evaluation` on arrays, :mod:`.experiment` on image sets) -> CLI (:mod:`.cli`).

The public API is importable from here (``from informer_audit import OnnxClassifier``); each
name is imported from its module on first use (PEP 562), so importing the package loads none of
the heavy dependencies (ONNX Runtime, torch). The per-image distinctiveness function is
``informer_audit.distinctiveness.distinctiveness``: its module has the same name, so it cannot
also be a package attribute.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS: dict[str, str] = {
    # the model
    "OnnxClassifier": "model",
    "ModelCard": "modelcard",
    # labels and audits
    "read_labels": "labels",
    "parse_class_map": "labels",
    "Auditor": "audit",
    "calibrate": "audit",
    "flag_folder": "audit",
    # the monitor and its file
    "FlagMonitor": "monitor",
    "load_monitor": "monitorfile",
    "save_monitor": "monitorfile",
    "MonitorFile": "monitorfile",
    "InputCheck": "inputcheck",
    "input_scores": "inputcheck",
    # saliency adapters
    "SaliencyAdapter": "saliency",
    "get_adapter": "saliency",
    "available_adapters": "saliency",
    "register_adapter": "saliency",
    # scores a monitor is fitted on
    "Scorer": "scorers",
    "build_scorer": "scorers",
    "scorer_from_binding": "scorers",
    "available_scorers": "scorers",
    "register_scorer": "scorers",
    # the method on arrays
    "cosine_distance_matrix": "distinctiveness",
    # errors and warnings
    "InformerAuditError": "errors",
    "ImageReadError": "errors",
    "ModelSpecError": "errors",
    "LabelFormatError": "errors",
    "MonitorFormatError": "errors",
    "MonitorMismatchError": "errors",
    "NotFittedError": "errors",
    "DeviceUnavailableError": "errors",
    "BackendError": "errors",
    "SaliencyError": "errors",
    "CheckpointError": "errors",
    "ExportError": "errors",
    "EvaluationError": "errors",
    "ReportError": "errors",
    "FlagsFormatError": "errors",
    "MapStoreError": "errors",
    "ResumeError": "errors",
    "OutputPathError": "errors",
    "OutputWriteError": "errors",
    "InformerAuditWarning": "errors",
    "MeaninglessSettingWarning": "errors",
}
"""Public name -> the module of this package that defines it (imported on first access)."""

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
