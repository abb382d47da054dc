"""Output paths that input file names cannot steer, and file names safe to print and store.

Everything the auditor writes lives either at a path the user chose (``-o FILE``, a monitor
file) or under an output folder the user chose. A name *derived from the input* (an image's
path, a class or adapter name, a key from a CSV) must never lead a write outside that folder:
:func:`safe_child` is the one gate for such names, and :func:`safe_filename` turns any text
into a flat file name that passes it.

Image paths are also written into CSV and JSON files and printed on the terminal. On POSIX a
file name is bytes; Python represents the bytes that are not UTF-8 as lone surrogates, which
no UTF-8 writer accepts. :func:`printable` renders those bytes as ``\\xNN`` escapes instead, so
such a file is reported (and audited) rather than crashing the run.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import OutputPathError

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 80


def safe_child(outdir: str | Path, name: str | Path) -> Path:
    """``outdir / name``, refused unless it stays inside ``outdir``.

    Parameters
    ----------
    outdir : path
        The output folder the user chose (need not exist yet).
    name : str or path
        A relative path under it, e.g. ``"monitor_informer_fd.json"`` or ``"maps/ab12.png"``.
        ``/`` separates folders.

    Returns
    -------
    Path
        ``Path(outdir) / name``.

    Raises
    ------
    OutputPathError
        When ``name`` is empty, holds a NUL byte, is absolute (``/x``, ``C:\\x``, ``\\\\host``),
        has a ``..`` component or a backslash, or when, with symbolic links resolved, the path
        would land outside ``outdir`` (a link inside the folder that points elsewhere).
    """
    text = os.fspath(name)
    why = _refusal(text)
    if why:
        raise OutputPathError(
            f"refused to write {text!r} under {os.fspath(outdir)!r}: {why}; expected a relative "
            "path inside the output folder"
        )
    base = Path(outdir)
    target = base / text
    root = base.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise OutputPathError(
            f"refused to write {text!r} under {os.fspath(outdir)!r}: it resolves to "
            f"{os.fspath(resolved)!r}, outside the output folder (a symbolic link?)"
        )
    return target


def _refusal(text: str) -> str:
    """Why ``text`` cannot name a file under an output folder ("" when it can)."""
    if not text or not text.strip():
        return "the name is empty"
    if "\x00" in text:
        return "the name holds a NUL byte"
    if "\\" in text:
        return "the name holds a backslash (a path separator on Windows)"
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).anchor:
        return "the name is an absolute path"
    parts = PurePosixPath(text).parts
    if ".." in parts:
        return "the name has a '..' component"
    if all(part == "." for part in parts):
        return "the name is the output folder itself"
    return ""


def safe_filename(text: str, suffix: str = "") -> str:
    """A flat file name made from any text (an image path, a class name), unique per text.

    Characters other than ``A-Z a-z 0-9 . _ -`` become ``_``, leading dots are dropped, the
    result is cut to 80 characters, and the first 12 hex digits of the SHA-256 of ``text``
    are appended, so ``a/x.png`` and ``b/x.png`` get different names. The result always
    passes :func:`safe_child`.

    Parameters
    ----------
    text : str
        Any text, lone surrogates (non-UTF-8 file names) included.
    suffix : str
        Appended as given, e.g. ``".png"``; it must itself be safe (letters, digits, ``._-``).

    Returns
    -------
    str
        E.g. ``safe_filename("scans/../a b.png", ".png")`` -> ``"scans_.._a_b.png-<12 hex>.png"``
        (a flat name: the ``..`` is no longer a path component).
    """
    if _UNSAFE_CHARS.search(suffix):
        raise OutputPathError(f"file name suffix {suffix!r} must use only letters, digits, '._-'")
    stem = _UNSAFE_CHARS.sub("_", printable(text)).lstrip(".")[:_MAX_STEM] or "file"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}-{digest}{suffix}"


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name shown as ``\\xNN`` escapes.

    File names that are valid UTF-8 come back unchanged; a name decoded by Python with
    ``surrogateescape`` (lone surrogates ``\\udc80``-``\\udcff``) gets those bytes escaped, so
    the result can be written to any UTF-8 file or terminal.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that no file name decodes to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return text


__all__ = ["printable", "safe_child", "safe_filename"]
