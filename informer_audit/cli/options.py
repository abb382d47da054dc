"""Every command-line option, defined once and shared by the commands that take it.

Module-level option objects (as pip-tools' ``piptools/scripts/options.py``), and a few groups of
them. The saliency options come from the adapters (:attr:`SaliencyAdapter.options`), so a
third-party adapter's settings are offered like the built-ins'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
NEW_FILE = click.Path(dir_okay=False, path_type=Path)
NEW_DIR = click.Path(file_okay=False, path_type=Path)


def group(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` in the order written (first is outermost)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


# -- the model ----------------------------------------------------------------------------------
model_argument = click.argument("model", type=EXISTING_FILE)
model_card = click.option(
    "--model-card",
    type=EXISTING_FILE,
    help="JSON or TOML model card; overrides the ONNX file's metadata.",
)
device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto uses CUDA when ONNX Runtime can really create it, and says which.",
)
threads = click.option(
    "--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads (default: all)."
)
model_options = group(
    model_argument,
    model_card,
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
        "--resize",
        type=click.Choice(["uint8", "float"]),
        help="Override: uint8 (the card's default) converts and resizes 8-bit images in 8 bits "
        "with Pillow, as PIL/torchvision training pipelines do; float: every image in float.",
    ),
    device,
    threads,
)
"""MODEL, its card, preprocessing overrides and the device (info, calibrate, flag, evaluate)."""
MODEL_OVERRIDES = ("class_names", "image_size", "channels", "layout", "scale", "mean", "std")


# -- where images are scored ---------------------------------------------------------------------
backend_options = group(
    click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local scores in this process (the reference); ray scores on the workers of a Ray "
        "cluster (pip install 'informer-audit[ray]'). Results are the same.",
    ),
    click.option(
        "--ray-address",
        help="Ray cluster to join (e.g. auto, ray://head:10001, head:6379; default: "
        "$RAY_ADDRESS; with neither, start a private local Ray with this machine's CPUs).",
    ),
    click.option(
        "--ray-workers",
        type=click.IntRange(min=1),
        help="Worker actors (default: as many as the cluster's CPUs, or GPUs, allow).",
    ),
    click.option(
        "--ray-cpus-per-worker",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="CPUs per worker; also its ONNX Runtime thread count.",
    ),
    click.option(
        "--ray-gpus-per-worker",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="GPUs per worker (a worker with a GPU runs ONNX Runtime on CUDA).",
    ),
    click.option(
        "--ray-object-store-mb",
        type=click.IntRange(min=80),
        help="Object store size of a local Ray, in MiB (default: 512 or half of /dev/shm).",
    ),
)
"""--backend and the Ray backend's settings (calibrate, flag, evaluate)."""
RAY_OPTIONS = (
    "ray_address",
    "ray_workers",
    "ray_cpus_per_worker",
    "ray_gpus_per_worker",
    "ray_object_store_mb",
)


# -- files --------------------------------------------------------------------------------------
def images(help_text: str, required: bool = True, name: str = "") -> Callable[[F], F]:
    """``--images DIR`` (or ``--NAME-images``: an existing folder); the help says what for."""
    flag = f"--{name}-images" if name else "--images"
    return click.option(flag, required=required, type=EXISTING_DIR, help=help_text)


def output(help_text: str, folder: bool = False) -> Callable[[F], F]:
    """``-o/--output`` (a file, or with ``folder`` a folder); the help says what is written."""
    kind = NEW_DIR if folder else NEW_FILE
    return click.option("-o", "--output", required=True, type=kind, help=help_text)


def labels(help_text: str, required: bool = True) -> Callable[[F], F]:
    """``--labels CSV``; the help says what the labels are for."""
    return click.option(
        "--labels", "labels_csv", required=required, type=EXISTING_FILE, help=help_text
    )


def monitor(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--monitor", "monitor_path", required=True, type=EXISTING_FILE, help=help_text
    )


def cache(help_text: str) -> Callable[[F], F]:
    """``--cache DIR``: the per-image score cache; the help says the default."""
    return click.option("--cache", "cache_dir", type=NEW_DIR, help=help_text)


# -- labels -------------------------------------------------------------------------------------
classes = click.option(
    "--classes",
    help="Model classes to audit, optionally mapped to label columns: "
    "'Atelectasis,Effusion=Pleural Effusion'. Default: every model class (report: every audited "
    "class, once), same-named columns.",
)
label_format = click.option(
    "--label-format",
    type=click.Choice(["auto", "plain", "chexpert", "nih"]),
    default="auto",
    show_default=True,
)
uncertain = click.option(
    "--uncertain",
    type=click.Choice(["exclude-image", "exclude-class", "zero", "one"]),
    default="exclude-image",
    show_default=True,
    help="CheXpert -1 labels: drop the image (the paper's choice), drop only that class, "
    "count as 0, or count as 1.",
)
split = click.option(
    "--split", help="Keep only label rows whose 'split' column has this value (e.g. val)."
)
path_column = click.option("--path-column", help="Name of the CSV column holding image paths.")
grid_step = click.option(
    "--grid-step",
    type=click.FloatRange(min=0, min_open=True),
    default=0.001,
    show_default=True,
    help="Flag-threshold grid step.",
)
label_options = group(
    classes,
    label_format,
    uncertain,
    click.option("--frontal-only", is_flag=True, help="Keep frontal views only."),
    click.option(
        "--require-finding",
        is_flag=True,
        help="The paper's cohort rule: drop images with none of the audited findings.",
    ),
    path_column,
    grid_step,
)
"""How a labels CSV is read and filtered, which classes are audited, the flag grid."""


# -- method -------------------------------------------------------------------------------------
tta_options = group(
    click.option(
        "--tta-copies", type=click.IntRange(min=2), help="tta: augmented copies per image [10]."
    ),
    click.option(
        "--tta-seed",
        type=click.IntRange(min=0),
        help="tta: seed; each image's augmentations derive from it and the image's content "
        "[calibrate: 0; flag: the monitor's; evaluate: --seed].",
    ),
)
"""Settings of the TTA baseline that change its score."""
TTA_OPTIONS = {"tta_copies": "copies", "tta_seed": "seed"}


def _method_choice() -> list[str]:
    from ..scorers import available_scorers

    return list(available_scorers())


method_options = group(
    click.option(
        "--method",
        type=click.Choice(_method_choice()),
        help="Monitor score: informer (class distinctiveness d, with --saliency), entropy, "
        "tta or msp (no saliency map) [calibrate: informer; flag: the monitor's].",
    ),
    tta_options,
    cache(
        "Per-image score cache folder (default: none). Each image's scores are stored as "
        "it finishes: a rerun, e.g. after an interruption, scores only the images not there."
    ),
)
"""``--method`` (the monitor's raw score), the TTA settings and ``--cache``."""


# -- the input check ------------------------------------------------------------------------------
def input_alpha(help_text: str, default: float | None = None) -> Callable[[F], F]:
    """``--input-alpha A``: the input check's false-alarm level, in (0, 1)."""
    extra: dict[str, Any] = {"default": default, "show_default": True} if default else {}
    return click.option(
        "--input-alpha",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help=help_text,
        **extra,
    )


# -- saliency -----------------------------------------------------------------------------------
class _Converted(click.ParamType):
    """An adapter option's own converter (text -> value; ValueError says the expected form)."""

    def __init__(self, convert: Callable[[str], Any]) -> None:
        self._convert = convert
        self.name = "text"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._convert(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _click_type(option: Any) -> Any:
    if option.choices:
        return click.Choice(list(option.choices))
    if option.type is Path:
        return EXISTING_FILE
    if option.type in (int, float):
        if option.min is None:
            return option.type
        kind = click.IntRange if option.type is int else click.FloatRange
        return kind(min=option.min)
    return option.type if option.type is str else _Converted(option.type)


def saliency_option_table() -> dict[str, tuple[Any, tuple[str, ...]]]:
    """CLI destination (``patch_size``, ``lime_fill``) -> (AdapterOption, adapter names)."""
    from ..saliency import adapter_options

    return {
        flag[2:].replace("-", "_"): entry
        for flag, entry in sorted(adapter_options().items(), key=lambda kv: len(kv[1][1]) > 1)
    }


def _adapter_params() -> list[click.Parameter]:
    from ..saliency import ORT_BATCH_SIZE

    params: list[click.Parameter] = []
    for option, owners in saliency_option_table().values():
        extra = {"default": option.default, "show_default": True} if option.default else {}
        text = f"{', '.join(owners)}: {option.help}"
        if option is ORT_BATCH_SIZE:
            # Not given: None, and the command chooses it for the machine and model
            # (build.resolve_batch_size), saying so in its run header.
            extra = {}
            text += (
                " tta: augmented copies per run. [default: chosen for this machine and model "
                "by a short timed probe, cached; the run header says which]"
            )
        params.append(click.Option([option.flag], type=_click_type(option), help=text, **extra))
    return params


def _adapter_list(ctx: click.Context, param: click.Parameter, value: Any) -> list[str] | None:
    """``--saliency fd,lime`` (or repeated): distinct registered adapter names, in order."""
    from ..saliency import available_adapters

    names = [v.strip() for text in value or () for v in text.split(",") if v.strip()]
    valid = sorted(available_adapters())
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise click.BadParameter(f"unknown adapter(s) {unknown}; choose from {valid}")
    return list(dict.fromkeys(names)) or None


def _saliency_choice(several: bool) -> click.Parameter:
    from ..saliency import available_adapters

    names = sorted(available_adapters())
    if several:
        return click.Option(
            ["--saliency"],
            multiple=True,
            callback=_adapter_list,
            help="Saliency adapters of INFORMER, comma-separated or repeated, one result row "
            f"each (choices: {', '.join(names)}) [fd].",
        )
    return click.Option(
        ["--saliency"],
        type=click.Choice(names),
        default=None,
        help="Saliency adapter (calibrate default: fd; flag: the monitor's).",
    )


class SaliencyCommand(click.Command):
    """A command taking ``--saliency`` and every registered adapter's options.

    The options are read from the adapter registry when the command runs (parsing and help),
    so an adapter registered after this module was imported is offered too.
    """

    several = False
    """``--saliency`` takes several adapters (comma-separated or repeated)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        from ..saliency import available_adapters

        params = super().get_params(ctx)  # the command's own, then the help option
        own, tail = params[: len(self.params)], params[len(self.params) :]

        key = (self.several, tuple(available_adapters().items()))
        if getattr(self, "_saliency_key", None) != key:
            self._saliency_key = key
            self._saliency_params = [_saliency_choice(self.several), *_adapter_params()]
        return [*own, *self._saliency_params, *tail]


class SeveralSaliencyCommand(SaliencyCommand):
    several = True


# -- library parameters -> flags ----------------------------------------------------------------
LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "card_file": ("model_card",),
    "output": ("output_kind",),  # the model card's output kind, not -o/--output
    "fmt": ("label_format",),
    "maps_dir": ("maps_dir", "save_maps"),  # report --maps; flag --save-maps
    # InputCheck's hyperparameters (calibrate --input-*).
    "alpha": ("input_alpha",),
    "score": ("input_score",),
    "direction": ("input_direction",),
    # The Ray backend's settings (informer_audit.backends.RaySettings).
    "address": ("ray_address",),
    "workers": ("ray_workers",),
    "cpus_per_worker": ("ray_cpus_per_worker",),
    "gpus_per_worker": ("ray_gpus_per_worker",),
    "object_store_mb": ("ray_object_store_mb",),
}
"""Library parameters whose option has another destination (and not only its own name)."""


def param_destinations() -> dict[str, tuple[str, ...]]:
    """Library parameter -> the CLI destinations that set it (besides one of the same name).

    The one mapping from the names an error's or warning's ``params`` gives to options: the
    adapters' :class:`~informer_audit.saliency.AdapterOption` declarations (``step`` ->
    ``fd_step``) and :data:`LIBRARY_NAMES`.
    """
    table: dict[str, tuple[str, ...]] = {}
    for dest, (option, _) in saliency_option_table().items():
        table[option.param] = (*table.get(option.param, ()), dest)
    for param, dests in LIBRARY_NAMES.items():
        table[param] = (*table.get(param, ()), *dests)
    return table


def flags_for(params: tuple[str, ...], ctx: click.Context) -> list[str]:
    """The flags of ``ctx``'s command that set the library parameters ``params``, in order.

    A parameter no option of this command sets (one of a function the command does not call
    with a user's value) gives none.
    """
    options = {
        p.name: max((o for o in p.opts if o.startswith("--")), key=len, default=p.opts[0])
        for p in ctx.command.get_params(ctx)
        if isinstance(p, click.Option) and p.name
    }
    table = param_destinations()
    flags: dict[str, None] = {}  # ordered, without repeats
    for param in params:
        dests = table.get(param, ())
        if param not in LIBRARY_NAMES:
            dests = (param, *dests)
        flags.update((options[d], None) for d in dests if d in options)
    return list(flags)
