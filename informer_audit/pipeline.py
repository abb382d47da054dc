"""Images -> scores, maps, distinctiveness -> calibrated monitor or audited predictions.

:class:`Auditor` streams images through the model and a saliency adapter, a chunk at a time,
and yields one :class:`ImageResult` per file: scored, or failed with the reason (an unreadable
file, non-finite model output, ...). One bad file never stops the batch. :func:`calibrate` fits a
:class:`~informer_audit.monitor.FlagMonitor` on labelled images; :func:`flag_folder` applies one to
a folder and writes the flags CSV as it goes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from .distinctiveness import cosine_distance_matrix, distinctiveness
from .errors import (
    ImageReadError,
    InformerAuditError,
    LabelFormatError,
    ModelSpecError,
    SaliencyError,
)
from .images import find_images, load_image
from .labels import LabelSet
from .model import OnnxClassifier
from .monitor import FlagMonitor, atomic_write_text, check_binding
from .saliency import SaliencyAdapter

logger = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """Everything computed for one image (audited classes only, in audited order).

    Attributes
    ----------
    key : str
        The image as the user named it (CSV path, or path under the audited folder).
    path : Path
    error : str or None
        Why the image could not be scored; ``None`` when it was.
    logits, probs, d : ndarray, shape (K,)
    dist : ndarray, shape (K, K)
        Cosine distances between the class maps.
    maps : ndarray, shape (K, ...) or None
        The class saliency maps, kept only when asked.
    """

    key: str
    path: Path
    error: str | None = None
    logits: NDArray[np.float64] | None = None
    probs: NDArray[np.float64] | None = None
    dist: NDArray[np.float64] | None = None
    d: NDArray[np.float64] | None = None
    maps: NDArray[np.float64] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def sigmoid(z: NDArray[np.floating]) -> NDArray[np.float64]:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class Auditor:
    """Streams images through one model and one saliency adapter.

    Parameters
    ----------
    model : OnnxClassifier
    adapter : SaliencyAdapter
    classes : sequence of str, optional
        Model outputs to audit (distinctiveness is computed among these); default all.
    images_per_chunk : int
        Images loaded and explained together (bounds memory; does not change results).
    keep_maps : bool
        Keep each image's class maps in its result.
    """

    def __init__(
        self,
        model: OnnxClassifier,
        adapter: SaliencyAdapter,
        classes: Sequence[str] | None = None,
        *,
        images_per_chunk: int = 8,
        keep_maps: bool = False,
    ) -> None:
        names = list(model.card.class_names)
        self.classes = list(classes) if classes is not None else names
        unknown = [c for c in self.classes if c not in names]
        if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
            raise LabelFormatError(
                f"audited classes {self.classes} must be distinct model classes; the model "
                f"({model.path}) has {names}"
            )
        if len(self.classes) < 2:
            raise LabelFormatError(
                f"class distinctiveness compares maps between classes: audit at least 2 classes, "
                f"got {self.classes}"
            )
        self.model = model
        self.adapter = adapter
        self.index = np.array([names.index(c) for c in self.classes])
        self.images_per_chunk = max(1, int(images_per_chunk))
        self.keep_maps = keep_maps

    def binding(self) -> dict[str, Any]:
        """What a monitor fitted with this auditor is valid for."""
        card = self.model.card.to_dict()
        class_names = card.pop("class_names")
        return {
            "model_sha256": self.model.sha256,
            "class_names": class_names,
            "audited_classes": list(self.classes),
            "preprocessing": card,
            "saliency": self.adapter.settings(),
        }

    def run(
        self,
        items: Iterable[tuple[str, Path]],
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Score ``(key, path)`` items; yields one result per item, in order."""
        chunk: list[tuple[str, Path]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == self.images_per_chunk:
                yield from self._emit(self._score_chunk(chunk), on_result)
                chunk = []
        if chunk:
            yield from self._emit(self._score_chunk(chunk), on_result)

    @staticmethod
    def _emit(
        results: list[ImageResult], on_result: Callable[[ImageResult], None] | None
    ) -> Iterator[ImageResult]:
        for r in results:
            if on_result is not None:
                on_result(r)
            yield r

    def _score_chunk(self, chunk: list[tuple[str, Path]]) -> list[ImageResult]:
        results = [ImageResult(key, Path(path)) for key, path in chunk]
        loaded = []
        for r in results:
            try:
                loaded.append((r, self.model.preprocess([load_image(r.path)])[0]))
            except ImageReadError as exc:
                r.error = str(exc)
            except (OSError, ValueError, MemoryError) as exc:
                r.error = f"{r.path}: cannot read or convert the image: {exc}"
        if not loaded:
            return results
        try:
            self._score(loaded)
        except (ModelSpecError, SaliencyError):
            raise  # a model or adapter problem, not a file problem: stop the run
        except Exception as exc:  # isolate the image that makes the runtime fail
            if len(loaded) == 1:
                loaded[0][0].error = f"scoring failed: {type(exc).__name__}: {exc}"
            else:
                for pair in loaded:
                    try:
                        self._score([pair])
                    except (ModelSpecError, SaliencyError):
                        raise
                    except Exception as exc1:
                        pair[0].error = f"scoring failed: {type(exc1).__name__}: {exc1}"
        return results

    def _score(self, loaded: list[tuple[ImageResult, NDArray[np.float32]]]) -> None:
        x = np.stack([arr for _, arr in loaded])
        logits = self.model.logits(x)
        finite = np.asarray(np.isfinite(logits).all(axis=1))
        for (r, _), good in zip(loaded, finite.tolist(), strict=True):
            if not good:
                r.error = "the model returned non-finite scores (NaN or Inf) for this image"
        if not finite.any():
            return
        keep = np.flatnonzero(finite)
        maps = self.adapter.explain(self.model, x[keep], logits=logits[keep])
        maps = maps[:, self.index]
        dist = cosine_distance_matrix(maps)
        d = distinctiveness(dist)
        for row, i in enumerate(keep):
            r = loaded[i][0]
            if not np.isfinite(maps[row]).all():
                r.error = "the saliency map has non-finite values (the model's scores overflow)"
                continue
            z = logits[i, self.index]
            r.logits, r.probs, r.dist, r.d = z, sigmoid(z), dist[row], d[row]
            if self.keep_maps:
                r.maps = maps[row]


# -- calibrate ----------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Outcome of :func:`calibrate`."""

    monitor: FlagMonitor
    binding: dict[str, Any]
    results: list[ImageResult]
    y: NDArray[np.float64]  # (N_ok, K) labels of the scored images
    failures: list[ImageResult] = field(default_factory=list)

    @property
    def return_code(self) -> int:
        return 1 if self.failures else 0


def calibrate(
    auditor: Auditor,
    labels: LabelSet,
    *,
    grid_step: float = 0.001,
    on_result: Callable[[ImageResult], None] | None = None,
) -> Calibration:
    """Score every labelled image and fit the INFORMER monitor.

    Parameters
    ----------
    auditor : Auditor
        Its audited classes must be ``labels.class_names``, in that order.
    labels : LabelSet
    """
    if list(labels.class_names) != auditor.classes:
        raise LabelFormatError(
            f"{labels.source}: label classes {labels.class_names} differ from the audited "
            f"classes {auditor.classes}"
        )
    items = list(zip(labels.keys, labels.paths, strict=True))
    ok, failed, rows = [], [], []
    for i, result in enumerate(auditor.run(items, on_result)):
        if result.ok:
            ok.append(result)
            rows.append(i)
        else:
            failed.append(result)
    if len(ok) < 2:
        raise LabelFormatError(
            f"{labels.source}: only {len(ok)} of {len(items)} calibration images could be scored; "
            "at least 2 are needed. First failures: " + "; ".join(str(f.error) for f in failed[:3])
        )
    y = labels.y[rows]
    scored = [_scored(r) for r in ok]
    probs = np.stack([s[0] for s in scored])
    d = np.stack([s[1] for s in scored])
    monitor = FlagMonitor("informer", "below", grid_step).fit(d, y, probs, auditor.classes)
    return Calibration(monitor, auditor.binding(), ok, y, failed)


# -- flag ---------------------------------------------------------------------------------------
@dataclass
class FlagSummary:
    """Counts of a :func:`flag_folder` run; owns the exit code."""

    classes: list[str]
    n_images: int = 0
    n_failed: int = 0
    predicted: NDArray[np.int64] | None = None
    flagged: NDArray[np.int64] | None = None
    audited: NDArray[np.int64] | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.classes)
        self.predicted = np.zeros(k, dtype=np.int64)
        self.flagged = np.zeros(k, dtype=np.int64)
        self.audited = np.zeros(k, dtype=np.int64)

    @property
    def n_ok(self) -> int:
        return self.n_images - self.n_failed

    @property
    def return_code(self) -> int:
        """0: every image audited; 1: the run finished but some files failed."""
        return 1 if self.n_failed else 0


def flag_columns(classes: Sequence[str], with_matrix: bool = False) -> list[str]:
    """Header of the flags CSV."""
    cols = ["path", "status", "error"]
    for c in classes:
        cols += [f"prob_{c}", f"pred_{c}", f"d_{c}", f"flag_{c}", f"audited_{c}"]
    if with_matrix:
        cols += matrix_columns(classes)
    return cols


def matrix_columns(classes: Sequence[str]) -> list[str]:
    """Columns of the upper triangle of the K x K cosine-distance matrix: ``dist_A|B``."""
    k = len(classes)
    return [f"dist_{classes[a]}|{classes[b]}" for a in range(k) for b in range(a + 1, k)]


def _scored(
    r: ImageResult,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    if r.probs is None or r.d is None or r.dist is None:
        raise ValueError(f"{r.key}: image was not scored ({r.error})")
    return r.probs, r.d, r.dist


def _num(v: float) -> str:
    return f"{v:.8g}"


def matrix_values(dist: NDArray[np.float64]) -> list[str]:
    k = dist.shape[0]
    return [_num(dist[a, b]) for a in range(k) for b in range(a + 1, k)]


def flag_folder(
    auditor: Auditor,
    monitor: FlagMonitor,
    binding: dict[str, Any],
    images_dir: str | Path,
    out_csv: str | Path,
    *,
    with_matrix: bool = False,
    monitor_source: str = "monitor",
    on_result: Callable[[ImageResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> FlagSummary:
    """Audit every image under ``images_dir`` and write the flags CSV.

    Rows are written as images finish, to ``OUT.partial`` beside the output, which is renamed
    to ``out_csv`` when the run completes, so an interrupted run leaves its finished rows and
    never a half-written final file.
    """
    check_binding(binding, auditor.binding(), source=monitor_source)
    paths = find_images(images_dir)
    if not paths:
        raise ImageReadError(
            f"{images_dir}: no images found (looked recursively for .png, .jpg, .jpeg, .bmp, "
            ".tif, .tiff)"
        )
    if on_start is not None:
        on_start(len(paths))
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    partial = out_csv.with_name(out_csv.name + ".partial")
    summary = FlagSummary(list(auditor.classes))
    with partial.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(flag_columns(auditor.classes, with_matrix))
        for result in auditor.run(((str(p), p) for p in paths), on_result):
            _write_flag_row(writer, fh, result, monitor, summary, with_matrix)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, out_csv)
    return summary


def _write_flag_row(
    writer: Any,
    fh: IO[str],
    result: ImageResult,
    monitor: FlagMonitor,
    summary: FlagSummary,
    with_matrix: bool,
) -> None:
    summary.n_images += 1
    k = len(summary.classes)
    if not result.ok:
        summary.n_failed += 1
        summary.failures.append((result.key, str(result.error)))
        row: list[Any] = [result.key, "failed", result.error] + [""] * (5 * k)
        if with_matrix:
            row += [""] * (k * (k - 1) // 2)
    else:
        probs, d, dist = _scored(result)
        yhat, flags, audited = (a[0] for a in monitor.audit(probs[None], d[None]))
        summary.predicted += yhat
        summary.flagged += flags
        summary.audited += audited
        row = [result.key, "ok", ""]
        for j in range(k):
            row += [_num(probs[j]), int(yhat[j]), _num(d[j]), int(flags[j]), int(audited[j])]
        if with_matrix:
            row += matrix_values(dist)
    writer.writerow(row)
    fh.flush()


def write_scores_csv(path: str | Path, calibration: Calibration, classes: Sequence[str]) -> None:
    """Per-image calibration table: labels, probabilities, predictions, d and the K x K matrix."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["path", "status", "error"]
    for c in classes:
        header += [f"label_{c}", f"prob_{c}", f"pred_{c}", f"d_{c}", f"flag_{c}", f"audited_{c}"]
    header += matrix_columns(classes)
    writer.writerow(header)
    mon = calibration.monitor
    for r, y in zip(calibration.results, calibration.y, strict=True):
        probs, d, dist = _scored(r)
        yhat, flags, audited = (a[0] for a in mon.audit(probs[None], d[None]))
        row: list[Any] = [r.key, "ok", ""]
        for j in range(len(classes)):
            label = "" if not np.isfinite(y[j]) else int(y[j])
            row += [label, _num(probs[j]), int(yhat[j]), _num(d[j]), int(flags[j]), int(audited[j])]
        writer.writerow(row + matrix_values(dist))
    for r in calibration.failures:
        writer.writerow(
            [r.key, "failed", r.error]
            + [""] * (6 * len(classes))
            + [""] * len(matrix_columns(classes))
        )
    atomic_write_text(Path(path), buf.getvalue())


__all__ = [
    "Auditor",
    "Calibration",
    "FlagSummary",
    "ImageResult",
    "InformerAuditError",
    "calibrate",
    "flag_folder",
    "write_scores_csv",
]
