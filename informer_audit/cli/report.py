"""``report``: a static HTML report of a flag run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import class_map, read_labels


def build_report(flags_csv: Path, monitor_path: Path, outdir: Path, **kw: Any) -> Any:
    """Build the HTML report with a progress bar, render its summary; returns the summary."""
    from ..report import build_report as build

    with render.stage_progress("report: ") as on_progress:
        summary = build(flags_csv, monitor_path, outdir, progress=on_progress, **kw)
    render.report_summary(summary)
    return summary


def _model(kw: dict[str, Any], binding: dict[str, Any]) -> Any:
    """``--model`` (card: its metadata, --model-card, then the monitor's), or None."""
    from ..model import OnnxClassifier

    if kw["model_path"] is None:
        if kw["model_card"] is not None:
            raise click.UsageError("--model-card applies to --model")
        return None
    return OnnxClassifier(
        kw["model_path"],
        card_file=kw["model_card"],
        device=kw["device"],
        threads=kw["threads"],
        fallback_card={"class_names": binding["class_names"], **binding["preprocessing"]},
        fallback_source=f"monitor {kw['monitor_path']}",
    )


def _labels(kw: dict[str, Any], audited: list[str]) -> Any:
    """``--labels`` read for the audited classes, or None."""
    if kw["labels_csv"] is None:
        if kw["classes"] is not None:
            raise click.UsageError("--classes applies to --labels")
        return None
    classes = class_map(kw, audited)
    if set(classes) != set(audited):
        raise click.UsageError(
            f"--classes must name every audited class once ({', '.join(audited)}); got "
            f"{', '.join(classes)}"
        )
    images = kw["images"] or Path(kw["labels_csv"]).parent
    return read_labels(
        kw, kw["labels_csv"], images, {c: classes[c] for c in audited}, split=kw["split"]
    )


@cli.command("report")
@click.argument("flags_csv", type=opt.EXISTING_FILE)
@opt.monitor("The monitor JSON that flag applied (thresholds, model binding, saliency settings).")
@opt.output("Report folder: index.html and assets/ (opens offline in any browser).", folder=True)
@opt.images(
    "Folder the CSV's image paths are looked up under (default: as written, then relative to "
    "the CSV's folder).",
    required=False,
)
@click.option(
    "--maps", "maps_dir", type=opt.EXISTING_DIR, help="Class maps saved by flag --save-maps."
)
@click.option(
    "--model",
    "model_path",
    type=opt.EXISTING_FILE,
    help="The audited ONNX model: recomputes the maps of the shown images that --maps lacks.",
)
@opt.model_card
@opt.device
@opt.threads
@opt.labels(
    "Labels of the audited images (plain, CheXpert or NIH): F1 before/after swapping.",
    required=False,
)
@opt.classes
@opt.label_format
@opt.uncertain
@opt.split
@opt.path_column
@click.option(
    "--max-gallery",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Flagged images shown, the most strongly flagged first (all are listed).",
)
@click.option(
    "--contrast",
    "n_contrast",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Unflagged images shown for contrast, spread evenly over the CSV.",
)
@handle_errors
def report_command(**kw: Any) -> None:
    """Write a static HTML report of a flag run: counts, per-class score histograms with tau,
    a gallery of flagged images with their class maps, unflagged examples and failures.

    The maps come from --maps (flag --save-maps) or, for the shown images only, are recomputed
    with --model; a baseline monitor (entropy, tta, msp) has none.
    """
    from ..monitorfile import load_monitor
    from ..paths import RunPaths

    paths = RunPaths(
        {
            "FLAGS_CSV": kw["flags_csv"],
            "--monitor": kw["monitor_path"],
            "--model": kw["model_path"],
            "--model-card": kw["model_card"],
            "--labels": kw["labels_csv"],
        },
        {"--images": kw["images"], "--maps": kw["maps_dir"]},
        {},
        {"-o": kw["output"]},
    )
    paths.check()
    binding = load_monitor(kw["monitor_path"]).binding
    model = _model(kw, binding)
    if model is not None:
        paths.check({"--model": model.files})  # with its external data
    labels = _labels(kw, [str(c) for c in binding["audited_classes"]])
    summary = build_report(
        kw["flags_csv"],
        kw["monitor_path"],
        kw["output"],
        model=model,
        images_root=kw["images"],
        labels=labels,
        maps_dir=kw["maps_dir"],
        max_gallery=kw["max_gallery"],
        n_contrast=kw["n_contrast"],
    )
    raise SystemExit(summary.return_code)
