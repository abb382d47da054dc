"""A flag run -> a static HTML report to look at (``informer-audit report``).

:func:`build_report` reads the flags CSV that ``flag`` wrote and the monitor it applied, and writes
one folder that opens offline in any browser (no server, no CDN)::

    OUTDIR/index.html          # from the Jinja2 template templates/report.html.j2, autoescaped
    OUTDIR/assets/hist_0.png   # per class: the distribution of the score with tau marked
    OUTDIR/assets/colorbar.png
    OUTDIR/assets/img_00007.png, map_00007_0.png, ...   # one image and K overlays per shown row

Asset names come from the CSV row number and the class index only; the images' own file names
appear in the page only as escaped text. The page holds a summary (model, monitor, settings,
counts per class, failures), one section per class (histogram, flag rate, calibration F1 and,
with labels, F1 before/after swapping on this run), a gallery of flagged images (the image as the
model sees it, its class maps as overlays, the K x K distance matrix as a heat map, probabilities,
predictions and flags; sortable and filterable by class with a few lines of inline JavaScript, all
content static without it), unflagged images for contrast, and the per-file failures.

Maps come, per shown image, from a maps folder written by ``flag --save-maps``
(:class:`~.mapstore.MapStore`), or are recomputed for the shown images only when a model is
given (with the monitor's saliency settings). A baseline monitor (entropy, TTA, MSP) has no maps:
its gallery shows the image, the probabilities and the method's score.

The flags CSV is read by :mod:`.flagsfile`, the pictures are drawn by :mod:`.report_figures`;
this module picks what to show and assembles the page. The page has no timestamp: the same
inputs give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .audit import Auditor, ImageResult
from .binding import check_binding
from .errors import MonitorMismatchError, ReportError
from .fileio import atomic_write_text, content_sha256
from .flagsfile import (
    FlagRow,
    FlagsTable,
    check_flags_against_monitor,
    image_candidates,
    read_flags_csv,
    resolve_image,
    score_name,
)
from .inputcheck import SCORE_TEXT, InputCheck
from .labels import LabelSet
from .mapstore import MapStore
from .metrics import SwapMetrics, swap_metrics
from .model import OnnxClassifier
from .monitor import FlagMonitor
from .monitorfile import load_monitor
from .paths import safe_child
from .progress import Progress
from .report_figures import (
    ASSETS,
    Assets,
    Pictures,
    colorbar_png,
    dist_cells,
    draw_card,
    score_histogram,
)
from .scorers import scorer_class, scorer_from_binding

logger = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"

_STALE = re.compile(r"^(img_\d+|map_\d+_\d+|hist_\d+|colorbar)\.png$")


# -- the report ---------------------------------------------------------------------------------
@dataclass
class ReportSummary:
    """What :func:`build_report` wrote and found; owns the exit code.

    Attributes
    ----------
    index : Path
        ``OUTDIR/index.html``.
    classes : list of str, length K
    n_images, n_ok, n_failed : int
        Rows of the flags CSV.
    predicted, flagged, audited : ndarray, shape (K,), int
        Per class: predicted positives, flagged predictions, audited positives.
    n_flagged_images : int
        Scored images with at least one flagged class.
    n_gallery, n_contrast : int
        Flagged and unflagged images shown.
    n_input_flagged : int
        Scored images the input check flagged (0 for a CSV without its columns).
    n_input_shown : int
        Input-flagged images shown (first in the report, with their maps).
    maps : str
        Where the overlays came from: ``"saved"``, ``"recomputed"``, ``"saved+recomputed"``,
        ``"none"``.
    missing_images : list of (str, str)
        Shown images that could not be found or read, with the reason.
    notes : list of str
    files : list of Path
    """

    outdir: Path
    index: Path
    classes: list[str]
    n_images: int
    n_ok: int
    n_failed: int
    predicted: NDArray[np.int64]
    flagged: NDArray[np.int64]
    audited: NDArray[np.int64]
    n_flagged_images: int = 0
    n_gallery: int = 0
    n_contrast: int = 0
    n_input_flagged: int = 0
    n_input_shown: int = 0
    maps: str = "none"
    missing_images: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def return_code(self) -> int:
        """0: everything shown; 1: the report was written, but some shown images were missing."""
        return 1 if self.missing_images else 0


@dataclass(frozen=True)
class _Labelled:
    """F1 before and after swapping, on the scored images that have labels."""

    source: Path
    matched: int
    before: SwapMetrics
    after: SwapMetrics


def _require_libraries() -> None:
    missing = []
    for name in ("jinja2", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ReportError(
            f"the HTML report needs {', '.join(missing)}: pip install {' '.join(missing)}"
        )


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def _match_labels(
    labels: LabelSet, rows: Sequence[FlagRow], found: Mapping[int, Path]
) -> tuple[NDArray[np.float64], int]:
    """Labels (N, K) aligned with ``rows`` (NaN where unlabelled), and how many rows matched.

    A row matches the label row of the same file (real path); failing that, the one label row
    whose file name is the same, when only one has it.
    """
    by_path: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(labels.paths):
        by_path[os.path.realpath(p)] = i
        by_name.setdefault(Path(p).name, []).append(i)
    y = np.full((len(rows), len(labels.class_names)), np.nan)
    matched = 0
    for n, r in enumerate(rows):
        hit = None
        if r.row in found:
            hit = by_path.get(os.path.realpath(found[r.row]))
        if hit is None:
            names = by_name.get(Path(r.key).name, [])
            hit = names[0] if len(names) == 1 else None
        if hit is not None:
            y[n] = labels.y[hit]
            matched += 1
    return y, matched


def _select(
    table: FlagsTable, monitor: FlagMonitor, max_gallery: int, n_contrast: int
) -> tuple[list[FlagRow], list[FlagRow], list[FlagRow]]:
    """Every flagged row; the gallery (most flagged classes, then widest margin past tau
    first, at most ``max_gallery``); ``n_contrast`` unflagged rows spread evenly over the CSV."""
    ok = table.ok_rows
    flagged = [r for r in ok if r.flag.any()]
    unflagged = [r for r in ok if not r.flag.any()]

    def strength(r: FlagRow) -> tuple[int, float, int]:
        margin = monitor.margin_of(r.score[None])[0]  # the CSV holds the flag scores
        return (-int(r.flag.sum()), -float(margin[r.flag].sum()), r.row)

    gallery = sorted(flagged, key=strength)[: max(0, max_gallery)]
    m = min(max(0, n_contrast), len(unflagged))
    picks = sorted({int(round(v)) for v in np.linspace(0, len(unflagged) - 1, m)}) if m else []
    contrast = [unflagged[i] for i in picks]
    return flagged, gallery, contrast


def build_report(
    flags_csv: str | Path,
    monitor_path: str | Path,
    outdir: str | Path,
    *,
    model: OnnxClassifier | None = None,
    images_root: str | Path | None = None,
    labels: LabelSet | None = None,
    maps_dir: str | Path | None = None,
    max_gallery: int = 60,
    n_contrast: int = 8,
    progress: Progress | None = None,
) -> ReportSummary:
    """Write the HTML report of a flag run to ``outdir``.

    Parameters
    ----------
    flags_csv
        The flags CSV ``flag`` wrote.
    monitor_path
        The monitor ``flag`` applied (thresholds, binding).
    outdir
        Output folder: ``index.html`` and ``assets/`` (created; stale generated assets of an
        earlier report there are removed, nothing else).
    model
        The audited model, to recompute the maps of the shown images that ``maps_dir`` does not
        hold (INFORMER monitors only; checked against the monitor's binding).
    images_root
        Folder the CSV's image paths are looked up under first
        (:func:`.flagsfile.image_candidates`).
    labels
        Ground truth (classes = the monitor's audited classes): F1 before/after swapping.
    maps_dir
        Folder written by ``flag --save-maps``.
    max_gallery, n_contrast
        Flagged images shown (the most strongly flagged first), unflagged images shown (evenly
        spread over the CSV).
    progress
        ``progress(done, total, stage)``, stages ``"maps"`` and ``"images"``.

    Returns
    -------
    ReportSummary

    Raises
    ------
    FlagsFormatError, MonitorFormatError, MonitorMismatchError, MapStoreError, ReportError
    """
    _require_libraries()
    flags_csv, monitor_path, outdir = Path(flags_csv), Path(monitor_path), Path(outdir)
    root = Path(images_root) if images_root is not None else None
    loaded = load_monitor(monitor_path)
    monitor, binding, calibration = loaded.monitor, loaded.binding, loaded.calibration
    table = read_flags_csv(flags_csv, score_name(monitor.method))
    check_flags_against_monitor(
        table, monitor, monitor_source=str(monitor_path), input_check=loaded.input_check
    )
    classes = table.classes
    informer = scorer_class(monitor.method).has_maps
    if labels is not None and list(labels.class_names) != classes:
        raise MonitorMismatchError(
            f"{labels.source}: label classes {labels.class_names} differ from the audited "
            f"classes {classes} of {monitor_path}"
        )
    store = None
    if maps_dir is not None:
        if not informer:
            raise MonitorMismatchError(
                f"{monitor_path} is a {monitor.method!r} monitor, which uses no saliency maps; "
                "saved maps apply to informer monitors"
            )
        store = MapStore.open(maps_dir)
        store.check(binding, source=str(monitor_path))
    if model is not None and model.sha256 != binding["model_sha256"]:
        raise MonitorMismatchError(
            f"{model.path} (sha256 {model.sha256[:12]}...) is not the model {monitor_path} was "
            f"fitted for (sha256 {str(binding['model_sha256'])[:12]}...)"
        )
    if outdir.exists() and not outdir.is_dir():
        raise ReportError(f"{outdir}: expected an output folder, found a file")
    (outdir / ASSETS).mkdir(parents=True, exist_ok=True)

    ok = table.ok_rows
    k = len(classes)
    pred = np.array([r.pred for r in ok], dtype=bool).reshape(len(ok), k)
    flg = np.array([r.flag for r in ok], dtype=bool).reshape(len(ok), k)
    aud = np.array([r.audited for r in ok], dtype=bool).reshape(len(ok), k)
    scores = np.array([r.score for r in ok], dtype=np.float64).reshape(len(ok), k)
    summary = ReportSummary(
        outdir=outdir,
        index=safe_child(outdir, "index.html"),
        classes=classes,
        n_images=len(table.rows),
        n_ok=len(ok),
        n_failed=len(table.failed_rows),
        predicted=pred.sum(axis=0).astype(np.int64),
        flagged=flg.sum(axis=0).astype(np.int64),
        audited=aud.sum(axis=0).astype(np.int64),
    )
    flagged_rows, gallery, contrast = _select(table, monitor, max_gallery, n_contrast)
    summary.n_flagged_images = len(flagged_rows)
    summary.n_gallery, summary.n_contrast = len(gallery), len(contrast)
    # Input-flagged images first (smallest p-value first), then the per-class gallery.
    input_rows = sorted((r for r in ok if r.input_flag), key=lambda r: (r.input_p, r.row))
    input_shown = input_rows[: max(0, max_gallery)]
    summary.n_input_flagged, summary.n_input_shown = len(input_rows), len(input_shown)
    shown = list({r.row: r for r in input_shown + gallery + contrast}.values())

    csv_dir = flags_csv.parent
    wanted = ok if labels is not None else shown
    found: dict[int, Path] = {}
    for r in wanted:
        path = resolve_image(r.key, csv_dir, root)
        if path is not None:
            found[r.row] = path
    for r in shown:
        if r.row not in found:
            tried = ", ".join(str(p) for p in image_candidates(r.key, csv_dir, root))
            summary.missing_images.append((r.key, f"image not found (looked at: {tried})"))

    y = None
    labelled = None
    if labels is not None:
        y, matched = _match_labels(labels, ok, found)
        labelled = _Labelled(
            labels.source, matched, swap_metrics(y, pred), swap_metrics(y, pred, flg)
        )
        if matched < len(ok):
            summary.notes.append(
                f"labels: {matched} of {len(ok)} scored images found in {labels.source.name}; "
                "F1 is computed on those"
            )
    y_by_row = {r.row: y[i] for i, r in enumerate(ok)} if y is not None else {}

    maps, dists, sources = _shown_maps(
        shown, found, store, model, monitor, binding, summary, str(monitor_path), progress
    )
    summary.maps = "+".join(s for s in ("saved", "recomputed") if s in sources.values()) or "none"
    if informer and not maps and shown:
        summary.notes.append(
            "no class maps to show: give maps_dir (the maps folder flag_folder saved), "
            "or model to recompute the maps of the shown images"
        )

    assets = Assets(outdir)
    pictures = Pictures.from_binding(binding)
    score_label = _score_label(monitor)
    cards: dict[int, dict[str, Any]] = {}
    for done, r in enumerate(shown, start=1):
        card = _card(r, classes, monitor, y_by_row.get(r.row))
        draw_card(card, r, found.get(r.row), maps.get(r.row), sources.get(r.row), pictures, assets)
        if card["image"] is None and r.row in found:
            summary.missing_images.append((r.key, card["image_note"]))
        if card["overlays"] is None:
            card["maps_note"] = _no_maps_note(informer, card["image"] is not None, r.row in maps)
        dist = r.dist if r.dist is not None else dists.get(r.row)
        card["dist"] = dist_cells(dist) if dist is not None else None
        cards[r.row] = card
        if progress is not None:
            progress(done, len(shown), "images")
    class_views = [
        _class_view(j, monitor, summary, scores[:, j], flg[:, j], labelled, assets, score_label)
        for j in range(k)
    ]
    colorbar = assets.put("colorbar.png", colorbar_png()) if informer and maps else None

    page = {
        "version": __version__,
        "title": f"INFORMER audit report: {flags_csv.name}",
        "settings": _settings_rows(
            flags_csv, monitor_path, monitor, binding, calibration, model, root, store, summary
        ),
        "informer": informer,
        "method": monitor.method,
        "direction": monitor.direction,
        "score_label": score_label,
        "rule": _rule(monitor),
        "classes": class_views,
        "summary": summary,
        "labelled": None
        if labelled is None
        else {
            "source": labelled.source.name,
            "matched": labelled.matched,
            "mean_before": _fmt(labelled.before.mean_f1),
            "mean_after": _fmt(labelled.after.mean_f1),
        },
        "input": _input_view(table, loaded.input_check, input_rows, input_shown, cards),
        "gallery": [cards[r.row] for r in gallery],
        "gallery_truncated": len(flagged_rows) > len(gallery),
        "all_flagged": [
            {
                "row": r.row,
                "key": r.key,
                "classes": [c for c, f in zip(classes, r.flag, strict=True) if f],
            }
            for r in flagged_rows
        ]
        if len(flagged_rows) > len(gallery)
        else [],
        "contrast": [cards[r.row] for r in contrast],
        "n_unflagged": summary.n_ok - summary.n_flagged_images,
        "failures": [{"row": r.row, "key": r.key, "error": r.error} for r in table.failed_rows],
        "missing": summary.missing_images,
        "notes": summary.notes,
        "colorbar": colorbar,
        "class_names": classes,
        "has_labels": labelled is not None,
        "saliency": json.dumps(binding.get("saliency"), sort_keys=True),
        "evidence": _evidence_view(loaded.evidence),
    }
    html = _render(page)
    _remove_stale(outdir, assets.written)
    atomic_write_text(summary.index, html)
    summary.files = sorted(assets.written) + [summary.index]
    logger.info("report written to %s (%d files)", summary.index, len(summary.files))
    return summary


def _class_view(
    j: int,
    monitor: FlagMonitor,
    summary: ReportSummary,
    scores: NDArray[np.float64],
    flagged: NDArray[np.bool_],
    labelled: _Labelled | None,
    assets: Assets,
    score_label: str,
) -> dict[str, Any]:
    """The per-class section of class ``j``: its histogram (written), thresholds and rates.

    ``scores`` and ``flagged`` have shape (N_ok,).
    """
    fit = monitor.fits_[j]
    tau = float(monitor.flag_thresholds_[j])
    png = score_histogram(scores, flagged, tau, direction=monitor.direction, label=score_label)
    rate = summary.flagged[j] / summary.n_ok if summary.n_ok else float("nan")
    view: dict[str, Any] = {
        "index": j,
        "name": summary.classes[j],
        "t": f"{monitor.prediction_thresholds_[j]:.4f}",
        "tau": f"{tau:.3f}",
        "never": monitor.direction == "below" and tau == 0.0,
        "predicted": int(summary.predicted[j]),
        "flagged": int(summary.flagged[j]),
        "audited": int(summary.audited[j]),
        "rate": _fmt(100.0 * rate, 1),
        "hist": assets.put(f"hist_{j}.png", png),
        "cal_n": fit.n,
        "cal_f1_before": _fmt(fit.f1_before),
        "cal_f1_after": _fmt(fit.f1_after),
        "cal_flags": fit.n_flags,
        "cal_note": fit.note,
    }
    if labelled is not None:
        b, a = labelled.before, labelled.after
        view["lab"] = {
            "n": int(b.n[j]),
            "f1_before": _fmt(float(b.f1[j])),
            "f1_after": _fmt(float(a.f1[j])),
            "sens": f"{_fmt(float(b.sensitivity[j]))} → {_fmt(float(a.sensitivity[j]))}",
            "spec": f"{_fmt(float(b.specificity[j]))} → {_fmt(float(a.specificity[j]))}",
        }
    return view


def _input_view(
    table: FlagsTable,
    check: InputCheck | None,
    flagged: Sequence[FlagRow],
    shown: Sequence[FlagRow],
    cards: Mapping[int, dict[str, Any]],
) -> dict[str, Any] | None:
    """The input check's section: its settings and the input-flagged images' cards."""
    if not table.input_check:
        return None
    ok = table.ok_rows
    view: dict[str, Any] = {
        "n_flagged": len(flagged),
        "n_ok": len(ok),
        "rate": _fmt(100.0 * len(flagged) / len(ok), 1) if ok else "–",
        "cards": [{**cards[r.row], "id": f"input-row-{r.row}"} for r in shown],
        "truncated": len(flagged) > len(shown),
        "all": [{"row": r.row, "key": r.key, "p": f"{r.input_p:.4g}"} for r in flagged]
        if len(flagged) > len(shown)
        else [],
        "score": "?",
        "direction": "?",
        "alpha": "?",
        "n_calibration": "?",
        "reason": "",
        "note": "",
    }
    if check is None:
        view["note"] = "the monitor holds no input check: its settings are unknown here"
        return view
    view.update(
        score=f"{check.score} ({SCORE_TEXT[check.score]})",
        direction=check.direction_,
        alpha=f"{check.alpha:g}",
        n_calibration=check.n_calibration_,
        reason=check.direction_reason_,
    )
    # The CSV's flags against the monitor's alpha: flag --input-alpha may have used another.
    if any(r.input_flag != (r.input_p <= check.alpha * (1 + 1e-12)) for r in ok):
        view["note"] = (
            f"the flags CSV's input flags do not follow the monitor's alpha = {check.alpha:g}: "
            "the flag run used another alpha (flag_folder's input_alpha)"
        )
    return view


def _score_label(monitor: FlagMonitor) -> str:
    return {
        "informer": "d (class distinctiveness)",
        "entropy": "predictive entropy (bits)",
        "tta": "TTA spread (std of p)",
        "msp": "maximum class probability",
        "margin": "|logit p − logit t| (distance to the prediction threshold)",
        "learned": "P(prediction wrong), learned flagger",
    }.get(monitor.method, monitor.method)


def _evidence_view(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
    """The monitor's out-of-sample estimate and information tests as table rows (text)."""
    estimates = evidence.get("out_of_sample") or []
    if not estimates:
        return None

    def num(v: Any, signed: bool = True) -> str:
        if not isinstance(v, int | float) or isinstance(v, bool) or v != v:
            return "–"
        return f"{v:+.3f}" if signed else f"{v:.3f}"

    def ci(e: Mapping[str, Any], key: str) -> str:
        return f"{num(e.get(key))} [{num(e.get(key + '_low'))}, {num(e.get(key + '_high'))}]"

    thresholds = {t.get("name"): t for t in evidence.get("thresholds") or []}
    info = {t.get("name"): t for t in evidence.get("information") or []}
    rows = []
    for e in estimates:
        t = thresholds.get(e.get("name"), {})
        i = info.get(e.get("name"), {})
        rows.append(
            {
                "name": str(e.get("name")),
                "verdict": str(e.get("verdict")),
                "delta_f1": ci(e, "delta_f1"),
                "delta_sens": ci(e, "delta_sensitivity"),
                "delta_spec": ci(e, "delta_specificity"),
                "flag_rate": num(e.get("flag_rate"), False),
                "threshold": f"{num(t.get('threshold'), False)} [{num(t.get('low'), False)}, "
                f"{num(t.get('high'), False)}]",
                "auroc": num(i.get("auroc"), False),
                "p_value": num(i.get("p_value"), False),
                "gain": num(i.get("cv_auroc_gain")),
                "note": str(e.get("note") or i.get("note") or ""),
            }
        )
    settings = evidence.get("settings") or {}
    return {
        "rows": rows,
        "folds": settings.get("n_splits", "?"),
        "repeats": settings.get("n_repeats", "?"),
    }


def _rule(monitor: FlagMonitor) -> str:
    return f"{score_name(monitor.method)}_k {'<' if monitor.direction == 'below' else '>'} τ_k"


def _no_maps_note(informer: bool, has_image: bool, has_maps: bool) -> str:
    if not informer:
        return "this method uses no saliency maps"
    if has_maps and not has_image:
        return "maps not shown: the image is missing"
    return "no maps: give maps_dir (saved by flag_folder) or model"


def _card(
    r: FlagRow,
    classes: Sequence[str],
    monitor: FlagMonitor,
    y: NDArray[np.float64] | None,
) -> dict[str, Any]:
    """The gallery card of one row, without its pictures (see :func:`_draw`); ``y`` (K,)."""
    rows = []
    for j, c in enumerate(classes):
        label = "–"
        if y is not None and math.isfinite(float(y[j])):
            label = str(int(y[j]))
        rows.append(
            {
                "name": c,
                "prob": f"{r.probs[j]:.3f}",
                "t": f"{monitor.prediction_thresholds_[j]:.3f}",
                "pred": int(r.pred[j]),
                "score": f"{r.score[j]:.3f}",
                "tau": f"{monitor.flag_thresholds_[j]:.3f}",
                "flag": bool(r.flag[j]),
                "audited": int(r.audited[j]),
                "label": label,
            }
        )
    checked = math.isfinite(r.input_p)
    return {
        "input": {"score": f"{r.input_score:.4g}", "p": f"{r.input_p:.4g}", "flag": r.input_flag}
        if checked
        else None,
        "id": f"row-{r.row}",
        "row": r.row,
        "key": r.key,
        "class_names": list(classes),
        "image": None,
        "image_note": "",
        "overlays": None,
        "maps_note": "",
        "classes": rows,
        "flagged_names": [c for c, f in zip(classes, r.flag, strict=True) if f],
        "flagged_idx": " ".join(str(j) for j in np.flatnonzero(r.flag)),
        "n_flags": int(r.flag.sum()),
        "scores": [round(float(v), 6) for v in r.score],
        "probs": [round(float(v), 6) for v in r.probs],
        "dist": None,
    }


def _shown_maps(
    shown: Sequence[FlagRow],
    found: Mapping[int, Path],
    store: MapStore | None,
    model: OnnxClassifier | None,
    monitor: FlagMonitor,
    binding: Mapping[str, Any],
    summary: ReportSummary,
    monitor_source: str,
    progress: Progress | None,
) -> tuple[dict[int, NDArray[np.float64]], dict[int, NDArray[np.float64]], dict[int, str]]:
    """Class maps (K, ...) and distance matrices (K, K) of the shown rows, by CSV row, and
    where each came from (``"saved"`` or ``"recomputed"``)."""
    maps: dict[int, NDArray[np.float64]] = {}
    dists: dict[int, NDArray[np.float64]] = {}
    sources: dict[int, str] = {}
    if not scorer_class(monitor.method).has_maps:
        return maps, dists, sources
    todo = []
    absent = []
    for r in shown:
        stored = store.load(r.key) if store is not None else None
        if store is not None and stored is None:
            absent.append(r.key)
        if stored is not None:
            path = found.get(r.row)
            same = True
            if path is not None and stored.image_sha256:
                try:
                    same = content_sha256(path) == stored.image_sha256
                except OSError:
                    same = True  # unreadable: the image stage records it
            if same:
                maps[r.row], dists[r.row] = stored.maps, stored.dist
                sources[r.row] = "saved"
                continue
            summary.notes.append(
                f"{r.key}: the image file differs from the one whose maps were saved; "
                + ("recomputing them" if model is not None else "its saved maps are not shown")
            )
        if r.row in found:
            todo.append(r)
    if store is not None and absent:
        summary.notes.append(
            f"{len(absent)} shown image(s) have no saved maps in {store.directory} "
            f"(e.g. {absent[0]})"
            + ("; recomputed" if model is not None else "; give model to recompute them")
        )
    if model is None or not todo:
        return maps, dists, sources
    scorer = scorer_from_binding(binding, source=monitor_source)
    auditor = Auditor(model, scorer, list(binding["audited_classes"]), keep_maps=True)
    check_binding(binding, auditor.binding(), source=monitor_source)
    done = 0

    def tick(_r: ImageResult) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(todo), "maps")

    by_row = {r.row: r for r in todo}
    items = [(str(r.row), found[r.row]) for r in todo]
    for result in auditor.run(items, tick):
        r = by_row[int(result.key)]
        if not result.ok or result.maps is None or result.d is None or result.dist is None:
            summary.notes.append(f"{r.key}: the maps could not be recomputed: {result.error}")
            continue
        maps[r.row], dists[r.row] = result.maps, result.dist
        sources[r.row] = "recomputed"
        gap = float(np.max(np.abs(result.d - r.score)))
        if gap > 1e-4 * max(1.0, float(np.max(np.abs(r.score)))):
            summary.notes.append(
                f"{r.key}: recomputed d differs from the CSV's by up to {gap:.3g} (has the image "
                "file changed since the flag run?)"
            )
    return maps, dists, sources


def _settings_rows(
    flags_csv: Path,
    monitor_path: Path,
    monitor: FlagMonitor,
    binding: Mapping[str, Any],
    calibration: Mapping[str, Any],
    model: OnnxClassifier | None,
    root: Path | None,
    store: MapStore | None,
    summary: ReportSummary,
) -> list[tuple[str, str]]:
    pre = binding["preprocessing"]
    h, w = pre["image_size"]
    rows = [
        ("flags CSV", str(flags_csv)),
        ("monitor", str(monitor_path)),
        ("model", str(model.path) if model is not None else "(not given)"),
        ("model sha256", str(binding["model_sha256"])),
        ("model classes", ", ".join(binding["class_names"])),
        ("audited classes", ", ".join(binding["audited_classes"])),
        (
            "preprocessing",
            f"{h} x {w}, {pre['channels']} channel(s), {pre['layout']}, pixels / {pre['scale']:g}, "
            f"mean {pre['mean']}, std {pre['std']}, outputs {pre['output']}",
        ),
        ("method", monitor.method + f" (flag when {_rule(monitor)})"),
    ]
    if binding.get("saliency") is not None:
        sal = dict(binding["saliency"])
        rows.append(
            (
                "saliency",
                f"{sal.pop('name', '?')}: "
                + ", ".join(f"{key}={value}" for key, value in sorted(sal.items())),
            )
        )
    if binding.get("method"):
        rows.append(("method settings", json.dumps(binding["method"], sort_keys=True)))
    if calibration:
        n = calibration.get("n_images")
        src = calibration.get("labels_file")
        rows.append(
            (
                "calibration",
                f"{n if n is not None else '?'} images"
                + (f" from {src}" if src else "")
                + (f", split {calibration['filters']['split']}" if _split(calibration) else ""),
            )
        )
    rows.append(("images looked up under", str(root) if root else "(as written in the CSV)"))
    rows.append(("class maps", _maps_text(summary.maps, store)))
    return rows


def _split(calibration: Mapping[str, Any]) -> bool:
    filters = calibration.get("filters")
    return isinstance(filters, Mapping) and bool(filters.get("split"))


def _maps_text(source: str, store: MapStore | None) -> str:
    where = f" ({store.directory})" if store is not None else ""
    return {
        "saved": f"saved at flag time{where}",
        "recomputed": "recomputed for the shown images",
        "saved+recomputed": f"saved at flag time{where}, some recomputed",
    }.get(source, "none")


def _render(page: Mapping[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("informer_audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE).render(**page)


def _remove_stale(outdir: Path, written: Sequence[Path]) -> None:
    """Remove generated assets of an earlier report that this one did not write."""
    keep = {p.name for p in written}
    for p in sorted((outdir / ASSETS).iterdir()):
        if p.is_file() and _STALE.match(p.name) and p.name not in keep:
            p.unlink()


__all__ = [
    "ReportSummary",
    "build_report",
]
