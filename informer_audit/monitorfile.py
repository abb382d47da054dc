"""The monitor file: versioned JSON bound to the model and its settings, never pickled.

:func:`save_monitor` writes a fitted :class:`~.monitor.FlagMonitor` with the binding it is valid
for (model SHA-256, class names, audited classes, preprocessing, saliency or method settings)
and the provenance of its fit; :func:`load_monitor` reads it back as one :class:`MonitorFile`,
refusing -- with the file, the field, what was found and what was expected -- anything the writer
cannot have written: another format or schema version, a missing, unexpected or duplicated field,
a value of another JSON type, a method this version does not know, a threshold outside what the
method's score can take. Whether the binding fits a run is :func:`.binding.check_binding`'s job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .baselines import tta_settings
from .errors import MonitorFormatError
from .fileio import atomic_write_text
from .inputcheck import DIRECTIONS as INPUT_DIRECTIONS
from .inputcheck import FITTED_DIRECTIONS, SCORE_RANGES, InputCheck, available_scores
from .learned import FlaggerModel, LearnedMonitor
from .monitor import DIRECTIONS, PREDICT_NOTHING, ClassFit, FlagMonitor
from .scorers import available_scorers, make_monitor, scorer_class

MONITOR_FORMAT = "informer-audit-monitor"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MonitorFile:
    """A monitor file, read and checked by :func:`load_monitor`.

    Attributes
    ----------
    monitor : FlagMonitor
        Fitted; its classes are the binding's audited classes.
    binding : dict
        What the monitor is valid for (see :func:`save_monitor`); compare it with a run's
        binding by :func:`.binding.check_binding`.
    calibration : dict
        Provenance of the fit (number of images, label file, failures); empty when absent.
    path : Path
        The file it was read from.
    evidence : dict
        What calibrate's cross-fitted estimate and information tests showed
        (:func:`.crossfit.calibration_evidence`); empty for a file without it.
    input_check : InputCheck or None
        The fitted input check (:mod:`.inputcheck`); ``None`` for a monitor fitted without
        one (or saved before input checks existed).
    """

    monitor: FlagMonitor
    binding: dict[str, Any]
    calibration: dict[str, Any]
    path: Path
    evidence: dict[str, Any] = field(default_factory=dict)
    input_check: InputCheck | None = None


# -- the monitor object -------------------------------------------------------------------------
def monitor_to_dict(monitor: FlagMonitor) -> dict[str, Any]:
    """The ``monitor`` object of a monitor file: method, direction, grid step, per-class fits.

    A learned flagger's class entries add ``model``: its standardisation, coefficients,
    intercept and strength (:class:`~.learned.FlaggerModel`), and the monitor its ``seed``.
    """
    monitor.check_fitted()
    learned = isinstance(monitor, LearnedMonitor)
    classes = []
    for j, f in enumerate(monitor.fits_):
        entry: dict[str, Any] = {
            "name": f.name,
            "prediction_threshold": float(monitor.prediction_thresholds_[j]),
            "flag_threshold": float(monitor.flag_thresholds_[j]),
        }
        if learned:
            entry["model"] = monitor.states_[j].to_dict()
        entry["calibration"] = {
            k: _json_float(v)
            for k, v in asdict(f).items()
            if k not in ("name", "prediction_threshold", "flag_threshold")
        }
        classes.append(entry)
    out: dict[str, Any] = {
        "method": monitor.method,
        "direction": monitor.direction,
        "grid_step": monitor.grid_step,
    }
    if isinstance(monitor, LearnedMonitor):
        out["seed"] = monitor.seed
    out["classes"] = classes
    return out


def monitor_from_dict(
    data: Mapping[str, Any], source: str = "monitor", *, field: str = ""
) -> FlagMonitor:
    """Rebuild a fitted monitor from :func:`monitor_to_dict`, checking every field.

    Parameters
    ----------
    data : mapping
        The ``monitor`` object of a monitor file.
    source : str
        The file it came from, named in every refusal.
    field : str
        Where ``data`` sits in its document (``"monitor"``), prefixed to field names.

    Raises
    ------
    MonitorFormatError
        For anything :func:`monitor_to_dict` cannot have written: a missing or unexpected field,
        a value of another JSON type (``true`` or ``"1.4"`` for a number), a method this
        version does not know or flagging in the other direction, a threshold outside what
        the method's score can take, duplicate class names.
    """
    chk = _Schema(source)
    at = _Fields(field)
    chk.keys(data, at(), required=_MONITOR_FIELDS)
    method = chk.string(data["method"], at("method"))
    spec = available_scorers().get(method)
    if spec is None:
        chk.fail(at("method"), method, f"one of the methods {list(available_scorers())}")
    direction = chk.string(data["direction"], at("direction"))
    if direction not in DIRECTIONS:
        chk.fail(at("direction"), direction, f"direction must be one of {DIRECTIONS}")
    if direction != spec.direction:
        chk.fail(
            at("direction"),
            direction,
            f"{spec.direction!r}: method {method!r} flags when its score is "
            f"{spec.direction} the threshold",
        )
    step = chk.number(
        data["grid_step"], at("grid_step"), f"a number in [{_MIN_STEP:g}, 1]", _MIN_STEP, 1.0
    )
    classes = data["classes"]
    if not isinstance(classes, list) or not classes:
        chk.fail(at("classes"), classes, "a non-empty array of class objects")
    lo, hi = spec.score_range(len(classes))
    # The fitted grid ends at the first grid value at or above the largest score
    # (threshold_grid); a millionth of a step more absorbs the float rounding of j * step.
    top = math.ceil(round(hi / step, 9)) * step if math.isfinite(hi) else math.inf
    tau_ok = f"a number in [{lo:g}, {top:.10g}] ({method} scores lie in [{lo:g}, {hi:g}])"
    if direction == "below" and lo > 0:
        tau_ok = f"0 (flag nothing) or {tau_ok}"
    mon = make_monitor(method, grid_step=step)
    learned = isinstance(mon, LearnedMonitor)
    if isinstance(mon, LearnedMonitor):
        chk.keys(data, at(), required=("seed",))
        mon.seed = chk.count(data["seed"], at("seed"))
    states: list[Any] = []
    names: list[str] = []
    pred_t, flag_t, fits = [], [], []
    for j, entry in enumerate(classes):
        here = _Fields(at(f"classes[{j}]"))
        chk.keys(entry, here(), required=_CLASS_FIELDS)
        name = chk.string(entry["name"], here("name"), "a non-empty string (a class name)")
        if name in names:
            chk.fail(
                here("name"),
                name,
                f"a class name not already used by classes[{names.index(name)}]",
            )
        t = chk.number(
            entry["prediction_threshold"],
            here("prediction_threshold"),
            "a probability in [0, 1] (or 1.0000000000000002: predict nothing)",
            0.0,
            1.0,
            allow=(PREDICT_NOTHING,),
        )
        tau = chk.number(
            entry["flag_threshold"],
            here("flag_threshold"),
            tau_ok,
            lo,
            top + step * 1e-6,
            allow=(0.0,) if direction == "below" else (),
        )
        stats = _calibration_stats(chk, entry["calibration"], _Fields(here("calibration")))
        if learned:
            chk.keys(entry, here(), required=("model",))
            try:
                states.append(FlaggerModel.from_dict(entry["model"], len(classes) + 3))
            except ValueError as exc:
                chk.fail(here("model"), entry["model"], str(exc))
        else:
            states.append(None)
        chk.no_others(entry, here(), (*_CLASS_FIELDS, "model") if learned else _CLASS_FIELDS)
        names.append(name)
        pred_t.append(t)
        flag_t.append(tau)
        fits.append(ClassFit(name=name, prediction_threshold=t, flag_threshold=tau, **stats))
    chk.no_others(data, at(), (*_MONITOR_FIELDS, "seed") if learned else _MONITOR_FIELDS)
    mon.class_names_ = names
    mon.states_ = states
    mon.prediction_thresholds_ = np.asarray(pred_t, dtype=np.float64)
    mon.flag_thresholds_ = np.asarray(flag_t, dtype=np.float64)
    mon.fits_ = fits
    return mon


# -- the monitor file's schema ------------------------------------------------------------------
_MIN_STEP = 1e-9
"""Smallest grid step a monitor file may hold (a finer grid than float rounding is no grid)."""

_MONITOR_FIELDS = ("method", "direction", "grid_step", "classes")
_CLASS_FIELDS = ("name", "prediction_threshold", "flag_threshold", "calibration")
_COUNTS = ("n", "n_pos", "n_flags")
_RATES = (
    "f1_before",
    "f1_after",
    "sensitivity_before",
    "sensitivity_after",
    "specificity_before",
    "specificity_after",
)


class _Fields:
    """Dotted field paths: ``_Fields("monitor")("grid_step") == "monitor.grid_step"``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, name: str = "") -> str:
        if not name:
            return self.prefix or "(the document)"
        if not self.prefix or name.startswith("["):
            return f"{self.prefix}{name}"
        return f"{self.prefix}.{name}"


def _shown(value: Any) -> str:
    """A JSON value as the file spells it, shortened, with its JSON type."""
    kinds = {bool: "boolean", str: "string", int: "number", float: "number", list: "array"}
    kind = "null" if value is None else kinds.get(type(value), "object")
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (ValueError, TypeError, RecursionError):
        text = type(value).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class _Schema:
    """Field-by-field checks of a monitor document; each refusal names the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, found: Any, expected: str) -> NoReturn:
        raise MonitorFormatError(
            f"{self.source}: not a valid monitor (schema {MONITOR_FORMAT} v{SCHEMA_VERSION}): "
            f"{field}: found {_shown(found)}, expected {expected}"
        )

    def missing(self, field: str, expected: str) -> NoReturn:
        raise MonitorFormatError(
            f"{self.source}: not a valid monitor (schema {MONITOR_FORMAT} v{SCHEMA_VERSION}): "
            f"{field} is missing, expected {expected}"
        )

    def keys(
        self,
        value: Any,
        field: str,
        required: Sequence[str],
    ) -> None:
        """``value`` is an object holding ``required`` (see :meth:`no_others` for the rest)."""
        if not isinstance(value, dict):
            self.fail(field, value, f"an object with the fields {list(required)}")
        at = _Fields(field)
        for key in required:
            if key not in value:
                self.missing(at(key), f"an object with the fields {list(required)}")

    def no_others(self, value: Mapping[str, Any], field: str, allowed: Sequence[str]) -> None:
        """Refuse a field the writer never writes (checked after the fields' values)."""
        for key in value:
            if key not in allowed:
                self.fail(
                    _Fields(field)(str(key)),
                    value[key],
                    f"no such field (the fields are {list(allowed)})",
                )

    def string(self, value: Any, field: str, expected: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, value, expected)
        return value

    def number(
        self,
        value: Any,
        field: str,
        expected: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        allow: Sequence[float] = (),
    ) -> float:
        """A JSON number (not ``true``, not ``"1.4"``), finite, in ``[lo, hi]`` or in ``allow``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, value, expected)
        try:
            x = float(value)
        except OverflowError:
            self.fail(field, value, expected)
        if not math.isfinite(x):
            self.fail(field, value, f"a finite number: {expected}")
        if x in allow:
            return x
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            self.fail(field, value, expected)
        return x

    def count(self, value: Any, field: str, hi: int | None = None) -> int:
        """A non-negative JSON integer (``3``, not ``3.0``, ``true`` or ``"3"``), at most ``hi``."""
        expected = "a non-negative integer" + (f" at most {hi}" if hi is not None else "")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(field, value, expected)
        if hi is not None and value > hi:
            self.fail(field, value, expected)
        return value

    def names(self, value: Any, field: str) -> list[str]:
        """A non-empty array of distinct non-empty strings."""
        if not isinstance(value, list) or not value:
            self.fail(field, value, "a non-empty array of class names (strings)")
        seen: list[str] = []
        for i, name in enumerate(value):
            self.string(name, f"{field}[{i}]", "a non-empty string (a class name)")
            if name in seen:
                self.fail(
                    f"{field}[{i}]",
                    name,
                    f"a class name not already at {field}[{seen.index(name)}]",
                )
            seen.append(name)
        return seen


def _calibration_stats(chk: _Schema, value: Any, at: _Fields) -> dict[str, Any]:
    """The :class:`ClassFit` statistics of one class entry (``note`` may be absent)."""
    chk.keys(value, at(), required=(*_COUNTS, *_RATES))
    n = chk.count(value["n"], at("n"))
    out: dict[str, Any] = {"n": n}
    out["n_pos"] = chk.count(value["n_pos"], at("n_pos"), n)
    out["n_flags"] = chk.count(value["n_flags"], at("n_flags"), n)
    for key in _RATES:
        v = value[key]
        # null: undefined (F1 without positives, sensitivity without positives, ...)
        out[key] = (
            float("nan")
            if v is None
            else chk.number(v, at(key), "a rate in [0, 1], or null (undefined)", 0.0, 1.0)
        )
    note = value.get("note", "")
    if not isinstance(note, str):
        chk.fail(at("note"), note, "a string")
    out["note"] = note
    chk.no_others(value, at(), (*_COUNTS, *_RATES, "note"))
    return out


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null means "undefined" (e.g. F1 with no positives)
    return v


# -- the input check -----------------------------------------------------------------------------
_INPUT_FIELDS = (
    "score",
    "alpha",
    "direction",
    "fitted_direction",
    "direction_reason",
    "probe",
    "calibration_scores",
)
_PROBE_FIELDS = ("n_images", "n_higher", "n_lower", "n_tied", "p_value")


def input_check_to_dict(check: InputCheck) -> dict[str, Any]:
    """The ``input_check`` object of a monitor file: settings, direction, calibration scores."""
    check.check_fitted()
    return {
        "score": check.score,
        "alpha": float(check.alpha),
        "direction": check.direction,
        "fitted_direction": check.direction_,
        "direction_reason": check.direction_reason_,
        "probe": None if check.probe_ is None else dict(check.probe_),
        "calibration_scores": [float(v) for v in check.calibration_scores_],
    }


def input_check_from_dict(
    data: Any, method: str, source: str = "monitor", *, field: str = "input_check"
) -> InputCheck:
    """Rebuild a fitted :class:`~.inputcheck.InputCheck`, checking every field.

    ``method`` is the monitor's: the score must be one the method computes (``distinctiveness``
    needs saliency maps, ``tta_spread`` the TTA method).

    Raises
    ------
    MonitorFormatError
        A missing or unexpected field, a value of another JSON type, an unknown score or
        direction, an alpha outside (0, 1), calibration scores that are not sorted, finite and
        in the score's range.
    """
    chk = _Schema(source)
    at = _Fields(field)
    chk.keys(data, at(), required=_INPUT_FIELDS)
    kind = scorer_class(method)
    scores = available_scores(kind.has_maps, "tta" in kind.option_groups)
    score = chk.string(data["score"], at("score"))
    if score not in scores:
        chk.fail(
            at("score"), score, f"one of the input scores method {method!r} computes {list(scores)}"
        )
    alpha = chk.number(data["alpha"], at("alpha"), "a number in (0, 1)", 0.0, 1.0)
    if not 0.0 < alpha < 1.0:
        chk.fail(at("alpha"), data["alpha"], "a number in (0, 1)")
    direction = chk.string(data["direction"], at("direction"))
    if direction not in INPUT_DIRECTIONS:
        chk.fail(at("direction"), direction, f"one of {list(INPUT_DIRECTIONS)}")
    fitted = chk.string(data["fitted_direction"], at("fitted_direction"))
    if fitted not in FITTED_DIRECTIONS or direction not in ("auto", fitted):
        expected = list(FITTED_DIRECTIONS) if direction == "auto" else [direction]
        chk.fail(at("fitted_direction"), fitted, f"one of {expected} (direction {direction!r})")
    reason = chk.string(data["direction_reason"], at("direction_reason"))
    probe = data["probe"]
    if probe is not None:
        chk.keys(probe, at("probe"), required=_PROBE_FIELDS)
        pat = _Fields(at("probe"))
        for key in _PROBE_FIELDS[:-1]:
            chk.count(probe[key], pat(key))
        chk.number(probe["p_value"], pat("p_value"), "a p-value in [0, 1]", 0.0, 1.0)
        chk.no_others(probe, at("probe"), _PROBE_FIELDS)
    values = data["calibration_scores"]
    lo, hi = SCORE_RANGES[score]
    shown_range = f"[{lo:g}, {hi:g}]"
    if not isinstance(values, list) or not values:
        chk.fail(at("calibration_scores"), values, f"a non-empty array of {score} scores")
    cal = [
        chk.number(v, at(f"calibration_scores[{i}]"), f"a {score} score in {shown_range}", lo, hi)
        for i, v in enumerate(values)
    ]
    for i in range(1, len(cal)):
        if cal[i] < cal[i - 1]:
            chk.fail(
                at(f"calibration_scores[{i}]"),
                values[i],
                f"a number at least calibration_scores[{i - 1}] = {cal[i - 1]!r} (sorted)",
            )
    chk.no_others(data, at(), _INPUT_FIELDS)
    check = InputCheck(score, alpha, direction)
    check.direction_ = fitted
    check.direction_reason_ = reason
    check.probe_ = None if probe is None else dict(probe)
    check.calibration_scores_ = np.asarray(cal, dtype=np.float64)
    return check


# -- the monitor file ---------------------------------------------------------------------------
def save_monitor(
    path: str | Path,
    monitor: FlagMonitor,
    binding: Mapping[str, Any],
    calibration: Mapping[str, Any] | None = None,
    evidence: Mapping[str, Any] | None = None,
    input_check: InputCheck | None = None,
) -> None:
    """Write the monitor as JSON, atomically (temp file + rename).

    Parameters
    ----------
    binding
        What the monitor is valid for: ``model_sha256``, ``class_names`` (model outputs),
        ``audited_classes``, ``preprocessing`` (model card) and ``saliency`` settings
        (``None`` for a baseline, whose binding adds ``method``: its name and settings).
    calibration
        Provenance of the fit (number of images, label file, failures).
    evidence
        The cross-fitted estimate and information tests (:func:`.crossfit.calibration_evidence`).
    input_check
        The fitted input check (:mod:`.inputcheck`), stored as ``input_check``.
    """
    doc: dict[str, Any] = {
        "format": MONITOR_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "binding": dict(binding),
        "monitor": monitor_to_dict(monitor),
        "calibration": dict(calibration or {}),
    }
    if evidence:
        doc["evidence"] = _json_clean(evidence)
    if input_check is not None:
        doc["input_check"] = input_check_to_dict(input_check)
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=False) + "\n")


def load_monitor(path: str | Path) -> MonitorFile:
    """Read a monitor file.

    Returns
    -------
    MonitorFile
        The fitted monitor, its binding and its calibration provenance.

    Raises
    ------
    MonitorFormatError
        Missing, truncated or hand-edited files, another format or schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise MonitorFormatError(f"{path}: monitor file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MonitorFormatError(f"{path}: cannot read the monitor file: {exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, a duplicate key, an integer of
        # more digits than Python converts; RecursionError: nesting deeper than the parser goes.
        raise MonitorFormatError(
            f"{path}: not valid monitor JSON (truncated or edited?): {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != MONITOR_FORMAT:
        raise MonitorFormatError(
            f'{path}: not an informer-audit monitor (expected "format": "{MONITOR_FORMAT}")'
        )
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MonitorFormatError(
            f"{path}: monitor schema_version {_short_repr(version)} is not supported; this "
            f"informer-audit {__version__} reads schema_version {SCHEMA_VERSION}. "
            "Re-run calibrate."
        )
    binding = doc.get("binding")
    required = ("model_sha256", "class_names", "audited_classes", "preprocessing", "saliency")
    if not isinstance(binding, dict) or any(k not in binding for k in required):
        lacking = (
            [k for k in required if k not in binding] if isinstance(binding, dict) else required
        )
        raise MonitorFormatError(
            f"{path}: the monitor's 'binding' must hold {list(required)}; "
            + (
                f"found {_shown(binding)}"
                if not isinstance(binding, dict)
                else f"binding.{lacking[0]} is missing"
            )
        )
    chk = _Schema(str(path))
    chk.keys(doc, "", required=("format", "schema_version", "binding", "monitor"))
    chk.no_others(
        doc,
        "",
        (
            "format",
            "schema_version",
            "tool_version",
            "binding",
            "monitor",
            "calibration",
            "evidence",
            "input_check",
        ),
    )
    if "tool_version" in doc:
        chk.string(doc["tool_version"], "tool_version", "a version string")
    calibration = doc.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        chk.fail("calibration", calibration, "an object (the fit's provenance) or null")
    monitor = monitor_from_dict(doc["monitor"], source=str(path), field="monitor")
    _check_binding_fields(chk, binding, monitor)
    if monitor.class_names_ != binding["audited_classes"]:
        raise MonitorFormatError(
            f"{path}: monitor classes {monitor.class_names_} differ from the bound audited "
            f"classes {binding['audited_classes']}"
        )
    evidence = _evidence(chk, doc.get("evidence"), monitor.class_names_)
    check = None
    if doc.get("input_check") is not None:  # absent (or null) in files from before the check
        check = input_check_from_dict(doc["input_check"], monitor.method, str(path))
    return MonitorFile(monitor, binding, dict(calibration or {}), path, evidence, check)


def _json_clean(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_EVIDENCE_PARTS = ("out_of_sample", "thresholds", "information")


def _evidence(chk: _Schema, value: Any, classes: Sequence[str]) -> dict[str, Any]:
    """The ``evidence`` object: settings, then one entry per class in each part.

    Its numbers are shown, never used to flag, so it is checked for shape (each part lists
    the monitor's classes in order, entries are objects of numbers, strings and nulls), not
    for every value.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        chk.fail("evidence", value, "an object (the cross-fitted estimate) or null")
    chk.no_others(value, "evidence", ("settings", *_EVIDENCE_PARTS))
    if not isinstance(value.get("settings", {}), dict):
        chk.fail("evidence.settings", value["settings"], "an object")
    for part in _EVIDENCE_PARTS:
        if part not in value:
            continue
        entries = value[part]
        if not isinstance(entries, list):
            chk.fail(f"evidence.{part}", entries, "an array with one object per class")
        names = [e.get("name") if isinstance(e, dict) else None for e in entries]
        if names != list(classes):
            chk.fail(
                f"evidence.{part}", names, f"one entry per monitor class, in order: {list(classes)}"
            )
        for i, entry in enumerate(entries):
            for key, v in entry.items():
                if not (v is None or isinstance(v, str | int | float)):
                    chk.fail(
                        f"evidence.{part}[{i}].{key}", v, "a number, a string, true/false or null"
                    )
    return dict(value)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a key given twice is an edit (JSON readers keep either one)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {_short_repr(key)} appears twice in one object")
        out[key] = value
    return out


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SHA256_HEX = frozenset("0123456789abcdef")


def _check_binding_fields(chk: _Schema, binding: dict[str, Any], monitor: FlagMonitor) -> None:
    """The binding's fields have the types :meth:`.audit.Auditor.binding` writes."""
    sha = binding["model_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        chk.fail("binding.model_sha256", sha, "a SHA-256 digest: 64 lowercase hex digits")
    outputs = chk.names(binding["class_names"], "binding.class_names")
    audited = chk.names(binding["audited_classes"], "binding.audited_classes")
    for i, name in enumerate(audited):
        if name not in outputs:
            chk.fail(
                f"binding.audited_classes[{i}]",
                name,
                f"one of the model's classes (binding.class_names) {_short_repr(outputs)}",
            )
    if not isinstance(binding["preprocessing"], dict):
        chk.fail("binding.preprocessing", binding["preprocessing"], "an object (the model card)")
    kind = scorer_class(monitor.method)
    saliency = binding["saliency"]
    if saliency is None:
        if kind.has_maps:
            chk.fail(
                "binding.saliency",
                saliency,
                "an object (the saliency settings; null only for a baseline)",
            )
    elif not isinstance(saliency, dict):
        chk.fail("binding.saliency", saliency, "an object (null only for a baseline)")
    elif kind.has_maps and not isinstance(saliency.get("name"), str):
        chk.fail("binding.saliency", saliency, "an object with the saliency adapter's 'name'")
    # A binding without "method" is INFORMER's (files from before the baselines); a baseline's
    # names its method (and settings, e.g. TTA's) and has "saliency": null. A baseline's
    # binding without one loads (check_binding refuses it against any run's binding).
    method = binding.get("method")
    if method is None:
        return
    if not isinstance(method, dict) or method.get("name") != monitor.method:
        chk.fail(
            "binding.method",
            method,
            f"an object whose name is the monitor's method {monitor.method!r} (the binding's "
            "method does not name the monitor's method)",
        )
    if "tta" in kind.option_groups:
        # The keyword arguments of tta_settings are the TTA settings that change the score.
        for key in tta_settings.__kwdefaults__ or {}:
            if key not in method:
                chk.missing(f"binding.method.{key}", "the TTA setting the monitor was fitted with")
            value = method[key]
            try:
                if isinstance(value, bool):
                    raise ValueError("a number, not true or false")
                tta_settings(**{key: value})
            except ValueError as exc:  # EvaluationError
                chk.fail(f"binding.method.{key}", value, str(exc).split(": ", 1)[-1])


__all__ = [
    "MONITOR_FORMAT",
    "SCHEMA_VERSION",
    "MonitorFile",
    "input_check_from_dict",
    "input_check_to_dict",
    "load_monitor",
    "monitor_from_dict",
    "monitor_to_dict",
    "save_monitor",
]
