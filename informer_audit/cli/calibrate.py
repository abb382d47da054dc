"""``calibrate``: fit the monitor's thresholds on labelled images."""

from __future__ import annotations

from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import (
    backend,
    class_map,
    label_filters,
    load_model,
    pop_tta,
    read_labels,
    refuse_saliency,
    resolve_batch_size,
    saliency_settings,
    score_cache,
    torch_module,
)


def build_scorer(kw: dict[str, Any], model: Any) -> Any:
    """The scorer of ``--method`` and its options (shared by calibrate's and flag's parsing)."""
    from ..scorers import build_scorer as build
    from ..scorers import scorer_class

    method = kw.pop("method") or "informer"
    groups = scorer_class(method).option_groups
    tta = pop_tta(kw, "tta" in groups)
    if "saliency" not in groups:
        refuse_saliency(kw, method)
        return build(method, tta=tta or None, batch_size=kw["batch_size"])
    name = kw["saliency"] or "fd"
    params, extra = saliency_settings(kw, name)
    module = torch_module(model, extra, name)
    return build(
        method, saliency=name, saliency_params=params, module=module, batch_size=kw["batch_size"]
    )


@cli.command(cls=opt.SaliencyCommand)
@opt.model_options
@opt.images("Folder the label CSV's relative paths are resolved against.")
@opt.labels("Labels CSV: plain (path + 0/1 per class), CheXpert, or NIH Data_Entry.")
@opt.output("Monitor JSON to write.")
@opt.label_options
@opt.split
@click.option(
    "--scores-csv",
    type=opt.NEW_FILE,
    help="Also write per-image scores: labels, probabilities, d (or the baseline's score) and, "
    "for informer, the K x K distance matrix.",
)
@click.option(
    "--cv-folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Out-of-sample estimate: stratified folds of the cross-fitting (fewer for a class "
    "with fewer positives).",
)
@click.option(
    "--cv-repeats",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Out-of-sample estimate: repeats with other fold assignments; 0 skips the estimate "
    "(the monitor is the same either way).",
)
@click.option(
    "--cv-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the folds and of the bootstrap intervals.",
)
@click.option(
    "--input-score",
    type=click.Choice(["distinctiveness", "entropy", "max_prob", "energy", "tta_spread"]),
    help="The input check's image-level score: distinctiveness (mean cosine distance between "
    "the class maps; methods with maps), entropy (mean binary entropy), max_prob (largest "
    "class probability), energy (joint energy of the logits), tta_spread (--method tta) "
    "[distinctiveness with maps, else entropy].",
)
@opt.input_alpha(
    "The input check flags an image when its conformal p-value is at most this: at most this "
    "fraction of images like the calibration images is flagged (flag --input-alpha overrides).",
    0.01,
)
@click.option(
    "--input-direction",
    type=click.Choice(["auto", "high", "low", "two-sided"]),
    default="auto",
    show_default=True,
    help="Which tail of the input score is unusual. auto: chosen from corrupted copies (noise, "
    "inverted, upside down) of --input-probes calibration images, two-sided when they "
    "disagree; high, low, two-sided: given (no extra scoring).",
)
@click.option(
    "--input-probes",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="--input-direction auto: calibration images corrupted to choose the direction (each "
    "scored 3 more times; left out of the input check's calibration scores).",
)
@click.option(
    "--input-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="--input-direction auto: seed of the probe images' choice and of their noise.",
)
@opt.method_options
@opt.backend_options
@handle_errors
def calibrate(**kw: Any) -> None:
    """Fit prediction thresholds and per-class flag thresholds on labelled images.

    Paths in the labels CSV are resolved against --images; exactly the images the CSV lists
    (after the filters) are used.
    """
    from ..audit import Auditor
    from ..audit import calibrate as run_calibration
    from ..paths import RunPaths

    paths = RunPaths(
        {"MODEL": kw["model"], "--model-card": kw["model_card"], "--labels": kw["labels_csv"]},
        {"--images": kw["images"]},
        {"-o": kw["output"], "--scores-csv": kw["scores_csv"]},
        {"--cache": kw["cache_dir"]},
    )
    paths.check({"--torch-weights": kw.get("torch_weights")})
    model = load_model(kw)
    batch = resolve_batch_size(kw, model, [kw["method"] or "informer"], [kw["saliency"] or "fd"])
    scorer = build_scorer(kw, model)
    classes = class_map(kw, list(model.card.class_names))
    labels = read_labels(
        kw, kw["labels_csv"], kw["images"], classes, split=kw["split"], **label_filters(kw)
    )
    # Now known: the model's external data and the images the labels list (maybe elsewhere).
    paths.check({"MODEL": model.files, "images listed in --labels": labels.paths})
    auditor = Auditor(model, scorer, list(classes), cache=score_cache(kw["cache_dir"]))
    check = _input_check(kw, auditor)
    render.note(
        f"[bold]calibrate[/]: {len(labels)} labelled images from "
        f"{render.escape(str(kw['labels_csv']))}"
        + (f" (dropped: {labels.excluded})" if any(labels.excluded.values()) else "")
        + f"; {render.scoring_note(scorer)}; device {model.device_note}{batch}"
    )
    with backend(kw, auditor) as runner, render.progress() as progress:
        task = progress.add_task("calibrating", total=len(labels))
        result = run_calibration(
            runner,
            labels,
            grid_step=kw["grid_step"],
            on_result=lambda _r: progress.advance(task),
            evidence_options=_evidence_options(kw),
            input_check=check,
            input_probes=kw["input_probes"],
            input_seed=kw["input_seed"],
        )
        where = getattr(runner, "description", None)
    if where:
        render.note(f"scored on {where}")
    _write(kw, result, auditor.classes)
    render.calibration(result)
    render.input_check(result.input_check)
    render.evidence(result.evidence, result.monitor)
    render.failures([(f.key, str(f.error)) for f in result.failures])
    render.auditor_cache(auditor)
    render.done(f"monitor written to {kw['output']}")
    raise SystemExit(result.return_code)


def _input_check(kw: dict[str, Any], auditor: Any) -> Any:
    """The unfitted input check of --input-score/--input-alpha/--input-direction."""
    from ..audit import input_score_names
    from ..inputcheck import InputCheck, default_score

    available = input_score_names(auditor)
    score = kw["input_score"] or default_score(auditor.scorer.has_maps)
    if score not in available:
        raise click.BadParameter(
            f"{score!r} is not computed by --method {auditor.method}; choose one of "
            f"{', '.join(available)}",
            param_hint="--input-score",
        )
    return InputCheck(score, kw["input_alpha"], kw["input_direction"])


def _evidence_options(kw: dict[str, Any]) -> dict[str, Any] | None:
    """``calibration_evidence``'s settings from --cv-*; ``None`` (no estimate) for 0 repeats."""
    if kw["cv_repeats"] == 0:
        return None
    return {"n_splits": kw["cv_folds"], "n_repeats": kw["cv_repeats"], "seed": kw["cv_seed"]}


def _write(kw: dict[str, Any], result: Any, classes: list[str]) -> None:
    """The monitor and, with --scores-csv, the scores; a failed write is recovered."""
    from ..flagsfile import write_scores_csv
    from ..monitorfile import save_monitor
    from ..paths import write_outputs

    provenance = result.provenance
    writes = [
        (
            "-o",
            kw["output"],
            lambda p: save_monitor(
                p, result.monitor, result.binding, provenance, result.evidence, result.input_check
            ),
        )
    ]
    if kw["scores_csv"]:
        writes.append(
            ("--scores-csv", kw["scores_csv"], lambda p: write_scores_csv(p, result, classes))
        )
    write_outputs(writes)
