"""``evaluate``: fit INFORMER and the baselines on a calibration set, compare on a test set."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import (
    class_map,
    label_filters,
    load_model,
    pop_tta,
    ray_cluster,
    read_labels,
    resolve_batch_size,
    saliency_settings_several,
    score_cache,
    torch_module,
)

SETS = (("calibration", "calib"), ("test", "test"))
"""(name in the outputs, option prefix) of the two label sets."""


def _methods_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from ..scorers import available_scorers

    methods = list(available_scorers())
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in methods]
    if unknown or not names or len(set(names)) != len(names):
        raise click.BadParameter(
            f"expected distinct names among {', '.join(methods)}, comma-separated; got {value!r}"
        )
    return names


def _plan(kw: dict[str, Any], model: Any, methods: list[str], tta: dict[str, Any]) -> Any:
    """The methods compared, with the saliency settings given (``--saliency``, default fd)."""
    from ..experiment import EvaluationPlan

    names: list[str] = kw.pop("saliency") or (["fd"] if "informer" in methods else [])
    if names and "informer" not in methods:
        raise click.UsageError(
            f"--saliency {','.join(names)} applies to the informer method, which --methods "
            f"({','.join(methods)}) leaves out"
        )
    settings = saliency_settings_several(kw, names)
    modules = [torch_module(model, extra, name) for name, (_, extra) in settings.items()]
    return EvaluationPlan(
        methods=methods,
        saliency=names,
        saliency_params={name: params for name, (params, _) in settings.items()},
        tta=tta or None,
        seed=kw["seed"],
        module=next((m for m in modules if m is not None), None),
        batch_size=kw["batch_size"],
    )


def _provenance(kw: dict[str, Any], model: Any, sets: dict[str, Any]) -> dict[str, Any]:
    """The report's and the monitor files' provenance: model, label files and filters."""
    filters = {"uncertain": kw["uncertain"], **label_filters(kw)}
    labels = {
        name: {
            "labels_file": Path(kw[f"{key}_labels"]).name,
            "label_format": sets[key].format,
            "split": kw[f"{key}_split"],
            "excluded": sets[key].excluded,
        }
        for name, key in SETS
    }
    calib = sets["calib"]
    columns = dict(zip(calib.class_names, calib.label_columns, strict=True))
    return {
        "provenance": {
            "model": model.path.name,
            "model_sha256": model.sha256,
            "preprocessing": model.card.to_dict(),
            "label_columns": columns,
            **labels,
            "label_filters": filters,
        },
        "calibration_provenance": {
            "labels_file": labels["calibration"]["labels_file"],
            "label_format": calib.format,
            "label_columns": columns,
            "filters": {"split": kw["calib_split"], **filters, "excluded": calib.excluded},
        },
    }


def _paths(kw: dict[str, Any], outdir: Path, cache_dir: Path | None) -> Any:
    from ..paths import RunPaths

    return RunPaths(
        {
            "MODEL": kw["model"],
            "--model-card": kw["model_card"],
            "--calib-labels": kw["calib_labels"],
            "--test-labels": kw["test_labels"],
            "--torch-weights": kw.get("torch_weights"),
        },
        {"--calib-images": kw["calib_images"], "--test-images": kw["test_images"]},
        {},
        {"OUTDIR (-o)": outdir, "--cache": cache_dir},
    )


def _label_sets(kw: dict[str, Any], model: Any) -> dict[str, Any]:
    """The calibration and test label sets (keys ``calib``, ``test``)."""
    classes = class_map(kw, list(model.card.class_names))
    return {
        key: read_labels(
            kw,
            kw[f"{key}_labels"],
            kw[f"{key}_images"],
            classes,
            split=kw[f"{key}_split"],
            **label_filters(kw),
        )
        for _, key in SETS
    }


@cli.command("evaluate", cls=opt.SeveralSaliencyCommand)
@opt.model_options
@opt.images("Folder the calibration labels' relative paths are resolved against.", name="calib")
@click.option(
    "--calib-labels",
    required=True,
    type=opt.EXISTING_FILE,
    help="Calibration labels CSV (plain, CheXpert or NIH): thresholds are fitted on these.",
)
@click.option("--calib-split", help="Keep only calibration rows whose 'split' column is this.")
@opt.images("Folder the test labels' relative paths are resolved against.", name="test")
@click.option(
    "--test-labels",
    required=True,
    type=opt.EXISTING_FILE,
    help="Test labels CSV (any supported format): every reported number is measured on these.",
)
@click.option("--test-split", help="Keep only test rows whose 'split' column is this.")
@opt.output(
    "Output folder: report.md, CSV tables, plots, one monitor_<method>.json per method.",
    folder=True,
)
@click.option(
    "--methods",
    default="informer,learned,entropy,tta,msp,margin",
    show_default=True,
    callback=_methods_list,
    help="Methods to fit and compare, comma-separated; informer and learned give one row per "
    "--saliency adapter (informer_fd, learned_fd, ...; learned reuses informer's maps).",
)
@opt.label_options
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=click.IntRange(min=2),
    default=30,
    show_default=True,
    help="Bootstrap test sets (drawn with replacement) for the box plot and the paper's t-tests.",
)
@click.option(
    "--resamples",
    "n_resamples",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Resamples of the paired bootstrap of differences in mean F1 (interval and p-value "
    "of each method against no_audit and the best baseline); 0 skips it.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the bootstrap, and of TTA and LIME unless --tta-seed / --lime-seed is given.",
)
@opt.tta_options
@opt.cache("Per-image score cache folder [OUTDIR/cache]; a rerun recomputes nothing.")
@click.option("--no-cache", is_flag=True, help="Use no score cache.")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots (no matplotlib needed).")
@opt.backend_options
@handle_errors
def evaluate_command(**kw: Any) -> None:
    """Fit INFORMER and the baselines on a calibration set, compare them on a test set.

    Writes to OUTDIR: table1.csv (F1 after swapping per class and mean, one row per method,
    no_audit and retuned), sensitivity.csv, specificity.csv, flags.csv, thresholds.csv,
    bootstrap.csv, ttests.csv (the paper's protocol), paired_bootstrap.csv, information.csv,
    failure_metrics.csv (AUROC, AURC, AUGRC), bootstrap_boxplot.png, risk_coverage.png,
    report.md, and monitor_<method>.json files that flag can apply.
    """
    from ..experiment import evaluation_cache, run_evaluation, write_evaluation
    from ..paths import write_outputs
    from ..scorers import scorer_class

    outdir: Path = kw["output"]
    cache_dir = evaluation_cache(outdir, kw["cache_dir"], use_cache=not kw["no_cache"])
    paths = _paths(kw, outdir, cache_dir)
    paths.check()
    methods: list[str] = kw["methods"]
    tta = pop_tta(kw, any("tta" in scorer_class(m).option_groups for m in methods))
    model = load_model(kw)
    batch = resolve_batch_size(kw, model, methods, kw["saliency"] or ["fd"])
    plan = _plan(kw, model, methods, tta)
    sets = _label_sets(kw, model)
    paths.check(
        {"MODEL": model.files, **{f"images listed in --{k}-labels": sets[k].paths for _, k in SETS}}
    )
    scorers = plan.scorers()
    # learned_<adapter> rows share informer_<adapter>'s maps: name each adapter once.
    adapters = dict.fromkeys(str(s.adapter.settings()) for s in scorers.values() if s.has_maps)
    saliency = ", ".join(adapters)
    render.note(
        f"[bold]evaluate[/]: {len(sets['calib'])} calibration and {len(sets['test'])} test images;"
        f" methods {', '.join(methods)}"
        + (f"; saliency {saliency}" if saliency else "")
        + f"; device {model.device_note}{batch}"
        + (f"; cache {render.escape(str(cache_dir))}" if cache_dir else "")
    )
    with ray_cluster(kw) as cluster, render.stage_progress() as on_progress:
        run = run_evaluation(
            model,
            sets["calib"],
            sets["test"],
            scorers,
            cache=score_cache(cache_dir),
            grid_step=kw["grid_step"],
            n_bootstrap=kw["n_bootstrap"],
            n_resamples=kw["n_resamples"],
            seed=kw["seed"],
            on_progress=on_progress,
            backend=_on_ray(cluster),
        )
    write = functools.partial(
        write_evaluation,
        run,
        title=f"INFORMER evaluation of {model.path.name}",
        plots=not kw["no_plots"],
        **_provenance(kw, model, sets),
    )
    # A failed write leaves the results in a recovery folder, and says where.
    written = write_outputs([("OUTDIR (-o)", outdir, write)])[0]
    render.evaluation(run)
    render.evaluation_notes(run, cache_dir)
    render.done(f"{len(written)} files written to {outdir} (see report.md)")
    raise SystemExit(run.return_code)


def _on_ray(cluster: Any) -> Any:
    """run_evaluation's ``backend``: each scoring run on the cluster's workers (None: local)."""
    if cluster is None:
        return None
    from ..backends import RayAuditor

    return lambda auditor: RayAuditor.from_auditor(auditor, cluster)
