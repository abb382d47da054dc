"""The ``informer-audit`` command: a thin boundary around the library.

Each command parses its options, builds the library objects, makes one library call, renders the
outcome with rich, and exits. Only this module maps exceptions to exit codes:

* 0 -- done, every image scored;
* 1 -- done, but some image files failed (listed in the output and on the terminal);
* 2 -- bad invocation, or input refused (model, model card, labels, monitor mismatch);
* 3 -- the requested device cannot be used (e.g. ``--device cuda`` without a usable GPU);
* 130 -- interrupted (Ctrl-C): rerunning the same command resumes (``flag`` keeps its finished
  rows in ``OUT.journal``; ``calibrate`` and ``evaluate`` keep their scores with ``--cache``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .errors import DeviceUnavailableError, InformerAuditError

F = TypeVar("F", bound=Callable[..., Any])

# 0 and 1 come from the run's summary object (its return_code); refusals map here.
EXIT_REFUSED, EXIT_DEVICE, EXIT_INTERRUPTED = 2, 3, 130

# CLI option destination -> (adapter, parameter). An option meant for another adapter than the
# one in use is refused rather than ignored.
_SALIENCY_PARAMS: dict[str, tuple[str, str]] = {
    "patch_size": ("fd", "patch_size"),
    "fd_step": ("fd", "step"),
    "fd_scheme": ("fd", "scheme"),
    "lime_samples": ("lime", "num_samples"),
    "lime_segmentation": ("lime", "segmentation"),
    "lime_kernel_size": ("lime", "kernel_size"),
    "lime_max_dist": ("lime", "max_dist"),
    "lime_ratio": ("lime", "ratio"),
    "lime_segments": ("lime", "n_segments"),
    "lime_compactness": ("lime", "compactness"),
    "lime_fill": ("lime", "fill"),
    "lime_kernel_width": ("lime", "kernel_width"),
    "lime_target": ("lime", "target"),
    "lime_seed": ("lime", "seed"),
    "gradient_batch_size": ("gradient", "batch_size"),
}
# Adapters whose batch size is --batch-size (images per ONNX Runtime run).
_ORT_BATCHED = ("fd", "lime")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and CI: do not squeeze tables into 80 columns
    return console


def _handle_errors(func: F) -> F:
    """Turn the library's refusals into a one-line message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from .errors import InformerAuditWarning

        plain_show = warnings.showwarning

        def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
            # The library warns through `warnings` (it never prints); its own warnings are
            # shown here as one line each, others as Python shows them.
            if issubclass(category, InformerAuditWarning):
                _console(stderr=True).print(f"[bold yellow]warning:[/] {_escape(str(message))}")
            else:
                plain_show(message, category, *rest, **kw)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", InformerAuditWarning)
                warnings.showwarning = show
                return func(*args, **kwargs)
        except DeviceUnavailableError as exc:
            _console(stderr=True).print(f"[bold red]error:[/] {_escape(str(exc))}")
            sys.exit(EXIT_DEVICE)
        except InformerAuditError as exc:
            _console(stderr=True).print(f"[bold red]error:[/] {_escape(str(exc))}")
            sys.exit(EXIT_REFUSED)
        except KeyboardInterrupt:
            # Not 1: that code means "done, some files failed"; this run is not done.
            _console(stderr=True).print(
                "[bold yellow]interrupted[/]: rerun the same command to resume (flag keeps its "
                "finished rows in OUTPUT.journal; calibrate and evaluate keep scores with --cache)"
            )
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _split_list(value: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"cannot parse {value!r}: {exc}") from exc


# -- options, defined once ---------------------------------------------------------------------
def model_options(func: F) -> F:
    """The model argument, its card, preprocessing overrides and the device."""
    decorators = [
        click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option(
            "--model-card",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="JSON or TOML model card; overrides the ONNX file's metadata.",
        ),
        click.option("--class-names", help="Override: comma-separated class names, model order."),
        click.option("--image-size", help="Override: input size as H,W (or one number)."),
        click.option("--channels", type=click.Choice(["1", "3"]), help="Override: channels."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Override: layout."),
        click.option("--scale", type=float, help="Override: pixels are divided by this."),
        click.option("--mean", help="Override: comma-separated per-channel mean."),
        click.option("--std", help="Override: comma-separated per-channel std."),
        click.option(
            "--output-kind",
            type=click.Choice(["logits", "probabilities"]),
            help="Override: what the model outputs.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="auto uses CUDA when ONNX Runtime can really create it, and says which.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            help="ONNX Runtime intra-op threads (default: all).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _adapter_list(ctx: click.Context, param: click.Parameter, value: Any) -> list[str] | None:
    """``--saliency fd,lime`` (or repeated): distinct registered adapter names, in order."""
    from .saliency import available_adapters

    names = [v.strip() for text in value or () for v in text.split(",") if v.strip()]
    valid = sorted(available_adapters())
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise click.BadParameter(f"unknown adapter(s) {unknown}; choose from {valid}")
    return list(dict.fromkeys(names)) or None


def saliency_options(func: F, several: bool = False) -> F:
    """Saliency adapter choice and settings; choices come from the adapter registry.

    With ``several`` (``functools.partial(saliency_options, several=True)``), ``--saliency``
    takes a comma-separated list (or is repeated) and arrives as a list of names.
    """
    from .saliency import available_adapters

    decorators = [
        click.option(
            "--saliency",
            multiple=True,
            callback=_adapter_list,
            help="Saliency adapters of INFORMER, comma-separated or repeated, one result row "
            f"each (choices: {', '.join(sorted(available_adapters()))}) [fd].",
        )
        if several
        else click.option(
            "--saliency",
            type=click.Choice(sorted(available_adapters())),
            default=None,
            help="Saliency adapter (calibrate default: fd; flag: the monitor's).",
        ),
        click.option(
            "--patch-size", type=click.IntRange(min=1), help="fd: patch side in model pixels [16]."
        ),
        click.option("--fd-step", type=float, help="fd: relative step h [1e-3]."),
        click.option(
            "--fd-scheme", type=click.Choice(["central", "forward"]), help="fd: scheme [central]."
        ),
        click.option(
            "--lime-samples",
            type=click.IntRange(min=2),
            help="lime: perturbed samples (forward passes) per image [1000].",
        ),
        click.option(
            "--lime-segmentation",
            type=click.Choice(["quickshift", "slic"]),
            help="lime: superpixels [quickshift, with lime's defaults].",
        ),
        click.option("--lime-kernel-size", type=float, help="lime: quickshift kernel_size [4]."),
        click.option("--lime-max-dist", type=float, help="lime: quickshift max_dist [200]."),
        click.option("--lime-ratio", type=float, help="lime: quickshift ratio [0.2]."),
        click.option(
            "--lime-segments", type=click.IntRange(min=2), help="lime: SLIC n_segments [50]."
        ),
        click.option("--lime-compactness", type=float, help="lime: SLIC compactness [10]."),
        click.option(
            "--lime-fill",
            help="lime: hidden segments take their mean colour ('mean') or this pixel value "
            "on the 8-bit scale [mean].",
        ),
        click.option(
            "--lime-kernel-width", type=float, help="lime: kernel width on cosine distance [0.25]."
        ),
        click.option(
            "--lime-target",
            type=click.Choice(["probability", "logit"]),
            help="lime: what the ridge regressions explain [probability].",
        ),
        click.option(
            "--lime-seed",
            type=click.IntRange(min=0),
            help="lime: seed; each image's samples derive from it and the image's content [0].",
        ),
        click.option(
            "--torch-weights",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="gradient: differentiate this PyTorch checkpoint instead of converting the ONNX "
            "file (checked to give the ONNX model's scores).",
        ),
        click.option(
            "--torch-arch",
            help="gradient: architecture of --torch-weights (default: the one the ONNX file's "
            "export provenance names).",
        ),
        click.option(
            "--gradient-batch-size",
            type=click.IntRange(min=1),
            help="gradient: images per torch forward pass (does not change results) [8].",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="fd, lime: images per ONNX Runtime run (does not change results).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def images_option(help_text: str) -> Callable[[F], F]:
    """``--images DIR`` (an existing folder); the help says what the folder is for."""
    return click.option(
        "--images",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help=help_text,
    )


def output_option(help_text: str) -> Callable[[F], F]:
    """``-o/--output FILE``; the help says what is written."""
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help_text,
    )


def tta_options(func: F) -> F:
    """Settings of the TTA baseline that change its score."""
    decorators = [
        click.option(
            "--tta-copies",
            type=click.IntRange(min=2),
            help="tta: augmented copies per image [10].",
        ),
        click.option(
            "--tta-seed",
            type=click.IntRange(min=0),
            help="tta: seed; each image's augmentations derive from it and the image's content "
            "[calibrate: 0; flag: the monitor's; evaluate: --seed].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def cache_option(help_text: str) -> Callable[[F], F]:
    """``--cache DIR``: the per-image score cache; the help says the default."""
    return click.option(
        "--cache",
        "cache_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help=help_text,
    )


def method_options(func: F) -> F:
    """``--method`` (the monitor's raw score), the TTA settings and ``--cache``."""
    from .baselines import METHODS

    decorators = [
        click.option(
            "--method",
            type=click.Choice(list(METHODS)),
            help="Monitor score: informer (class distinctiveness d, with --saliency), entropy, "
            "tta or msp (no saliency map) [calibrate: informer; flag: the monitor's].",
        ),
        tta_options,
        cache_option(
            "Per-image score cache folder (default: none). Each image's scores are stored as "
            "it finishes: a rerun, e.g. after an interruption, scores only the images not there."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def label_options(func: F) -> F:
    """How a labels CSV is read and filtered, which classes are audited, the flag grid."""
    decorators = [
        click.option(
            "--classes",
            help="Model classes to audit, optionally mapped to label columns: "
            "'Atelectasis,Effusion=Pleural Effusion'. Default: every model class, same-named "
            "columns.",
        ),
        click.option(
            "--label-format",
            type=click.Choice(["auto", "plain", "chexpert", "nih"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--uncertain",
            type=click.Choice(["exclude-image", "exclude-class", "zero", "one"]),
            default="exclude-image",
            show_default=True,
            help="CheXpert -1 labels: drop the image (the paper's choice), drop only that class, "
            "count as 0, or count as 1.",
        ),
        click.option("--frontal-only", is_flag=True, help="Keep frontal views only."),
        click.option(
            "--require-finding",
            is_flag=True,
            help="The paper's cohort rule: drop images with none of the audited findings.",
        ),
        click.option("--path-column", help="Name of the CSV column holding image paths."),
        click.option(
            "--grid-step",
            type=click.FloatRange(min=0, min_open=True),
            default=0.001,
            show_default=True,
            help="Flag-threshold grid step.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _load_model(
    kw: dict[str, Any], fallback: dict[str, Any] | None = None, source: str = ""
) -> Any:
    from .model import OnnxClassifier

    size = _split_list(kw.pop("image_size"), int)
    overrides = {
        "class_names": _split_list(kw.pop("class_names")),
        "image_size": (size * 2 if size and len(size) == 1 else size),
        "channels": int(channels) if (channels := kw.pop("channels")) else None,
        "layout": kw.pop("layout"),
        "scale": kw.pop("scale"),
        "mean": _split_list(kw.pop("mean"), float),
        "std": _split_list(kw.pop("std"), float),
        "output": kw.pop("output_kind"),
    }
    return OnnxClassifier(
        kw.pop("model"),
        card_file=kw.pop("model_card"),
        overrides=overrides,
        device=kw.pop("device"),
        threads=kw.pop("threads"),
        fallback_card=fallback,
        fallback_source=source,
    )


def _pop_saliency(kw: dict[str, Any], adapter: str) -> dict[str, Any]:
    """The adapter parameters given on the command line; options of other adapters refused."""
    given: dict[str, Any] = {}
    for opt, (owner, param) in _SALIENCY_PARAMS.items():
        value = kw.pop(opt, None)
        if value is None:
            continue
        if owner != adapter:
            flag = "--" + opt.replace("_", "-")
            raise click.UsageError(f"{flag} applies to --saliency {owner}, not {adapter}")
        if opt == "lime_fill" and value != "mean":
            try:
                value = float(value)
            except ValueError as exc:
                raise click.BadParameter(
                    f"expected 'mean' or a pixel value, got {value!r}", param_hint="--lime-fill"
                ) from exc
        given[param] = value
    batch_size = kw.pop("batch_size", None)
    if adapter in _ORT_BATCHED and batch_size is not None:
        given["batch_size"] = batch_size
    return given


def _torch_module(kw: dict[str, Any], model: Any, adapter: str) -> dict[str, Any]:
    """``module=`` for the gradient adapter from --torch-weights/--torch-arch, or nothing."""
    weights, arch_name = kw.pop("torch_weights", None), kw.pop("torch_arch", None)
    if weights is None and arch_name is None:
        return {}
    if adapter != "gradient":
        raise click.UsageError(
            f"--torch-weights/--torch-arch apply to --saliency gradient, not {adapter}"
        )
    if weights is None:
        raise click.UsageError("--torch-arch needs --torch-weights")
    import json

    from .export import available_architectures, get_architecture, load_weights
    from .model import PROVENANCE_METADATA_KEY

    if arch_name is None:
        try:
            arch_name = json.loads(model.metadata.get(PROVENANCE_METADATA_KEY, "{}")).get(
                "architecture"
            )
        except (ValueError, AttributeError):
            arch_name = None
    if not arch_name:
        raise click.UsageError(
            f"{model.path} does not say which architecture it was exported from: give "
            f"--torch-arch (one of {available_architectures()})"
        )
    arch = get_architecture(arch_name)
    module = arch.build(len(model.card.class_names), model.card.channels)
    load_weights(module, weights, arch.rename_key)
    module.eval()
    return {"module": module}


def _refuse_saliency(kw: dict[str, Any], method: str) -> None:
    """Pop the saliency options; refuse any that was given, since ``method`` has no maps."""
    for opt in ("saliency", *_SALIENCY_PARAMS, "torch_weights", "torch_arch"):
        value = kw.pop(opt, None)
        if value is not None and value != []:
            flag = "--" + opt.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to --method informer (saliency maps), not {method}"
            )


def _pop_tta(kw: dict[str, Any], method_uses_tta: bool) -> dict[str, Any]:
    """The TTA settings given on the command line; refused for methods other than tta."""
    given = {
        param: value
        for opt, param in (("tta_copies", "copies"), ("tta_seed", "seed"))
        if (value := kw.pop(opt, None)) is not None
    }
    if given and not method_uses_tta:
        raise click.UsageError("--tta-copies/--tta-seed apply to the tta method only")
    return given


def _score_cache(directory: Path | None) -> Any:
    from .cache import ScoreCache

    return ScoreCache(directory) if directory is not None else None


def _progress() -> Any:
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
        console=_console(stderr=True),
        transient=False,
    )


def _provenance_line(prov: Any) -> str:
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


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v != v else f"{v:.{digits}f}"  # NaN -> dash


# -- commands -----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="informer-audit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Audit an ONNX image classifier: flag predictions it cannot tell apart (INFORMER).

    Exit codes: 0 done; 1 done but some image files failed; 2 bad invocation or input refused;
    3 requested device unavailable; 130 interrupted (rerun the same command to resume).
    """
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=_console(stderr=True), show_time=False, show_path=False)
    root = logging.getLogger("informer_audit")
    root.handlers = [h for h in root.handlers if not isinstance(h, RichHandler)] + [handler]
    root.setLevel(level)


@cli.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@_handle_errors
def info(as_json: bool, **kw: Any) -> None:
    """Show a model's inputs, outputs, preprocessing, classes and execution providers."""
    model = _load_model(kw)
    desc = model.describe()
    if as_json:
        import json

        click.echo(json.dumps(desc, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"{desc['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    card = desc["card"]
    rows = [
        ("sha256", desc["sha256"]),
        ("producer", desc["producer"] or "–"),
        ("opsets", ", ".join(f"{k} {v}" for k, v in desc["opsets"].items())),
        (
            "input",
            f"{desc['input']['name']} {desc['input']['type']} {list(desc['input']['shape'])}",
        ),
        (
            "output",
            f"{desc['output']['name']} {desc['output']['type']} {list(desc['output']['shape'])}",
        ),
        ("batch axis", desc["batch"]),
        ("layout", card["layout"]),
        ("image size", f"{card['image_size'][0]} x {card['image_size'][1]}"),
        ("channels", str(card["channels"])),
        ("scale", f"pixels / {card['scale']:g}"),
        ("mean", ", ".join(f"{v:g}" for v in card["mean"])),
        ("std", ", ".join(f"{v:g}" for v in card["std"])),
        ("output kind", card["output"]),
        ("classes", ", ".join(card["class_names"])),
        ("preprocessing from", desc["card_source"]),
        ("execution providers", ", ".join(desc["providers"])),
        ("device", desc["device_note"]),
    ]
    prov = desc.get("provenance")
    if prov is not None:
        rows.append(("exported", _provenance_line(prov)))
    for key, value in rows:
        table.add_row(key, _escape(str(value)))
    _console().print(table)


@cli.command()
@model_options
@images_option("Folder the label CSV's relative paths are resolved against.")
@click.option(
    "--labels",
    "labels_csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labels CSV: plain (path + 0/1 per class), CheXpert, or NIH Data_Entry.",
)
@output_option("Monitor JSON to write.")
@label_options
@click.option("--split", help="Keep only rows whose 'split' column has this value (e.g. val).")
@click.option(
    "--scores-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write per-image scores: labels, probabilities, d (or the baseline's score) and, "
    "for informer, the K x K distance matrix.",
)
@method_options
@saliency_options
@_handle_errors
def calibrate(**kw: Any) -> None:
    """Fit prediction thresholds and per-class flag thresholds on labelled images.

    Paths in the labels CSV are resolved against --images; exactly the images the CSV lists
    (after the filters) are used.
    """
    from .audit import Auditor, write_scores_csv
    from .audit import calibrate as run_calibration
    from .labels import parse_class_map, read_labels
    from .monitor import save_monitor
    from .paths import check_outputs, write_outputs
    from .saliency import get_adapter

    inputs: dict[str, Any] = {
        "MODEL": kw["model"],
        "--model-card": kw["model_card"],
        "--labels": kw["labels_csv"],
        "--torch-weights": kw["torch_weights"],
    }
    input_dirs = {"--images": kw["images"]}
    outputs = {"-o": kw["output"], "--scores-csv": kw["scores_csv"]}
    output_dirs = {"--cache": kw["cache_dir"]}
    check_outputs(inputs, input_dirs, outputs, output_dirs)
    model = _load_model(kw)
    method = kw.pop("method") or "informer"
    tta = _pop_tta(kw, method == "tta")
    batch_size = kw["batch_size"]
    adapter = None
    if method == "informer":
        name = kw["saliency"] or "fd"
        adapter = get_adapter(name, **_pop_saliency(kw, name), **_torch_module(kw, model, name))
    else:
        _refuse_saliency(kw, method)
    class_map = parse_class_map(kw["classes"], list(model.card.class_names))
    labels = read_labels(
        kw["labels_csv"],
        kw["images"],
        class_map,
        fmt=kw["label_format"],
        uncertain=kw["uncertain"],
        frontal_only=kw["frontal_only"],
        require_finding=kw["require_finding"],
        split=kw["split"],
        path_column=kw["path_column"],
    )
    # Now known: the model's external data and the images the labels list (maybe elsewhere).
    inputs.update({"MODEL": model.files, "images listed in --labels": labels.paths})
    check_outputs(inputs, input_dirs, outputs, output_dirs)
    auditor = Auditor(
        model,
        adapter,
        list(class_map),
        method=method,
        tta=tta if method == "tta" else None,
        tta_batch_size=batch_size,
        cache=_score_cache(kw["cache_dir"]),
    )
    err = _console(stderr=True)
    err.print(
        f"[bold]calibrate[/]: {len(labels)} labelled images from {_escape(str(kw['labels_csv']))}"
        + (f" (dropped: {labels.excluded})" if any(labels.excluded.values()) else "")
        + f"; {_scoring_note(auditor)}; device {model.device_note}"
    )
    with _progress() as progress:
        task = progress.add_task("calibrating", total=len(labels))
        result = run_calibration(
            auditor,
            labels,
            grid_step=kw["grid_step"],
            on_result=lambda _r: progress.advance(task),
        )
    provenance = {
        "labels_file": Path(kw["labels_csv"]).name,
        "label_format": labels.format,
        "label_columns": dict(zip(labels.class_names, labels.label_columns, strict=True)),
        "filters": {
            "split": kw["split"],
            "uncertain": kw["uncertain"],
            "frontal_only": kw["frontal_only"],
            "require_finding": kw["require_finding"],
            "excluded": labels.excluded,
        },
        "n_images": len(result.results),
        "n_failed": len(result.failures),
        "failures": [{"path": f.key, "error": f.error} for f in result.failures],
    }
    writes: list[tuple[str, Path, Callable[[Path], Any]]] = [
        ("-o", kw["output"], lambda p: save_monitor(p, result.monitor, result.binding, provenance))
    ]
    if kw["scores_csv"]:
        classes = auditor.classes
        writes.append(
            ("--scores-csv", kw["scores_csv"], lambda p: write_scores_csv(p, result, classes))
        )
    write_outputs(writes)  # a failed write leaves the results in a recovery folder, and says so
    _render_calibration(result)
    _render_failures([(f.key, str(f.error)) for f in result.failures])
    _render_cache(auditor)
    _console().print(f"monitor written to {_escape(str(kw['output']))}")
    sys.exit(result.return_code)


def _scoring_note(auditor: Any) -> str:
    if auditor.adapter is not None:
        return f"saliency {auditor.adapter.settings()}"
    return f"method {auditor.method}" + (f" {auditor.tta}" if auditor.tta else "")


def _render_calibration(result: Any) -> None:
    from rich.table import Table

    mon = result.monitor
    rule = (
        "INFORMER, d < τ flags"
        if mon.method == "informer"
        else f"{mon.method}, score {'<' if mon.direction == 'below' else '>'} τ flags"
    )
    table = Table(title=f"Calibration on {len(result.results)} images ({rule})")
    for col in (
        "class",
        "n",
        "pos",
        "pred. thr",
        "τ",
        "flags",
        "F1 before",
        "F1 after",
        "sens. before→after",
        "spec. before→after",
    ):
        table.add_column(col, justify="left" if col == "class" else "right")
    notes = []
    for f in result.monitor.fits_:
        table.add_row(
            _escape(f.name),
            str(f.n),
            str(f.n_pos),
            f"{f.prediction_threshold:.4f}",
            f"{f.flag_threshold:.3f}",
            str(f.n_flags),
            _fmt(f.f1_before),
            _fmt(f.f1_after),
            f"{_fmt(f.sensitivity_before)}→{_fmt(f.sensitivity_after)}",
            f"{_fmt(f.specificity_before)}→{_fmt(f.specificity_after)}",
        )
        if f.note:
            notes.append(f"{f.name}: {f.note}")
    console = _console()
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note[/] {_escape(note)}")


def _render_cache(auditor: Any) -> None:
    if auditor.cache is not None:
        _console(stderr=True).print(
            f"score cache: {auditor.cache_hits} hit(s), {auditor.cache_misses} computed "
            f"({_escape(str(auditor.cache.directory))})"
        )


def _render_failures(failures: list[tuple[str, str]]) -> None:
    if not failures:
        return
    err = _console(stderr=True)
    # "failed", not "skipped": skipped files (not images, hidden) are a list of their own.
    err.print(f"[bold yellow]{len(failures)} file(s) failed[/] and were not scored:")
    for key, error in failures[:20]:
        err.print(f"  {_escape(key)}: {_escape(error)}")
    if len(failures) > 20:
        err.print(f"  ... and {len(failures) - 20} more (see the output file)")


@cli.command()
@model_options
@click.option(
    "--monitor",
    "monitor_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Monitor JSON written by calibrate for this model.",
)
@images_option(
    "Folder audited recursively (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM, ...: any image, by "
    "content); other files are listed as skipped with the reason."
)
@output_option(
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
    type=click.Path(file_okay=False, path_type=Path),
    help="Save every image's class maps in this folder (one compressed .npz per image, named "
    "by a hash of its CSV path; informer only), for report.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Then write the HTML report of this run to this folder (index.html and assets/).",
)
@method_options
@saliency_options
@_handle_errors
def flag(**kw: Any) -> None:
    """Audit every image under a folder with a fitted monitor; write one CSV row per image.

    The method, its settings (saliency or TTA) and, for a model without metadata, the model
    card come from the monitor; settings given here must match it.
    """
    from .audit import Auditor, binding_method, flag_folder, tta_params
    from .errors import MonitorMismatchError
    from .journal import journal_path
    from .monitor import load_monitor
    from .paths import check_outputs
    from .saliency import adapter_from_settings

    out: Path = kw["output"]
    inputs: dict[str, Any] = {
        "MODEL": kw["model"],
        "--model-card": kw["model_card"],
        "--monitor": kw["monitor_path"],
        "--torch-weights": kw["torch_weights"],
    }
    input_dirs = {"--images": kw["images"]}
    outputs = {
        "-o": out,
        "-o's journal (OUTPUT.journal)": journal_path(out),
        "-o's partial file (OUTPUT.partial)": out.with_name(out.name + ".partial"),
    }
    output_dirs = {
        "--save-maps": kw["save_maps"],
        "--report": kw["report_dir"],
        "--cache": kw["cache_dir"],
    }
    check_outputs(inputs, input_dirs, outputs, output_dirs)
    monitor, binding, _ = load_monitor(kw["monitor_path"])
    method = kw.pop("method") or monitor.method
    if method != monitor.method:
        raise MonitorMismatchError(
            f"{kw['monitor_path']} was fitted with --method {monitor.method}; this run asks for "
            f"--method {method}"
        )
    if kw["with_matrix"] and method != "informer":
        raise click.UsageError(
            f"--with-matrix needs saliency maps: it applies to --method informer, not {method}"
        )
    if kw["save_maps"] and method != "informer":
        raise click.UsageError(
            f"--save-maps needs saliency maps: it applies to --method informer, not {method}"
        )
    keep_maps = method == "informer" and bool(kw["save_maps"] or kw["report_dir"])
    tta = _pop_tta(kw, method == "tta")
    batch_size = kw["batch_size"]
    # A model without metadata needs no --model-card here: the monitor holds the card it was
    # fitted with, and is bound to this very file (checked below).
    monitor_card = {"class_names": binding["class_names"], **binding["preprocessing"]}
    model = _load_model(kw, monitor_card, f"monitor {kw['monitor_path']}")
    check_outputs({**inputs, "MODEL": model.files}, input_dirs, outputs, output_dirs)
    adapter = None
    if method == "informer":
        settings = dict(binding["saliency"])
        if kw["saliency"] and kw["saliency"] != settings.get("name"):
            raise MonitorMismatchError(
                f"{kw['monitor_path']} was fitted with saliency {settings.get('name')!r}, "
                f"this run asks for {kw['saliency']!r}"
            )
        name = str(settings.get("name"))
        given = _pop_saliency(kw, name)
        adapter = adapter_from_settings({**settings, **given}, **_torch_module(kw, model, name))
    else:
        _refuse_saliency(kw, method)
    auditor = Auditor(
        model,
        adapter,
        binding["audited_classes"],
        method=method,
        # the monitor's TTA settings, with those given here (checked against the monitor below)
        tta={**tta_params(binding_method(binding)), **tta} if method == "tta" else None,
        tta_batch_size=batch_size,
        cache=_score_cache(kw["cache_dir"]),
        keep_maps=keep_maps,
    )
    # --report without --save-maps: the report reads the maps from a temporary folder.
    scratch = tempfile.TemporaryDirectory(prefix="informer-maps-") if keep_maps else None
    maps_dir = kw["save_maps"] or (Path(scratch.name) if scratch is not None else None)
    err = _console(stderr=True)
    err.print(f"[bold]flag[/]: {_scoring_note(auditor)}; device {model.device_note}")
    progress = _progress()
    task = progress.add_task("auditing", total=None)

    def start(n_images: int) -> None:
        # flag_folder calls this after its checks (monitor binding, folder): a refused run
        # shows no progress bar.
        progress.update(task, total=n_images)
        progress.start()

    try:
        summary = flag_folder(
            auditor,
            monitor,
            binding,
            kw["images"],
            kw["output"],
            with_matrix=kw["with_matrix"],
            monitor_source=str(kw["monitor_path"]),
            on_start=start,
            on_result=lambda _r: progress.advance(task),
            maps_dir=maps_dir,
            restart=kw["restart"],
            on_reused=lambda _key: progress.advance(task),
        )
    finally:
        progress.stop()
    if summary.n_resumed:
        err.print(
            f"resumed: {summary.n_resumed} image(s) already audited by an interrupted run "
            "(rows taken from its journal, not scored again)"
        )
    if summary.n_duplicates:
        err.print(
            f"{summary.n_duplicates} file(s) have the same bytes as another file in this "
            "folder: their rows were copied from it (not scored twice)"
        )
    _render_flag_summary(summary)
    _render_failures(summary.failures)
    _render_cache(auditor)
    _console().print(f"flags written to {_escape(str(kw['output']))}")
    if kw["save_maps"]:
        _console().print(f"class maps saved in {_escape(str(kw['save_maps']))}")
    code = summary.return_code
    if kw["report_dir"]:
        try:
            report = _build_report(
                kw["output"],
                kw["monitor_path"],
                kw["report_dir"],
                model=model,
                images_root=kw["images"],
                maps_dir=maps_dir,
            )
        finally:
            if scratch is not None:
                scratch.cleanup()
        code = max(code, report.return_code)
    sys.exit(code)


def _render_flag_summary(summary: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"Audit of {summary.n_images} images ({summary.n_ok} scored, "
        f"{summary.n_failed} failed)"
        + (f"; {len(summary.skipped)} other file(s) skipped" if summary.skipped else "")
    )
    for col in ("class", "predicted positive", "flagged", "flag rate", "audited positive"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for j, name in enumerate(summary.classes):
        rate = summary.flagged[j] / summary.n_ok if summary.n_ok else float("nan")
        table.add_row(
            _escape(name),
            str(summary.predicted[j]),
            str(summary.flagged[j]),
            _fmt(rate),
            str(summary.audited[j]),
        )
    _console().print(table)
    _render_skipped(summary.skipped)


def _render_skipped(skipped: list[tuple[str, str]]) -> None:
    """Files under --images that were not audited (not images, hidden, ...): counts, then a list."""
    if not skipped:
        return
    kinds: dict[str, int] = {}
    for _, reason in skipped:
        kind = reason.split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    err = _console(stderr=True)
    err.print(
        f"[bold]{len(skipped)} file(s) under --images were skipped[/] (no row in the CSV): "
        + ", ".join(f"{n} {_escape(kind)}" for kind, n in kinds.items())
    )
    # Hidden files (a .git folder) would crowd out the rest: list the others first.
    shown = sorted(skipped, key=lambda item: "hidden" in item[1])
    for key, reason in shown[:20]:
        err.print(f"  {_escape(key)}: {_escape(reason)}")
    if len(skipped) > 20:
        err.print(f"  ... and {len(skipped) - 20} more")


def _export_architectures() -> list[str]:
    # informer_audit.export imports torch only inside its functions: the registry is light.
    from .export import available_architectures

    return available_architectures()


@cli.command("export")
@click.argument("architecture", metavar="ARCH", type=click.Choice(_export_architectures()))
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PyTorch checkpoint: a state_dict, or a dict holding one under state_dict / model / "
    "model_state_dict; 'module.' and 'model.' prefixes are stripped. Read with "
    "weights_only=True.",
)
@click.option(
    "--random-init",
    is_flag=True,
    help="No checkpoint: seeded random weights (tests and timing); recorded in the metadata.",
)
@click.option(
    "--classes",
    required=True,
    help="Comma-separated class names, in the order of the model's outputs.",
)
@click.option("--image-size", required=True, help="Input size as H,W (or one number).")
@click.option(
    "--channels", type=click.Choice(["1", "3"]), default="3", show_default=True, help="Channels."
)
@click.option(
    "--mean", help="Comma-separated per-channel mean [3 channels: ImageNet 0.485,0.456,0.406]."
)
@click.option(
    "--std", help="Comma-separated per-channel std [3 channels: ImageNet 0.229,0.224,0.225]."
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=255.0,
    show_default=True,
    help="Pixels are divided by this before mean/std.",
)
@click.option(
    "--opset",
    type=click.IntRange(min=7),
    default=17,
    show_default=True,
    help="ONNX opset (17: ONNX Runtime and onnx2torch both handle it).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Largest accepted |torch - ONNX Runtime| difference in the check.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of --random-init and of the check's random inputs.",
)
@output_option("ONNX file to write (only once it passed the check).")
@_handle_errors
def export_command(**kw: Any) -> None:
    """Export a PyTorch classifier to ONNX with its model card in the metadata, and verify it.

    The file then needs no preprocessing options: info, calibrate and flag read the class names,
    input size and normalisation from it. Needs torch (pip install "informer-audit[torch]").
    """
    from .export import export_architecture
    from .paths import check_outputs

    check_outputs({"--weights": kw["weights"]}, {}, {"-o": kw["output"]})
    size = _split_list(kw["image_size"], int)
    if not size or len(size) > 2:
        raise click.BadParameter(
            f"expected H,W or one number, got {kw['image_size']!r}", param_hint="--image-size"
        )
    result = export_architecture(
        kw["architecture"],
        kw["output"],
        class_names=_split_list(kw["classes"]) or [],
        image_size=size,
        weights=kw["weights"],
        random_init=kw["random_init"],
        channels=int(kw["channels"]),
        mean=_split_list(kw["mean"], float),
        std=_split_list(kw["std"], float),
        scale=kw["scale"],
        opset=kw["opset"],
        tolerance=kw["tolerance"],
        seed=kw["seed"],
    )
    from rich.table import Table

    card, prov = result.card, result.provenance
    checkpoint = prov.get("checkpoint")
    h, w = card.image_size
    mean, std = (", ".join(f"{v:g}" for v in values) for values in (card.mean, card.std))
    table = Table(title=f"Exported {kw['architecture']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("output", str(result.path)),
        ("sha256", result.sha256),
        (
            "weights",
            f"{checkpoint['file']} (sha256 {checkpoint['sha256']}; {checkpoint['layout']})"
            if checkpoint
            else f"random initialisation (seed {prov.get('random_init_seed')})",
        ),
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
    for key, value in rows:
        table.add_row(key, _escape(value))
    _console().print(table)


# -- evaluate -----------------------------------------------------------------------------------
def _methods_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from .baselines import METHODS

    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names or len(set(names)) != len(names):
        raise click.BadParameter(
            f"expected distinct names among {', '.join(METHODS)}, comma-separated; got {value!r}"
        )
    return names


def _pop_saliency_several(kw: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per adapter, the parameters given on the command line; options of others refused."""
    for opt, (owner, _) in _SALIENCY_PARAMS.items():
        if kw.get(opt) is not None and owner not in names:
            flag = "--" + opt.replace("_", "-")
            chosen = ",".join(names) if names else "none (informer is not among --methods)"
            raise click.UsageError(f"{flag} applies to --saliency {owner}; --saliency is {chosen}")
    batch_size = kw.pop("batch_size", None)
    given = {}
    for name in names:
        own = {o: kw.get(o) for o, (owner, _) in _SALIENCY_PARAMS.items() if owner == name}
        given[name] = _pop_saliency({**own, "batch_size": batch_size}, name)
    for opt in _SALIENCY_PARAMS:
        kw.pop(opt, None)
    return given


@cli.command("evaluate")
@model_options
@click.option(
    "--calib-images",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the calibration labels' relative paths are resolved against.",
)
@click.option(
    "--calib-labels",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Calibration labels CSV (plain, CheXpert or NIH): thresholds are fitted on these.",
)
@click.option("--calib-split", help="Keep only calibration rows whose 'split' column is this.")
@click.option(
    "--test-images",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the test labels' relative paths are resolved against.",
)
@click.option(
    "--test-labels",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Test labels CSV (any supported format): every reported number is measured on these.",
)
@click.option("--test-split", help="Keep only test rows whose 'split' column is this.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: report.md, CSV tables, plots, one monitor_<method>.json per method.",
)
@click.option(
    "--methods",
    default="informer,entropy,tta,msp",
    show_default=True,
    callback=_methods_list,
    help="Methods to fit and compare, comma-separated; informer gives one row per --saliency "
    "adapter (informer_fd, ...).",
)
@label_options
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=click.IntRange(min=2),
    default=30,
    show_default=True,
    help="Bootstrap test sets (drawn with replacement) for the box plot and the t-tests.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the bootstrap, and of TTA and LIME unless --tta-seed / --lime-seed is given.",
)
@tta_options
@cache_option("Per-image score cache folder [OUTDIR/cache]; a rerun recomputes nothing.")
@click.option("--no-cache", is_flag=True, help="Use no score cache.")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots (no matplotlib needed).")
@functools.partial(saliency_options, several=True)
@_handle_errors
def evaluate_command(**kw: Any) -> None:
    """Fit INFORMER and the baselines on a calibration set, compare them on a test set.

    Writes to OUTDIR: table1.csv (F1 after swapping per class and mean, one row per method and
    no_audit), sensitivity.csv, specificity.csv, flags.csv, thresholds.csv, bootstrap.csv,
    ttests.csv, failure_metrics.csv (AUROC, AURC, AUGRC), bootstrap_boxplot.png,
    risk_coverage.png, report.md, and monitor_<method>.json files that flag can apply.
    """
    from .experiment import run_evaluation, write_evaluation
    from .labels import parse_class_map, read_labels
    from .paths import check_outputs, write_outputs
    from .saliency import get_adapter

    outdir: Path = kw["output"]
    cache_dir = None if kw["no_cache"] else (kw["cache_dir"] or outdir / "cache")
    inputs: dict[str, Any] = {
        "MODEL": kw["model"],
        "--model-card": kw["model_card"],
        "--calib-labels": kw["calib_labels"],
        "--test-labels": kw["test_labels"],
        "--torch-weights": kw["torch_weights"],
    }
    input_dirs = {"--calib-images": kw["calib_images"], "--test-images": kw["test_images"]}
    output_dirs = {"OUTDIR (-o)": outdir, "--cache": cache_dir}
    check_outputs(inputs, input_dirs, {}, output_dirs)
    methods: list[str] = kw["methods"]
    seed = kw["seed"]
    tta = _pop_tta(kw, "tta" in methods)
    names: list[str] = kw.pop("saliency") or (["fd"] if "informer" in methods else [])
    if names and "informer" not in methods:
        raise click.UsageError(
            f"--saliency {','.join(names)} applies to the informer method, which --methods "
            f"({','.join(methods)}) leaves out"
        )
    batch_size = kw["batch_size"]
    params = _pop_saliency_several(kw, names)
    model = _load_model(kw)
    torch_kw = _torch_module(
        kw, model, "gradient" if "gradient" in names else ",".join(names) or "none"
    )
    adapters = {}
    for name in names:
        if name == "lime":
            params[name].setdefault("seed", seed)
        adapters[name] = get_adapter(
            name, **params[name], **(torch_kw if name == "gradient" else {})
        )
    class_map = parse_class_map(kw["classes"], list(model.card.class_names))
    common = {
        "fmt": kw["label_format"],
        "uncertain": kw["uncertain"],
        "frontal_only": kw["frontal_only"],
        "require_finding": kw["require_finding"],
        "path_column": kw["path_column"],
    }
    sets = {
        part: read_labels(
            kw[f"{part}_labels"],
            kw[f"{part}_images"],
            class_map,
            split=kw[f"{part}_split"],
            **common,
        )
        for part in ("calib", "test")
    }
    inputs["MODEL"] = model.files
    inputs.update({f"images listed in --{p}-labels": sets[p].paths for p in ("calib", "test")})
    check_outputs(inputs, input_dirs, {}, output_dirs)
    err = _console(stderr=True)
    err.print(
        f"[bold]evaluate[/]: {len(sets['calib'])} calibration and {len(sets['test'])} test images;"
        f" methods {', '.join(methods)}"
        + (f"; saliency {', '.join(str(a.settings()) for a in adapters.values())}" if names else "")
        + f"; device {model.device_note}"
        + (f"; cache {_escape(str(cache_dir))}" if cache_dir else "")
    )
    tasks: dict[str, Any] = {}
    with _progress() as progress:

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        run = run_evaluation(
            model,
            sets["calib"],
            sets["test"],
            methods=methods,
            adapters=adapters,
            tta={"copies": 10, "seed": seed, **tta},
            tta_batch_size=batch_size,
            cache=_score_cache(cache_dir),
            grid_step=kw["grid_step"],
            n_bootstrap=kw["n_bootstrap"],
            seed=seed,
            on_progress=on_progress,
        )
    filters = {
        "uncertain": kw["uncertain"],
        "frontal_only": kw["frontal_only"],
        "require_finding": kw["require_finding"],
    }
    labels_prov = {
        part: {
            "labels_file": Path(kw[f"{key}_labels"]).name,
            "label_format": sets[key].format,
            "split": kw[f"{key}_split"],
            "excluded": sets[key].excluded,
        }
        for part, key in (("calibration", "calib"), ("test", "test"))
    }
    calib = sets["calib"]
    write = functools.partial(
        write_evaluation,
        run,
        title=f"INFORMER evaluation of {model.path.name}",
        provenance={
            "model": model.path.name,
            "model_sha256": model.sha256,
            "preprocessing": model.card.to_dict(),
            "label_columns": dict(zip(calib.class_names, calib.label_columns, strict=True)),
            **labels_prov,
            "label_filters": filters,
        },
        calibration_provenance={
            "labels_file": labels_prov["calibration"]["labels_file"],
            "label_format": calib.format,
            "label_columns": dict(zip(calib.class_names, calib.label_columns, strict=True)),
            "filters": {"split": kw["calib_split"], **filters, "excluded": calib.excluded},
        },
        plots=not kw["no_plots"],
    )
    # A failed write leaves the results in a recovery folder, and says where.
    written = write_outputs([("OUTDIR (-o)", outdir, write)])[0]
    _render_evaluation(run)
    _render_failures([(f"{f.image_set}: {f.key}", f.error) for f in run.failures])
    if run.overlap:
        err.print(
            f"[yellow]note[/] {len(run.overlap)} test image(s) are also calibration images "
            f"(e.g. {_escape(run.overlap[0])}): the numbers are optimistic"
        )
    if cache_dir is not None:
        err.print(
            f"score cache: {run.cache_hits} hit(s), {run.cache_misses} computed "
            f"({_escape(str(cache_dir))})"
        )
    _console().print(f"{len(written)} files written to {_escape(str(outdir))} (see report.md)")
    sys.exit(run.return_code)


def _render_evaluation(run: Any) -> None:
    from rich.table import Table

    ev = run.evaluation
    f1 = {row[0]: row[1:] for row in ev.table1().rows}
    flags = {row[0]: row[-1] for row in ev.flags_table().rows}
    median = {row[0]: row[1] for row in ev.bootstrap_summary_table().rows}
    table = Table(
        title=f"Table 1: F1 after swapping on {ev.n_test} test images "
        f"(thresholds from {ev.n_calibration} calibration images)"
    )
    for col in ("method", *ev.class_names, "mean F1", "flags", "bootstrap median", "AUROC"):
        table.add_column(_escape(col), justify="left" if col == "method" else "right")
    for row in ev.rows:
        auroc = ev.failure[row].mean_auroc if row in ev.failure else float("nan")
        table.add_row(
            _escape(row),
            *(_fmt(v) for v in f1[row]),
            str(flags[row]),
            _fmt(median[row]),
            _fmt(auroc),
        )
    console = _console()
    console.print(table)
    if ev.ttests:
        tests = Table(title=f"Paired t-tests over {ev.n_bootstrap} bootstrap sets (mean F1)")
        for col in ("informer", "vs", "mean difference", "t", "p"):
            tests.add_column(col, justify="left" if col in ("informer", "vs") else "right")
        for t in ev.ttests:
            p = "n/a" if t.p_value != t.p_value else f"{t.p_value:.3g} {t.stars}".strip()
            tests.add_row(t.informer, t.baseline, f"{t.mean_difference:+.4f}", _fmt(t.statistic), p)
        console.print(tests)


# -- report -------------------------------------------------------------------------------------
def _build_report(flags_csv: Path, monitor_path: Path, outdir: Path, **kw: Any) -> Any:
    """Build the HTML report with a progress bar, render its summary; returns the summary."""
    from .report import build_report

    tasks: dict[str, Any] = {}
    with _progress() as progress:

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"report: {stage}", total=total)
            progress.update(tasks[stage], completed=done)

        summary = build_report(flags_csv, monitor_path, outdir, progress=on_progress, **kw)
    err = _console(stderr=True)
    for note in summary.notes:
        err.print(f"[yellow]note[/] {_escape(note)}")
    for key, why in summary.missing_images[:20]:
        err.print(f"[yellow]image not shown[/] {_escape(key)}: {_escape(why)}")
    if len(summary.missing_images) > 20:
        err.print(f"  ... and {len(summary.missing_images) - 20} more (listed in the report)")
    _console().print(
        f"report written to {_escape(str(summary.index))}: {summary.n_images} images "
        f"({summary.n_failed} failed), {summary.n_flagged_images} with a flag; "
        f"{summary.n_gallery} flagged and {summary.n_contrast} unflagged shown; class maps: "
        f"{summary.maps}"
    )
    return summary


@cli.command("report")
@click.argument("flags_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--monitor",
    "monitor_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The monitor JSON that flag applied (thresholds, model binding, saliency settings).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder: index.html and assets/ (opens offline in any browser).",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the CSV's image paths are looked up under (default: as written, then "
    "relative to the CSV's folder).",
)
@click.option(
    "--maps",
    "maps_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Class maps saved by flag --save-maps.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The audited ONNX model: recomputes the maps of the shown images that --maps lacks.",
)
@click.option(
    "--model-card",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model card for --model (default: the ONNX metadata, then the monitor's card).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Device for --model.",
)
@click.option(
    "--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads for --model."
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labels of the audited images (plain, CheXpert or NIH): F1 before/after swapping.",
)
@click.option(
    "--classes",
    help="Label columns of the audited classes, e.g. 'A,Effusion=Pleural Effusion' (every "
    "audited class, once). Default: same-named columns.",
)
@click.option(
    "--label-format",
    type=click.Choice(["auto", "plain", "chexpert", "nih"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--uncertain",
    type=click.Choice(["exclude-image", "exclude-class", "zero", "one"]),
    default="exclude-class",
    show_default=True,
    help="CheXpert -1 labels: drop the image, leave that class unlabelled, or count as 0 or 1.",
)
@click.option("--split", help="Keep only label rows whose 'split' column has this value.")
@click.option("--path-column", help="Name of the labels CSV column holding image paths.")
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
@_handle_errors
def report_command(**kw: Any) -> None:
    """Write a static HTML report of a flag run: counts, per-class score histograms with tau,
    a gallery of flagged images with their class maps, unflagged examples and failures.

    The maps come from --maps (flag --save-maps) or, for the shown images only, are recomputed
    with --model; a baseline monitor (entropy, tta, msp) has none.
    """
    from .labels import parse_class_map, read_labels
    from .model import OnnxClassifier
    from .monitor import load_monitor
    from .paths import check_outputs

    monitor_path: Path = kw["monitor_path"]
    inputs: dict[str, Any] = {
        "FLAGS_CSV": kw["flags_csv"],
        "--monitor": monitor_path,
        "--model": kw["model_path"],
        "--model-card": kw["model_card"],
        "--labels": kw["labels_csv"],
    }
    input_dirs = {"--images": kw["images"], "--maps": kw["maps_dir"]}
    check_outputs(inputs, input_dirs, {}, {"-o": kw["output"]})
    _, binding, _ = load_monitor(monitor_path)
    audited = [str(c) for c in binding["audited_classes"]]
    model = None
    if kw["model_path"] is not None:
        model = OnnxClassifier(
            kw["model_path"],
            card_file=kw["model_card"],
            device=kw["device"],
            threads=kw["threads"],
            fallback_card={"class_names": binding["class_names"], **binding["preprocessing"]},
            fallback_source=f"monitor {monitor_path}",
        )
        inputs["--model"] = model.files  # with its external data
        check_outputs(inputs, input_dirs, {}, {"-o": kw["output"]})
    elif kw["model_card"] is not None:
        raise click.UsageError("--model-card applies to --model")
    labels = None
    if kw["labels_csv"] is not None:
        class_map = parse_class_map(kw["classes"], audited)
        if set(class_map) != set(audited):
            raise click.UsageError(
                f"--classes must name every audited class once ({', '.join(audited)}); got "
                f"{', '.join(class_map)}"
            )
        labels = read_labels(
            kw["labels_csv"],
            kw["images"] or Path(kw["labels_csv"]).parent,
            {c: class_map[c] for c in audited},
            fmt=kw["label_format"],
            uncertain=kw["uncertain"],
            split=kw["split"],
            path_column=kw["path_column"],
        )
    elif kw["classes"] is not None:
        raise click.UsageError("--classes applies to --labels")
    summary = _build_report(
        kw["flags_csv"],
        monitor_path,
        kw["output"],
        model=model,
        images_root=kw["images"],
        labels=labels,
        maps_dir=kw["maps_dir"],
        max_gallery=kw["max_gallery"],
        n_contrast=kw["n_contrast"],
    )
    sys.exit(summary.return_code)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="informer-audit")


if __name__ == "__main__":
    main()
