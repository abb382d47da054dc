"""The model card: how a vendor's classifier expects its input and what it outputs.

A :class:`ModelCard` says how the vendor's model expects its input (size, channels, layout,
scale, mean/std) and what it outputs (class names; logits or probabilities). It is read, in order
of precedence, from explicit overrides (CLI options), a card file (JSON or TOML), or the ONNX
file's ``metadata_props`` under :data:`CARD_METADATA_KEY` (:func:`resolve_card`). Nothing is
guessed: a field of :data:`CARD_FIELDS` that none of them gives is an error; the optional fields
(:data:`CARD_DEFAULTS`) take their default.

``resize`` (optional) says how images are brought to the model's size. ``"uint8"`` (the
default): an 8-bit source (an 8-bit PNG, JPEG, ...) is converted to the model's channels and
resized by Pillow's bilinear filter on the 8-bit image, as PIL and torchvision pipelines train
models (RGB to grayscale is then Pillow's rounded ``convert("L")``); 16-bit, float and DICOM
grayscale sources keep their precision (float resizing). ``"float"``: every image is converted
and resized in float, the only behaviour before this field existed. A card that does not give
the field gets ``"uint8"``; preprocessing *recorded* before the field existed (a monitor's
binding) lacks it and means ``"float"`` (:data:`LEGACY_CARD_VALUES`, :func:`legacy_card_dict`).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelSpecError

CARD_METADATA_KEY = "informer_audit.model_card"
"""ONNX ``metadata_props`` key under which the model card JSON is stored."""

PROVENANCE_METADATA_KEY = "informer_audit.provenance"
"""ONNX ``metadata_props`` key under which ``informer-audit export`` records where a model came
from (tool and torch versions, architecture, checkpoint SHA-256 or random initialisation)."""

CARD_FIELDS = ("class_names", "image_size", "channels", "layout", "scale", "mean", "std", "output")
"""The fields every card must give (from metadata, a card file or overrides together)."""
RESIZE_MODES = ("uint8", "float")
"""Values of the card's ``resize`` field (see the module docstring)."""
CARD_DEFAULTS: dict[str, Any] = {"resize": "uint8"}
"""The optional card fields and the value a card that does not give one gets."""
LEGACY_CARD_VALUES: dict[str, Any] = {"resize": "float"}
"""What recorded preprocessing (a monitor's binding, ...) written before an optional field
existed used in its place: the behaviour of informer-audit at the time."""
_INFO_FIELDS = ("name", "description", "architecture", "version", "source")
LAYOUTS = ("NCHW", "NHWC")
OUTPUT_KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class ModelCard:
    """How to feed a classifier and read its output.

    A canonical image (8-bit scale) is converted to ``channels`` and resized to ``image_size``
    (in 8 bits for an 8-bit source when ``resize`` is ``"uint8"``, else in float); its pixels
    are then divided by ``scale`` and normalised per channel with ``(x - mean) / std``.
    """

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    layout: str = "NCHW"
    scale: float = 255.0
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))
    output: str = "logits"
    resize: str = "uint8"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> ModelCard:
        """Validate and build a card; ``source`` names where it came from in error messages."""
        if not isinstance(data, Mapping):
            raise ModelSpecError(
                f"{source}: expected a JSON/TOML object, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(CARD_FIELDS) - set(CARD_DEFAULTS) - set(_INFO_FIELDS))
        if unknown:
            raise ModelSpecError(
                f"{source}: unknown field(s) {unknown}; valid fields are "
                f"{[*CARD_FIELDS, *CARD_DEFAULTS]}"
            )
        missing = [f for f in CARD_FIELDS if f not in data]
        if missing:
            raise ModelSpecError(f"{source}: missing field(s) {missing}")
        try:
            names = tuple(str(n) for n in data["class_names"])
            size = data["image_size"]
            if isinstance(size, int | float):
                size = (size, size)
            size_t = (_strict_int(size[0], "image_size"), _strict_int(size[1], "image_size"))
            channels = _strict_int(data["channels"], "channels")
            scale = float(data["scale"])
            mean = tuple(float(v) for v in _as_list(data["mean"]))
            std = tuple(float(v) for v in _as_list(data["std"]))
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise ModelSpecError(f"{source}: malformed field value ({exc})") from exc
        layout, output = str(data["layout"]).upper(), str(data["output"]).lower()
        resize = data.get("resize", CARD_DEFAULTS["resize"])
        resize = resize.lower() if isinstance(resize, str) else resize
        problems = []
        if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
            problems.append(f"class_names must be distinct non-empty names, got {list(names)}")
        if min(size_t) < 1:
            problems.append(f"image_size must be positive [H, W], got {list(size_t)}")
        if channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {channels}")
        if layout not in LAYOUTS:
            problems.append(f"layout must be one of {list(LAYOUTS)}, got {data['layout']!r}")
        if output not in OUTPUT_KINDS:
            problems.append(f"output must be one of {list(OUTPUT_KINDS)}, got {data['output']!r}")
        if resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {list(RESIZE_MODES)}, got {data['resize']!r}")
        if not (scale > 0 and math.isfinite(scale)):
            problems.append(f"scale must be a positive number, got {scale}")
        for key, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                problems.append(f"{key} must have 1 or {channels} values, got {len(values)}")
            if not all(math.isfinite(v) for v in values):
                problems.append(f"{key} must be finite, got {list(values)}")
        if any(v <= 0 for v in std):
            problems.append(f"std values must be positive, got {list(std)}")
        if problems:
            raise ModelSpecError(f"{source}: " + "; ".join(problems))
        if len(mean) == 1:
            mean = mean * channels
        if len(std) == 1:
            std = std * channels
        return cls(names, size_t, channels, layout, scale, mean, std, output, resize)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        """Read a card from a ``.json`` or ``.toml`` file."""
        return cls.from_dict(_read_card_file(Path(path)), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-ready object (the format of card files and ONNX metadata)."""
        d = asdict(self)
        return {
            "class_names": list(d["class_names"]),
            "image_size": list(d["image_size"]),
            "channels": d["channels"],
            "layout": d["layout"],
            "scale": d["scale"],
            "mean": list(d["mean"]),
            "std": list(d["std"]),
            "output": d["output"],
            "resize": d["resize"],
        }

    def to_json(self) -> str:
        """Serialised card, as stored under :data:`CARD_METADATA_KEY`."""
        return json.dumps(self.to_dict(), sort_keys=True)


def legacy_card_dict(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded card fields with the values their run used where a field did not exist yet.

    A monitor's binding (its ``preprocessing``), a cache key or another record written before
    an optional card field existed lacks it; the tool then behaved as
    :data:`LEGACY_CARD_VALUES` says (``"resize": "float"``). Fields given are kept.

    Parameters
    ----------
    preprocessing
        Card fields as :meth:`ModelCard.to_dict` writes them (``class_names`` may be absent).

    Returns
    -------
    dict
        A copy, with the missing optional fields filled in.
    """
    missing = {k: v for k, v in LEGACY_CARD_VALUES.items() if k not in preprocessing}
    return {**preprocessing, **missing}


def _strict_int(value: Any, name: str) -> int:
    """An integer, or a float with an integral value; refuses 16.7, True, "16"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _read_card_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: model card file not found")
    try:
        if path.suffix.lower() == ".toml":
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        else:
            with path.open("r", encoding="utf-8-sig") as fh:  # tolerate a BOM
                data = json.load(fh)
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read the model card: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8, JSON or TOML; deep nesting
        raise ModelSpecError(
            f"{path}: cannot parse the model card (expected JSON, or TOML for .toml files): {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ModelSpecError(
            f"{path}: the model card must be a JSON/TOML object, got {type(data).__name__}"
        )
    return data


def resolve_card(
    metadata: Mapping[str, str],
    card_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "model",
    fallback: Mapping[str, Any] | None = None,
    fallback_source: str = "monitor",
) -> tuple[ModelCard, str]:
    """Combine ONNX metadata, a card file and CLI overrides (later wins, field by field).

    ``fallback`` (e.g. the card a monitor was fitted with, for the same model file) fills only
    the fields that none of the others gives.

    Returns
    -------
    (ModelCard, str)
        The card and a short description of where its fields came from.
    """
    merged: dict[str, Any] = {}
    origins = []
    if fallback:
        merged.update(fallback)
        origins.append(fallback_source)
    if CARD_METADATA_KEY in metadata:
        try:
            meta_card = json.loads(metadata[CARD_METADATA_KEY])
        except (ValueError, RecursionError) as exc:
            raise ModelSpecError(
                f"{source}: metadata_props[{CARD_METADATA_KEY!r}] is not valid JSON: {exc}"
            ) from exc
        if not isinstance(meta_card, dict):
            raise ModelSpecError(
                f"{source}: metadata_props[{CARD_METADATA_KEY!r}] is not an object"
            )
        merged.update(meta_card)
        origins.append("ONNX metadata")
    if card_file is not None:
        merged.update(_read_card_file(Path(card_file)))
        origins.append(f"card {card_file}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        merged.update(given)
        origins.append("options " + ",".join(sorted(given)))
    missing = [f for f in CARD_FIELDS if f not in merged]
    if missing:
        where = " + ".join(origins) if origins else "nothing (no metadata, no card, no options)"
        raise ModelSpecError(
            f"{source}: cannot tell how to preprocess this model: missing {missing} "
            f"(read from {where}). Give a model card file (card_file=CARD.json), e.g. "
            '{"class_names": [...], "image_size": [H, W], "channels": 3, "layout": "NCHW", '
            '"scale": 255, "mean": [...], "std": [...], "output": "logits"}, '
            "or the missing fields in overrides (same keys).",
            params=("card_file", *missing),
        )
    return ModelCard.from_dict(merged, source=" + ".join(origins)), " + ".join(origins)
