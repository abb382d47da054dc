"""The shift benchmark: how well does each input score catch images the model was not made for?

For a set of images the model was made for (the *clean* images) :func:`run_shift` makes
seeded corrupted copies (:mod:`.corruptions`: blur, noise, contrast, JPEG, crops, occlusion,
borders, burned-in text, inversion, rotations, flips), optionally adds a folder of images of
another kind, and scores every image with each fitted monitor's own settings (its scorer and
saliency adapter, as ``flag`` does). Per monitor and per corruption x severity it measures

* the AUROC of every input score (:func:`~.inputcheck.input_scores`: the class maps'
  distinctiveness, the entropy, the largest probability, the energy, the TTA spread) for
  "corrupted" against the clean images, each oriented one fixed way
  (:data:`SCORE_DIRECTIONS`: unrelated maps, low confidence), so that 0.5 is chance and below
  0.5 means the score moves the other way;
* the rate at which the monitor's input check flags the images at its calibrated alpha
  (:meth:`~.inputcheck.InputCheck.flags`), with a Clopper-Pearson interval, the clean images'
  own rate beside it, and the AUROC of the check's p-value (its power in its fitted
  direction, whatever alpha);
* with labels, the model's F1 per class at the monitor's prediction thresholds (no swap), their
  macro mean, and the drop from the clean images' F1 on the same images.

:func:`write_shift_report` writes the tables as CSV, a heat map of the AUROCs and a Markdown
report. Nothing here prints; progress goes through a callback. The same images, monitors, seed
and options give byte-identical files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .audit import Auditor, ImageResult, image_input_scores, input_score_names
from .binding import check_binding
from .corruptions import conditions as corruption_conditions
from .corruptions import corrupt, get_corruption
from .errors import EvaluationError, ImageReadError, LabelFormatError, MonitorMismatchError
from .evaluation import Table, md_cell
from .evaluation_report import provenance_lines, require_matplotlib
from .fileio import atomic_write_bytes, atomic_write_text, canonical_json
from .images import load_image
from .inputcheck import INPUT_SCORES, SCORE_TEXT, InputCheck
from .metrics import nanmean, swap_metrics
from .monitor import FlagMonitor
from .paths import printable
from .progress import Progress

logger = logging.getLogger(__name__)

CLEAN = "clean"
"""The corruption name of the clean images' rows."""
OTHER = "other_images"
"""The corruption name of the rows of images of another kind (``other_items``)."""

SCORE_DIRECTIONS: dict[str, str] = {
    "distinctiveness": "high",
    "entropy": "high",
    "max_prob": "low",
    "energy": "high",
    "tta_spread": "high",
}
"""Which tail of each input score means "unusual" when no fitted input check says otherwise:
unrelated class maps (high mean distance; what the reference model shows on odd inputs), a
less confident model (high entropy and energy, low largest probability), unstable predictions
(high TTA spread)."""

SHIFT_FILES = (
    "auroc.csv",
    "flag_rate.csv",
    "f1.csv",
    "scores.csv",
    "failures.csv",
    "shift_auroc.png",
    "report.md",
)
"""Files :func:`write_shift_report` writes (``f1.csv`` only with labels, the PNG only with
``plots=True``)."""


@dataclass(frozen=True)
class ShiftMonitor:
    """One fitted monitor of a shift run and the auditor that scores with its settings.

    Attributes
    ----------
    name : str
        Its row name in the tables (``informer_fd``, ``informer_gradient``, ``entropy``).
    auditor : Auditor
        Built with the monitor's scorer (:func:`~.scorers.scorer_from_binding`) and classes.
    monitor : FlagMonitor
        Fitted; its prediction thresholds give the F1.
    binding : dict
        The monitor file's binding, checked against the auditor's.
    input_check : InputCheck, optional
        The monitor's fitted input check; without one there is no flag rate.
    source : str
        Names the monitor in messages (its path).
    """

    name: str
    auditor: Auditor
    monitor: FlagMonitor
    binding: dict[str, Any]
    input_check: InputCheck | None = None
    source: str = "monitor"


@dataclass(frozen=True)
class ShiftRecord:
    """One image under one condition, scored by one monitor.

    Attributes
    ----------
    monitor, key : str
        The monitor's row name; the clean image's key (or the other image's).
    corruption : str
        A corruption, :data:`CLEAN` or :data:`OTHER`.
    severity : int
        1-3 for corruptions (1 for one-level ones), 0 for :data:`CLEAN` and :data:`OTHER`.
    index : int
        The clean image's position in ``items`` (-1 for other images).
    error : str or None
        Why it could not be scored.
    scores : dict of str to float
        The input scores (:func:`~.inputcheck.input_scores`).
    p_value : float or None
        The input check's p-value (a monitor with an input check).
    input_flag : bool or None
    yhat : ndarray, shape (K,), bool, or None
        The model's predictions at the monitor's thresholds.
    """

    monitor: str
    key: str
    corruption: str
    severity: int
    index: int
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    p_value: float | None = None
    input_flag: bool | None = None
    yhat: NDArray[np.bool_] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _auroc(neg: NDArray[np.float64], pos: NDArray[np.float64]) -> float:
    """P(pos > neg) + P(tie) / 2 (the Mann-Whitney AUROC); NaN if a side is empty."""
    if neg.size == 0 or pos.size == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) ``level`` interval of a binomial rate ``k / n``."""
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import beta

    a = (1.0 - level) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return low, high


@dataclass
class ShiftRun:
    """Outcome of :func:`run_shift`; owns the exit code.

    Attributes
    ----------
    monitors : list of str
        Row names, in the order given.
    classes : list of str
        The audited classes (K).
    conditions : list of (str, int)
        ``(corruption, severity)`` in table order; :data:`OTHER` last when given.
    records : list of ShiftRecord
    keys : list of str
        The clean images, in the order given (N).
    y : ndarray, shape (N, K), or None
        Their labels (NaN: none for that class); ``None`` without labels.
    checks : dict of str to InputCheck or None
        Per monitor, its input check.
    seed : int
    other_source : str or None
        The folder of other images, as given.
    scores_of : dict of str to tuple of str
        Per monitor, the input scores its method computes (:data:`~.inputcheck.INPUT_SCORES`
        order).
    """

    monitors: list[str]
    classes: list[str]
    conditions: list[tuple[str, int]]
    records: list[ShiftRecord]
    keys: list[str]
    y: NDArray[np.float64] | None
    checks: dict[str, InputCheck | None]
    seed: int = 0
    other_source: str | None = None
    scores_of: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def failures(self) -> list[ShiftRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def return_code(self) -> int:
        """0: every image and copy was scored; 1: some failed (see :attr:`failures`)."""
        return 1 if self.failures else 0

    def _ok(self, monitor: str, corruption: str, severity: int) -> list[ShiftRecord]:
        return [
            r
            for r in self.records
            if r.monitor == monitor
            and r.corruption == corruption
            and r.severity == severity
            and r.ok
        ]

    @staticmethod
    def _oriented(score: str, recs: Sequence[ShiftRecord]) -> Any:
        """Higher means more unusual (:data:`SCORE_DIRECTIONS`): the score or its negative."""
        s = np.array([r.scores[score] for r in recs], dtype=np.float64)
        return -s if SCORE_DIRECTIONS[score] == "low" else s

    @staticmethod
    def _surprise(recs: Sequence[ShiftRecord]) -> Any:
        """``1 - p`` of the input check: higher means more unusual in the check's direction."""
        return np.array([1.0 - float(r.p_value) for r in recs if r.p_value is not None])

    def parameter(self, corruption: str, severity: int) -> str:
        if corruption == CLEAN:
            return "as read"
        if corruption == OTHER:
            return f"folder {self.other_source}"
        return get_corruption(corruption).parameter_text(severity)

    # -- tables ---------------------------------------------------------------------------------
    def auroc_table(self) -> Table:
        """``monitor, corruption, severity, parameter, n_clean, n, auroc_<score>...``.

        Every score of :data:`INPUT_SCORES` has a column; NaN where a monitor does not compute
        it (``distinctiveness`` without maps, ``tta_spread`` without TTA).
        """
        rows = []
        for m in self.monitors:
            clean = self._ok(m, CLEAN, 0)
            for corruption, severity in self.conditions:
                recs = self._ok(m, corruption, severity)
                values = []
                for s in INPUT_SCORES:
                    if s not in self.scores_of.get(m, ()):
                        values.append(math.nan)
                        continue
                    values.append(_auroc(self._oriented(s, clean), self._oriented(s, recs)))
                rows.append(
                    (
                        m,
                        corruption,
                        severity,
                        self.parameter(corruption, severity),
                        len(clean),
                        len(recs),
                        *values,
                    )
                )
        columns = (
            "monitor", "corruption", "severity", "parameter", "n_clean", "n",
            *(f"auroc_{s}" for s in INPUT_SCORES),
        )  # fmt: skip
        return Table(columns, tuple(rows))

    def flag_rate_table(self) -> Table:
        """``monitor, corruption, severity, parameter, input_score, direction, alpha, n,
        flagged, flag_rate, low, high, auroc_check``; monitors with an input check.

        ``low``, ``high``: the 95% Clopper-Pearson interval of the flag rate. ``auroc_check``:
        the AUROC of ``1 - p`` against the clean images, the check's own threshold-free power
        in its fitted direction (ties where p reaches its floor ``1 / (n + 1)``); empty on the
        clean row.
        """
        rows = []
        for m in self.monitors:
            check = self.checks.get(m)
            if check is None:
                continue
            clean = self._surprise(self._ok(m, CLEAN, 0))
            for corruption, severity in [(CLEAN, 0), *self.conditions]:
                recs = self._ok(m, corruption, severity)
                k = sum(bool(r.input_flag) for r in recs)
                low, high = clopper_pearson(k, len(recs))
                power = math.nan if corruption == CLEAN else _auroc(clean, self._surprise(recs))
                rows.append(
                    (
                        m, corruption, severity, self.parameter(corruption, severity),
                        check.score, check.direction_, float(check.alpha), len(recs), k,
                        k / len(recs) if recs else math.nan, low, high, power,
                    )
                )  # fmt: skip
        columns = (
            "monitor", "corruption", "severity", "parameter", "input_score", "direction",
            "alpha", "n", "flagged", "flag_rate", "low", "high", "auroc_check",
        )  # fmt: skip
        return Table(columns, tuple(rows))

    def f1_table(self) -> Table | None:
        """``monitor, corruption, severity, n, f1_<class>..., macro_f1, clean_macro_f1,
        drop``: the model's F1 (no swap) on the images scored under the condition, the clean
        images' macro F1 on the same images, and ``drop = clean_macro_f1 - macro_f1``.
        ``None`` without labels."""
        if self.y is None:
            return None
        rows = []
        for m in self.monitors:
            clean = {r.index: r for r in self._ok(m, CLEAN, 0)}
            for corruption, severity in [(CLEAN, 0), *self.conditions]:
                if corruption == OTHER:
                    continue
                recs = [r for r in self._ok(m, corruption, severity) if r.index in clean]
                idx = np.array([r.index for r in recs], dtype=np.intp)
                if idx.size == 0:
                    f1 = np.full(len(self.classes), math.nan)
                    macro = base = math.nan
                else:
                    y = self.y[idx]
                    f1 = swap_metrics(y, np.stack([_yhat(r) for r in recs])).f1
                    clean_f1 = swap_metrics(y, np.stack([_yhat(clean[i]) for i in idx])).f1
                    macro, base = float(nanmean(f1)), float(nanmean(clean_f1))
                rows.append(
                    (m, corruption, severity, len(recs), *f1.tolist(), macro, base, base - macro)
                )
        columns = (
            "monitor", "corruption", "severity", "n", *(f"f1_{c}" for c in self.classes),
            "macro_f1", "clean_macro_f1", "drop",
        )  # fmt: skip
        return Table(columns, tuple(rows))

    def scores_table(self) -> Table:
        """One row per scored image, condition and monitor: the input scores, p and flag."""
        rows = []
        for r in self.records:
            if not r.ok:
                continue
            rows.append(
                (
                    r.monitor, r.key, r.corruption, r.severity,
                    *(r.scores.get(s, math.nan) for s in INPUT_SCORES),
                    math.nan if r.p_value is None else r.p_value,
                    "" if r.input_flag is None else int(r.input_flag),
                )
            )  # fmt: skip
        columns = ("monitor", "path", "corruption", "severity", *INPUT_SCORES, "input_p",
                   "input_flag")  # fmt: skip
        return Table(columns, tuple(rows))

    def failures_table(self) -> Table:
        rows = tuple((r.monitor, r.key, r.corruption, r.severity, r.error) for r in self.failures)
        return Table(("monitor", "path", "corruption", "severity", "error"), rows)


def _yhat(r: ShiftRecord) -> NDArray[np.bool_]:
    if r.yhat is None:
        raise EvaluationError(f"{r.key}: not scored ({r.error})")
    return r.yhat


# -- the run ------------------------------------------------------------------------------------
def _check_monitors(monitors: Sequence[ShiftMonitor]) -> list[str]:
    if not monitors:
        raise EvaluationError("the shift benchmark needs at least one monitor")
    names = [m.name for m in monitors]
    if len(set(names)) != len(names):
        raise EvaluationError(f"monitor row names must be distinct, got {names}")
    classes = list(monitors[0].auditor.classes)
    for m in monitors:
        if m.monitor.method != m.auditor.method:
            raise MonitorMismatchError(
                f"{m.source} is a {m.monitor.method!r} monitor; its auditor scores with "
                f"{m.auditor.method!r}"
            )
        check_binding(m.binding, m.auditor.binding(), source=m.source)
        if list(m.auditor.classes) != classes:
            raise MonitorMismatchError(
                f"{m.source} audits classes {list(m.auditor.classes)}, {monitors[0].source} "
                f"{classes}: the monitors of one shift run must audit the same classes"
            )
    return classes


def _record(
    m: ShiftMonitor, r: ImageResult, key: str, corruption: str, severity: int, index: int
) -> ShiftRecord:
    if not r.ok or r.logits is None or r.probs is None:
        return ShiftRecord(m.name, key, corruption, severity, index, error=str(r.error))
    # As calibrate and flag compute them (the distances for maps, the spread for TTA).
    scores = {s: float(v[0]) for s, v in image_input_scores(m.auditor, [r]).items()}
    p = flag = None
    if m.input_check is not None:
        s = np.array([scores[m.input_check.score]])
        p = float(m.input_check.p_values(s)[0])
        flag = bool(m.input_check.flags(s)[0])
    yhat = np.asarray(m.monitor.predict(r.probs[None])[0], dtype=bool)
    return ShiftRecord(m.name, key, corruption, severity, index, None, scores, p, flag, yhat)


def run_shift(
    monitors: Sequence[ShiftMonitor],
    items: Sequence[tuple[str, str | Path]],
    *,
    labels: NDArray[np.floating] | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3),
    seed: int = 0,
    other_items: Sequence[tuple[str, str | Path]] | None = None,
    other_source: str | None = None,
    images_per_chunk: int = 8,
    on_progress: Progress | None = None,
) -> ShiftRun:
    """Score clean images, their corrupted copies and other images with every monitor.

    Parameters
    ----------
    monitors : sequence of ShiftMonitor
        Each with an auditor built from its binding; they must audit the same classes.
    items : sequence of (key, path)
        The clean images.
    labels : ndarray, shape (N, K), optional
        0/1 labels of ``items`` for the audited classes (NaN: no label); gives the F1 table.
    corruptions : sequence of str, optional
        Default every corruption (:data:`~.corruptions.CORRUPTIONS`).
    severities : sequence of int
        Of the graded corruptions (the one-level ones run once).
    seed : int
        The corruptions' user seed (:func:`~.corruptions.corrupt`).
    other_items : sequence of (key, path), optional
        Images of another kind, scored as they are (one more row, :data:`OTHER`).
    other_source : str, optional
        How the report names them (the folder).
    images_per_chunk : int
        Clean images loaded and corrupted together (bounds memory; does not change results).
    on_progress : callable, optional
        ``on_progress(done, total, stage)``; one unit per image scored by one monitor.

    Returns
    -------
    ShiftRun

    Raises
    ------
    EvaluationError
        No monitor or images, unknown corruptions or severities, repeated row names.
    MonitorMismatchError
        A monitor that does not fit its auditor (model, classes, settings), or monitors of
        different classes.
    LabelFormatError
        Labels that do not fit ``items`` and the classes.
    """
    classes = _check_monitors(monitors)
    conds = corruption_conditions(corruptions, severities)
    if not items:
        raise EvaluationError("the shift benchmark needs at least one clean image")
    y = None
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64)
        if y.shape != (len(items), len(classes)):
            raise LabelFormatError(
                f"labels must have shape {(len(items), len(classes))} (images x audited "
                f"classes {classes}), got {y.shape}"
            )
    others = list(other_items or [])
    if other_items is not None and not others:
        raise EvaluationError(f"no images of another kind found in {other_source}")
    # Monitors with the same binding (the same model, classes and scorer settings; e.g. two
    # input checks on one kind of map) get the same scores: each image is scored once for them.
    by_binding: dict[str, list[ShiftMonitor]] = {}
    for m in monitors:
        by_binding.setdefault(canonical_json(m.auditor.binding()), []).append(m)
    groups = list(by_binding.values())
    total = (len(items) * (1 + len(conds)) + len(others)) * len(monitors)
    done = 0
    records: list[ShiftRecord] = []

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total, "images")

    if on_progress is not None:
        on_progress(0, total, "images")
    step = max(1, int(images_per_chunk))
    for start in range(0, len(items), step):
        chunk = list(enumerate(items[start : start + step], start=start))
        loaded: list[tuple[int, str, NDArray[np.float32]]] = []
        for i, (key, path) in chunk:
            key = printable(str(key))
            image, error = _load(path)
            if image is not None:
                loaded.append((i, key, image))
                continue
            for m in monitors:
                records.append(ShiftRecord(m.name, key, CLEAN, 0, i, error=error))
            advance(len(monitors) * (1 + len(conds)))
        for corruption, severity in [(CLEAN, 0), *conds]:
            keys, images, index = [], [], []
            for i, key, image in loaded:
                if corruption == CLEAN:
                    keys.append(key)
                    images.append(image)
                    index.append(i)
                    continue
                name = f"{key} ({corruption} {severity})"
                try:
                    images.append(corrupt(image, corruption, severity, seed))
                except (ValueError, MemoryError) as exc:
                    for m in monitors:
                        records.append(
                            ShiftRecord(m.name, key, corruption, severity, i, error=str(exc))
                        )
                    advance(len(monitors))
                    continue
                keys.append(name)
                index.append(i)
            key_of = {i: key for i, key, _ in loaded}
            for group in groups:
                results = group[0].auditor.score_arrays(keys, images)
                for m in group:
                    for r, i in zip(results, index, strict=True):
                        records.append(_record(m, r, key_of[i], corruption, severity, i))
                advance(len(keys) * len(group))
    if others:
        keys, images = [], []
        for key, path in others:
            key = printable(str(key))
            image, error = _load(path)
            if image is not None:
                images.append(image)
                keys.append(key)
                continue
            for m in monitors:
                records.append(ShiftRecord(m.name, key, OTHER, 0, -1, error=error))
            advance(len(monitors))
        for group in groups:
            for start in range(0, len(keys), step):
                part = group[0].auditor.score_arrays(
                    keys[start : start + step], images[start : start + step]
                )
                for m in group:
                    records.extend(_record(m, r, r.key, OTHER, 0, -1) for r in part)
                advance(len(part) * len(group))
        conds = [*conds, (OTHER, 0)]
    scores_of = {m.name: input_score_names(m.auditor) for m in monitors}
    return ShiftRun(
        monitors=[m.name for m in monitors],
        classes=classes,
        conditions=conds,
        records=records,
        keys=[printable(str(k)) for k, _ in items],
        y=y,
        checks={m.name: m.input_check for m in monitors},
        seed=seed,
        other_source=other_source,
        scores_of=scores_of,
    )


# -- the report ---------------------------------------------------------------------------------
def auroc_heatmap(run: ShiftRun) -> bytes:
    """The AUROCs as PNG bytes: one heat map per monitor, conditions x input scores."""
    from matplotlib.figure import Figure

    table = run.auroc_table()
    conds = run.conditions
    fig = Figure(
        figsize=(3.2 + 4.2 * len(run.monitors), 1.6 + 0.3 * len(conds)), layout="constrained"
    )
    axes = fig.subplots(1, len(run.monitors), squeeze=False)[0]
    at = {c: i for i, c in enumerate(table.columns)}
    image = None
    for ax, m in zip(axes, run.monitors, strict=True):
        scores = [s for s in INPUT_SCORES if s in run.scores_of.get(m, ())]
        rows = [r for r in table.rows if r[0] == m]
        values = np.array([[r[at[f"auroc_{s}"]] for s in scores] for r in rows], dtype=float)
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdBu_r", aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            text = "n/a" if math.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(scores)), scores, rotation=30, ha="right", fontsize=8)
        labels = [f"{c} {s}" if s else c for c, s in conds]
        ax.set_yticks(range(len(conds)), labels, fontsize=8)
        ax.set_title(m, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="AUROC (corrupted vs clean)")
    return _png(fig)


def _png(fig: Any) -> bytes:
    from .png import png_from_figure

    return png_from_figure(fig)


def _load(path: Any) -> tuple[Any, str | None]:
    """The image, or why it cannot be read (the message :class:`~.audit.Auditor` gives)."""
    try:
        return load_image(path), None
    except ImageReadError as exc:
        return None, str(exc)
    except (OSError, ValueError, MemoryError) as exc:
        return None, f"{path}: cannot read or convert the image: {exc}"


def _part(table: Table, monitor: str, drop: Sequence[str] = ("monitor",)) -> Table:
    keep = [i for i, c in enumerate(table.columns) if c not in drop]
    rows = tuple(tuple(r[i] for i in keep) for r in table.rows if r[0] == monitor)
    return Table(tuple(table.columns[i] for i in keep), rows)


def render_shift_markdown(
    run: ShiftRun, *, title: str, provenance: Mapping[str, Any], plots: bool = True
) -> str:
    """The Markdown report: provenance, setup, and per monitor the AUROC, flag-rate and F1
    tables."""
    from .corruptions import corruption_table

    auroc, flags, f1 = run.auroc_table(), run.flag_rate_table(), run.f1_table()
    severities = sorted({s for c, s in run.conditions if c not in (OTHER,) and s})
    out = [
        f"# {title}",
        "",
        "## Provenance",
        "",
        *provenance_lines({**provenance, "informer-audit": __version__}),
        "",
        "## Setup",
        "",
        f"- Clean images: {len(run.keys)}; classes {', '.join(run.classes)}; corruption seed "
        f"{run.seed}.",
        "- Corruptions (rounded and clipped to 8-bit values, scored as 8-bit images):",
        "",
        "| corruption | what | parameter per severity |",
        "|---|---|---|",
        *(
            f"| {n} | {md_cell(d, '')} | {md_cell(p, '')} |"
            for n, d, p in corruption_table(severities or (1, 2, 3))
            if any(c == n for c, _ in run.conditions)
        ),
        "",
    ]
    if run.other_source is not None:
        out += [f"- Images of another kind: {run.other_source} (row `{OTHER}`).", ""]
    out += ["- Input scores: " + "; ".join(f"`{s}`: {SCORE_TEXT[s]}" for s in INPUT_SCORES) + "."]
    for m in run.monitors:
        check = run.checks.get(m)
        text = check.describe() if check is not None else "none (the monitor has no input check)"
        out += [f"- `{m}`: input check {md_cell(text, '')}."]
    out += [
        "",
        "> **How to read this.** `auroc_<score>`: the probability that a corrupted image scores "
        "as more unusual than a clean one (ties 1/2), each score oriented one fixed way: the "
        "unusual tail is " + ", ".join(f"{d} {s}" for s, d in SCORE_DIRECTIONS.items()) + ". "
        "0.5 is chance; below 0.5 the score moves the other way (e.g. a model *more* confident "
        "on corrupted images). The flag rate is the input check's at its calibrated alpha, "
        "with a 95% Clopper-Pearson interval: on clean images exchangeable with the calibration "
        "set it is at most alpha (clean images that are themselves calibration images can never "
        "be flagged); `auroc_check` is the AUROC of the check's 1 - p, in its fitted direction. "
        "F1 is the model's own (no swap), at the monitor's prediction thresholds; `drop` = "
        "clean macro F1 minus corrupted, on the same images.",
        "",
    ]
    for m in run.monitors:
        out += [f"## `{m}`", "", "### AUROC of each input score, corrupted vs clean", ""]
        part = _part(auroc, m)
        empty = [c for c in part.columns if c.startswith("auroc_")
                 and all(isinstance(r[part.columns.index(c)], float)
                         and math.isnan(r[part.columns.index(c)]) for r in part.rows)]  # fmt: skip
        out += [_part(auroc, m, ("monitor", *empty)).to_markdown(".3f"), ""]
        if check := run.checks.get(m):
            out += [f"### Input-check flag rate (alpha {check.alpha:g})", ""]
            cols = ("monitor", "input_score", "direction", "alpha")
            out += [_part(flags, m, cols).to_markdown(".3f"), ""]
        if f1 is not None:
            out += ["### The model's F1 (no swap)", "", _part(f1, m).to_markdown(".3f"), ""]
    if plots:
        out += ["## Heat map", "", "![AUROC per condition and input score](shift_auroc.png)", ""]
    failures = run.failures_table()
    out += ["## Failures", ""]
    out += [failures.to_markdown(), ""] if failures.rows else ["None: every image was scored.", ""]
    out += ["## Files", ""]
    out += [
        f"- `{name}`"
        for name in SHIFT_FILES
        if name != "report.md"
        and (plots or not name.endswith(".png"))
        and (f1 is not None or name != "f1.csv")
    ]
    return "\n".join(out) + "\n"


def write_shift_report(
    run: ShiftRun,
    outdir: str | Path,
    *,
    title: str = "INFORMER shift benchmark",
    provenance: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the tables, the heat map and the Markdown report into ``outdir``.

    Files (:data:`SHIFT_FILES`): ``auroc.csv`` (:meth:`ShiftRun.auroc_table`),
    ``flag_rate.csv`` (:meth:`ShiftRun.flag_rate_table`), ``f1.csv`` (with labels,
    :meth:`ShiftRun.f1_table`), ``scores.csv`` (per image), ``failures.csv``,
    ``shift_auroc.png`` (``plots``) and ``report.md``, each written atomically. No timestamps:
    the same run, title and provenance give byte-identical files.

    Raises
    ------
    ReportError
        When ``plots`` is true and matplotlib is not installed.
    """
    outdir = Path(outdir)
    if plots:
        require_matplotlib("the shift plot")
    outdir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Table | None] = {
        "auroc.csv": run.auroc_table(),
        "flag_rate.csv": run.flag_rate_table(),
        "f1.csv": run.f1_table(),
        "scores.csv": run.scores_table(),
        "failures.csv": run.failures_table(),
    }
    written = []
    for name, table in tables.items():
        if table is None:
            continue
        atomic_write_text(outdir / name, table.to_csv())
        written.append(outdir / name)
    if plots:
        atomic_write_bytes(outdir / "shift_auroc.png", auroc_heatmap(run))
        written.append(outdir / "shift_auroc.png")
    text = render_shift_markdown(run, title=title, provenance=dict(provenance or {}), plots=plots)
    atomic_write_text(outdir / "report.md", text)
    written.append(outdir / "report.md")
    logger.info("shift report written to %s (%d files)", outdir, len(written))
    return written


__all__ = [
    "CLEAN",
    "OTHER",
    "SCORE_DIRECTIONS",
    "SHIFT_FILES",
    "ShiftMonitor",
    "ShiftRecord",
    "ShiftRun",
    "auroc_heatmap",
    "clopper_pearson",
    "render_shift_markdown",
    "run_shift",
    "write_shift_report",
]
