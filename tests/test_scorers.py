"""The scorer registry: one class per monitor method, and the constructors front ends call."""

from __future__ import annotations

import csv
import json
import warnings
from typing import Any, ClassVar

import numpy as np
import pytest

from conftest import write_images
from informer_audit import scorers
from informer_audit.audit import Auditor, calibrate, flag_folder
from informer_audit.binding import check_binding
from informer_audit.cache import ScoreCache
from informer_audit.errors import EvaluationError, MonitorMismatchError
from informer_audit.experiment import EvaluationPlan, evaluation_cache
from informer_audit.fileio import content_sha256
from informer_audit.labels import read_labels
from informer_audit.model import OnnxClassifier
from informer_audit.numerics import sigmoid
from informer_audit.scorers import (
    InformerScorer,
    ProbabilityScorer,
    ScoredBatch,
    Scorer,
    TTAScorer,
    available_scorers,
    build_scorer,
    make_monitor,
    register_scorer,
    scorer_class,
    scorer_from_binding,
)

# The binding (json.dumps, key order kept) and cache key document of each method, as the code
# before scorers were objects wrote them for a 3-class 8 px model auditing A and C: monitor
# files and cache entries must keep these bytes (since the model card's optional "resize"
# field, its default "uint8" among them).
GOLDEN = {
    "informer_fd": (
        (
            '{"model_sha256": "<MODEL>", "class_names": ["A", "B", "C"], "audited_classes": ['
            '"A", "C"], "preprocessing": {"image_size": [8, 8], "channels": 3, "layout": "NCH'
            'W", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output"'
            ': "logits", "resize": "uint8"}'
            ', "saliency": {"name": "fd", "patch_size": 4, "scheme": "central", "s'
            'tep": 0.001}}'
        ),
        (
            '{"classes":["A","C"],"format":1,"image_sha256":"<IMAGE>","kind":"informer","mode'
            'l_sha256":"<MODEL>","preprocessing":{"channels":3,"class_names":["A","B","C"],"i'
            'mage_size":[8,8],"layout":"NCHW","mean":[0.5,0.5,0.5],"output":"logits",'
            '"resize":"uint8","scale":'
            '255.0,"std":[0.25,0.25,0.25]},"settings":{"name":"fd","patch_size":4,"scheme":"c'
            'entral","step":0.001}}'
        ),
    ),
    "informer_lime": (
        (
            '{"model_sha256": "<MODEL>", "class_names": ["A", "B", "C"], "audited_classes": ['
            '"A", "C"], "preprocessing": {"image_size": [8, 8], "channels": 3, "layout": "NCH'
            'W", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output"'
            ': "logits", "resize": "uint8"}'
            ', "saliency": {"name": "lime", "fill": "mean", "kernel_size": 4.0, "k'
            'ernel_width": 0.25, "max_dist": 200.0, "num_samples": 50, "ratio": 0.2, "seed": '
            '3, "segmentation": "quickshift", "target": "probability"}}'
        ),
        (
            '{"classes":["A","C"],"format":1,"image_sha256":"<IMAGE>","kind":"informer","mode'
            'l_sha256":"<MODEL>","preprocessing":{"channels":3,"class_names":["A","B","C"],"i'
            'mage_size":[8,8],"layout":"NCHW","mean":[0.5,0.5,0.5],"output":"logits",'
            '"resize":"uint8","scale":'
            '255.0,"std":[0.25,0.25,0.25]},"settings":{"fill":"mean","kernel_size":4.0,"kerne'
            'l_width":0.25,"max_dist":200.0,"name":"lime","num_samples":50,"ratio":0.2,"seed"'
            ':3,"segmentation":"quickshift","target":"probability"}}'
        ),
    ),
    "entropy": (
        (
            '{"model_sha256": "<MODEL>", "class_names": ["A", "B", "C"], "audited_classes": ['
            '"A", "C"], "preprocessing": {"image_size": [8, 8], "channels": 3, "layout": "NCH'
            'W", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output"'
            ': "logits", "resize": "uint8"}'
            ', "saliency": null, "method": {"name": "entropy"}}'
        ),
        (
            '{"classes":["A","C"],"format":1,"image_sha256":"<IMAGE>","kind":"probs","model_s'
            'ha256":"<MODEL>","preprocessing":{"channels":3,"class_names":["A","B","C"],"imag'
            'e_size":[8,8],"layout":"NCHW","mean":[0.5,0.5,0.5],"output":"logits",'
            '"resize":"uint8","scale":255'
            '.0,"std":[0.25,0.25,0.25]},"settings":{}}'
        ),
    ),
    "msp": (
        (
            '{"model_sha256": "<MODEL>", "class_names": ["A", "B", "C"], "audited_classes": ['
            '"A", "C"], "preprocessing": {"image_size": [8, 8], "channels": 3, "layout": "NCH'
            'W", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output"'
            ': "logits", "resize": "uint8"}'
            ', "saliency": null, "method": {"name": "msp"}}'
        ),
        (
            '{"classes":["A","C"],"format":1,"image_sha256":"<IMAGE>","kind":"probs","model_s'
            'ha256":"<MODEL>","preprocessing":{"channels":3,"class_names":["A","B","C"],"imag'
            'e_size":[8,8],"layout":"NCHW","mean":[0.5,0.5,0.5],"output":"logits",'
            '"resize":"uint8","scale":255'
            '.0,"std":[0.25,0.25,0.25]},"settings":{}}'
        ),
    ),
    "tta": (
        (
            '{"model_sha256": "<MODEL>", "class_names": ["A", "B", "C"], "audited_classes": ['
            '"A", "C"], "preprocessing": {"image_size": [8, 8], "channels": 3, "layout": "NCH'
            'W", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output"'
            ': "logits", "resize": "uint8"}'
            ', "saliency": null, "method": {"name": "tta", "copies": 4, "seed": 7,'
            ' "max_angle": 45.0, "blur_size": 10, "padding": 8, "composition": "rotate, box b'
            'lur, crop with padding (each copy)", "fill": "black pixel, normalised: (0 / scal'
            'e - mean) / std", "spread": "population standard deviation (ddof=0) of sigmoid(l'
            'ogits) over the copies", "rng": "numpy default_rng([seed, sha256(image float32 b'
            'ytes)])"}}'
        ),
        (
            '{"classes":["A","C"],"format":1,"image_sha256":"<IMAGE>","kind":"tta","model_sha'
            '256":"<MODEL>","preprocessing":{"channels":3,"class_names":["A","B","C"],"image_'
            'size":[8,8],"layout":"NCHW","mean":[0.5,0.5,0.5],"output":"logits",'
            '"resize":"uint8","scale":255.0'
            ',"std":[0.25,0.25,0.25]},"settings":{"blur_size":10,"composition":"rotate, box b'
            'lur, crop with padding (each copy)","copies":4,"fill":"black pixel, normalised: '
            '(0 / scale - mean) / std","max_angle":45.0,"padding":8,"rng":"numpy default_rng('
            '[seed, sha256(image float32 bytes)])","seed":7,"spread":"population standard dev'
            'iation (ddof=0) of sigmoid(logits) over the copies"}}'
        ),
    ),
}

CASES: dict[str, dict[str, Any]] = {
    "informer_fd": {"saliency": "fd", "saliency_params": {"patch_size": 4}},
    "informer_lime": {"saliency": "lime", "saliency_params": {"num_samples": 50, "seed": 3}},
    "entropy": {"method": "entropy"},
    "msp": {"method": "msp"},
    "tta": {"method": "tta", "tta": {"copies": 4, "seed": 7}},
}


@pytest.fixture
def model(tiny_model):
    path, _ = tiny_model(size=8)
    return OnnxClassifier(path, device="cpu")


def test_registry_names_directions_and_score_names():
    got = {n: (c.direction, c.score_name) for n, c in available_scorers().items()}
    assert got == {
        "informer": ("below", "d"),
        "learned": ("above", "pwrong"),
        "entropy": ("above", "entropy"),
        "tta": ("above", "tta"),
        "msp": ("below", "msp"),
        "margin": ("below", "margin"),
    }
    assert scorer_class("informer_lime") is InformerScorer and scorer_class("tta_x") is TTAScorer
    assert scorer_class("informer").score_range(4) == (0.0, 6.0)
    assert scorer_class("msp").score_range(4) == (0.5, 1.0)
    assert scorer_class("learned").score_range(4) == (0.0, 1.0)
    assert scorer_class("margin").score_range(4) == (0.0, float("inf"))
    with pytest.raises(EvaluationError, match="unknown monitor method 'nope'"):
        scorer_class("nope")
    with pytest.raises(EvaluationError, match="without '_'"):
        register_scorer(type("Bad", (scorers.MSPScorer,), {"name": "a_b"}))
    with pytest.raises(EvaluationError, match="takes the method name .msp."):
        register_scorer(type("Again", (scorers.MSPScorer,), {"name": "msp"}))


@pytest.mark.parametrize("case", list(GOLDEN))
def test_binding_and_cache_key_are_byte_identical(tmp_path, model, case):
    image = tmp_path / "x.png"
    image.write_bytes(b"not really an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lime: 50 samples is few
        auditor = Auditor(
            model, build_scorer(**CASES[case]), ["A", "C"], cache=ScoreCache(tmp_path)
        )
    binding, document = GOLDEN[case]
    assert json.dumps(auditor.binding()).replace(model.sha256, "<MODEL>") == binding
    doc = auditor._cache_document(image)
    assert doc is not None
    doc = doc.replace(model.sha256, "<MODEL>").replace(content_sha256(image), "<IMAGE>")
    assert doc == document


@pytest.mark.parametrize("case", list(GOLDEN))
def test_scorer_from_binding_rebuilds_the_same_scorer(model, case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auditor = Auditor(model, build_scorer(**CASES[case]), ["A", "C"])
        again = Auditor(model, scorer_from_binding(auditor.binding()), ["A", "C"])
    assert again.binding() == auditor.binding()
    assert type(again.scorer) is type(auditor.scorer)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"method": "entropy", "saliency_params": {"patch_size": 8}},
         "saliency parameter 'patch_size' applies to method 'informer' (saliency maps), not "
         "'entropy'"),
        ({"method": "msp", "saliency": "fd"}, "saliency 'fd' applies to method 'informer'"),
        ({"method": "tta", "module": object()}, "parameter 'module'"),
        ({"method": "informer", "tta": {"copies": 3}},
         "TTA parameter 'copies' applies to method 'tta', not 'informer'"),
        ({"method": "entropy", "tta": {"seed": 1}}, "TTA parameter 'seed'"),
        ({"method": "tta", "tta": {"angle": 3}}, "unknown TTA parameters ['angle']"),
        ({"method": "lime"}, "unknown method 'lime'"),
        ({"method": "tta", "tta": {"copies": 1}}, "copies must be an integer >= 2"),
    ],
)  # fmt: skip
def test_build_scorer_refuses_options_of_other_methods(kw, message):
    with pytest.raises(EvaluationError) as info:
        build_scorer(**kw)
    assert message in str(info.value)


def test_build_scorer_passes_batch_size_to_ort_adapters_only():
    fd = build_scorer(saliency="fd", batch_size=5)
    assert isinstance(fd, InformerScorer) and fd.adapter.params()["batch_size"] == 5
    assert "batch_size" not in fd.settings()["saliency"]  # does not change results
    tta = build_scorer("tta", batch_size=7)
    assert isinstance(tta, TTAScorer) and tta.batch_size == 7
    assert "batch_size" not in json.dumps(tta.settings())


def test_scorer_from_binding_refuses_other_methods_and_adapters(model):
    fd = build_scorer(saliency="fd", saliency_params={"patch_size": 4})
    binding = Auditor(model, fd, ["A", "C"]).binding()
    with pytest.raises(MonitorMismatchError) as info:
        scorer_from_binding(binding, method="entropy", source="m.json")
    assert str(info.value) == (
        "m.json was fitted with method 'informer'; this run asks for method 'entropy'"
    )
    with pytest.raises(MonitorMismatchError, match="fitted with saliency 'fd', this run asks"):
        scorer_from_binding(binding, saliency="lime", source="m.json")
    with pytest.raises(EvaluationError, match="TTA parameter 'copies'"):
        scorer_from_binding(binding, tta={"copies": 3})
    # a differing setting is left to check_binding, which names the field
    other = scorer_from_binding(binding, saliency_params={"patch_size": 2})
    assert other.settings()["saliency"]["patch_size"] == 2
    with pytest.raises(MonitorMismatchError, match="saliency.patch_size is 4 in the monitor"):
        check_binding(binding, Auditor(model, other, ["A", "C"]).binding())
    tta = Auditor(model, build_scorer("tta", tta={"copies": 3}), ["A"]).binding()
    rebuilt = scorer_from_binding(tta, tta={"seed": 5})
    assert isinstance(rebuilt, TTAScorer) and rebuilt.tta["copies"] == 3
    assert rebuilt.tta["seed"] == 5
    with pytest.raises(EvaluationError, match="saliency parameter 'step'"):
        scorer_from_binding(tta, saliency_params={"step": 0.1})


def test_make_monitor_flags_like_the_base_method():
    mon = make_monitor("informer_lime", grid_step=0.01)
    assert (mon.method, mon.direction, mon.grid_step) == ("informer", "below", 0.01)


# -- a method added by registering one class (issue #10) ---------------------------------------
class CertaintyScorer(ProbabilityScorer):
    """A toy method: ``|2 p - 1|``, flag when low; nothing else in the package knows it."""

    name: ClassVar[str] = "certainty"
    direction: ClassVar[str] = "below"
    score_name: ClassVar[str] = "certainty"
    score_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    cache_kind: ClassVar[str] = "certainty"

    def score_probabilities(self, probs):
        return np.abs(2.0 * np.asarray(probs, dtype=np.float64) - 1.0)


class SpreadScorer(Scorer):
    """A toy model-access method with its own cache arrays: the spread of two noisy copies."""

    name: ClassVar[str] = "spread"
    direction: ClassVar[str] = "above"
    score_name: ClassVar[str] = "spread"
    needs: ClassVar[str] = "model"
    score_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    cache_kind: ClassVar[str] = "spread"

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = float(scale)

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def score(self, model, x, logits, index):
        p = [sigmoid(model.logits(x * s)[:, index]) for s in (1.0 - self.scale, 1.0)]
        scores = np.abs(p[1] - p[0])
        return ScoredBatch(scores=scores, valid=np.isfinite(scores).all(axis=1))


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(scorers, "_REGISTRY", dict(scorers._REGISTRY))
    register_scorer(CertaintyScorer)
    register_scorer(SpreadScorer)


def _labels_csv(tmp_path, n=8):
    images = write_images(tmp_path / "imgs", n)
    rng = np.random.default_rng(1)
    csv_path = tmp_path / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "A", "C", "split"])
        for p in images:
            writer.writerow([p.name, *rng.integers(0, 2, 2), "val"])
    return csv_path, tmp_path / "imgs"


@pytest.mark.parametrize("method", ["certainty", "spread"])
def test_a_registered_scorer_calibrates_flags_and_caches(tmp_path, model, registry, method):
    assert list(available_scorers())[-2:] == ["certainty", "spread"]
    csv_path, images = _labels_csv(tmp_path)
    labels = read_labels(csv_path, images, ["A", "C"], split="val")
    cache = ScoreCache(tmp_path / "cache")
    auditor = Auditor(model, build_scorer(method), ["A", "C"], cache=cache)
    result = calibrate(auditor, labels)
    assert result.monitor.method == method and result.binding["method"]["name"] == method
    again = Auditor(model, scorer_from_binding(result.binding), ["A", "C"], cache=cache)
    summary = flag_folder(again, result.monitor, result.binding, images, tmp_path / "f.csv")
    assert summary.return_code == 0 and again.cache_hits == len(labels)
    with (tmp_path / "f.csv").open() as fh:
        header = next(csv.reader(fh))
    assert f"{method}_A" in header and "d_A" not in header
    for r in result.results:
        assert r.dist is None and r.d is None and r.score is not None


def test_calibration_provenance_is_the_monitor_files_record(tmp_path, model):
    csv_path, images = _labels_csv(tmp_path)
    labels = read_labels(csv_path, images, {"A": "A", "C": "C"}, split="val", frontal_only=False)
    result = calibrate(Auditor(model, build_scorer("entropy"), ["A", "C"]), labels)
    prov = result.provenance
    assert list(prov) == [
        "labels_file",
        "label_format",
        "label_columns",
        "filters",
        "n_images",
        "n_failed",
        "failures",
    ]
    assert prov["filters"] == {
        "split": "val",
        "uncertain": "exclude-image",
        "frontal_only": False,
        "require_finding": False,
        "excluded": {"split": 0},
    }
    assert list(prov["filters"]) == [
        "split",
        "uncertain",
        "frontal_only",
        "require_finding",
        "excluded",
    ]
    assert prov["labels_file"] == "labels.csv" and prov["label_columns"] == {"A": "A", "C": "C"}
    assert (prov["n_images"], prov["n_failed"], prov["failures"]) == (8, 0, [])


def test_evaluation_plan_defaults_and_refusals():
    rows = EvaluationPlan(seed=4).scorers()
    assert list(rows) == ["informer_fd", "learned_fd", "entropy", "tta", "msp", "margin"]
    both = EvaluationPlan(["learned", "informer"], saliency=["fd", "lime"]).scorers()
    assert list(both) == ["informer_fd", "informer_lime", "learned_fd", "learned_lime"]
    tta = rows["tta"]
    assert isinstance(tta, TTAScorer) and tta.tta["seed"] == 4 and tta.tta["copies"] == 10
    lime = EvaluationPlan(["informer"], saliency=["lime"], seed=3).scorers()["informer_lime"]
    assert isinstance(lime, InformerScorer) and lime.adapter.params()["seed"] == 3
    given = EvaluationPlan(["informer"], saliency=["lime"], saliency_params={"lime": {"seed": 9}})
    assert given.scorers()["informer_lime"].adapter.params()["seed"] == 9
    with pytest.raises(EvaluationError, match="apply to methods 'informer' and 'learned'"):
        EvaluationPlan(["entropy"], saliency=["fd"]).scorers()
    with pytest.raises(EvaluationError, match="TTA parameter 'copies' applies to method 'tta'"):
        EvaluationPlan(["msp"], tta={"copies": 3}).scorers()
    with pytest.raises(EvaluationError, match="distinct names"):
        EvaluationPlan(["msp", "msp"]).scorers()
    assert evaluation_cache("out") is not None and str(evaluation_cache("out")) == "out/cache"
    assert evaluation_cache("out", "c", use_cache=False) is None


def test_read_labels_takes_a_list_or_a_mapping(tmp_path):
    csv_path, images = _labels_csv(tmp_path, 3)
    listed = read_labels(csv_path, images, ["C", "A"])
    mapped = read_labels(csv_path, images, {"C": "C", "A": "A"})
    assert listed.class_names == mapped.class_names == ["C", "A"]
    np.testing.assert_array_equal(listed.y, mapped.y)
    for bad in ("A,C", ["A", "A"], []):
        with pytest.raises(ValueError):  # LabelFormatError
            read_labels(csv_path, images, bad)
