"""A monitor file is applied only as written: every hand edit is refused, naming file and field.

Tables, one row per edit (each field, each kind of bad value), loaded through the library and a
few through ``flag`` (exit code 2, the message names the file); a seeded fuzz test (random bytes,
random JSON, random single-field mutations: load or MonitorFormatError, nothing else); and the
classes without positive labels, which must flag nothing (hand-computed, then calibrate -> flag).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from conftest import PATCH_8, build_linear_model, calibrate, card_dict, flag, write_images
from informer_audit.baselines import entropy_score, msp_score
from informer_audit.errors import MonitorFormatError
from informer_audit.monitor import FlagMonitor, best_flag_threshold, scan_flag_thresholds
from informer_audit.monitorfile import load_monitor, save_monitor
from informer_audit.numerics import logit
from informer_audit.scorers import available_scorers, make_monitor

METHODS = available_scorers()
CLASSES = ["A", "B", "C"]
SHA = "ab" * 32
BINDING = {
    "model_sha256": SHA,
    "class_names": CLASSES,
    "audited_classes": CLASSES,
    "preprocessing": {"image_size": [16, 16], "channels": 3, "mean": [0.5], "std": [0.25]},
    "saliency": {"name": "fd", "patch_size": 16, "scheme": "central", "step": 0.001},
}
TTA = {"copies": 4, "seed": 0, "max_angle": 45.0, "blur_size": 3, "padding": 2}


def fitted(method: str = "informer", seed: int = 7) -> FlagMonitor:
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 2, (n, 3)).astype(float)
    probs = np.clip(0.5 * y + rng.uniform(0, 0.6, (n, 3)), 0, 1)
    dist = None
    if method == "informer":
        scores = rng.uniform(0, 4, (n, 3))  # d_k in [0, 2 (K - 1)] = [0, 4]
    elif method == "learned":
        half = np.triu(rng.uniform(0, 2, (n, 3, 3)), 1)
        dist = half + half.transpose(0, 2, 1)
        scores = dist.sum(axis=2)
    elif method == "tta":
        scores = rng.uniform(0, 0.5, (n, 3))
    elif method == "margin":
        scores = logit(probs)
    else:
        scores = entropy_score(probs) if method == "entropy" else msp_score(probs)
    return make_monitor(method).fit(scores, y, probs, CLASSES, dist=dist)


def binding_of(method: str) -> dict[str, Any]:
    if method == "informer":
        return copy.deepcopy(BINDING)
    if method == "learned":
        return {**copy.deepcopy(BINDING), "method": {"name": "learned"}}
    settings = {"name": method, **(TTA if method == "tta" else {})}
    return {**copy.deepcopy(BINDING), "saliency": None, "method": settings}


def saved_doc(tmp_path: Path, method: str = "informer") -> dict[str, Any]:
    path = tmp_path / f"saved_{method}.json"
    save_monitor(path, fitted(method), binding_of(method), {"n_images": 60})
    return json.loads(path.read_text())


# -- what saving writes, loads ------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_saved_monitors_load_and_round_trip(tmp_path: Path, method: str) -> None:
    mon = fitted(method)
    path = tmp_path / "m.json"
    # INFORMER's binding has no "method" (as in files from before the baselines)
    assert ("method" in binding_of(method)) == (method != "informer")
    save_monitor(path, mon, binding_of(method))
    loaded = load_monitor(path)
    back, binding = loaded.monitor, loaded.binding
    assert (back.method, back.direction) == (method, METHODS[method].direction)
    np.testing.assert_array_equal(back.flag_thresholds_, mon.flag_thresholds_)
    np.testing.assert_array_equal(back.prediction_thresholds_, mon.prediction_thresholds_)
    assert binding == binding_of(method)


# -- one row per edit ---------------------------------------------------------------------------
def put(where: str, value: Any) -> Callable[[dict], None]:
    """Set the field at a dotted path (``monitor.classes.0.flag_threshold``) to ``value``."""

    def change(doc: dict) -> None:
        *parents, last = where.split(".")
        for key in parents:
            doc = doc[int(key)] if key.isdigit() else doc[key]  # type: ignore[index]
        if last.isdigit():
            doc[int(last)] = value  # type: ignore[index]
        else:
            doc[last] = value

    return change


def drop(where: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        *parents, last = where.split(".")
        for key in parents:
            doc = doc[int(key)] if key.isdigit() else doc[key]  # type: ignore[index]
        del doc[last]

    return change


class Edit(NamedTuple):
    id: str
    change: Callable[[dict], None]
    message: str
    method: str = "informer"


C0 = "monitor.classes.0"
C1 = "monitor.classes.1"
EDITS = [
    # prediction thresholds
    Edit(
        "t-negative",
        put(f"{C0}.prediction_threshold", -0.5),
        "monitor.classes[0].prediction_threshold: found -0.5 (number), expected a probability "
        "in [0, 1]",
    ),
    Edit("t-above-one", put(f"{C1}.prediction_threshold", 1.7), "found 1.7 (number)"),
    Edit(
        "t-bool",
        put(f"{C0}.prediction_threshold", True),
        "classes[0].prediction_threshold: found true (boolean)",
    ),
    Edit(
        "t-string",
        put(f"{C0}.prediction_threshold", "0.4"),
        'classes[0].prediction_threshold: found "0.4" (string)',
    ),
    Edit("t-null", put(f"{C0}.prediction_threshold", None), "found null (null)"),
    Edit("t-array", put(f"{C0}.prediction_threshold", [0.5]), "found [0.5] (array)"),
    Edit("t-missing", drop(f"{C0}.prediction_threshold"), "prediction_threshold is missing"),
    # flag thresholds: d_k of 3 classes lies in [0, 4]
    Edit(
        "tau-99",
        put(f"{C1}.flag_threshold", 99),
        "monitor.classes[1].flag_threshold: found 99 (number), expected a number in [0, 4]",
    ),
    Edit("tau-negative", put(f"{C0}.flag_threshold", -1), "flag_threshold: found -1 (number)"),
    Edit("tau-string", put(f"{C0}.flag_threshold", "1.4"), 'found "1.4" (string)'),
    Edit("tau-bool", put(f"{C0}.flag_threshold", False), "found false (boolean)"),
    Edit("tau-huge", put(f"{C0}.flag_threshold", 10**400), "flag_threshold: found 1000"),
    Edit("tau-missing", drop(f"{C0}.flag_threshold"), "classes[0].flag_threshold is missing"),
    Edit(
        "tau-entropy",
        put(f"{C0}.flag_threshold", 1.5),
        "expected a number in [0, 1] (entropy scores lie in [0, 1])",
        "entropy",
    ),
    Edit(
        "tau-tta",
        put(f"{C0}.flag_threshold", 0.7),
        "expected a number in [0, 0.5] (tta scores lie in [0, 0.5])",
        "tta",
    ),
    Edit(
        "tau-msp-below-range",
        put(f"{C0}.flag_threshold", 0.3),
        "expected 0 (flag nothing) or a number in [0.5, 1]",
        "msp",
    ),
    # method, direction, grid
    Edit("method-unknown", put("monitor.method", "lime"), 'monitor.method: found "lime"'),
    Edit("method-number", put("monitor.method", 3), "monitor.method: found 3 (number)"),
    Edit("method-variant", put("monitor.method", "informer_fd"), "one of the methods"),
    Edit(
        "direction-reversed",
        put("monitor.direction", "above"),
        "monitor.direction: found \"above\" (string), expected 'below': method 'informer'",
    ),
    Edit(
        "direction-reversed-baseline",
        put("monitor.direction", "below"),
        "expected 'above': method 'entropy' flags when its score is above",
        "entropy",
    ),
    Edit("direction-unknown", put("monitor.direction", "sideways"), "direction must be one of"),
    Edit("grid-zero", put("monitor.grid_step", 0), "monitor.grid_step: found 0 (number)"),
    Edit("grid-negative", put("monitor.grid_step", -0.001), "expected a number in [1e-09, 1]"),
    Edit("grid-huge", put("monitor.grid_step", 2), "grid_step: found 2 (number)"),
    Edit("grid-bool", put("monitor.grid_step", True), "grid_step: found true (boolean)"),
    Edit("grid-string", put("monitor.grid_step", "0.001"), 'grid_step: found "0.001" (string)'),
    Edit("monitor-extra-field", put("monitor.offset", 1), "monitor.offset: found 1 (number)"),
    Edit("monitor-not-object", put("monitor", [1]), "monitor: found [1] (array)"),
    # the classes
    Edit("classes-empty", put("monitor.classes", []), "expected a non-empty array of class"),
    Edit("classes-string", put("monitor.classes", "A"), 'monitor.classes: found "A" (string)'),
    Edit("class-not-object", put(C0, 3), "monitor.classes[0]: found 3 (number)"),
    Edit("class-name-empty", put(f"{C0}.name", ""), 'classes[0].name: found "" (string)'),
    Edit("class-name-number", put(f"{C0}.name", 7), "classes[0].name: found 7 (number)"),
    Edit(
        "class-name-duplicate",
        put(f"{C1}.name", "A"),
        'classes[1].name: found "A" (string), expected a class name not already used by classes[0]',
    ),
    Edit("class-extra-field", put(f"{C0}.weight", 1), "monitor.classes[0].weight: found 1"),
    Edit("class-dropped", lambda d: d["monitor"]["classes"].pop(), "differ from the bound"),
    # the calibration statistics of a class
    Edit("cal-missing", drop(f"{C0}.calibration"), "classes[0].calibration is missing"),
    Edit("cal-n-negative", put(f"{C0}.calibration.n", -1), "calibration.n: found -1 (number)"),
    Edit("cal-n-float", put(f"{C0}.calibration.n", 2.5), "calibration.n: found 2.5 (number)"),
    Edit("cal-n-bool", put(f"{C0}.calibration.n", True), "calibration.n: found true (boolean)"),
    Edit(
        "cal-n-pos-above-n",
        put(f"{C0}.calibration.n_pos", 61),
        "calibration.n_pos: found 61 (number), expected a non-negative integer at most 60",
    ),
    Edit(
        "cal-f1-above-one",
        put(f"{C0}.calibration.f1_before", 1.5),
        "calibration.f1_before: found 1.5 (number), expected a rate in [0, 1], or null",
    ),
    Edit("cal-f1-string", put(f"{C0}.calibration.f1_after", "0.5"), 'f1_after: found "0.5"'),
    Edit("cal-note-number", put(f"{C0}.calibration.note", 5), "calibration.note: found 5"),
    Edit("cal-extra", put(f"{C0}.calibration.auc", 0.5), "calibration.auc: found 0.5"),
    Edit("cal-missing-rate", drop(f"{C0}.calibration.sensitivity_after"), "is missing"),
    # the document
    Edit("doc-extra-field", put("extra", 1), "extra: found 1 (number), expected no such field"),
    Edit("tool-version-number", put("tool_version", 3), "tool_version: found 3 (number)"),
    Edit("calibration-array", put("calibration", []), "calibration: found [] (array)"),
    Edit("schema-version-bool", put("schema_version", True), "schema_version True is not"),
    Edit("schema-version-float", put("schema_version", 1.5), "schema_version 1.5 is not"),
    Edit("format-other", put("format", "x"), 'expected "format": "informer-audit-monitor"'),
    # the binding
    Edit("binding-not-object", put("binding", [1]), "the monitor's 'binding' must hold"),
    Edit("binding-field-missing", drop("binding.saliency"), "binding.saliency is missing"),
    Edit("sha-short", put("binding.model_sha256", "abc"), 'binding.model_sha256: found "abc"'),
    Edit("sha-upper", put("binding.model_sha256", "AB" * 32), "64 lowercase hex digits"),
    Edit("sha-number", put("binding.model_sha256", 12), "model_sha256: found 12 (number)"),
    Edit("class-names-empty", put("binding.class_names", []), "binding.class_names: found []"),
    Edit("class-names-number", put("binding.class_names", [1, 2]), "class_names[0]: found 1"),
    Edit(
        "class-names-duplicate",
        put("binding.class_names", ["A", "B", "A"]),
        'binding.class_names[2]: found "A" (string), expected a class name not already at '
        "binding.class_names[0]",
    ),
    Edit(
        "audited-not-a-model-class",
        put("binding.audited_classes", ["A", "B", "Z"]),
        'binding.audited_classes[2]: found "Z" (string), expected one of the model\'s classes',
    ),
    Edit("audited-string", put("binding.audited_classes", "A"), 'audited_classes: found "A"'),
    Edit("audited-reordered", put("binding.audited_classes", ["C", "B", "A"]), "differ from"),
    Edit("preprocessing-array", put("binding.preprocessing", []), "binding.preprocessing: found"),
    Edit("saliency-null", put("binding.saliency", None), "binding.saliency: found null (null)"),
    Edit("saliency-string", put("binding.saliency", "fd"), 'binding.saliency: found "fd"'),
    Edit("saliency-nameless", put("binding.saliency", {}), "the saliency adapter's 'name'"),
    Edit(
        "method-contradicts",
        put("binding.method", {"name": "entropy"}),
        "does not name the monitor's method",
    ),
    Edit("method-string", put("binding.method", "tta"), "does not name", "tta"),
    Edit(
        "tta-copies-bool",
        put("binding.method.copies", True),
        "binding.method.copies: found true (boolean)",
        "tta",
    ),
    Edit(
        "tta-copies-one",
        put("binding.method.copies", 1),
        "binding.method.copies: found 1 (number), expected copies must be an integer >= 2",
        "tta",
    ),
    Edit("tta-seed-missing", drop("binding.method.seed"), "binding.method.seed is missing", "tta"),
]


@pytest.mark.parametrize("edit", EDITS, ids=[e.id for e in EDITS])
def test_an_edited_monitor_is_refused(tmp_path: Path, edit: Edit) -> None:
    doc = saved_doc(tmp_path, edit.method)
    edit.change(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(MonitorFormatError) as info:
        load_monitor(path)
    assert str(path) in str(info.value)
    assert edit.message in str(info.value)


class Text(NamedTuple):
    id: str
    edit: Callable[[str], str]
    message: str


TEXTS = [
    Text(
        "nan-literal",
        lambda t: t.replace('"flag_threshold": ', '"flag_threshold": NaN, "x":', 1),
        "monitor.classes[0].flag_threshold: found NaN (number), expected a finite number",
    ),
    Text(
        "infinity-literal",
        lambda t: t.replace('"grid_step": 0.001', '"grid_step": Infinity'),
        "monitor.grid_step: found Infinity (number), expected a finite number",
    ),
    Text(
        "overflowing-float",
        lambda t: t.replace('"grid_step": 0.001', '"grid_step": 1e999'),
        "monitor.grid_step: found Infinity",
    ),
    Text(
        "duplicate-key",
        lambda t: t.replace('"grid_step": 0.001', '"grid_step": 0.001, "grid_step": 0.5'),
        "the key 'grid_step' appears twice",
    ),
    Text(
        "too-many-digits",
        lambda t: t.replace('"grid_step": 0.001', '"grid_step": ' + "9" * 5000),
        "not valid monitor JSON",
    ),
    Text(
        "deeply-nested",
        lambda t: t.replace('"n_images": 60', '"n_images": ' + "[" * 100_000 + "]" * 100_000),
        "not valid monitor JSON (truncated or edited?)",
    ),
    Text("truncated", lambda t: t[: len(t) // 3], "not valid monitor JSON (truncated or edited?)"),
    Text("array", lambda t: "[1, 2]", "not an informer-audit monitor"),
    Text("string", lambda t: '"monitor"', "not an informer-audit monitor"),
    Text("null", lambda t: "null", "not an informer-audit monitor"),
    Text("empty", lambda t: "", "not valid monitor JSON"),
]


@pytest.mark.parametrize("case", TEXTS, ids=[c.id for c in TEXTS])
def test_a_damaged_monitor_text_is_refused(tmp_path: Path, case: Text) -> None:
    saved = tmp_path / "m.json"
    save_monitor(saved, fitted(), BINDING, {"n_images": 60})
    path = tmp_path / "edited.json"
    path.write_text(case.edit(saved.read_text()))
    with pytest.raises(MonitorFormatError) as info:
        load_monitor(path)
    assert str(path) in str(info.value) and case.message in str(info.value)


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"\xff\xfe{\x00}")
    with pytest.raises(MonitorFormatError, match="not valid monitor JSON"):
        load_monitor(path)


KEPT = [
    ("integer-thresholds", put(f"{C0}.flag_threshold", 2), "informer"),
    ("integer-grid-step", put("monitor.grid_step", 1), "informer"),
    ("predict-nothing", put(f"{C0}.prediction_threshold", math.nextafter(1.0, 2.0)), "informer"),
    ("no-note", drop(f"{C0}.calibration.note"), "informer"),
    ("undefined-rates", put(f"{C0}.calibration.f1_before", None), "informer"),
    ("msp-flags-nothing", put(f"{C0}.flag_threshold", 0), "msp"),
    ("entropy-top", put(f"{C0}.flag_threshold", 1.0), "entropy"),
    ("no-tool-version", drop("tool_version"), "informer"),
    ("binding-extra-field", put("binding.note", "x"), "informer"),  # check_binding's to judge
]


@pytest.mark.parametrize(("change", "method"), [k[1:] for k in KEPT], ids=[k[0] for k in KEPT])
def test_values_the_writer_can_write_are_kept(
    tmp_path: Path, change: Callable[[dict], None], method: str
) -> None:
    doc = saved_doc(tmp_path, method)
    change(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    mon = load_monitor(path).monitor
    assert mon.method == method


# -- fuzz: whatever the bytes, MonitorFormatError or a valid monitor -----------------------------
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2, 0.5, -0.5, 1.7, 99, 1e308, 10**400, "", "x", "1.4",
    [], [1], {}, {"a": 1}, [[[]]], "informer", "above", "below", CLASSES, ["A", "A"],
]  # fmt: skip


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = int(rng.integers(0, 8 if depth < 4 else 5))
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return float(rng.normal(0, 10 ** int(rng.integers(0, 6))))
    if kind == 3:
        return int(rng.integers(-(10**6), 10**6))
    if kind == 4:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 8))))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    keys = ["format", "schema_version", "binding", "monitor", "classes", "name", "x"]
    return {str(rng.choice(keys)): random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))}


def paths_in(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_in(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_in(v, (*prefix, i))
    return out


def mutate(doc: dict, rng: np.random.Generator) -> dict:
    doc = copy.deepcopy(doc)
    paths = [p for p in paths_in(doc) if p]
    where = paths[int(rng.integers(0, len(paths)))]
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[where[-1]]
    elif rng.random() < 0.5:
        parent[where[-1]] = copy.deepcopy(ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))])
    else:
        parent[where[-1]] = random_json(rng)
    return doc


def test_fuzz_load_gives_a_monitor_or_monitor_format_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(20240611)
    docs = {m: saved_doc(tmp_path, m) for m in METHODS}
    path = tmp_path / "fuzz.json"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(300):
        kind = case % 3
        if kind == 0:
            data = rng.bytes(int(rng.integers(0, 300)))
            if rng.random() < 0.5:  # bytes that start like a monitor
                data = json.dumps(docs["informer"]).encode()[: int(rng.integers(0, 400))] + data
            path.write_bytes(data)
        elif kind == 1:
            value = random_json(rng)
            if isinstance(value, dict) and rng.random() < 0.7:
                value.update(format="informer-audit-monitor", schema_version=1)
            path.write_text(json.dumps(value))
        else:
            method = list(METHODS)[case % len(METHODS)]
            path.write_text(json.dumps(mutate(docs[method], rng)))
        try:
            loaded = load_monitor(path)
            mon, binding, calibration = loaded.monitor, loaded.binding, loaded.calibration
        except MonitorFormatError as exc:
            assert str(path) in str(exc), exc
            outcomes["refused"] += 1
            continue
        # What loads is a monitor the writer could have written.
        outcomes["loaded"] += 1
        spec = METHODS[mon.method]
        assert mon.direction == spec.direction
        assert np.isfinite(mon.flag_thresholds_).all()
        assert ((mon.prediction_thresholds_ >= 0) & (mon.prediction_thresholds_ <= 1 + 1e-15)).all()
        assert mon.class_names_ == binding["audited_classes"] and isinstance(calibration, dict)
    assert outcomes["refused"] > 150 and outcomes["loaded"] > 5, outcomes


# -- classes without positive labels flag nothing ------------------------------------------------


def test_undefined_f1_is_never_traded_for_zero() -> None:
    y = np.zeros(4)
    yhat = np.zeros(4, dtype=bool)
    d = np.array([0.1, 0.2, 0.3, 0.4])
    # Nothing flagged: TP = FP = FN = 0, F1 undefined. Any flag turns a TN into an FP: F1 = 0.
    taus, f1, n_flags = scan_flag_thresholds(y, yhat, d)
    assert np.isnan(f1[n_flags == 0]).all() and (f1[n_flags > 0] == 0).all()
    assert best_flag_threshold(y, yhat, d) == 0.0
    # above: the top of the grid, and with score_max the method's largest score
    assert best_flag_threshold(y, yhat, d, direction="above") == pytest.approx(0.4)
    assert best_flag_threshold(y, yhat, d, direction="above", score_max=1.0) == 1.0
    # Predicted positives without positive labels: F1 0 before, 0 or undefined after.
    assert best_flag_threshold(y, np.array([1, 0, 1, 0]), d) == 0.0


def test_fit_without_positives_negatives_or_labels_hand_computed() -> None:
    nan = np.nan
    # columns: none (no positive labels, nothing predicted), all (no negative labels),
    # unlabelled (every label missing)
    y = np.array([[0, 1, nan], [0, 1, nan], [0, 1, nan], [0, 1, nan]], dtype=float)
    probs = np.array([[0.1, 0.2, 0.1], [0.2, 0.6, 0.2], [0.3, 0.7, 0.3], [0.4, 0.9, 0.4]])
    d = np.array([[0.1, 0.1, 0.1], [0.2, 0.5, 0.2], [0.3, 0.6, 0.3], [0.4, 0.7, 0.4]])
    mon = FlagMonitor().fit(d, y, probs, ["none", "all", "unlabelled"])
    none, every, unlabelled = mon.fits_
    # Youden undefined -> t = 0.5 -> nothing predicted positive; F1 undefined; tau = 0.
    assert none.prediction_threshold == 0.5 and none.flag_threshold == 0.0
    assert none.n_flags == 0 and math.isnan(none.f1_before) and math.isnan(none.f1_after)
    assert none.note == (
        "no positive labels among 4: prediction threshold 0.5; F1 undefined and no swap can "
        "raise it: nothing flagged"
    )
    # All positive, t = 0.5: yhat = [0, 1, 1, 1], TP 3 FN 1, F1 = 6/7. Flagging image 0
    # (d = 0.1 < tau <= 0.5) turns the FN into a TP: F1 = 1; the smallest such grid tau is 0.101.
    assert every.flag_threshold == pytest.approx(0.101) and every.n_flags == 1
    assert every.f1_before == pytest.approx(6 / 7) and every.f1_after == 1.0
    assert every.note == "no negative labels among 4: prediction threshold 0.5"
    assert unlabelled.n == 0 and unlabelled.flag_threshold == 0.0
    assert unlabelled.note.startswith("no labelled images: prediction threshold 0.5; F1 undefined")
    flags = mon.flag(np.array([[0.0, 0.0, 0.0], [3.9, 3.9, 3.9]]))
    assert not flags[:, [0, 2]].any()


def test_fit_without_positives_above_flags_no_image() -> None:
    y = np.column_stack([np.zeros(4), [0, 1, 0, 1], np.full(4, np.nan)])
    probs = np.array([[0.1, 0.3, 0.4], [0.2, 0.6, 0.3], [0.3, 0.4, 0.2], [0.45, 0.8, 0.1]])
    h = entropy_score(probs)
    mon = make_monitor("entropy").fit(h, y, probs, ["none", "some", "unlabelled"])
    # "Flag nothing" is the top of entropy's range, not the calibration set's largest entropy:
    # an image less sure than every calibration image is not flagged either.
    assert mon.flag_thresholds_[0] == 1.0 and mon.flag_thresholds_[2] == 1.0
    assert "nothing flagged" in mon.fits_[0].note
    assert not mon.flag(np.array([[1.0, 0.0, 1.0]]))[0, [0, 2]].any()


# -- through the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("schema")
    rng = np.random.default_rng(3)
    d = 3 * 16 * 16
    # Class C's bias keeps p_C near sigmoid(-6): nothing is predicted C on the calibration set.
    model = build_linear_model(
        tmp / "model.onnx",
        rng.normal(0, 0.5 / np.sqrt(d), (d, 3)),
        np.array([0.0, 0.2, -6.0]),
        channels=3,
        size=16,
        card=card_dict(CLASSES, 16, 3),
    )
    val = tmp / "val"
    names = [p.name for p in write_images(val, 10, seed=2)]
    labels = val / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CLASSES])
        for i, name in enumerate(names):
            w.writerow([name, i % 2, (i // 2) % 2, 0])  # no image is labelled C
    audit = tmp / "audit"
    write_images(audit, 4, seed=5)
    out = {"tmp": tmp, "model": model, "val": val, "labels": labels, "audit": audit}
    for method in ("informer", "entropy"):
        monitor = tmp / f"{method}.json"
        saliency = PATCH_8 if method == "informer" else ()
        r = calibrate(out, monitor, "--method", method, saliency=saliency)
        assert r.exit_code == 0, r.output
        out[method] = monitor
    return out


@pytest.mark.parametrize("method", ["informer", "entropy"])
def test_class_without_positives_is_never_swapped(
    tmp_path: Path, env: dict[str, Path], method: str
) -> None:
    mon = load_monitor(env[method]).monitor
    c = mon.fits_[2]
    # Nothing labelled or predicted C: F1 undefined before swapping, 0 after any swap.
    assert c.n_pos == 0 and math.isnan(c.f1_before)
    assert c.n_flags == 0 and "F1 undefined" in c.note and "nothing flagged" in c.note
    assert c.flag_threshold == (0.0 if method == "informer" else 1.0)
    out = tmp_path / "flags.csv"
    r = flag(env, out, monitor=env[method])
    assert r.exit_code == 0, r.output
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(row["flag_C"] == "0" for row in rows)
    assert all(row["audited_C"] == row["pred_C"] for row in rows)


CLI_EDITS = [
    Edit("tau-99", put(f"{C1}.flag_threshold", 99), "classes[1].flag_threshold: found 99"),
    Edit("t-string", put(f"{C0}.prediction_threshold", "0.4"), 'found "0.4" (string)'),
    Edit("direction", put("monitor.direction", "above"), 'monitor.direction: found "above"'),
    Edit("t-bool", put(f"{C0}.prediction_threshold", True), "found true (boolean)"),
    Edit("sha", put("binding.model_sha256", "xyz"), 'binding.model_sha256: found "xyz"'),
]


@pytest.mark.parametrize("edit", CLI_EDITS, ids=[e.id for e in CLI_EDITS])
def test_flag_refuses_an_edited_monitor(tmp_path: Path, env: dict[str, Path], edit: Edit) -> None:
    doc = json.loads(env["informer"].read_text())
    edit.change(doc)
    monitor = tmp_path / "edited.json"
    monitor.write_text(json.dumps(doc))
    out = tmp_path / "flags.csv"
    r = flag(env, out, monitor=monitor)
    text = r.output.replace("\n", "")
    assert r.exit_code == 2, r.output
    assert str(monitor) in text and edit.message in text and "Traceback" not in text
    assert not out.exists()


def test_flag_refuses_random_bytes(tmp_path: Path, env: dict[str, Path]) -> None:
    monitor = tmp_path / "noise.json"
    monitor.write_bytes(np.random.default_rng(1).bytes(200))
    r = flag(env, tmp_path / "flags.csv", monitor=monitor)
    assert r.exit_code == 2 and str(monitor) in r.output.replace("\n", "")
