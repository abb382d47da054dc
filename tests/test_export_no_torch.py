"""The export command's refusals that need no torch, and its behaviour where torch is absent."""

from __future__ import annotations

import sys

import pytest

from conftest import invoke, run_python
from informer_audit.errors import ExportError, ModelSpecError
from informer_audit.export import (
    ARCHITECTURES,
    Architecture,
    available_architectures,
    export_architecture,
    register_architecture,
    rename_legacy_densenet_key,
    require_torch,
)


def export(*extra, out="m.onnx"):
    return invoke(
        "export", "densenet121", "--classes", "A,B", "--image-size", 32, "-o", out, *extra
    )


def test_cli_import_and_help_stay_light(tmp_path):
    code = (
        "import sys, informer_audit, informer_audit.cli, informer_audit.export; "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = run_python("-c", code, cwd=tmp_path, check=True)  # the installed package
    assert out.stdout.strip() == "[]"
    r = invoke("--help")
    assert r.exit_code == 0 and "export" in r.output


def test_without_torch_the_command_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ExportError, match="pip install torch"):
        require_torch()
    r = export("--random-init", out=tmp_path / "m.onnx")
    assert r.exit_code == 2
    assert "pip install torch" in r.output and 'informer-audit[torch]"' in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_weights_xor_random_init(tmp_path):
    neither = export(out=tmp_path / "m.onnx")
    assert neither.exit_code == 2 and "got neither" in neither.output
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    both = export("--random-init", "--weights", ckpt, out=tmp_path / "m.onnx")
    assert both.exit_code == 2 and "got both" in both.output


def test_normalisation_must_be_stated_for_grayscale_and_given_whole(tmp_path):
    gray = export("--random-init", "--channels", 1, out=tmp_path / "m.onnx")
    assert gray.exit_code == 2 and "1-channel model needs its normalisation" in gray.output
    half = export("--random-init", "--mean", "0.5,0.5,0.5", out=tmp_path / "m.onnx")
    assert half.exit_code == 2 and "give both mean and std" in half.output
    wrong = export("--random-init", "--mean", "0.5,0.5", "--std", "0.2", out=tmp_path / "m.onnx")
    assert wrong.exit_code == 2 and "mean must have 1 or 3 values" in wrong.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("export", "resnet9", "--random-init", "--classes", "A", "--image-size", 32, "-o", "m"),
         "resnet9"),
        (("export", "densenet121", "--random-init", "--classes", "A", "--image-size", "1,2,3",
          "-o", "m"), "--image-size"),
        (("export", "densenet121", "--random-init", "--classes", "A,A", "--image-size", 32,
          "-o", "m"), "distinct"),
        (("export", "densenet121", "--random-init", "--classes", "A", "--image-size", 32),
         "--output"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(*args)
    assert r.exit_code == 2 and message in r.output


def test_registry():
    assert "densenet121" in available_architectures()
    with pytest.raises(ModelSpecError, match=r"unknown architecture 'vgg'.*densenet121"):
        export_architecture("vgg", "m.onnx", class_names=["A"], image_size=32, random_init=True)
    with pytest.raises(ModelSpecError, match="already registered"):
        register_architecture(Architecture("densenet121", lambda k, c: None, "shadow"))
    assert ARCHITECTURES["densenet121"].description.startswith("DenseNet121")


def test_legacy_densenet_names_are_renamed_as_torchvision_does():
    rename = rename_legacy_densenet_key
    prefix = "features.denseblock1.denselayer1"
    assert rename(f"{prefix}.norm.1.weight") == f"{prefix}.norm1.weight"
    assert rename(f"{prefix}.norm.2.running_var") == f"{prefix}.norm2.running_var"
    assert rename(f"{prefix}.conv.2.weight") == f"{prefix}.conv2.weight"
    for unchanged in (
        "features.transition1.norm.weight",  # transitions never had numbered names
        f"{prefix}.norm1.weight",  # already new-style
        f"{prefix}.norm.1.num_batches_tracked",  # not in torchvision's pattern
    ):
        assert rename(unchanged) == unchanged
