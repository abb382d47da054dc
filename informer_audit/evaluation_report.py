"""An :class:`~.evaluation.Evaluation` -> CSV tables, two plots and a Markdown report.

:func:`write_evaluation_report` writes :data:`REPORT_FILES` into one folder: the paper's tables
as CSV, the bootstrap box plot (Fig. 3) and the risk-coverage curves as PNG (:mod:`.png`: no
``Software`` entry), and ``report.md`` (:func:`render_evaluation_markdown`). No timestamps: the
same evaluation, title and provenance give byte-identical files. (The HTML report of a flag run
is :mod:`.report`'s.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ReportError
from .evaluation import NO_AUDIT, RETUNED, Evaluation, Table, md_cell
from .fileio import atomic_write_bytes, atomic_write_text
from .png import png_from_figure

logger = logging.getLogger(__name__)

REPORT_FILES = (
    "table1.csv",
    "sensitivity.csv",
    "specificity.csv",
    "flags.csv",
    "thresholds.csv",
    "bootstrap.csv",
    "ttests.csv",
    "paired_bootstrap.csv",
    "information.csv",
    "failure_metrics.csv",
    "bootstrap_boxplot.png",
    "risk_coverage.png",
    "report.md",
)
"""Files :func:`write_evaluation_report` writes (the two PNGs only with ``plots=True``)."""

_INFORMER_COLOUR = "#3b75af"
_BASELINE_COLOUR = "#a6a6a6"
_DASHES = ("--", ":", "-.")


def _stars_reference(result: Evaluation) -> str | None:
    """The baseline the box plot's stars compare against (the paper: predictive entropy)."""
    if "entropy" in result.baseline_methods:
        return "entropy"
    return result.baseline_methods[0] if result.baseline_methods else None


def bootstrap_boxplot(result: Evaluation) -> bytes:
    """The paper's Fig. 3 as PNG bytes: bootstrap mean F1 per method, stars vs. entropy."""
    from matplotlib.figure import Figure

    rows = result.rows
    data = [v[np.isfinite(v)] for v in (result.bootstrap_mean_f1[r] for r in rows)]
    fig = Figure(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 4.2))
    ax = fig.add_subplot()
    positions = np.arange(1, len(rows) + 1)
    parts = ax.boxplot(data, positions=positions, widths=0.6, patch_artist=True)
    for box, name in zip(parts["boxes"], rows, strict=True):
        colour = _INFORMER_COLOUR if name in result.informer_methods else _BASELINE_COLOUR
        box.set_facecolor("white" if name == NO_AUDIT else colour)
    for median in parts["medians"]:
        median.set_color("black")
    ax.set_xticks(positions, rows, rotation=20, ha="right")
    ax.set_ylabel("mean F1 over classes")
    ref = _stars_reference(result)
    title = f"Bootstrap: {result.n_bootstrap} sets of {result.n_test} test images"
    if ref is not None and result.informer_methods:
        levels = "* p<=0.05, ** p<=0.01, *** p<=0.001"
        title += f"\n(stars: two-sided paired t-test vs {ref}; {levels})"
        finite = [d for d in data if d.size]
        low = min((float(d.min()) for d in finite), default=0.0)
        high = max((float(d.max()) for d in finite), default=1.0)
        margin = 0.06 * max(high - low, 1e-3)
        for t in result.ttests:
            i = rows.index(t.informer)
            if t.baseline == ref and t.stars and data[i].size:
                top = float(data[i].max()) + margin / 3
                ax.text(positions[i], top, t.stars, ha="center", va="bottom", fontsize=12)
        ax.set_ylim(low - margin, high + 2 * margin)  # room for the stars
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_from_figure(fig)


def risk_coverage_plot(result: Evaluation) -> bytes:
    """Selective risk against coverage, one panel per class, one curve per method (PNG)."""
    from matplotlib.figure import Figure

    k = len(result.class_names)
    ncols = min(k, 3)
    nrows = -(-k // ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j, cname in enumerate(result.class_names):
        ax = axes[j // ncols][j % ncols]
        for i, name in enumerate(result.methods):
            curve = result.failure[name].curves[j]
            if curve is None:
                continue
            # Baselines dashed, each its own pattern: entropy and MSP rank images alike (both
            # are monotone in |p - 0.5|), so their curves coincide and must stay visible.
            style = "-" if name in result.informer_methods else _DASHES[i % len(_DASHES)]
            ax.plot(curve.coverage, curve.selective_risk, style, label=name, linewidth=1.4)
        ax.set_title(cname, fontsize=10)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("coverage")
        ax.set_ylabel("selective risk")
        ax.grid(alpha=0.3)
    for j in range(k, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return png_from_figure(fig)


def provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """A Markdown table of a run's provenance (strings as they are, other values as JSON)."""
    lines = ["| item | value |", "|---|---|"]
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines.append("| " + md_cell(str(key), "") + " | " + md_cell(text, "") + " |")
    return lines


def render_evaluation_markdown(
    result: Evaluation, *, title: str, provenance: Mapping[str, Any], plots: bool = True
) -> str:
    """The Markdown report: provenance, every table, and links to the plots (``plots``)."""
    classes = result.class_names
    flags_total = {r[0]: r[-1] for r in result.flags_table().rows}
    t1 = result.table1()
    t1_flags = Table((*t1.columns, "flags"), tuple((*row, flags_total[row[0]]) for row in t1.rows))
    method_lines = [
        f"- `{m}`: flags when its score is {result.directions[m]} its class threshold"
        + (" (saliency maps)" if m in result.informer_methods else " (baseline)")
        for m in result.methods
    ]
    if RETUNED in result.test:
        method_lines.append(
            f"- `{RETUNED}`: no monitor; the model's predictions at the thresholds that maximise "
            "F1 on the calibration set instead of Youden's (what re-thresholding alone buys; "
            "its flag count is the number of predictions that differ from `no_audit`)."
        )
    ref = _stars_reference(result)
    out = [
        f"# {title}",
        "",
        "## Provenance",
        "",
        *provenance_lines({**provenance, "informer-audit": __version__}),
        "",
        "## Setup",
        "",
        f"- Classes: {', '.join(classes)}.",
        f"- Calibration set: {result.n_calibration} images. On it, each class gets its "
        "prediction threshold (Youden index) and each method its flag thresholds (grid step "
        f"{result.grid_step:g}, best F1 after swapping the flagged predictions, ties flag "
        "fewest).",
        f"- Test set: {result.n_test} images; every number below is measured on it.",
        *method_lines,
        f"- Bootstrap: {result.n_bootstrap} test sets of {result.n_test} images drawn with "
        f"replacement (seed {result.seed}).",
        "",
        "> **How to read this.** `no_audit` is the model's own predictions with nothing swapped: "
        "the reference every monitor must beat. A monitor that flags nothing ties `no_audit` "
        "exactly, so check the flag counts: a tie with 0 flags is abstention, not equal skill. "
        "Means are over the classes where the metric is defined.",
        "",
        "## Table 1: F1 after swapping",
        "",
        t1_flags.to_markdown(".3f"),
        "## Sensitivity after swapping (the paper's Table S2)",
        "",
        result.sensitivity_table().to_markdown(".3f"),
        "## Specificity after swapping (the paper's Table S1)",
        "",
        result.specificity_table().to_markdown(".3f"),
        "## Flags on the test set",
        "",
        "Flagged predictions among the labelled images of each class.",
        "",
        result.flags_table().to_markdown(),
        "## Thresholds fitted on the calibration set",
        "",
        result.thresholds_table().to_markdown(".4g"),
        "## Bootstrap",
        "",
        *(["![Bootstrap mean F1 per method](bootstrap_boxplot.png)", ""] if plots else []),
        result.bootstrap_summary_table().to_markdown(".3f"),
        "### Paired t-tests (the paper's protocol)",
        "",
        f"As in the paper: two-sided `scipy.stats.ttest_rel` over the {result.n_bootstrap} "
        "bootstrap mean F1s, each map-based method against each baseline and against "
        "`no_audit` (p n/a: the differences do not vary)."
        + (f" The box plot's stars compare against `{ref}`." if ref else "")
        + " These p-values overstate significance: the bootstrap sets are resamples of one "
        "test set, not independent samples of new patients, and the t statistic grows with "
        "the square root of their number, which is arbitrary. Read the paired bootstrap "
        "below instead.",
        "",
        Table(
            ("informer", "vs", "mean_difference", "t", "p_value", ""),
            tuple(
                (t.informer, t.baseline, t.mean_difference, t.statistic, t.p_value, t.stars)
                for t in result.ttests
            ),
        ).to_markdown(".3f", {"p_value": ".3g"}),
        *_paired_section(result),
        *_information_section(result),
        "## Failure detection (threshold-free)",
        "",
        'For each class, "the prediction is wrong" (before any swap) against each method\'s '
        "score, oriented so that a higher score means more likely wrong. AUROC: higher is "
        "better, 0.5 is chance. AURC: area under selective risk (errors among the accepted / "
        "accepted) against coverage; AUGRC: area under generalized risk (accepted and wrong / "
        "all) against coverage (Traub et al. 2024); lower is better for both. Curves are "
        "evaluated at the distinct score values, trapezoids between them.",
        "",
        Table(
            ("method", "mean_auroc", "mean_aurc", "mean_augrc"),
            tuple(
                (
                    m,
                    result.failure[m].mean_auroc,
                    result.failure[m].mean_aurc,
                    result.failure[m].mean_augrc,
                )
                for m in result.methods
            ),
        ).to_markdown(".4f"),
        "Per class:",
        "",
        result.failure_table().to_markdown(".4f"),
        "The model's errors on the test set:",
        "",
        result.errors_table().to_markdown(".3f"),
        *(["![Risk-coverage curves per class](risk_coverage.png)", ""] if plots else []),
        "## Files",
        "",
        *(
            f"- `{name}`"
            for name in REPORT_FILES
            if name != "report.md" and (plots or not name.endswith(".png"))
        ),
        "",
    ]
    return "\n".join(out)


def _paired_section(result: Evaluation) -> list[str]:
    if not result.paired:
        return []
    return [
        "### Paired bootstrap of the difference in mean F1",
        "",
        f"{result.n_resamples} test sets drawn with replacement (seed {result.seed}), the same "
        "for every method; `difference` is the observed difference in mean F1 (method minus "
        "the row it is compared with) on the test set, `low`/`high` the 95% percentile "
        "interval of the resampled differences, `p_value` two-sided from the resamples. Each "
        "row is compared with `no_audit`; the map-based methods and `retuned` also with the "
        "best baseline (the baseline with the highest mean F1 on this test set). An interval "
        "that contains 0 means no evidence of a difference on this test set.",
        "",
        result.paired_bootstrap_table().to_markdown(".3f", {"p_value": ".3g"}),
    ]


def _information_section(result: Evaluation) -> list[str]:
    if not result.information:
        return []
    return [
        "## Information beyond the model's confidence",
        "",
        'Per method and class, on the test set: the AUROC of the flag score for "the '
        'prediction is wrong" (oriented so that above 0.5 means the score points at errors), '
        "overall and within the predicted positives and negatives; then whether the score adds "
        "anything to a logistic model of errors on a spline of logit p and the prediction "
        "(`lr_statistic`, likelihood-ratio test with 1 degree of freedom, `p_value`; "
        "`cv_auroc_gain`: cross-validated AUROC of the model with the score minus without). "
        "A score that is a function of p alone (entropy, MSP, margin) adds nothing by "
        "construction: its gain is 0 and its p-value 1, however high its AUROC. A high "
        "overall AUROC with AUROCs near 0.5 within predicted positives and negatives means "
        "the score only separates the two predictions.",
        "",
        result.information_table().to_markdown(".3f", {"p_value": ".3g"}),
    ]


def require_matplotlib(what: str) -> None:
    """Refuse plots early, before any file is written, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError(
            f"{what}: matplotlib is needed (pip install matplotlib); or write the report without "
            "plots"
        ) from exc


def write_evaluation_report(
    result: Evaluation,
    outdir: str | Path,
    *,
    title: str = "INFORMER evaluation",
    provenance: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the tables, the plots and the Markdown report into ``outdir``.

    Files (:data:`REPORT_FILES`): ``table1.csv`` (``method``, one column per class with the F1
    after swapping, ``mean_f1``), ``sensitivity.csv``, ``specificity.csv`` (same layout, last
    column ``mean_sensitivity`` / ``mean_specificity``), ``flags.csv`` (``method``, flags per
    class, ``total``), ``thresholds.csv``, ``bootstrap.csv`` (``bootstrap``, ``method``,
    ``mean_f1``), ``ttests.csv`` (``informer``, ``baseline``, ``mean_difference``,
    ``statistic``, ``p_value``, ``n_bootstrap``), ``failure_metrics.csv`` (``method``,
    ``class`` incl. ``mean``, ``auroc``, ``aurc``, ``augrc``), ``bootstrap_boxplot.png``,
    ``risk_coverage.png`` and ``report.md``. Each is written atomically (temporary file and
    rename). The same ``result``, ``title`` and ``provenance`` give byte-identical files: no
    timestamps, PNGs without the software tag.

    Parameters
    ----------
    result : Evaluation
    outdir : path
        Created if missing; files already there are replaced.
    title : str
        The report's heading.
    provenance : mapping, optional
        Shown in the report in the given order (model file and SHA-256, label files, saliency
        settings, seeds, ...): values that are not strings are shown as JSON.
    plots : bool
        Write the two PNGs (needs matplotlib).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ReportError
        When ``plots`` is true and matplotlib is not installed.
    """
    outdir = Path(outdir)
    if plots:
        require_matplotlib("the evaluation plots")
    outdir.mkdir(parents=True, exist_ok=True)
    tables = {
        "table1.csv": result.table1(),
        "sensitivity.csv": result.sensitivity_table(),
        "specificity.csv": result.specificity_table(),
        "flags.csv": result.flags_table(),
        "thresholds.csv": result.thresholds_table(),
        "bootstrap.csv": result.bootstrap_table(),
        "ttests.csv": result.ttest_table(),
        "paired_bootstrap.csv": result.paired_bootstrap_table(),
        "information.csv": result.information_table(),
        "failure_metrics.csv": result.failure_table(),
    }
    written = []
    for name, table in tables.items():
        atomic_write_text(outdir / name, table.to_csv())
        written.append(outdir / name)
    if plots:
        for name, render in (
            ("bootstrap_boxplot.png", bootstrap_boxplot),
            ("risk_coverage.png", risk_coverage_plot),
        ):
            atomic_write_bytes(outdir / name, render(result))
            written.append(outdir / name)
    report = render_evaluation_markdown(
        result, title=title, provenance=dict(provenance or {}), plots=plots
    )
    atomic_write_text(outdir / "report.md", report)
    written.append(outdir / "report.md")
    logger.info("evaluation report written to %s (%d files)", outdir, len(written))
    return written


__all__ = [
    "REPORT_FILES",
    "bootstrap_boxplot",
    "render_evaluation_markdown",
    "risk_coverage_plot",
    "write_evaluation_report",
]
