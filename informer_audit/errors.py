"""One small exception hierarchy for everything the auditor refuses.

Every error subclasses :class:`InformerAuditError` and the matching built-in, so callers can catch
either. Messages say what was expected, what came, and (where there are any) the valid choices.
Only the CLI maps these to exit codes.

Messages name the library's parameters (``device='cuda'``, ``patch_size``), never command-line
flags; an error or warning lists the parameters its message refers to in ``params``, from which
a front end can add its own spelling (the CLI appends ``(command line: --device)``).
"""

from __future__ import annotations

from typing import Any


class InformerAuditError(Exception):
    """Base class of all errors raised on purpose by informer-audit.

    Parameters
    ----------
    *args
        As for :class:`Exception` (usually the one message).
    params : tuple of str, optional
        Names of the parameters the message refers to (e.g. ``("device",)``), stored as
        :attr:`params`; empty when it refers to none.
    """

    params: tuple[str, ...]

    def __init__(self, *args: Any, params: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.params = tuple(params)


class ImageReadError(InformerAuditError, ValueError):
    """An image file cannot be read or converted (corrupt, unsupported, odd shape)."""


class ModelSpecError(InformerAuditError, ValueError):
    """The ONNX model or its preprocessing description is unusable or incomplete."""


class LabelFormatError(InformerAuditError, ValueError):
    """A labels CSV is malformed, or does not fit the model's classes."""


class MonitorFormatError(InformerAuditError, ValueError):
    """A monitor file is not valid monitor JSON (truncated, edited, other schema version)."""


class MonitorMismatchError(InformerAuditError, ValueError):
    """A monitor was fitted for another model, class list, preprocessing or saliency setting."""


class NotFittedError(InformerAuditError, ValueError, AttributeError):
    """A monitor is used before ``fit`` (same contract as scikit-learn's ``NotFittedError``)."""


class DeviceUnavailableError(InformerAuditError, RuntimeError):
    """The requested execution device (e.g. CUDA) cannot be created by ONNX Runtime."""


class SaliencyError(InformerAuditError, ValueError):
    """A saliency adapter is unknown, was given invalid settings, or cannot explain this model."""


class CheckpointError(InformerAuditError, ValueError):
    """A PyTorch checkpoint cannot be loaded safely, or its weights do not fit the architecture."""


class ExportError(InformerAuditError, RuntimeError):
    """A model cannot be exported to ONNX: torch is missing, or the export or its check failed."""


class EvaluationError(InformerAuditError, ValueError):
    """Labels, probabilities or scores given to a baseline or an evaluation are unusable."""


class ReportError(InformerAuditError, RuntimeError):
    """The evaluation report cannot be written (matplotlib, needed for its plots, is missing)."""


class FlagsFormatError(InformerAuditError, ValueError):
    """A flags CSV (written by ``flag``) is missing, malformed, or lacks required columns."""


class MapStoreError(InformerAuditError, ValueError):
    """A folder of saved saliency maps is missing, damaged, or of another format."""


class ResumeError(InformerAuditError, ValueError):
    """An interrupted run's journal cannot be resumed: other settings, or not a journal."""


class OutputPathError(InformerAuditError, ValueError):
    """An output path is refused: a name derived from the input would leave the chosen output
    folder, or an output would overwrite one of the run's inputs or another output, or it
    cannot be written (under a regular file, in a folder this process cannot write)."""


class OutputWriteError(InformerAuditError, OSError):
    """Writing an output failed after the work was done; the message says where the computed
    results were saved instead."""


class BackendError(InformerAuditError, RuntimeError):
    """The Ray backend cannot start, reach its cluster, or fit its workers on it."""


class InformerAuditWarning(UserWarning):
    """Base class of the warnings informer-audit issues (the CLI prints them as ``warning:``).

    Issued as an instance (``warnings.warn(MeaninglessSettingWarning(msg, params=...))``) when
    the message names parameters; ``params`` as for :class:`InformerAuditError`.
    """

    params: tuple[str, ...]

    def __init__(self, *args: Any, params: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.params = tuple(params)


class MeaninglessSettingWarning(InformerAuditWarning):
    """A setting is accepted, but it leaves the distinctiveness d poorly determined.

    For example too few patches or LIME samples, or a finite-difference step below what the
    model's floating-point precision resolves.
    """
