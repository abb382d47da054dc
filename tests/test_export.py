"""PyTorch -> ONNX export: round trips, checkpoint layouts, refusals, metadata, CLI end to end."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import NIH, REF_CARD, REF_MODEL, invoke, needs_shared, write_images

torch = pytest.importorskip("torch")

from informer_audit import __version__  # noqa: E402
from informer_audit.densenet import densenet121  # noqa: E402
from informer_audit.errors import CheckpointError, ExportError, ModelSpecError  # noqa: E402
from informer_audit.export import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    export_architecture,
    export_module,
    load_weights,
    rename_legacy_densenet_key,
)
from informer_audit.model import OnnxClassifier  # noqa: E402
from informer_audit.modelcard import (  # noqa: E402
    CARD_METADATA_KEY,
    PROVENANCE_METADATA_KEY,
    ModelCard,
)

pytestmark = pytest.mark.torch

CLASSES = ["A", "B", "C"]
SIZE = 64
REF_WEIGHTS = REF_MODEL.with_suffix(".pt")
REF_CLASSES = "Atelectasis,Cardiomegaly,Consolidation,Edema,Effusion"


def seeded_densenet(k: int = 3, seed: int = 0, channels: int = 3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return densenet121(k, channels)


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One random-init DenseNet121 (3 classes, 64 px) exported through the CLI."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    r = invoke(
        "export",
        "densenet121",
        "--random-init",
        "--classes",
        ",".join(CLASSES),
        "--image-size",
        SIZE,
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    return out, r.output


# -- round trip and metadata ------------------------------------------------------------------
def test_cli_reports_the_export(exported):
    path, output = exported
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in output
    assert "max |torch - ONNX Runtime|" in output and "passed" in output
    assert "A, B, C" in output and "random initialisation (seed 0)" in output
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]


def test_onnx_runtime_matches_torch_at_other_batch_sizes(exported):
    path, _ = exported
    model = seeded_densenet().eval()  # the same seeded initialisation the export used
    clf = OnnxClassifier(path, device="cpu")
    assert clf.fixed_batch is None and clf.input.shape[0] == "batch"
    rng = np.random.default_rng(7)
    for n in (1, 5):
        x = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).double().numpy()
        np.testing.assert_allclose(clf.logits(x), expected, rtol=0, atol=1e-4)


def test_metadata_card_and_provenance(exported):
    path, _ = exported
    proto = onnx.load(str(path))
    assert {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import} == {"ai.onnx": 17}
    meta = {p.key: p.value for p in proto.metadata_props}
    card = json.loads(meta[CARD_METADATA_KEY])
    assert card == {
        "architecture": "densenet121",
        "class_names": CLASSES,
        "image_size": [SIZE, SIZE],
        "channels": 3,
        "layout": "NCHW",
        "scale": 255.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "output": "logits",
        "resize": "uint8",  # the card's default, written out like every field
    }
    prov = json.loads(meta[PROVENANCE_METADATA_KEY])
    assert prov["random_init"] is True and prov["random_init_seed"] == 0
    assert prov["checkpoint"] is None
    assert prov["tool_version"] == __version__ and prov["opset"] == 17
    assert prov["torch_version"] == str(torch.__version__)
    assert prov["architecture"] == "densenet121"
    assert not any("time" in key or "date" in key for key in prov)  # reproducible bytes


def test_info_reads_the_metadata(exported):
    path, _ = exported
    r = invoke("info", path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    for text in ("A, B, C", "64 x 64", "ONNX metadata", "0.485, 0.456, 0.406", "dynamic"):
        assert text in r.output
    assert "densenet121 from random initialisation (seed 0)" in r.output  # provenance row
    j = invoke("info", path, "--json", "--device", "cpu")
    desc = json.loads(j.output)
    assert desc["card_source"] == "ONNX metadata"
    assert desc["provenance"]["random_init"] is True


def test_same_settings_give_byte_identical_files(exported, tmp_path):
    path, _ = exported
    result = export_architecture(
        "densenet121",
        tmp_path / "again.onnx",
        class_names=CLASSES,
        image_size=SIZE,
        random_init=True,
    )
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.max_abs_diff <= result.tolerance == 1e-4


def test_calibrate_and_flag_need_no_preprocessing_options(exported, tmp_path):
    path, _ = exported
    images = write_images(tmp_path / "val" / "imgs", 10, size=40, seed=3)
    labels = tmp_path / "val" / "labels.csv"
    rng = np.random.default_rng(5)
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CLASSES])
        for i, p in enumerate(images):
            row = rng.integers(0, 2, 3)
            row[i % 3] = 1  # every class has positives and negatives
            row[(i + 1) % 3] = 0
            w.writerow([f"imgs/{p.name}", *row])
    monitor = tmp_path / "monitor.json"
    r = invoke(
        "calibrate",
        path,
        "--images",
        tmp_path / "val",
        "--labels",
        labels,
        "-o",
        monitor,
        "--patch-size",
        32,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    binding = json.loads(monitor.read_text())["binding"]
    assert binding["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    write_images(tmp_path / "audit", 3, size=50, seed=9, mode="RGB")
    f = invoke(
        "flag",
        path,
        "--monitor",
        monitor,
        "--images",
        tmp_path / "audit",
        "-o",
        tmp_path / "flags.csv",
        "--device",
        "cpu",
    )
    assert f.exit_code == 0, f.output
    with (tmp_path / "flags.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)


# -- checkpoint layouts -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_state():
    """A seeded random DenseNet121 state_dict (3 classes): the weights every layout carries."""
    return seeded_densenet(seed=1).state_dict()


def _legacy(sd):
    """torchvision < 0.3 names ("norm.1"), and no num_batches_tracked (older than torch 0.4.1)."""
    renamed = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if "denselayer" in key and f".{part}." in key:
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        renamed[key] = value
    return renamed


LAYOUTS = {
    "bare": (lambda sd: sd, "bare state_dict"),
    "state_dict": (lambda sd: {"state_dict": sd, "epoch": 3}, "checkpoint['state_dict']"),
    "model": (lambda sd: {"model": sd, "step": 10}, "checkpoint['model']"),
    "model_state_dict": (
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"lr": 0.1}},
        "checkpoint['model_state_dict']",
    ),
    "dataparallel": (
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        "bare state_dict, prefix 'module.' stripped",
    ),
    "lightning": (
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
        "checkpoint['state_dict'], prefix 'model.' stripped",
    ),
    "lightning+ddp": (
        lambda sd: {"state_dict": {f"model.module.{k}": v for k, v in sd.items()}},
        "checkpoint['state_dict'], prefix 'model.module.' stripped",
    ),
    "old torchvision names": (_legacy, "bare state_dict, 580 old-style keys renamed"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_layouts_load(layout, source_state, tmp_path):
    wrap, description = LAYOUTS[layout]
    ckpt = tmp_path / "ckpt.pt"
    torch.save(wrap(source_state), ckpt)
    model = seeded_densenet(seed=2)
    info = load_weights(model, ckpt, rename_legacy_densenet_key)
    assert info.layout == description
    assert info.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    loaded = model.state_dict()
    assert list(loaded) == list(source_state)
    for key, value in source_state.items():
        assert torch.equal(loaded[key], value), key


def test_checkpoint_without_batch_counters_loads(source_state, tmp_path):
    # Checkpoints from before torch 0.4.1 have no num_batches_tracked; inference never uses it.
    ckpt = tmp_path / "old.pt"
    torch.save({k: v for k, v in source_state.items() if "num_batches" not in k}, ckpt)
    model = seeded_densenet(seed=2)
    load_weights(model, ckpt)
    assert torch.equal(model.state_dict()["classifier.weight"], source_state["classifier.weight"])


def _export_cli(ckpt: Path, out: Path, classes: str = "A,B,C"):
    return invoke(
        "export",
        "densenet121",
        "--weights",
        ckpt,
        "--classes",
        classes,
        "--image-size",
        SIZE,
        "-o",
        out,
    )


def test_missing_key_is_listed(source_state, tmp_path):
    sd = dict(source_state)
    del sd["features.denseblock2.denselayer3.conv1.weight"]
    del sd["classifier.bias"]
    ckpt = tmp_path / "ckpt.pt"
    torch.save(sd, ckpt)
    r = _export_cli(ckpt, tmp_path / "m.onnx")
    assert r.exit_code == 2
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "2 missing key(s)" in text
    assert "features.denseblock2.denselayer3.conv1.weight" in text and "classifier.bias" in text
    assert not (tmp_path / "m.onnx").exists()


def test_unexpected_keys_are_listed_and_truncated(source_state, tmp_path):
    sd = dict(source_state)
    for i in range(25):
        sd[f"criterion.extra{i}"] = torch.zeros(1)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(sd, ckpt)
    with pytest.raises(CheckpointError, match=r"25 unexpected key\(s\): criterion.extra0, ") as e:
        load_weights(seeded_densenet(), ckpt)
    assert "... and 5 more" in str(e.value)


def test_other_head_size_names_key_and_shapes(source_state, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    torch.save(source_state, ckpt)  # 3 classes
    r = _export_cli(ckpt, tmp_path / "m.onnx", classes="A,B,C,D,E")
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "classifier.weight checkpoint [3, 1024] vs model [5, 1024]" in text
    assert "another number of classes" in text


def test_pickled_objects_are_refused(source_state, tmp_path):
    ckpt = tmp_path / "full.pt"
    torch.save({"state_dict": source_state, "config": _Config()}, ckpt)
    with pytest.raises(CheckpointError, match="pickled Python objects") as e:
        load_weights(seeded_densenet(), ckpt)
    assert "_Config" in str(e.value) and "torch.save(model.state_dict()" in str(e.value)
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # torch.save(model): the classic case
    with pytest.raises(CheckpointError, match=r"refused.*torch.nn.modules.linear.Linear"):
        load_weights(seeded_densenet(), whole)


class _Config:
    """A custom object in a checkpoint: weights_only loading must refuse it."""


def test_unreadable_and_empty_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_weights(seeded_densenet(), junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_weights(seeded_densenet(), empty)
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, meta)
    with pytest.raises(CheckpointError, match=r"2 entries are not tensors \(epoch, lr\)"):
        load_weights(seeded_densenet(), meta)


# -- the Python API on any module ---------------------------------------------------------------
class TinyNet(torch.nn.Module):
    def __init__(self, channels: int = 1, k: int = 2, sigmoid: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, k)
        self.sigmoid = sigmoid

    def forward(self, x):
        z = self.head(torch.nn.functional.adaptive_avg_pool2d(self.conv(x).relu(), 1).flatten(1))
        return torch.sigmoid(z) if self.sigmoid else z


def tiny_card(k: int = 2, output: str = "logits") -> dict:
    return {
        "class_names": [f"c{i}" for i in range(k)],
        "image_size": [16, 24],
        "channels": 1,
        "layout": "NCHW",
        "scale": 255,
        "mean": [0.5],
        "std": [0.25],
        "output": output,
    }


@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_export_module_any_classifier(output, tmp_path):
    torch.manual_seed(0)
    net = TinyNet(sigmoid=output == "probabilities").train()
    result = export_module(net, tmp_path / "sub" / "tiny.onnx", tiny_card(output=output))
    assert net.training  # mode restored
    assert result.max_abs_diff <= 1e-5
    clf = OnnxClassifier(result.path, device="cpu")
    assert clf.card == ModelCard.from_dict(tiny_card(output=output))
    assert clf.input.shape == ("batch", 1, 16, 24)
    prov = json.loads(metadata(result.path)[PROVENANCE_METADATA_KEY])
    assert prov["architecture"] == "TinyNet" and prov["implementation"].endswith("TinyNet")


def test_export_module_refuses_output_that_does_not_fit_the_card(tmp_path):
    with pytest.raises(ModelSpecError, match=r"expected \(2, 3\)"):
        export_module(TinyNet(k=2), tmp_path / "x.onnx", tiny_card(k=3))
    with pytest.raises(ModelSpecError, match="fails on an input of shape"):
        export_module(TinyNet(channels=3), tmp_path / "x.onnx", tiny_card())
    with pytest.raises(ModelSpecError, match="NCHW"):
        export_module(TinyNet(), tmp_path / "x.onnx", {**tiny_card(), "layout": "NHWC"})
    assert not list(tmp_path.iterdir())


class Drifting(TinyNet):
    """Adds a Python-side call counter: tracing freezes it, eager mode does not."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x) + float(self.calls)


def test_failed_verification_writes_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous version")
    with pytest.raises(ExportError, match="exceeds the tolerance 0.0001"):
        export_module(Drifting(), out, tiny_card())
    assert out.read_bytes() == b"previous version"  # only a verified export replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left
    # ... and the tolerance is the user's to set
    assert export_module(Drifting(), out, tiny_card(), tolerance=10).max_abs_diff > 1e-4


# -- the shared reference model -----------------------------------------------------------------
@needs_shared
@pytest.mark.shared
@pytest.mark.skipif(not REF_WEIGHTS.is_file(), reason=f"needs {REF_WEIGHTS} (not present)")
def test_reference_checkpoint_matches_the_shared_onnx(tmp_path):
    out = tmp_path / "ref.onnx"
    r = invoke(
        "export",
        "densenet121",
        "--weights",
        REF_WEIGHTS,
        "--classes",
        REF_CLASSES,
        "--image-size",
        128,
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    prov = json.loads(metadata(out)[PROVENANCE_METADATA_KEY])
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(REF_WEIGHTS.read_bytes()).hexdigest()
    assert prov["random_init"] is False

    from informer_audit.images import load_image

    ours = OnnxClassifier(out, device="cpu")  # card from its own metadata
    vendor = OnnxClassifier(REF_MODEL, card_file=REF_CARD, device="cpu")
    assert ours.card == vendor.card
    with (NIH / "labels.csv").open(newline="") as fh:
        paths = [NIH / row["path"] for row in csv.DictReader(fh) if row["split"] == "val"][:8]
    x = vendor.preprocess([load_image(p) for p in paths])
    np.testing.assert_array_equal(ours.preprocess([load_image(p) for p in paths]), x)
    diff = np.abs(ours.logits(x) - vendor.logits(x)).max()
    assert diff <= 1e-4, diff
