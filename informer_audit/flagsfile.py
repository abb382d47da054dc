"""The flags CSV (``flag``) and the scores CSV (``calibrate --scores-csv``): layout, writer, reader.

Both files share one column layout, :class:`FlagsLayout`, defined here once::

    path, status, error,
    then per class C:  [label_C,] prob_C, pred_C, <score>_C, flag_C, audited_C
    then, with an input check:  input_score, input_p, input_flag
    then, in the flags CSV:  input_<name> per image-level input score (:mod:`.inputcheck`)
    then, optionally:  dist_A|B for every pair A < B (the upper triangle of the K x K matrix)

``<score>`` is ``d`` for INFORMER and the method's name for a baseline (``entropy``, ``tta``,
``msp``); ``label_C`` is in the scores CSV only (the calibration labels). A scored row has
status ``ok``, numbers with 8 significant digits and 0/1 cells; a failed row has status
``failed``, the reason in ``error`` and every other cell blank. :func:`read_flags_csv` reads
what :func:`write_flags_csv` wrote and refuses anything else (:class:`~.errors.FlagsFormatError`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import FlagsFormatError, MonitorMismatchError
from .fileio import atomic_write_text, fsync_folder
from .inputcheck import INPUT_SCORES
from .scorers import available_scorers, scorer_class

if TYPE_CHECKING:
    from .audit import Calibration
    from .inputcheck import InputCheck
    from .monitor import FlagMonitor

LEAD = ("path", "status", "error")
"""The first three columns of every row."""

FIELDS = ("prob", "pred", "score", "flag", "audited")
"""The per-class fields of a flags row, in column order; ``score`` is spelled ``<score_name>``."""

INPUT_CHECK_COLUMNS = ("input_score", "input_p", "input_flag")
"""The input check's columns: the checked score, its conformal p-value, 1 when ``p <= alpha``."""


def score_name(method: str) -> str:
    """Prefix of a method's (or variant's) score columns: ``d`` for INFORMER, ``entropy``, ..."""
    return scorer_class(method).score_name


def score_names() -> list[str]:
    """Score-column prefixes a flags CSV may have, one per registered method."""
    return [cls.score_name for cls in available_scorers().values()]


def _num(v: float) -> str:
    return f"{v:.8g}"


@dataclass(frozen=True)
class FlagsLayout:
    """The columns of a flags or scores CSV.

    Parameters
    ----------
    classes : tuple of str, length K
        The audited classes, in column order.
    score_name : str
        Prefix of the score columns (:func:`score_name`).
    with_matrix : bool
        Whether the ``dist_A|B`` columns follow the per-class ones.
    with_labels : bool
        Whether each class starts with a ``label_C`` column (the scores CSV).
    input_scores : tuple of str
        The image-level input scores written as ``input_<name>`` columns
        (:data:`~.inputcheck.INPUT_SCORES`).
    input_check : bool
        Whether the :data:`INPUT_CHECK_COLUMNS` follow the per-class ones.
    """

    classes: tuple[str, ...]
    score_name: str = "d"
    with_matrix: bool = False
    with_labels: bool = False
    input_scores: tuple[str, ...] = ()
    input_check: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """The per-class fields, in column order (``label`` first in the scores CSV)."""
        return ("label", *FIELDS) if self.with_labels else FIELDS

    def column(self, field: str, cls: str) -> str:
        """The name of a per-class column: ``column("score", "A") == "d_A"``."""
        return f"{self.score_name if field == 'score' else field}_{cls}"

    @property
    def pairs(self) -> list[str]:
        """Columns of the upper triangle of the K x K cosine-distance matrix: ``dist_A|B``."""
        c, k = self.classes, len(self.classes)
        return [f"dist_{c[a]}|{c[b]}" for a in range(k) for b in range(a + 1, k)]

    @property
    def columns(self) -> list[str]:
        """The header."""
        cols = list(LEAD)
        for c in self.classes:
            cols += [self.column(f, c) for f in self.fields]
        return cols + self.input_columns + (self.pairs if self.with_matrix else [])

    @property
    def input_columns(self) -> list[str]:
        """The image-level columns: the input check's, then ``input_<name>`` per score."""
        cols = list(INPUT_CHECK_COLUMNS) if self.input_check else []
        return cols + [f"input_{name}" for name in self.input_scores]

    def index(self, field: str, j: int) -> int:
        """Position of class ``j``'s ``field`` in a row (the ``path`` cell is 0)."""
        return len(LEAD) + len(self.fields) * j + self.fields.index(field)

    def scored_row(
        self,
        key: str,
        probs: NDArray[np.floating],
        pred: NDArray[np.bool_],
        score: NDArray[np.floating],
        flag: NDArray[np.bool_],
        audited: NDArray[np.bool_],
        *,
        labels: NDArray[np.floating] | None = None,
        dist: NDArray[np.floating] | None = None,
        inputs: Mapping[str, float] | None = None,
        check: tuple[float, float, bool] | None = None,
    ) -> list[str]:
        """The row of a scored image.

        Parameters
        ----------
        key : str
            The ``path`` cell.
        probs, score : ndarray, shape (K,)
        pred, flag, audited : ndarray, shape (K,), bool
        labels : ndarray, shape (K,), optional
            0/1 labels, NaN where unlabelled (a blank cell); needed with ``with_labels``.
        dist : ndarray, shape (K, K), optional
            The cosine distances; needed with ``with_matrix``.
        inputs : mapping of str to float, optional
            The image's input scores by name; needed with ``input_scores``.
        check : (float, float, bool), optional
            The input check's score, p-value and flag; needed with ``input_check``.
        """
        row = [key, "ok", ""]
        for j in range(len(self.classes)):
            cells = {
                "prob": _num(probs[j]),
                "pred": str(int(pred[j])),
                "score": _num(score[j]),
                "flag": str(int(flag[j])),
                "audited": str(int(audited[j])),
            }
            if self.with_labels:
                if labels is None:
                    raise ValueError("labels is required: this layout has label columns")
                cells["label"] = "" if not np.isfinite(labels[j]) else str(int(labels[j]))
            row += [cells[f] for f in self.fields]
        if self.input_check:
            if check is None:
                raise ValueError("check is required: this layout has the input check's columns")
            row += [_num(check[0]), _num(check[1]), str(int(check[2]))]
        if self.input_scores:
            if inputs is None or any(name not in inputs for name in self.input_scores):
                raise ValueError(f"inputs must give the input scores {list(self.input_scores)}")
            row += [_num(inputs[name]) for name in self.input_scores]
        if self.with_matrix:
            if dist is None:
                raise ValueError("dist is required: this layout has distance-matrix columns")
            k = len(self.classes)
            row += [_num(dist[a, b]) for a in range(k) for b in range(a + 1, k)]
        return row

    def failed_row(self, key: str, error: str | None) -> list[Any]:
        """The row of an image that could not be scored: the reason, every other cell blank."""
        return [key, "failed", error] + [""] * (len(self.columns) - len(LEAD))


# -- writing ------------------------------------------------------------------------------------
def write_flags_csv(path: str | Path, layout: FlagsLayout, rows: Iterable[Sequence[Any]]) -> None:
    """Write a flags CSV atomically, streaming ``rows`` (one list of cells each, path first).

    The rows go to ``PATH.partial``, which is ``fsync``-ed and renamed to ``path``: there is
    never a half-written ``path``. ``rows`` is consumed lazily, so a caller may count as they
    go and memory does not grow with the folder.

    Raises
    ------
    OSError
        When the file cannot be written (``PATH.partial`` may remain).
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    # backslashreplace: a class name with lone surrogates must not stop the run at the end.
    with partial.open("w", encoding="utf-8", errors="backslashreplace", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(layout.columns)
        for row in rows:
            writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)
    fsync_folder(path.parent)


def write_scores_csv(path: str | Path, calibration: Calibration, classes: Sequence[str]) -> None:
    """Per-image calibration table: labels, probabilities, predictions, scores, flags.

    INFORMER writes ``d_C`` columns and the upper triangle of the K x K distance matrix; a
    baseline writes ``<method>_C`` columns (``entropy_C``, ...) and no matrix. The score is the
    one the flag threshold was fitted on (:attr:`~.audit.Calibration.flag_scores`): for the
    learned flagger (``pwrong_C``, with the matrix), each image's out-of-fold probability, so
    the flags here are the ones the calibration table counts.
    """
    mon = calibration.monitor
    informer = scorer_class(mon.method).has_maps
    layout = FlagsLayout(tuple(classes), score_name(mon.method), informer, with_labels=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(layout.columns)
    fitted = calibration.flag_scores
    for i, (r, y) in enumerate(zip(calibration.results, calibration.y, strict=True)):
        if r.probs is None or r.score is None or (informer and r.dist is None):
            raise ValueError(f"{r.key}: image was not scored ({r.error})")
        d = None if r.dist is None else r.dist[None]
        score = mon.flag_scores(r.score[None], r.probs[None], d)[0]
        if fitted is not None:  # what tau was fitted on, where the image has a label
            score = np.where(np.isfinite(fitted[i]), fitted[i], score)
        yhat = mon.predict(r.probs[None])[0]
        flags = mon.flags_of(score[None])[0]
        writer.writerow(
            layout.scored_row(
                r.key, r.probs, yhat, score, flags, yhat ^ flags, labels=y, dist=r.dist
            )
        )
    for r in calibration.failures:
        writer.writerow(layout.failed_row(r.key, r.error))
    atomic_write_text(Path(path), buf.getvalue())


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlagRow:
    """One row of a flags CSV.

    Attributes
    ----------
    row : int
        1-based data row number (the header is row 0).
    key : str
        The ``path`` cell, exactly as written.
    ok : bool
        ``status`` is ``ok``; otherwise ``failed`` with the reason in ``error``.
    probs, score : ndarray, shape (K,), float64
        Probabilities and the monitor's raw score (NaN for a failed row).
    pred, flag, audited : ndarray, shape (K,), bool
    dist : ndarray, shape (K, K), or None
        Cosine distances, when the CSV has the ``dist_A|B`` columns (``with_matrix``).
    input_score, input_p : float
        The input check's score and p-value (NaN for a failed row or a CSV without them).
    input_flag : bool
        The input check flagged the image.
    inputs : dict of str to float
        The ``input_<name>`` columns by name (empty for a failed row).
    """

    row: int
    key: str
    ok: bool
    error: str
    probs: NDArray[np.float64]
    score: NDArray[np.float64]
    pred: NDArray[np.bool_]
    flag: NDArray[np.bool_]
    audited: NDArray[np.bool_]
    dist: NDArray[np.float64] | None = None
    input_score: float = math.nan
    input_p: float = math.nan
    input_flag: bool = False
    inputs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FlagsTable:
    """A flags CSV, read and checked.

    Attributes
    ----------
    source : Path
    classes : list of str, length K
        The audited classes, in column order.
    score_name : str
        Prefix of the score columns: ``d`` (INFORMER) or the baseline's name.
    rows : list of FlagRow, length N
    input_check : bool
        The CSV has the input check's columns (``input_score``, ``input_p``, ``input_flag``).
    input_scores : tuple of str
        The ``input_<name>`` columns it has, by name.
    """

    source: Path
    classes: list[str]
    score_name: str
    rows: list[FlagRow]
    input_check: bool = False
    input_scores: tuple[str, ...] = ()

    @property
    def ok_rows(self) -> list[FlagRow]:
        return [r for r in self.rows if r.ok]

    @property
    def failed_rows(self) -> list[FlagRow]:
        return [r for r in self.rows if not r.ok]


def read_flags_csv(path: str | Path, score_name: str | None = None) -> FlagsTable:
    """Read a flags CSV written by ``flag``.

    Parameters
    ----------
    path
        The CSV: ``path, status, error``, then per class ``prob_C, pred_C, <score>_C, flag_C,
        audited_C``, optionally the ``dist_A|B`` columns.
    score_name
        The expected score prefix (``d``, ``entropy``, ``tta``, ``msp``); ``None`` detects it.

    Raises
    ------
    FlagsFormatError
        The file is missing or not UTF-8 CSV, a required column is missing, or a cell holds a
        value ``flag`` never writes.
    """
    path = Path(path)
    if not path.is_file():
        raise FlagsFormatError(f"{path}: flags CSV not found")
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FlagsFormatError(f"{path}: cannot read as a UTF-8 CSV: {exc}") from exc
    if not rows:
        raise FlagsFormatError(f"{path}: empty file; expected the flags CSV written by flag")
    header = rows[0]
    expected = "path, status, error, then per class prob_C, pred_C, d_C, flag_C, audited_C"
    missing = [c for c in LEAD if c not in header]
    classes = [c[len("flag_") :] for c in header if c.startswith("flag_")]
    if missing or not classes:
        what = f"missing column(s) {missing}" if missing else "no flag_<class> columns"
        raise FlagsFormatError(
            f"{path}: not a flags CSV ({what}); expected the columns {expected}; found "
            f"{header[:8]}{' ...' if len(header) > 8 else ''}"
        )
    if score_name is None:
        found = [s for s in score_names() if f"{s}_{classes[0]}" in header]
        score_name = found[0] if len(found) == 1 else "d"
    with_matrix = any(c.startswith("dist_") for c in header)
    checked = [c for c in INPUT_CHECK_COLUMNS if c in header]
    if checked and len(checked) != len(INPUT_CHECK_COLUMNS):
        raise FlagsFormatError(
            f"{path}: incomplete input check columns {checked}; expected all of "
            f"{list(INPUT_CHECK_COLUMNS)}"
        )
    inputs = tuple(s for s in INPUT_SCORES if f"input_{s}" in header)
    layout = FlagsLayout(
        tuple(classes), score_name, with_matrix, input_scores=inputs, input_check=bool(checked)
    )
    col = {name: i for i, name in enumerate(header)}
    needed = [layout.column(f, c) for c in classes for f in FIELDS]
    absent = [c for c in needed if c not in col]
    if absent:
        raise FlagsFormatError(
            f"{path}: missing column(s) {absent[:6]}{' ...' if len(absent) > 6 else ''} for the "
            f"classes {classes} (score columns '{score_name}_C'); expected {expected}"
        )
    if with_matrix and any(c not in col for c in layout.pairs):
        raise FlagsFormatError(
            f"{path}: incomplete distance matrix columns; expected all of {layout.pairs}"
        )
    parsed = [
        _parse_row(f"{path}, data row {i}", i, cells, col, layout)
        for i, cells in enumerate(rows[1:], start=1)
        if cells  # csv yields [] for a blank line
    ]
    return FlagsTable(path, classes, score_name, parsed, bool(checked), inputs)


def _parse_row(
    where: str, row: int, cells: list[str], col: Mapping[str, int], layout: FlagsLayout
) -> FlagRow:
    if len(cells) != len(col):
        raise FlagsFormatError(f"{where}: {len(cells)} cells, expected {len(col)} (the header's)")
    key, status, error = (cells[col[c]] for c in LEAD)
    if not key:
        raise FlagsFormatError(f"{where}: the path is blank")
    classes = layout.classes
    k = len(classes)
    nan = np.full(k, np.nan)
    no = np.zeros(k, dtype=bool)
    if status == "failed":
        return FlagRow(row, key, False, error or "failed (no reason given)", nan, nan, no, no, no)
    if status != "ok":
        raise FlagsFormatError(f"{where}: status {status!r}; expected 'ok' or 'failed'")

    def number(name: str) -> float:
        text = cells[col[name]]
        try:
            value = float(text)
        except ValueError:
            raise FlagsFormatError(f"{where}: {name} is {text!r}; expected a number") from None
        if not math.isfinite(value):
            raise FlagsFormatError(f"{where}: {name} is {text!r}; expected a finite number")
        return value

    def bit(name: str) -> bool:
        text = cells[col[name]]
        if text not in ("0", "1"):
            raise FlagsFormatError(f"{where}: {name} is {text!r}; expected 0 or 1")
        return text == "1"

    probs = np.array([number(layout.column("prob", c)) for c in classes])
    score = np.array([number(layout.column("score", c)) for c in classes])
    pred, flag, audited = (
        np.array([bit(layout.column(f, c)) for c in classes]) for f in ("pred", "flag", "audited")
    )
    if (audited != (pred ^ flag)).any():
        j = int(np.flatnonzero(audited != (pred ^ flag))[0])
        raise FlagsFormatError(
            f"{where}: audited_{classes[j]} must be pred_{classes[j]} with flagged predictions "
            "swapped (pred XOR flag)"
        )
    dist = None
    if layout.with_matrix:
        dist = np.zeros((k, k))
        dist[np.triu_indices(k, 1)] = [number(p) for p in layout.pairs]
        dist = dist + dist.T
    extra: dict[str, Any] = {"inputs": {s: number(f"input_{s}") for s in layout.input_scores}}
    if layout.input_check:
        p = number("input_p")
        if not 0.0 < p <= 1.0:
            raise FlagsFormatError(f"{where}: input_p is {p!r}; expected a p-value in (0, 1]")
        extra.update(input_score=number("input_score"), input_p=p, input_flag=bit("input_flag"))
    return FlagRow(row, key, True, "", probs, score, pred, flag, audited, dist, **extra)


# -- checking against the monitor ---------------------------------------------------------------
def check_flags_against_monitor(
    table: FlagsTable,
    monitor: FlagMonitor,
    *,
    monitor_source: str = "monitor",
    input_check: InputCheck | None = None,
) -> None:
    """Refuse a flags CSV that another monitor (classes, method or thresholds) wrote.

    Predictions and flags are recomputed from the CSV's probabilities and scores with the
    monitor's thresholds; values within rounding of a threshold (the CSV keeps 8 significant
    digits) are given the benefit of the doubt. With ``input_check`` (the monitor file's) and a
    CSV with its columns, each ``input_p`` is recomputed from ``input_score`` (the flags are
    not: ``flag`` may have used another alpha).

    Raises
    ------
    MonitorMismatchError
    """
    where = f"{table.source} does not fit {monitor_source}"
    if table.classes != monitor.class_names_:
        raise MonitorMismatchError(
            f"{where}: the CSV audits the classes {table.classes}, the monitor was fitted for "
            f"{monitor.class_names_}"
        )
    expected = score_name(monitor.method)
    if table.score_name != expected:
        raise MonitorMismatchError(
            f"{where}: the CSV has '{table.score_name}_C' score columns, a {monitor.method!r} "
            f"monitor flags on '{expected}_C'"
        )
    t, tau = monitor.prediction_thresholds_, monitor.flag_thresholds_
    for r in table.ok_rows:
        pred = monitor.predict(r.probs[None])[0]
        flag = monitor.flags_of(r.score[None])[0]  # the CSV holds the flag scores
        near_t = np.abs(r.probs - t) <= 1e-7 * np.maximum(1.0, np.abs(t))
        near_tau = np.abs(r.score - tau) <= 1e-7 * np.maximum(1.0, np.abs(tau))
        bad_pred = (pred != r.pred) & ~near_t
        bad_flag = (flag != r.flag) & ~near_tau
        if bad_pred.any() or bad_flag.any():
            j = int(np.flatnonzero(bad_pred | bad_flag)[0])
            c = table.classes[j]
            detail = (
                f"pred_{c} is {int(r.pred[j])} but prob_{c} = {r.probs[j]:.6g} and the "
                f"monitor's prediction threshold is {t[j]:.6g}"
                if bad_pred[j]
                else f"flag_{c} is {int(r.flag[j])} but {expected}_{c} = {r.score[j]:.6g} and "
                f"the monitor's tau is {tau[j]:.6g}"
            )
            raise MonitorMismatchError(
                f"{where}: data row {r.row} ({r.key!r}): {detail}. Was the CSV written with "
                "another monitor?"
            )
    if input_check is None or not table.input_check:
        return
    for r in table.ok_rows:
        s = np.array([r.input_score])
        # The score is rounded to 8 digits: either neighbour's p-value is acceptable.
        near = s * (1 + np.array([-1e-7, 0.0, 1e-7])) + np.array([-1e-12, 0.0, 1e-12])
        if not np.any(np.abs(input_check.p_values(near) - r.input_p) <= 1e-7):
            p_monitor = float(input_check.p_values(s)[0])
            raise MonitorMismatchError(
                f"{where}: data row {r.row} ({r.key!r}): input_p is {r.input_p:.6g} but "
                f"input_score = {r.input_score:.6g} has p = {p_monitor:.6g} against the monitor's "
                "input check. Was the CSV written with another monitor?"
            )


# -- where a row's image is -----------------------------------------------------------------------
def image_candidates(key: str, csv_dir: Path, images_root: Path | None) -> list[Path]:
    """Where the image of a CSV ``path`` may be, in the order they are tried.

    Under ``images_root``: the path itself, then with its leading folders removed one at a time
    (the CSV's paths start with the folder ``flag`` was given); then the path as given (absolute,
    or relative to the working folder); then relative to the CSV's folder.
    """
    p = Path(key)
    out: list[Path] = []
    if images_root is not None:
        parts = p.parts[1:] if p.is_absolute() else p.parts
        out += [images_root.joinpath(*parts[i:]) for i in range(len(parts))]
    out.append(p)
    if not p.is_absolute():
        out.append(csv_dir / p)
    return list(dict.fromkeys(out))


def resolve_image(key: str, csv_dir: Path, images_root: Path | None) -> Path | None:
    """The first of :func:`image_candidates` that is a file, or ``None``."""
    for candidate in image_candidates(key, csv_dir, images_root):
        if candidate.is_file():
            return candidate
    return None


__all__ = [
    "FIELDS",
    "INPUT_CHECK_COLUMNS",
    "LEAD",
    "check_flags_against_monitor",
    "image_candidates",
    "FlagRow",
    "FlagsLayout",
    "FlagsTable",
    "read_flags_csv",
    "resolve_image",
    "score_name",
    "score_names",
    "write_flags_csv",
    "write_scores_csv",
]
