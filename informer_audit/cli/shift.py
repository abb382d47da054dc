"""``shift``: corrupt images on purpose and measure how well each input score catches them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import class_map, load_model, read_labels


def _corruption_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str] | None:
    from ..corruptions import corruption_names

    names = corruption_names()
    if value.strip() == "all":
        return None
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise click.BadParameter(
            f"expected 'all' or distinct names among {', '.join(names)}, comma-separated; "
            f"got {value!r}"
        )
    return chosen


def _severity_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        levels = []
    if not levels or len(set(levels)) != len(levels) or not set(levels) <= {1, 2, 3}:
        raise click.BadParameter(
            f"expected distinct severities among 1, 2, 3, comma-separated; got {value!r}"
        )
    return levels


def _paths(kw: dict[str, Any]) -> Any:
    from ..paths import RunPaths

    return RunPaths(
        {
            "MODEL": kw["model"],
            "--model-card": kw["model_card"],
            "--monitor": list(kw["monitor_paths"]),
            "--labels": kw["labels_csv"],
        },
        {"--images": kw["images"], "--other-images": kw["other_images"]},
        {},
        {"OUTDIR (-o)": kw["output"]},
    )


def _row_names(loaded: list[Any], paths: list[Path]) -> list[str]:
    """``<method>_<adapter>`` per monitor (``entropy`` without maps); the file names when two
    monitors would share a name."""
    from ..scorers import binding_method

    names = []
    for m in loaded:
        method = binding_method(m.binding)["name"]
        saliency = (m.binding.get("saliency") or {}).get("name")
        names.append(f"{method}_{saliency}" if saliency else method)
    if len(set(names)) == len(names):
        return names
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [f"{s}_{i + 1}" for i, s in enumerate(stems)]


def _monitors(kw: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The model (card from the first monitor when it has none) and one ShiftMonitor each."""
    from ..audit import Auditor
    from ..monitorfile import load_monitor
    from ..scorers import scorer_from_binding
    from ..shift import ShiftMonitor

    paths = [Path(p) for p in kw["monitor_paths"]]
    loaded = [load_monitor(p) for p in paths]
    first = loaded[0].binding
    card = {"class_names": first["class_names"], **first["preprocessing"]}
    model = load_model(kw, card, f"monitor {paths[0]}")
    shift_monitors = []
    for name, m, path in zip(_row_names(loaded, paths), loaded, paths, strict=True):
        scorer = scorer_from_binding(m.binding, source=str(path))
        auditor = Auditor(model, scorer, m.binding["audited_classes"])
        shift_monitors.append(
            ShiftMonitor(name, auditor, m.monitor, m.binding, m.input_check, str(path))
        )
    return model, shift_monitors


def _items(kw: dict[str, Any], classes: list[str]) -> tuple[list[Any], Any, Any]:
    """The clean images ``(key, path)``, their labels (or None) and the label set."""
    from ..images import scan_folder
    from ..paths import printable

    if kw["labels_csv"] is None:
        for flag in ("split", "classes"):
            if kw[flag] is not None:
                raise click.UsageError(f"--{flag} applies to --labels, which is not given")
        scan = scan_folder(kw["images"])
        if not scan.images:
            raise click.UsageError(f"--images {kw['images']}: no images found")
        return [(printable(str(p)), p) for p in scan.images], None, None
    mapping = class_map(kw, classes)
    if list(mapping) != classes:
        raise click.UsageError(
            f"--classes must map every class the monitors audit ({', '.join(classes)}), in "
            f"that order; got {', '.join(mapping)}"
        )
    labels = read_labels(kw, kw["labels_csv"], kw["images"], mapping, split=kw["split"])
    return list(zip(labels.keys, labels.paths, strict=True)), labels.y, labels


def _others(kw: dict[str, Any]) -> list[Any] | None:
    from ..images import scan_folder
    from ..paths import printable

    if kw["other_images"] is None:
        return None
    return [(printable(str(p)), p) for p in scan_folder(kw["other_images"]).images]


@cli.command("shift")
@opt.model_options
@click.option(
    "--monitor",
    "monitor_paths",
    multiple=True,
    required=True,
    type=opt.EXISTING_FILE,
    help="Monitor JSON written by calibrate (or evaluate) for this model; repeat for several "
    "(e.g. one per saliency adapter): each scores the images with its own settings.",
)
@opt.images(
    "The clean images: a folder audited recursively, or with --labels the folder the labels' "
    "paths are resolved against."
)
@opt.labels("Labels CSV of the clean images (any supported format): adds the F1 table.", False)
@opt.split
@opt.classes
@opt.label_format
@opt.uncertain
@opt.path_column
@click.option(
    "--corruptions",
    default="all",
    show_default=True,
    callback=_corruption_list,
    help="Corruptions, comma-separated, or all: gaussian_blur, gaussian_noise, contrast, "
    "jpeg, crop_zoom, occlude, border, burned_text, invert, rotate90, rotate180, hflip, vflip.",
)
@click.option(
    "--severities",
    default="1,2,3",
    show_default=True,
    callback=_severity_list,
    help="Severities of the graded corruptions (inversion, rotations and flips have one).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the corruptions (with each image's content; only the noise is random).",
)
@click.option(
    "--other-images",
    type=opt.EXISTING_DIR,
    help="A folder of images of another kind (another body part, modality, photographs), "
    "scored as they are: one more row, other_images.",
)
@opt.output(
    "Output folder: report.md, auroc.csv, flag_rate.csv, f1.csv (with --labels), scores.csv, "
    "failures.csv, shift_auroc.png.",
    folder=True,
)
@click.option("--no-plots", is_flag=True, help="Write no PNG plot (no matplotlib needed).")
@handle_errors
def shift_command(**kw: Any) -> None:
    """Corrupt images on purpose (blur, noise, JPEG, inversion, rotation, crops, text, ...)
    and measure how well each input score and the monitor's input check catch them.

    Per monitor and per corruption x severity: the AUROC of every input score against the
    clean images, the input check's flag rate at its calibrated alpha (and the clean images'
    own), and with --labels the model's F1 per class and its drop. The saliency method and
    its settings come from each monitor.
    """
    from ..paths import write_outputs
    from ..shift import run_shift, write_shift_report

    outdir: Path = kw["output"]
    paths = _paths(kw)
    paths.check()
    model, monitors = _monitors(kw)
    classes = list(monitors[0].auditor.classes)
    items, y, labels = _items(kw, classes)
    others = _others(kw)
    listed = {"images listed in --labels": labels.paths} if labels is not None else {}
    paths.check({"MODEL": model.files, **listed})
    render.note(
        f"[bold]shift[/]: {len(items)} clean images"
        + (f", {len(others)} other images" if others is not None else "")
        + f"; monitors {', '.join(m.name for m in monitors)}; device {model.device_note}"
    )
    with render.stage_progress() as on_progress:
        run = run_shift(
            monitors,
            items,
            labels=y,
            corruptions=kw["corruptions"],
            severities=kw["severities"],
            seed=kw["seed"],
            other_items=others,
            other_source=None if kw["other_images"] is None else Path(kw["other_images"]).name,
            on_progress=on_progress,
        )
    provenance = {
        "model": model.path.name,
        "model_sha256": model.sha256,
        "monitors": {m.name: Path(m.source).name for m in monitors},
        "images": Path(kw["images"]).name,
        **({"labels": Path(kw["labels_csv"]).name, "split": kw["split"]} if labels else {}),
        "corruptions": kw["corruptions"] or "all",
        "severities": kw["severities"],
        "seed": kw["seed"],
    }
    write = functools.partial(
        write_shift_report,
        run,
        title=f"Shift benchmark of {model.path.name}",
        provenance=provenance,
        plots=not kw["no_plots"],
    )
    written = write_outputs([("OUTDIR (-o)", outdir, write)])[0]
    _render(run)
    render.done(f"{len(written)} files written to {outdir} (see report.md)")
    raise SystemExit(run.return_code)


def _render(run: Any) -> None:
    """Per monitor: the input check's score AUROC and flag rate per condition."""
    import math

    auroc, flags = run.auroc_table(), run.flag_rate_table()
    at = {c: i for i, c in enumerate(auroc.columns)}
    rate = {(r[0], r[1], r[2]): r for r in flags.rows}
    for m in run.monitors:
        check = run.checks.get(m)
        score = check.score if check is not None else "distinctiveness"
        if score not in run.scores_of.get(m, ()):
            score = "entropy"
        title = f"{m}: AUROC of {score}" + (
            f", input-check flag rate at alpha {check.alpha:g}" if check is not None else ""
        )
        columns: tuple[str, ...] = ("corruption", "severity", "n", f"auroc {score}")
        if check is not None:
            columns += ("flagged", "flag rate")
        table = render._columns(title, columns, left=("corruption",))
        clean = rate.get((m, "clean", 0))
        if clean is not None:
            table.add_row("clean", "", str(clean[7]), "", str(clean[8]), render.fmt(clean[9]))
        for row in auroc.rows:
            if row[0] != m:
                continue
            value = row[at[f"auroc_{score}"]]
            cells = [
                row[1],
                str(row[2]),
                str(row[5]),
                "n/a" if math.isnan(value) else render.fmt(value),
            ]
            r = rate.get((m, row[1], row[2]))
            if r is not None:
                cells += [str(r[8]), render.fmt(r[9])]
            table.add_row(*cells)
        render.console().print(table)
    render.failures([(f"{r.key} ({r.corruption} {r.severity}, {r.monitor})", str(r.error))
                     for r in run.failures])  # fmt: skip
