"""From parsed options to library objects: the model, the scorer's settings, the label set.

Options that do not apply to the chosen method or adapter are refused here, with the flags
named (the library names its parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from .options import TTA_OPTIONS, saliency_option_table


def split_list(value: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"cannot parse {value!r}: {exc}") from exc


def load_model(kw: dict[str, Any], fallback: dict[str, Any] | None = None, source: str = "") -> Any:
    """The :class:`OnnxClassifier` of the model options (popped from ``kw``)."""
    from ..model import OnnxClassifier

    size = split_list(kw.pop("image_size"), int)
    overrides = {
        "class_names": split_list(kw.pop("class_names")),
        "image_size": (size * 2 if size and len(size) == 1 else size),
        "channels": int(channels) if (channels := kw.pop("channels")) else None,
        "layout": kw.pop("layout"),
        "scale": kw.pop("scale"),
        "mean": split_list(kw.pop("mean"), float),
        "std": split_list(kw.pop("std"), float),
        "output": kw.pop("output_kind"),
        "resize": kw.pop("resize"),
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


def resolve_batch_size(
    kw: dict[str, Any], model: Any, methods: list[str], adapters: list[str]
) -> str:
    """Set ``kw["batch_size"]``: as given, else chosen for ``model`` on this machine.

    Only when one of ``methods`` runs batches through ONNX Runtime (tta, or a method with
    maps whose adapter among ``adapters`` takes ``--batch-size``) is the size chosen
    (:func:`~informer_audit.batchsize.choose_batch_size`: a short probe, cached); otherwise it
    is unused and stays at the library's default. On the Ray backend an unset size stays
    ``None``: every worker chooses it for its own session, whose thread count differs from this
    process's.

    Returns
    -------
    str
        ``"; batch size ..."`` for the run header, or ``""`` when no ONNX Runtime batch is run.
    """
    from ..batchsize import DEFAULT_BATCH, choose_batch_size
    from ..saliency import ORT_BATCH_SIZE, available_adapters
    from ..scorers import scorer_class

    given = kw.get("batch_size")
    registry = available_adapters()
    ort_adapters = [
        a for a in adapters if ORT_BATCH_SIZE in getattr(registry.get(a), "options", ())
    ]
    groups = [scorer_class(m).option_groups for m in methods]
    used = any("tta" in g or ("saliency" in g and ort_adapters) for g in groups)
    if not used:
        kw["batch_size"] = given or DEFAULT_BATCH
        return ""
    if given is None and kw.get("backend") == "ray":
        # Each worker runs its own session with its own thread count (--ray-cpus-per-worker):
        # it chooses for that session (a probe cached per thread count), not the driver's.
        kw["batch_size"] = None
        return "; batch size chosen by each Ray worker for its own session (a short probe, cached)"
    choice = choose_batch_size(model, given)
    kw["batch_size"] = choice.size
    return f"; {choice.describe()}"


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _given(kw: dict[str, Any]) -> dict[str, Any]:
    """The saliency options given (popped from ``kw``), by destination; shared ones kept."""
    given = {}
    for dest, (option, _) in saliency_option_table().items():
        if option.default is not None:
            continue  # always set (--batch-size): the library applies it where it fits
        value = kw.pop(dest, None)
        if value is not None:
            given[dest] = value
    return given


def saliency_settings(kw: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(adapter parameters, front-end options)`` of adapter ``name``; others' refused.

    The front-end options are those the adapter does not take in ``__init__`` (the gradient
    adapter's ``weights`` and ``arch``).
    """
    table = saliency_option_table()
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for dest, value in _given(kw).items():
        option, owners = table[dest]
        if name not in owners:
            raise click.UsageError(f"{_flag(dest)} applies to --saliency {owners[0]}, not {name}")
        (params if option.init else extra)[option.param] = value
    return params, extra


def saliency_settings_several(
    kw: dict[str, Any], names: list[str]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per adapter, :func:`saliency_settings`; an option of no chosen adapter refused."""
    table = saliency_option_table()
    given = _given(kw)
    for dest in given:
        owners = table[dest][1]
        if not set(owners) & set(names):
            chosen = ",".join(names) if names else "none (informer is not among --methods)"
            raise click.UsageError(
                f"{_flag(dest)} applies to --saliency {owners[0]}; --saliency is {chosen}"
            )
    out = {}
    for name in names:
        own = {d: v for d, v in given.items() if name in table[d][1]}
        out[name] = saliency_settings(own, name)
    return out


def refuse_saliency(kw: dict[str, Any], method: str) -> None:
    """Pop the saliency options; refuse any that was given, since ``method`` has no maps."""
    for dest in ("saliency", *_given(dict(kw))):
        value = kw.pop(dest, None)
        if value is not None and value != []:
            raise click.UsageError(
                f"{_flag(dest)} applies to --method informer (saliency maps), not {method}"
            )


def pop_tta(kw: dict[str, Any], method_uses_tta: bool) -> dict[str, Any]:
    """The TTA settings given on the command line; refused for methods other than tta."""
    given = {
        param: value for dest, param in TTA_OPTIONS.items() if (value := kw.pop(dest)) is not None
    }
    if given and not method_uses_tta:
        raise click.UsageError("--tta-copies/--tta-seed apply to the tta method only")
    return given


def torch_module(model: Any, extra: dict[str, Any], adapter: str) -> Any:
    """The torch module of a white-box adapter (gradient, lrp: those taking ``module``) from
    --torch-weights/--torch-arch, or None."""
    import inspect

    from ..saliency import available_adapters

    weights, arch = extra.get("weights"), extra.get("arch")
    if weights is None and arch is None:
        return None
    white_box = [
        name
        for name, cls in available_adapters().items()
        if "module" in inspect.signature(cls.__init__).parameters
    ]
    if adapter not in white_box:
        raise click.UsageError(
            f"--torch-weights/--torch-arch apply to --saliency {'|'.join(white_box)}, not {adapter}"
        )
    if weights is None:
        raise click.UsageError("--torch-arch needs --torch-weights")
    from ..checkpoints import torch_module_for

    return torch_module_for(model, weights, arch)  # its errors name arch: --torch-arch


def score_cache(directory: Path | None) -> Any:
    from ..cache import ScoreCache

    return ScoreCache(directory) if directory is not None else None


def class_map(kw: dict[str, Any], classes: list[str]) -> dict[str, str]:
    from ..labels import parse_class_map

    return parse_class_map(kw["classes"], classes)


def read_labels(
    kw: dict[str, Any], csv: Path, images: Path, classes: dict[str, str], **more: Any
) -> Any:
    """The label set of ``csv`` with the label options of ``kw`` (and ``more``)."""
    from ..labels import read_labels as read

    return read(
        csv,
        images,
        classes,
        fmt=kw["label_format"],
        uncertain=kw["uncertain"],
        path_column=kw["path_column"],
        **more,
    )


def label_filters(kw: dict[str, Any]) -> dict[str, Any]:
    """``frontal_only`` and ``require_finding`` as read_labels takes them."""
    return {"frontal_only": kw["frontal_only"], "require_finding": kw["require_finding"]}


@contextlib.contextmanager
def ray_cluster(kw: dict[str, Any]) -> Iterator[Any]:
    """The Ray cluster of ``--backend ray`` (connected for the block), or ``None`` for local.

    Pops the backend options from ``kw``; ``--ray-*`` options without ``--backend ray`` are
    refused. On exit a local Ray started here is shut down.
    """
    from .options import RAY_OPTIONS

    name = kw.pop("backend", "local")
    given = {k: kw.pop(k, None) for k in RAY_OPTIONS}
    if name == "local":
        defaults = {"ray_cpus_per_worker": 1, "ray_gpus_per_worker": 0.0}
        extra = [k for k, v in given.items() if v is not None and v != defaults.get(k)]
        if extra:
            raise click.UsageError(
                ", ".join("--" + k.replace("_", "-") for k in extra) + " need --backend ray"
            )
        yield None
        return
    from ..backends import RayCluster, RaySettings
    from . import render

    settings = RaySettings(
        address=given["ray_address"],
        workers=given["ray_workers"],
        cpus_per_worker=given["ray_cpus_per_worker"] or 1,
        gpus_per_worker=given["ray_gpus_per_worker"] or 0.0,
        object_store_mb=given["ray_object_store_mb"],
    )
    with RayCluster(settings) as cluster:
        render.note(f"backend: {cluster.description}")
        yield cluster


@contextlib.contextmanager
def backend(kw: dict[str, Any], auditor: Any) -> Iterator[Any]:
    """``auditor`` on the chosen ``--backend``: itself (local), or on Ray's workers.

    With ``ray`` the workers are started (and the run says how many, of what) before the block,
    and stopped after it.
    """
    with ray_cluster(kw) as cluster:
        if cluster is None:
            yield auditor
            return
        from ..backends import RayAuditor
        from . import render

        remote = RayAuditor.from_auditor(auditor, cluster)
        render.note(f"starting {remote.description}")
        remote.start()
        try:
            yield remote
        finally:
            remote.close()
