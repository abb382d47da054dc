"""Settings documents compared field by field: is this monitor, journal or maps folder for this run?

A monitor file, a resume journal and a maps folder each record the *binding* they were made
for (model SHA-256, classes, preprocessing, saliency or method settings). :func:`differences`
lists where two such JSON-like documents differ; :func:`check_binding` refuses a mismatch with
the first differing field named. No file format is read or written here, so the journal and
the maps folder use it without importing the monitor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import MonitorMismatchError


def check_binding(
    found: Mapping[str, Any], expected: Mapping[str, Any], source: str = "monitor"
) -> None:
    """Refuse a monitor fitted for another model or other settings.

    Compares field by field (nested objects included) and names the first field that differs.
    """
    diffs = _diff(found, expected, "")
    if diffs:
        field_name, was, now = diffs[0]
        more = f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else ""
        raise MonitorMismatchError(
            f"{source} was fitted for other settings: {field_name} is {was!r} in the monitor but "
            f"{now!r} for this run{more}. Re-run calibrate for this model and these settings."
        )


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


__all__ = ["check_binding", "differences"]
