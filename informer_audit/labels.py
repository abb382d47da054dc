"""Ground-truth labels: a CSV file -> one ``(N, K)`` label matrix aligned with image paths.

Three CSV layouts are understood:

``plain``
    One row per image: a path column (``path``, ``file``, ``filename``, ``image`` or
    ``image_path``, any case) and one 0/1 column per label. Every selected cell must be 0 or 1;
    a blank is an error (use ``split`` to leave out unlabelled rows).
``chexpert``
    The CheXpert CSV as published (``Path``, ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA`` and
    the 14 observations). Cells are ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain)
    or blank (not mentioned, read as negative). Uncertain cells follow an ``uncertain`` policy.
``nih``
    NIH ChestX-ray14's ``Data_Entry_2017`` CSV: ``Image Index`` (a bare file name) and
    ``Finding Labels`` (``|``-separated findings, or ``No Finding``).

A class map (see :func:`parse_class_map`) names, for every audited model class, the label column
that holds its ground truth. The result, :class:`LabelSet`, keeps the class-map order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import LabelFormatError
from .labeltable import LabelTable, NihLookup, detect_format, format_hint, normalise, quoted

__all__ = [
    "CHEXPERT_FINDINGS",
    "LABEL_FORMATS",
    "NIH_FINDINGS",
    "UNCERTAIN_POLICIES",
    "LabelSet",
    "parse_class_map",
    "read_labels",
]

logger = logging.getLogger(__name__)

UNCERTAIN_POLICIES: tuple[str, ...] = ("exclude-image", "exclude-class", "zero", "one")
"""What to do with a CheXpert ``-1`` (uncertain) cell of a selected class.

``exclude-image`` drops the image (the CheXpert paper's choice), ``exclude-class`` leaves that
one cell without a label (NaN), ``zero`` and ``one`` read it as negative or positive."""

LABEL_FORMATS: tuple[str, ...] = ("auto", "plain", "chexpert", "nih")
"""Accepted values of ``read_labels(fmt=...)``; ``auto`` detects the format from the header."""

NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
"""The 14 ChestX-ray14 findings, spelled as in NIH's ``Finding Labels`` column."""

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observation columns, in the published order."""

_NIH_NO_FINDING = "No Finding"
_NIH_LABELS: tuple[str, ...] = (*NIH_FINDINGS, _NIH_NO_FINDING)
_PLAIN_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")
_PLAIN_VIEW_COLUMNS = ("Frontal/Lateral", "View Position", "view")
_CHEXPERT_METADATA = ("Sex", "Age", "Frontal/Lateral", "AP/PA")
# Lower-cased cell text -> label value; anything missing from the table is refused.
_PLAIN_VALUES: dict[str, float] = {
    "0": 0.0,
    "1": 1.0,
    "0.0": 0.0,
    "1.0": 1.0,
    "false": 0.0,
    "true": 1.0,
}
_CHEXPERT_VALUES: dict[str, float] = {
    "1.0": 1.0,
    "1": 1.0,
    "0.0": 0.0,
    "0": 0.0,
    "-1.0": -1.0,
    "-1": -1.0,
    # CheXpert leaves observations the report does not mention blank: negative.
    "": 0.0,
}
_FRONTAL_VIEWS = frozenset({"frontal", "pa", "ap"})
_UNCERTAIN = -1.0
_LISTED = 5  # how many offending items an error message spells out


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Ground truth for ``N`` images and ``K`` model classes, read from one CSV file.

    Attributes
    ----------
    source : Path
        The CSV file.
    format : str
        ``"plain"``, ``"chexpert"`` or ``"nih"``.
    class_names : list of str, length K
        Model class names, in class-map order.
    label_columns : list of str, length K
        The CSV column (or NIH finding) that gave each class its labels.
    keys : list of str, length N
        The image path as written in the CSV (surrounding whitespace stripped), per kept row.
    paths : list of Path, length N
        The resolved image path per kept row. Existence is not checked here (NIH lookups
        excepted), so a later stage can record missing files per image.
    y : ndarray, shape (N, K), float64, read-only
        1.0 positive, 0.0 negative, NaN = no label for that image and class.
    excluded : dict of str to int
        Number of CSV data rows dropped per reason (``"split"``, ``"lateral"``,
        ``"uncertain"``, ``"no selected finding"``); a key is present for every filter that was
        applied, even when it dropped nothing.
    filters : dict
        The filters asked for, as :func:`read_labels` took them: ``split``, ``uncertain``,
        ``frontal_only``, ``require_finding`` (in this order; empty for a set built by hand).
    """

    source: Path
    format: str
    class_names: list[str]
    label_columns: list[str]
    keys: list[str]
    paths: list[Path]
    y: NDArray[np.float64]
    excluded: dict[str, int]
    filters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A private read-only copy: a frozen label set must not change under its holders' feet.
        y = np.array(self.y, dtype=np.float64, copy=True)
        n, k = len(self.keys), len(self.class_names)
        if y.shape != (n, k) or len(self.paths) != n or len(self.label_columns) != k:
            raise ValueError(
                f"LabelSet: expected y of shape (N, K) = ({n}, {k}) with {n} paths and {k} label "
                f"columns; got y {y.shape}, {len(self.paths)} paths, "
                f"{len(self.label_columns)} label columns"
            )
        y.flags.writeable = False
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.keys)


def parse_class_map(spec: str | None, model_classes: Sequence[str]) -> dict[str, str]:
    """Parse a ``--classes`` value into ``{model_class: label_column}``.

    Parameters
    ----------
    spec
        Comma-separated entries, each ``MODEL_CLASS`` (the label column has the same name) or
        ``MODEL_CLASS=LABEL_COLUMN`` (e.g. ``"Atelectasis,Effusion=Pleural Effusion"``).
        Whitespace around names is stripped. ``None`` or blank selects every model class, each
        mapped to the label column of its own name.
    model_classes
        The model's class names, length C.

    Returns
    -------
    dict of str to str
        Model class -> label column, in the order written in ``spec`` (model order when ``spec``
        is empty); this order is the audited class order.

    Raises
    ------
    LabelFormatError
        An empty entry or name, a name that is not a model class (matching is exact), a model
        class given twice, or one label column given to two classes.
    """
    classes = [str(c) for c in model_classes]
    if spec is None or not spec.strip():
        return {c: c for c in classes}
    form = "expected comma-separated MODEL_CLASS or MODEL_CLASS=LABEL_COLUMN entries"
    mapping: dict[str, str] = {}
    owner: dict[str, str] = {}  # label column -> model class that claimed it
    for number, raw_entry in enumerate(spec.split(","), start=1):
        entry = raw_entry.strip()
        name, sep, column = entry.partition("=")
        name, column = name.strip(), column.strip()
        if not sep:
            column = name
        if not name or not column:
            raise LabelFormatError(
                f"class map {spec!r}: entry {number} ({entry!r}) has an empty name; {form}",
                params=("classes",),
            )
        if name not in classes:
            hint = _close_names(name, classes)
            raise LabelFormatError(
                f"class map {spec!r}: {name!r} is not a class of the model{hint}; "
                f"the model's classes are: {quoted(classes)}",
                params=("classes",),
            )
        if name in mapping:
            raise LabelFormatError(
                f"class map {spec!r}: model class {name!r} is given twice; expected each class "
                "at most once",
                params=("classes",),
            )
        if column in owner:
            raise LabelFormatError(
                f"class map {spec!r}: label column {column!r} is given to both {owner[column]!r} "
                f"and {name!r}; expected one label column per class",
                params=("classes",),
            )
        mapping[name] = column
        owner[column] = name
    return mapping


def read_labels(
    csv_path: str | Path,
    images_dir: str | Path,
    classes: Mapping[str, str] | Sequence[str],
    *,
    fmt: str = "auto",
    uncertain: str = "exclude-image",
    frontal_only: bool = False,
    require_finding: bool = False,
    split: str | None = None,
    path_column: str | None = None,
) -> LabelSet:
    """Read a labels CSV into a :class:`LabelSet` for the given classes.

    Parameters
    ----------
    csv_path
        The labels CSV (UTF-8, with a header row).
    images_dir
        Relative image paths are resolved against this folder; absolute ones are kept. For the
        ``nih`` format, a file name missing from ``images_dir`` itself is looked up recursively
        under it (NIH ships its images in ``images_0XX/images/`` subfolders).
    classes
        Model class -> label column, K entries (e.g. from :func:`parse_class_map`), or a list of
        K model classes whose label columns have their names; the label set keeps this order.
        Columns match exactly, else uniquely after normalising (lower case, only letters and
        digits: ``"Pleural_Effusion"`` finds ``"Pleural Effusion"``).
    fmt
        One of :data:`LABEL_FORMATS`.
    uncertain
        One of :data:`UNCERTAIN_POLICIES`; only CheXpert has uncertain (``-1``) cells, and only
        the selected classes' cells count.
    frontal_only
        Keep frontal views only (CheXpert ``Frontal/Lateral`` = ``Frontal``; NIH ``View Position``
        = PA or AP; plain: a ``Frontal/Lateral``, ``View Position`` or ``view`` column, same
        values). Dropped rows are counted as ``"lateral"``.
    require_finding
        Drop images with no positive among the selected classes (the INFORMER paper's cohort),
        counted as ``"no selected finding"``; applied after the uncertainty policy.
    split
        Keep only rows whose ``split`` column (any case) equals this value; needed for files whose
        other rows are unlabelled.
    path_column
        Name of the image-path column, overriding the format's default.

    Returns
    -------
    LabelSet
        ``y`` of shape (N, K). Filters run in the order split, frontal_only, uncertain,
        require_finding; label cells are validated on the rows that survive the first two.

    Raises
    ------
    LabelFormatError
        The file is missing, empty or not a CSV; a column is missing or ambiguous; a cell holds a
        value the format does not allow; a path appears twice; or no image is left.
    """
    if fmt not in LABEL_FORMATS:
        raise LabelFormatError(
            f"label format {fmt!r} is not known; expected one of {quoted(LABEL_FORMATS)}"
        )
    if uncertain not in UNCERTAIN_POLICIES:
        raise LabelFormatError(
            f"uncertain-label policy {uncertain!r} is not known; expected one of "
            f"{quoted(UNCERTAIN_POLICIES)}"
        )
    classes = _class_map(classes, csv_path)
    images_root = Path(images_dir)
    table = LabelTable.read(Path(csv_path))
    detected = detect_format(table.names)
    used = detected if fmt == "auto" else fmt
    if used == "nih" and table.find("Finding Labels") is None:
        raise LabelFormatError(
            f"{table.source}: format 'nih' needs the NIH Data_Entry_2017 columns 'Image Index' "
            f"and 'Finding Labels'; found columns: {quoted(table.names)}"
            f"{format_hint(detected, used)}"
        )

    path_pos = _path_column(table, used, path_column, detected)
    # Looked up even without a split request, so a split column is never taken for a label.
    split_pos = table.find("split")
    class_names = list(classes)
    label_columns, label_pos = _label_columns(table, used, classes, path_pos, split_pos)

    excluded: dict[str, int] = {}
    rows = np.arange(table.n_rows)
    if split is not None:
        rows = _filter_split(table, split, split_pos, rows, excluded)

    keys = table.cells(path_pos, rows)
    paths = _resolve_paths(table, used, images_root, keys, rows)
    _check_duplicates(table, paths, rows)

    if frontal_only:
        keep = _frontal_mask(table, used, rows)
        excluded["lateral"] = int(np.count_nonzero(~keep))
        rows, keys = rows[keep], keys[keep]
        paths = [p for p, k in zip(paths, keep, strict=True) if k]

    if used == "nih":
        y = _nih_values(table, rows, label_columns)
    else:
        allowed = _CHEXPERT_VALUES if used == "chexpert" else _PLAIN_VALUES
        y = np.column_stack(
            [
                _cell_values(table, rows, keys, pos, name, allowed, used)
                for pos, name in zip(label_pos, label_columns, strict=True)
            ]
        ).reshape(len(rows), len(label_columns))

    keep = np.ones(len(rows), dtype=bool)
    if used == "chexpert":
        is_uncertain = y == _UNCERTAIN
        if uncertain == "exclude-image":
            keep = ~is_uncertain.any(axis=1)
            excluded["uncertain"] = int(np.count_nonzero(~keep))
        else:
            y[is_uncertain] = {"exclude-class": np.nan, "zero": 0.0, "one": 1.0}[uncertain]
    if require_finding:
        # NaN == 1.0 is False, so an excluded-class cell never counts as the finding.
        has_finding = (y == 1.0).any(axis=1)
        excluded["no selected finding"] = int(np.count_nonzero(keep & ~has_finding))
        keep &= has_finding
    rows, keys, y = rows[keep], keys[keep], y[keep]
    paths = [p for p, k in zip(paths, keep, strict=True) if k]

    if len(rows) == 0:
        removed = ", ".join(f"{reason}: {count}" for reason, count in excluded.items())
        raise LabelFormatError(
            f"{table.source}: no images left after filtering {table.n_rows} data rows "
            f"(rows removed by {removed}); expected at least one image"
        )
    logger.debug(
        "%s: %d images, %d classes (%s format), excluded %s",
        table.source,
        len(rows),
        len(class_names),
        used,
        excluded,
    )
    return LabelSet(
        source=table.source,
        format=used,
        class_names=class_names,
        label_columns=label_columns,
        keys=[str(k) for k in keys],
        paths=paths,
        y=y,
        excluded=excluded,
        filters={
            "split": split,
            "uncertain": uncertain,
            "frontal_only": frontal_only,
            "require_finding": require_finding,
        },
    )


def _class_map(classes: Mapping[str, str] | Sequence[str], csv_path: str | Path) -> dict[str, str]:
    """``classes`` as model class -> label column; a list maps each class to its own name."""
    if isinstance(classes, str):
        raise LabelFormatError(
            f"classes must be a mapping (model class -> label column) or a list of model "
            f"classes, got the string {classes!r} (parse_class_map reads the command-line form)"
        )
    if isinstance(classes, Mapping):
        mapping = {str(k): str(v) for k, v in classes.items()}
    else:
        names = [str(c) for c in classes]
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise LabelFormatError(
                f"classes {names}: {quoted(repeated)} given twice; expected each class once"
            )
        mapping = {c: c for c in names}
    if not mapping:
        raise LabelFormatError(
            f"{csv_path}: no classes selected; expected at least one model class -> label column"
        )
    return mapping


def _path_column(table: LabelTable, used: str, path_column: str | None, detected: str) -> int:
    if path_column is not None:
        wanted: tuple[str, ...] = (path_column,)
    elif used == "nih":
        wanted = ("Image Index",)
    elif used == "chexpert":
        wanted = ("Path",)
    else:
        wanted = _PLAIN_PATH_COLUMNS
    for name in wanted:
        pos = table.find(name)
        if pos is not None:
            return pos
    raise LabelFormatError(
        f"{table.source}: no image-path column for the {used!r} format; expected a column named "
        f"{' or '.join(repr(w) for w in wanted)} (any case), found columns: "
        f"{quoted(table.names)}{format_hint(detected, used)}"
    )


def _label_columns(
    table: LabelTable,
    used: str,
    classes: Mapping[str, str],
    path_pos: int,
    split_pos: int | None,
) -> tuple[list[str], list[int]]:
    """Match each class's label column; returns the matched names and their positions.

    NIH findings are not CSV columns, so for ``nih`` the positions are -1.
    """
    if used == "nih":
        candidates = [(name, -1) for name in _NIH_LABELS]
        kind = "NIH finding"
    else:
        skip = {path_pos, split_pos}
        if used == "chexpert":
            skip |= {table.find(name) for name in _CHEXPERT_METADATA}
        candidates = [(n, i) for i, n in enumerate(table.names) if i not in skip and n]
        kind = "label column"
    available = quoted(n for n, _ in candidates)
    names: list[str] = []
    positions: list[int] = []
    for class_name, requested in classes.items():
        hits = [(n, i) for n, i in candidates if n == requested]
        if not hits:
            key = normalise(requested)
            hits = [(n, i) for n, i in candidates if normalise(n) == key]
        if not hits:
            raise LabelFormatError(
                f"{table.source}: no {kind} for model class {class_name!r} (requested "
                f"{requested!r}); expected one of: {available}"
            )
        if len(hits) > 1 and len({n for n, _ in hits}) == 1:
            raise LabelFormatError(
                f"{table.source}: column {hits[0][0]!r} appears {len(hits)} times in the header; "
                f"expected it once (it holds the labels of model class {class_name!r})"
            )
        if len(hits) > 1:
            raise LabelFormatError(
                f"{table.source}: {len(hits)} {kind}s match {requested!r} for model class "
                f"{class_name!r}: {quoted(n for n, _ in hits)}; expected exactly one (name the "
                "column exactly)"
            )
        names.append(hits[0][0])
        positions.append(hits[0][1])
    return names, positions


def _filter_split(
    table: LabelTable,
    split: str,
    split_pos: int | None,
    rows: NDArray[np.intp],
    excluded: dict[str, int],
) -> NDArray[np.intp]:
    if split_pos is None:
        raise LabelFormatError(
            f"{table.source}: split {split!r} was requested but there is no 'split' column; "
            f"found columns: {quoted(table.names)}"
        )
    values = table.cells(split_pos, rows)
    keep = values == split.strip()
    if not keep.any():
        present = sorted(set(values.tolist()))
        raise LabelFormatError(
            f"{table.source}: no row has split {split!r}; split values present: {quoted(present)}"
        )
    excluded["split"] = int(np.count_nonzero(~keep))
    return rows[keep]


def _resolve_paths(
    table: LabelTable,
    used: str,
    images_dir: Path,
    keys: NDArray[np.object_],
    rows: NDArray[np.intp],
) -> list[Path]:
    for key, row in zip(keys, rows, strict=True):
        if not key:
            raise LabelFormatError(
                f"{table.source}, {table.where(row)}: the image path is blank; expected a path "
                "to an image file"
            )
    if used != "nih":
        return [images_dir / key for key in keys]  # an absolute key replaces images_dir
    lookup = NihLookup(images_dir)
    resolved = []
    for key, row in zip(keys, rows, strict=True):
        try:
            resolved.append(lookup.resolve(key))
        except LabelFormatError as exc:
            raise LabelFormatError(f"{table.source}, {table.where(row, key)}: {exc}") from None
    return resolved


def _check_duplicates(table: LabelTable, paths: Sequence[Path], rows: NDArray[np.intp]) -> None:
    first_rows: dict[Path, list[int]] = {}
    for path, row in zip(paths, rows, strict=True):
        first_rows.setdefault(path, []).append(int(row) + 1)
    repeated = [(p, r) for p, r in first_rows.items() if len(r) > 1]
    if repeated:
        listed = "; ".join(
            f"{str(p)!r} in data rows {', '.join(map(str, r))}" for p, r in repeated[:_LISTED]
        )
        more = f" and {len(repeated) - _LISTED} more" if len(repeated) > _LISTED else ""
        raise LabelFormatError(
            f"{table.source}: {len(repeated)} image paths appear more than once: {listed}{more}; "
            "expected one row per image"
        )


def _frontal_mask(table: LabelTable, used: str, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
    if used == "nih":
        wanted: tuple[str, ...] = ("View Position",)
    elif used == "chexpert":
        wanted = ("Frontal/Lateral",)
    else:
        wanted = _PLAIN_VIEW_COLUMNS
    pos = next((p for p in map(table.find, wanted) if p is not None), None)
    if pos is None:
        raise LabelFormatError(
            f"{table.source}: frontal-only needs a view column ({' or '.join(map(repr, wanted))}) "
            f"with values Frontal, PA or AP; found columns: {quoted(table.names)}"
        )
    views = table.cells(pos, rows)
    return np.array([v.lower() in _FRONTAL_VIEWS for v in views], dtype=bool).reshape(-1)


def _cell_values(
    table: LabelTable,
    rows: NDArray[np.intp],
    keys: NDArray[np.object_],
    pos: int,
    column: str,
    allowed: Mapping[str, float],
    used: str,
) -> NDArray[np.float64]:
    """Label values of one column at ``rows``, shape (len(rows),); refuses unknown cells."""
    cells = table.cells(pos, rows)
    values = np.empty(len(cells), dtype=np.float64)
    bad: list[int] = []
    for i, cell in enumerate(cells):
        value = allowed.get(cell.lower())
        if value is None:
            bad.append(i)
        else:
            values[i] = value
    if bad:
        first = bad[0]
        cell = cells[first]
        shown = "blank" if not cell else repr(cell)
        accepted = ", ".join(repr(v) if v else "blank" for v in allowed)
        more = f" ({len(bad) - 1} more bad cells in this column)" if len(bad) > 1 else ""
        why = ""
        if used == "plain" and not cell:
            why = (
                "; blank labels are not allowed in the plain format: select the labelled rows "
                "with split=..., or use fmt='chexpert', where blank means negative"
            )
        raise LabelFormatError(
            f"{table.source}, {table.where(rows[first], keys[first])}, column {column!r}: "
            f"{shown} is not a {used} label{more}; expected one of {accepted}{why}",
            params=("split", "fmt") if why else (),
        )
    return values


def _nih_values(
    table: LabelTable, rows: NDArray[np.intp], findings: Sequence[str]
) -> NDArray[np.float64]:
    """0/1 per NIH finding from ``Finding Labels``, shape (len(rows), len(findings))."""
    pos = table.find("Finding Labels")
    if pos is None:  # read_labels checks this before any row is read
        raise LabelFormatError(f"{table.source}: no 'Finding Labels' column")
    cells = table.cells(pos, rows)
    token_sets: list[frozenset[str]] = []
    for i, cell in enumerate(cells):
        tokens = frozenset(t.strip() for t in cell.split("|")) - {""}
        if not tokens:
            raise LabelFormatError(
                f"{table.source}, {table.where(rows[i])}, column 'Finding Labels': blank; "
                f"expected '|'-separated NIH findings or {_NIH_NO_FINDING!r}"
            )
        token_sets.append(tokens)
    # Unknown findings cannot be selected, but they are a sign of a foreign or damaged file.
    unknown = Counter(t for tokens in token_sets for t in tokens if t not in _NIH_LABELS)
    if unknown:
        logger.warning(
            "%s: 'Finding Labels' holds %d findings that are not NIH findings: %s",
            table.source,
            len(unknown),
            quoted(f"{t} ({n}x)" for t, n in unknown.most_common(_LISTED)),
        )
    y = np.array(
        [[1.0 if f in tokens else 0.0 for f in findings] for tokens in token_sets],
        dtype=np.float64,
    )
    return y.reshape(len(cells), len(findings))


def _close_names(name: str, choices: Sequence[str]) -> str:
    key = normalise(name)
    close = [c for c in choices if normalise(c) == key]
    return f" (did you mean {quoted(close)}?)" if close else ""
