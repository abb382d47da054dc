"""``info`` (what the tool reads from a model) and ``export`` (PyTorch -> ONNX with its card)."""

from __future__ import annotations

from typing import Any

import click

from . import options as opt
from . import render
from .app import cli, handle_errors
from .build import load_model, split_list


@cli.command()
@opt.model_options
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@handle_errors
def info(as_json: bool, **kw: Any) -> None:
    """Show a model's inputs, outputs, preprocessing, classes and execution providers."""
    desc = load_model(kw).describe()
    if as_json:
        import json

        click.echo(json.dumps(desc, indent=2, default=str))
        return
    render.model_description(desc)


def _export_architectures() -> list[str]:
    # informer_audit.checkpoints imports torch only inside its functions: the registry is light.
    from ..checkpoints import available_architectures

    return available_architectures()


@cli.command("export")
@click.argument("architecture", metavar="ARCH", type=click.Choice(_export_architectures()))
@click.option(
    "--weights",
    type=opt.EXISTING_FILE,
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
@opt.output("ONNX file to write (only once it passed the check).")
@handle_errors
def export_command(**kw: Any) -> None:
    """Export a PyTorch classifier to ONNX with its model card in the metadata, and verify it.

    The file then needs no preprocessing options: info, calibrate and flag read the class names,
    input size and normalisation from it. Needs torch (pip install "informer-audit[torch]").
    """
    from ..export import export_architecture
    from ..paths import check_outputs

    check_outputs({"--weights": kw["weights"]}, {}, {"-o": kw["output"]})
    size = split_list(kw["image_size"], int)
    if not size or len(size) > 2:
        raise click.BadParameter(
            f"expected H,W or one number, got {kw['image_size']!r}", param_hint="--image-size"
        )
    result = export_architecture(
        kw["architecture"],
        kw["output"],
        class_names=split_list(kw["classes"]) or [],
        image_size=size,
        weights=kw["weights"],
        random_init=kw["random_init"],
        channels=int(kw["channels"]),
        mean=split_list(kw["mean"], float),
        std=split_list(kw["std"], float),
        scale=kw["scale"],
        opset=kw["opset"],
        tolerance=kw["tolerance"],
        seed=kw["seed"],
    )
    render.export_result(kw["architecture"], result)
