"""What the commands show: rich tables, progress bars and one-line messages.

The library never prints; it returns summary objects and warns through :mod:`warnings`. This
module turns them into terminal output (tables on stdout, notes and progress on stderr).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..progress import Progress


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 160  # logs and CI: do not squeeze tables into 80 columns
    return out


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def note(text: str) -> None:
    """One line on stderr (rich markup allowed; escape what comes from files)."""
    console(stderr=True).print(text)


def done(text: str) -> None:
    """The closing line on stdout: what was written where (escaped)."""
    console().print(escape(text))


def fmt(v: float, digits: int = 3) -> str:
    return "–" if v != v else f"{v:.{digits}f}"  # NaN -> dash


def progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=False,
    )


@contextlib.contextmanager
def stage_progress(prefix: str = "") -> Iterator[Progress]:
    """A progress bar per stage: yields ``on_progress(done, total, stage)`` (:class:`.Progress`)."""
    tasks: dict[str, Any] = {}
    with progress() as bars:

        def on_progress(n_done: int, total: int, stage: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(f"{prefix}{stage}", total=total)
            bars.update(tasks[stage], completed=n_done)

        yield on_progress


def _field_table(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    console().print(table)


def _columns(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ("class",)) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(escape(col), justify="left" if col in left else "right")
    return table


# -- info and export ----------------------------------------------------------------------------
def provenance_line(prov: Any) -> str:
    """One line for `info` from the exporter's provenance record (raw text if not an object)."""
    if not isinstance(prov, dict):
        return str(prov)
    ckpt = prov.get("checkpoint")
    if isinstance(ckpt, dict):
        weights = (
            f"{ckpt.get('file')} (sha256 {str(ckpt.get('sha256'))[:12]}…, {ckpt.get('layout')})"
        )
    elif prov.get("random_init"):
        weights = f"random initialisation (seed {prov.get('random_init_seed')})"
    else:
        weights = "unknown weights"
    return (
        f"{prov.get('architecture', '?')} from {weights} by {prov.get('tool', '?')} "
        f"{prov.get('tool_version', '')}, torch {prov.get('torch_version', '?')}, "
        f"opset {prov.get('opset', '?')}"
    )


_RESIZE_SHOWN = {
    "uint8": "uint8: 8-bit sources in 8 bits (Pillow bilinear), others in float",
    "float": "float: every source in float (Pillow bilinear)",
}


def model_description(desc: dict[str, Any]) -> None:
    card = desc["card"]
    put, out = desc["input"], desc["output"]
    rows = [
        ("sha256", desc["sha256"]),
        ("producer", desc["producer"] or "–"),
        ("opsets", ", ".join(f"{k} {v}" for k, v in desc["opsets"].items())),
        ("input", f"{put['name']} {put['type']} {list(put['shape'])}"),
        ("output", f"{out['name']} {out['type']} {list(out['shape'])}"),
        ("batch axis", desc["batch"]),
        ("layout", card["layout"]),
        ("image size", f"{card['image_size'][0]} x {card['image_size'][1]}"),
        ("channels", str(card["channels"])),
        ("resize", _RESIZE_SHOWN.get(card.get("resize"), str(card.get("resize")))),
        ("scale", f"pixels / {card['scale']:g}"),
        ("mean", ", ".join(f"{v:g}" for v in card["mean"])),
        ("std", ", ".join(f"{v:g}" for v in card["std"])),
        ("output kind", card["output"]),
        ("classes", ", ".join(card["class_names"])),
        ("preprocessing from", desc["card_source"]),
        ("execution providers", ", ".join(desc["providers"])),
        ("device", desc["device_note"]),
    ]
    if desc.get("provenance") is not None:
        rows.append(("exported", provenance_line(desc["provenance"])))
    _field_table(f"{desc['path']}", rows)


def export_result(architecture: str, result: Any) -> None:
    card, prov = result.card, result.provenance
    checkpoint = prov.get("checkpoint")
    h, w = card.image_size
    mean, std = (", ".join(f"{v:g}" for v in values) for values in (card.mean, card.std))
    weights = (
        f"{checkpoint['file']} (sha256 {checkpoint['sha256']}; {checkpoint['layout']})"
        if checkpoint
        else f"random initialisation (seed {prov.get('random_init_seed')})"
    )
    rows = [
        ("output", str(result.path)),
        ("sha256", result.sha256),
        ("weights", weights),
        ("classes", ", ".join(card.class_names)),
        ("input", f"{prov['input']} (batch, {card.channels}, {h}, {w}) float32, NCHW"),
        ("preprocessing", f"pixels / {card.scale:g}, mean {mean}, std {std}"),
        ("output", f"{prov['output']} (batch, {len(card.class_names)}), {card.output}"),
        ("opset", f"{prov['opset']} ({prov['exporter']}, torch {prov['torch_version']})"),
        (
            "check",
            f"max |torch - ONNX Runtime| = {result.max_abs_diff:.3g} on {result.n_verified} "
            f"random inputs (tolerance {result.tolerance:g}): passed",
        ),
    ]
    _field_table(f"Exported {architecture}", rows)


# -- calibrate and flag -------------------------------------------------------------------------
def scoring_note(scorer: Any) -> str:
    adapter, tta = getattr(scorer, "adapter", None), getattr(scorer, "tta", None)
    if adapter is not None:
        return f"saliency {adapter.settings()}"
    return f"method {scorer.name}" + (f" {tta}" if tta else "")


def calibration(result: Any) -> None:
    mon = result.monitor
    sign = "<" if mon.direction == "below" else ">"
    rule = f"{mon.method}, score {sign} τ flags"
    if mon.method == "informer":
        rule = "INFORMER, d < τ flags"
    elif mon.method == "learned":
        rule = "learned flagger, out-of-fold P(wrong) > τ flags"
    columns: tuple[str, ...] = ("class", "n", "pos", "pred. thr", "τ", "flags", "F1 before")
    columns += ("F1 after", "sens. before→after", "spec. before→after")
    table = _columns(
        f"In-sample: calibration on {len(result.results)} images ({rule}; measured on the "
        "images the thresholds were fitted on)",
        columns,
    )
    notes = []
    for f in mon.fits_:
        table.add_row(
            escape(f.name),
            str(f.n),
            str(f.n_pos),
            f"{f.prediction_threshold:.4f}",
            f"{f.flag_threshold:.3f}",
            str(f.n_flags),
            fmt(f.f1_before),
            fmt(f.f1_after),
            f"{fmt(f.sensitivity_before)}→{fmt(f.sensitivity_after)}",
            f"{fmt(f.specificity_before)}→{fmt(f.specificity_after)}",
        )
        if f.note:
            notes.append(f"{f.name}: {f.note}")
    out = console()
    out.print(table)
    for text in notes:
        out.print(f"[yellow]note[/] {escape(text)}")


def input_check(check: Any) -> None:
    """calibrate's line about the fitted input check (nothing without one)."""
    if check is None:
        return
    console().print(f"[bold]input check[/]: {escape(check.describe())}")


def input_summary(summary: Any) -> None:
    """flag's line: how many images the input check flagged, at which alpha."""
    check = summary.input_check
    if check is None:
        note("input check: none (the monitor was fitted without one; re-run calibrate to add it)")
        return
    alpha = summary.input_alpha
    rate = summary.n_input_flagged / summary.n_ok if summary.n_ok else float("nan")
    text = (
        f"[bold]input check[/]: {summary.n_input_flagged} of {summary.n_ok} scored images "
        f"flagged ({fmt(rate)}) at alpha = {alpha:g} ({escape(check.score)}, direction "
        f"{escape(check.direction_)}, {check.n_calibration_} calibration images); images like "
        f"the calibration images are flagged at a rate of at most {alpha:g}"
    )
    if not check.can_flag(alpha):
        text += f" -- [yellow]but no image can be: the smallest p-value is {check.min_p_:.3g}[/]"
    console().print(text)


def _pm(entry: dict[str, Any], key: str) -> str:
    """``+0.012 [-0.004, +0.030]`` from an evidence entry's value and interval."""

    def num(v: Any) -> str:
        return "–" if v is None or v != v else f"{v:+.3f}"

    return (
        f"{num(entry.get(key))} [{num(entry.get(key + '_low'))}, {num(entry.get(key + '_high'))}]"
    )


def evidence(ev: dict[str, Any] | None, monitor: Any) -> None:
    """calibrate's out-of-sample table and the information table (nothing without evidence)."""
    if not ev:
        return
    settings = ev.get("settings", {})
    out = console()
    estimates = ev.get("out_of_sample") or []
    thresholds = {t.get("name"): t for t in ev.get("thresholds") or []}
    columns: tuple[str, ...] = ("class", "verdict", "ΔF1 [95% CI]", "Δsens. [95% CI]")
    columns += ("Δspec. [95% CI]", "flag rate", "pred. thr [95% CI]")
    table = _columns(
        "Out-of-sample: expected effect on new images (repeated stratified "
        f"{settings.get('n_splits', '?')}-fold cross-fitting of the whole fit, "
        f"{settings.get('n_repeats', '?')} repeats; intervals: bootstrap over images)",
        columns,
        left=("class", "verdict"),
    )
    colours = {"expected to help": "green", "expected to hurt": "red"}
    for e in estimates:
        t = thresholds.get(e.get("name"), {})
        verdict = str(e.get("verdict"))
        colour = colours.get(verdict)
        shown = f"[{colour}]{escape(verdict)}[/]" if colour else escape(verdict)
        stab = (
            f"{fmt(_num(t.get('threshold')), 3)} [{fmt(_num(t.get('low')), 3)}, "
            f"{fmt(_num(t.get('high')), 3)}]"
        )
        table.add_row(
            escape(str(e.get("name"))),
            shown,
            _pm(e, "delta_f1"),
            _pm(e, "delta_sensitivity"),
            _pm(e, "delta_specificity"),
            fmt(_num(e.get("flag_rate"))),
            stab,
        )
    out.print(table)
    for e in estimates:
        if e.get("note"):
            out.print(f"[yellow]note[/] {escape(str(e['name']))}: {escape(str(e['note']))}")
    information(ev.get("information") or [], f"{monitor.method} on the calibration set")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def information(entries: list[dict[str, Any]], what: str) -> None:
    """Does the score rank errors, and does it add anything beyond the model's confidence?"""
    if not entries:
        return
    columns: tuple[str, ...] = ("class", "n wrong", "AUROC all", "AUROC pred.+")
    columns += ("AUROC pred.−", "LR test p", "CV AUROC gain")
    table = _columns(
        f"Information beyond the probability ({what}): AUROC of the score for 'prediction "
        "wrong'; likelihood-ratio test of adding the score to a model of errors on logit p",
        columns,
    )
    notes = []
    for e in entries:
        table.add_row(
            escape(str(e.get("name"))),
            f"{e.get('n_wrong', '–')}/{e.get('n', '–')}",
            fmt(_num(e.get("auroc"))),
            fmt(_num(e.get("auroc_pred_pos"))),
            fmt(_num(e.get("auroc_pred_neg"))),
            fmt(_num(e.get("p_value")), 3),
            "–" if e.get("cv_auroc_gain") is None else f"{float(e['cv_auroc_gain']):+.3f}",
        )
        if e.get("note"):
            notes.append(f"{e.get('name')}: {e['note']}")
    out = console()
    out.print(table)
    for text in notes:
        out.print(f"[yellow]note[/] {escape(text)}")


def cache_counts(hits: int, misses: int, directory: Any) -> None:
    note(f"score cache: {hits} hit(s), {misses} computed ({escape(str(directory))})")


def auditor_cache(auditor: Any) -> None:
    if auditor.cache is not None:
        cache_counts(auditor.cache_hits, auditor.cache_misses, auditor.cache.directory)


def _listed(items: list[tuple[str, str]], more: str) -> None:
    err = console(stderr=True)
    for key, text in items[:20]:
        err.print(f"  {escape(key)}: {escape(text)}")
    if len(items) > 20:
        err.print(f"  ... and {len(items) - 20} more{more}")


def failures(items: list[tuple[str, str]]) -> None:
    if not items:
        return
    # "failed", not "skipped": skipped files (not images, hidden) are a list of their own.
    note(f"[bold yellow]{len(items)} file(s) failed[/] and were not scored:")
    _listed(items, " (see the output file)")


def flag_summary(summary: Any, evidence: dict[str, Any] | None = None) -> None:
    """The audit's counts per class; with the monitor's evidence, calibrate's cross-fitted
    expectation beside them (expected flag rate, expected change in F1, verdict)."""
    title = (
        f"Audit of {summary.n_images} images ({summary.n_ok} scored, {summary.n_failed} failed)"
        + (f"; {len(summary.skipped)} other file(s) skipped" if summary.skipped else "")
    )
    columns: tuple[str, ...] = ("class", "predicted positive", "flagged", "flag rate")
    columns += ("audited positive",)
    expected = {e.get("name"): e for e in (evidence or {}).get("out_of_sample") or []}
    if expected:
        columns += ("expected flag rate", "expected ΔF1 [95% CI]", "calibrate's verdict")
    table = _columns(title, columns, left=("class", "calibrate's verdict"))
    for j, name in enumerate(summary.classes):
        rate = summary.flagged[j] / summary.n_ok if summary.n_ok else float("nan")
        cells = [
            escape(name),
            str(summary.predicted[j]),
            str(summary.flagged[j]),
            fmt(rate),
            str(summary.audited[j]),
        ]
        if expected:
            e = expected.get(name, {})
            cells += [
                fmt(_num(e.get("flag_rate"))),
                _pm(e, "delta_f1"),
                escape(str(e.get("verdict", "–"))),
            ]
        table.add_row(*cells)
    console().print(table)
    input_summary(summary)
    skipped(summary.skipped)


def skipped(items: list[tuple[str, str]]) -> None:
    """Files under --images that were not audited (not images, hidden, ...): counts, then a list."""
    if not items:
        return
    kinds: dict[str, int] = {}
    for _, reason in items:
        kind = reason.split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    note(
        f"[bold]{len(items)} file(s) under --images were skipped[/] (no row in the CSV): "
        + ", ".join(f"{n} {escape(kind)}" for kind, n in kinds.items())
    )
    # Hidden files (a .git folder) would crowd out the rest: list the others first.
    _listed(sorted(items, key=lambda item: "hidden" in item[1]), "")


def flag_notes(summary: Any) -> None:
    if summary.n_resumed:
        note(
            f"resumed: {summary.n_resumed} image(s) already audited by an interrupted run "
            "(rows taken from its journal, not scored again)"
        )
    if summary.n_duplicates:
        note(
            f"{summary.n_duplicates} file(s) have the same bytes as another file in this "
            "folder: their rows were copied from it (not scored twice)"
        )


# -- evaluate -----------------------------------------------------------------------------------
def evaluation(run: Any) -> None:
    ev = run.evaluation
    f1 = {row[0]: row[1:] for row in ev.table1().rows}
    flags = {row[0]: row[-1] for row in ev.flags_table().rows}
    median = {row[0]: row[1] for row in ev.bootstrap_summary_table().rows}
    table = _columns(
        f"Table 1: F1 after swapping on {ev.n_test} test images "
        f"(thresholds from {ev.n_calibration} calibration images)",
        ("method", *ev.class_names, "mean F1", "flags", "bootstrap median", "AUROC"),
        left=("method",),
    )
    for row in ev.rows:
        auroc = ev.failure[row].mean_auroc if row in ev.failure else float("nan")
        table.add_row(
            escape(row), *(fmt(v) for v in f1[row]), str(flags[row]), fmt(median[row]), fmt(auroc)
        )
    out = console()
    out.print(table)
    if ev.ttests:
        tests = _columns(
            f"The paper's protocol: paired t-tests over {ev.n_bootstrap} bootstrap sets (mean "
            "F1; overstates significance, see the paired bootstrap)",
            ("method", "vs", "mean difference", "t", "p"),
            left=("method", "vs"),
        )
        for t in ev.ttests:
            p = "n/a" if t.p_value != t.p_value else f"{t.p_value:.3g} {t.stars}".strip()
            tests.add_row(t.informer, t.baseline, f"{t.mean_difference:+.4f}", fmt(t.statistic), p)
        out.print(tests)
    if ev.paired:
        paired = _columns(
            f"Paired bootstrap of the difference in mean F1 ({ev.n_resamples} resamples of the "
            "test set)",
            ("method", "vs", "difference [95% CI]", "p"),
            left=("method", "vs"),
        )
        for a, b, r in ev.paired:
            d = {"d": r.mean_difference, "d_low": r.low, "d_high": r.high}
            paired.add_row(escape(a), escape(b), _pm(d, "d"), fmt(r.p_value, 3))
        out.print(paired)


def evaluation_notes(run: Any, cache_dir: Any) -> None:
    failures([(f"{f.image_set}: {f.key}", f.error) for f in run.failures])
    if run.overlap:
        note(
            f"[yellow]note[/] {len(run.overlap)} test image(s) are also calibration images "
            f"(e.g. {escape(run.overlap[0])}): the numbers are optimistic"
        )
    if cache_dir is not None:
        cache_counts(run.cache_hits, run.cache_misses, cache_dir)


# -- report -------------------------------------------------------------------------------------
def report_summary(summary: Any) -> None:
    for text in summary.notes:
        note(f"[yellow]note[/] {escape(text)}")
    for key, why in summary.missing_images[:20]:
        note(f"[yellow]image not shown[/] {escape(key)}: {escape(why)}")
    if len(summary.missing_images) > 20:
        note(f"  ... and {len(summary.missing_images) - 20} more (listed in the report)")
    done(
        f"report written to {summary.index}: {summary.n_images} images "
        f"({summary.n_failed} failed), {summary.n_flagged_images} with a flag; "
        f"{summary.n_gallery} flagged and {summary.n_contrast} unflagged shown; class maps: "
        f"{summary.maps}"
    )
