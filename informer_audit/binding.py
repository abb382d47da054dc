"""Settings documents compared field by field: is this monitor, journal or maps folder for this run?

A monitor file, a resume journal and a maps folder each record the *binding* they were made
for (model SHA-256, classes, preprocessing, saliency or method settings). :func:`differences`
lists where two such JSON-like documents differ; :func:`check_binding` refuses a mismatch with
the first differing field named. No file format is read or written here, so the journal and
the maps folder use it without importing the monitor.

A binding recorded before an optional model-card field existed lacks it in its
``preprocessing``; :func:`legacy_binding` fills in what that run used (``"resize": "float"``),
and :func:`check_binding` compares through it, so that such a monitor is refused for a run that
resizes otherwise, with the field named, and accepted for one that resizes as it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import MonitorMismatchError
from .modelcard import RESIZE_MODES, legacy_card_dict


def check_binding(
    found: Mapping[str, Any], expected: Mapping[str, Any], source: str = "monitor"
) -> None:
    """Refuse a monitor fitted for another model or other settings.

    Compares field by field (nested objects included) and names the first field that differs.
    Both bindings go through :func:`legacy_binding` first: a monitor recorded before the
    model card's ``resize`` field existed was fitted with ``"resize": "float"``.

    Raises
    ------
    MonitorMismatchError
        The bindings differ. When ``preprocessing.resize`` is one of the differences, its
        ``params`` is ``("resize",)`` and the message says how to use the monitor as it was
        fitted.
    """
    diffs = _diff(legacy_binding(found), legacy_binding(expected), "")
    if diffs:
        field_name, was, now = diffs[0]
        more = f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else ""
        fitted = next((was for name, was, _ in diffs if name == "preprocessing.resize"), None)
        hint = (
            f" To apply it as it was fitted, give the model card's resize field the monitor's "
            f'value ("resize": "{fitted}" in the card, or overrides={{"resize": "{fitted}"}}); '
            'a monitor written before the field existed was fitted with "float".'
            if fitted in RESIZE_MODES
            else ""
        )
        raise MonitorMismatchError(
            f"{source} was fitted for other settings: {field_name} is {was!r} in the monitor but "
            f"{now!r} for this run{more}. Re-run calibrate for this model and these settings."
            + hint,
            params=("resize",) if hint else (),
        )


def legacy_binding(binding: Any) -> Any:
    """A recorded binding with the preprocessing fields it predates filled in.

    A binding whose ``preprocessing`` (the model card) lacks an optional card field was written
    before the field existed, and its run used :data:`~.modelcard.LEGACY_CARD_VALUES`
    (``"resize": "float"``): that value is filled in (:func:`~.modelcard.legacy_card_dict`).
    Anything else, including a binding without ``preprocessing`` or a non-mapping, is returned
    as it is.

    Parameters
    ----------
    binding
        A binding as :meth:`.audit.Auditor.binding` writes it (a monitor's, a maps folder's, a
        journal's settings).

    Returns
    -------
    Any
        A new mapping when something was filled in; else ``binding`` itself.
    """
    if not isinstance(binding, Mapping):
        return binding
    preprocessing = binding.get("preprocessing")
    if not isinstance(preprocessing, Mapping):
        return binding
    filled = legacy_card_dict(preprocessing)
    if len(filled) == len(preprocessing):
        return binding
    return {**binding, "preprocessing": filled}


def differences(found: Any, expected: Any) -> list[tuple[str, Any, Any]]:
    """Where two JSON-like documents differ: ``(dotted field name, found, expected)`` each.

    Nested objects are compared key by key, lists as wholes, numbers by value (``1 == 1.0``).
    """
    return _diff(found, expected, "")


def _diff(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append((name, a.get(key, "<absent>"), b.get(key, "<absent>")))
            else:
                out.extend(_diff(a[key], b[key], name))
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return [] if list(a) == list(b) else [(prefix, list(a), list(b))]
    if isinstance(a, float | int) and isinstance(b, float | int):
        return [] if float(a) == float(b) else [(prefix, a, b)]
    return [] if a == b else [(prefix, a, b)]


__all__ = ["check_binding", "differences", "legacy_binding"]
