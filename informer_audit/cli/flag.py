"""``flag``: audit a folder with a fitted monitor, one CSV row per image (and a report)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import (
    backend,
    load_model,
    pop_tta,
    refuse_saliency,
    resolve_batch_size,
    saliency_settings,
    score_cache,
    torch_module,
)
from .report import build_report


def _paths(kw: dict[str, Any]) -> Any:
    from ..journal import journal_path
    from ..paths import RunPaths

    out: Path = kw["output"]
    return RunPaths(
        {
            "MODEL": kw["model"],
            "--model-card": kw["model_card"],
            "--monitor": kw["monitor_path"],
            "--torch-weights": kw.get("torch_weights"),
        },
        {"--images": kw["images"]},
        {
            "-o": out,
            "-o's journal (OUTPUT.journal)": journal_path(out),
            "-o's partial file (OUTPUT.partial)": out.with_name(out.name + ".partial"),
        },
        {"--save-maps": kw["save_maps"], "--report": kw["report_dir"], "--cache": kw["cache_dir"]},
    )


def _scorer(kw: dict[str, Any], monitor: Any, binding: dict[str, Any]) -> tuple[Any, Any, str]:
    """The model (card from the monitor when it has none), the monitor's scorer, and the run
    header's words on the batch size."""
    from ..errors import MonitorMismatchError
    from ..scorers import scorer_class, scorer_from_binding

    method = kw.pop("method")
    if method is not None and method != monitor.method:
        raise MonitorMismatchError(
            f"{kw['monitor_path']} was fitted with --method {monitor.method}; this run asks for "
            f"--method {method}"
        )
    used = method or monitor.method
    kind = scorer_class(used)
    for dest in ("with_matrix", "save_maps"):
        if kw[dest] and not kind.has_maps:
            raise click.UsageError(
                f"--{dest.replace('_', '-')} needs saliency maps: it applies to --method "
                f"informer, not {used}"
            )
    tta = pop_tta(kw, "tta" in kind.option_groups)
    source = str(kw["monitor_path"])
    # A model without metadata needs no --model-card here: the monitor holds the card it was
    # fitted with, and is bound to this very file (checked by flag_folder).
    card = {"class_names": binding["class_names"], **binding["preprocessing"]}
    model = load_model(kw, card, f"monitor {source}")
    params: dict[str, Any] = {}
    module = None
    adapters: list[str] = []
    if "saliency" in kind.option_groups:
        name = kw["saliency"] or str((binding.get("saliency") or {}).get("name"))
        params, extra = saliency_settings(kw, name)
        module = torch_module(model, extra, name)
        adapters = [name]
    else:
        refuse_saliency(kw, used)
    batch = resolve_batch_size(kw, model, [used], adapters)
    scorer = scorer_from_binding(
        binding,
        method=method,
        saliency=kw.pop("saliency", None),
        saliency_params=params,
        tta=tta or None,
        module=module,
        batch_size=kw["batch_size"],
        source=source,
    )
    return model, scorer, batch


@cli.command(cls=opt.SaliencyCommand)
@opt.model_options
@opt.monitor("Monitor JSON written by calibrate for this model.")
@opt.images(
    "Folder audited recursively (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM, ...: any image, by "
    "content); other files are listed as skipped with the reason."
)
@opt.output(
    "Flags CSV to write (one row per image). An interrupted run's finished rows wait in "
    "FILE.journal; rerunning the same command resumes from them."
)
@click.option(
    "--restart",
    is_flag=True,
    help="Discard the journal an interrupted run left for this output and score every image "
    "again (needed when the settings changed since).",
)
@click.option(
    "--with-matrix",
    is_flag=True,
    help="Add the K x K cosine-distance matrix (dist_A|B columns; informer only).",
)
@click.option(
    "--save-maps",
    type=opt.NEW_DIR,
    help="Save every image's class maps in this folder (one compressed .npz per image, named "
    "by a hash of its CSV path; informer only), for report.",
)
@click.option(
    "--report",
    "report_dir",
    type=opt.NEW_DIR,
    help="Then write the HTML report of this run to this folder (index.html and assets/).",
)
@opt.input_alpha(
    "Override the monitor's input check alpha for this run (an image is input-flagged when its "
    "conformal p-value is at most this) [the monitor's]."
)
@opt.method_options
@opt.backend_options
@handle_errors
def flag(**kw: Any) -> None:
    """Audit every image under a folder with a fitted monitor; write one CSV row per image.

    The method, its settings (saliency or TTA) and, for a model without metadata, the model
    card come from the monitor; settings given here must match it.
    """
    from ..audit import Auditor, flag_folder
    from ..monitorfile import load_monitor

    paths = _paths(kw)
    paths.check()
    loaded = load_monitor(kw["monitor_path"])
    model, scorer, batch = _scorer(kw, loaded.monitor, loaded.binding)
    paths.check({"MODEL": model.files})
    keep_maps = scorer.has_maps and bool(kw["save_maps"] or kw["report_dir"])
    auditor = Auditor(
        model,
        scorer,
        loaded.binding["audited_classes"],
        cache=score_cache(kw["cache_dir"]),
        keep_maps=keep_maps,
    )
    # --report without --save-maps: the report reads the maps from a temporary folder.
    scratch = tempfile.TemporaryDirectory(prefix="informer-maps-") if keep_maps else None
    maps_dir = kw["save_maps"] or (Path(scratch.name) if scratch is not None else None)
    render.note(f"[bold]flag[/]: {render.scoring_note(scorer)}; device {model.device_note}{batch}")
    progress = render.progress()
    task = progress.add_task("auditing", total=None)

    def start(n_images: int) -> None:
        # flag_folder calls this after its checks (monitor binding, folder): a refused run
        # shows no progress bar.
        progress.update(task, total=n_images)
        progress.start()

    with backend(kw, auditor) as runner:
        try:
            summary = flag_folder(
                runner,
                loaded.monitor,
                loaded.binding,
                kw["images"],
                kw["output"],
                with_matrix=kw["with_matrix"],
                monitor_source=str(kw["monitor_path"]),
                on_start=start,
                on_result=lambda _r: progress.advance(task),
                maps_dir=maps_dir,
                restart=kw["restart"],
                on_reused=lambda _key: progress.advance(task),
                input_check=loaded.input_check,
                input_alpha=kw["input_alpha"],
            )
        finally:
            progress.stop()
        where = getattr(runner, "description", None)
    if where:
        render.note(f"scored on {where}")
    _render(kw, summary, auditor, loaded.evidence)
    raise SystemExit(max(summary.return_code, _report(kw, model, maps_dir, scratch)))


def _report(kw: dict[str, Any], model: Any, maps_dir: Path | None, scratch: Any) -> int:
    """``--report DIR``: the HTML report of this run; its exit code (0 without --report)."""
    try:
        if not kw["report_dir"]:
            return 0
        report = build_report(
            kw["output"], kw["monitor_path"], kw["report_dir"], model=model,
            images_root=kw["images"], maps_dir=maps_dir,
        )  # fmt: skip
        return int(report.return_code)
    finally:
        if scratch is not None:
            scratch.cleanup()


def _render(kw: dict[str, Any], summary: Any, auditor: Any, evidence: dict[str, Any]) -> None:
    render.flag_notes(summary)
    render.flag_summary(summary, evidence)
    render.failures(summary.failures)
    render.auditor_cache(auditor)
    render.done(f"flags written to {kw['output']}")
    if kw["save_maps"]:
        render.done(f"class maps saved in {kw['save_maps']}")
