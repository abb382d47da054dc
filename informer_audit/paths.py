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

A run never writes over what it reads, and never loses finished work to a failed write:
:func:`check_outputs` refuses, before any work, an output that is one of the run's inputs, lies
inside an input folder, is another output of the same run, or cannot be written (under a regular
file, in a folder the process cannot write, a folder where a file is expected or the reverse);
:func:`write_outputs` writes a run's results and, when a write still fails, puts them in a
fresh recovery folder and says where.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import OutputPathError, OutputWriteError

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


# -- outputs never overwrite inputs, and a failed write loses nothing ---------------------------
PathArg = str | os.PathLike[str]


def check_outputs(
    inputs: Mapping[str, PathArg | Iterable[PathArg] | None],
    input_dirs: Mapping[str, PathArg | None],
    outputs: Mapping[str, PathArg | None],
    output_dirs: Mapping[str, PathArg | None] | None = None,
) -> None:
    """Refuse, before any work, an output that would overwrite an input or cannot be written.

    Paths are compared resolved (symbolic links followed), and existing files also by device
    and inode, so a hard link or a symbolic link to an input is caught too.

    Parameters
    ----------
    inputs : mapping
        Parameter (``"MODEL"``, ``"--labels"``) -> an input file, or several (a model and its
        external data, the images a labels CSV lists). ``None`` entries are skipped.
    input_dirs : mapping
        Parameter (``"--images"``) -> an input folder: no output may be it or lie inside it.
    outputs : mapping
        Parameter (``"-o"``, ``"--scores-csv"``, ``"-o journal"``) -> a file the run writes.
    output_dirs : mapping, optional
        Parameter (``"--save-maps"``, ``"OUTDIR"``) -> a folder the run writes into.

    Raises
    ------
    OutputPathError
        Naming the output, what it collides with and what is expected, when an output is an
        input file or folder, lies inside an input folder, is another output of the run or lies
        under one of its output files; or when it cannot be written: under a regular file, in a
        folder the process cannot write, an existing folder where a file is expected or the
        reverse.
    """
    targets = [(n, Path(p), False) for n, p in outputs.items() if p is not None]
    targets += [(n, Path(p), True) for n, p in (output_dirs or {}).items() if p is not None]
    in_files: dict[Path, tuple[str, Path]] = {}
    in_inodes: dict[tuple[int, int], tuple[str, Path]] = {}
    for name, value in inputs.items():
        if value is None:
            continue
        for item in [value] if isinstance(value, str | os.PathLike) else value:
            resolved = _resolved(item)
            in_files.setdefault(resolved, (name, Path(item)))
            identity = _identity(resolved)
            if identity is not None:
                in_inodes.setdefault(identity, (name, Path(item)))
    in_dirs = [(n, Path(p), _resolved(p)) for n, p in input_dirs.items() if p is not None]
    out_files = {_resolved(p): n for n, p, is_dir in targets if not is_dir}
    seen: dict[Path, str] = {}
    fix = "choose an output path outside the run's inputs and input folders"
    for name, path, _ in targets:
        resolved = _resolved(path)
        what = f"output {name} {os.fspath(path)!r}"
        hit = in_files.get(resolved)
        if hit is None and (identity := _identity(resolved)) is not None:
            hit = in_inodes.get(identity)
        if hit is not None:
            raise OutputPathError(
                f"{what} is the input file {os.fspath(hit[1])!r} read by this run ({hit[0]}); "
                f"writing it would destroy that input: {fix}"
            )
        for dname, dpath, dres in in_dirs:
            if resolved == dres or dres in resolved.parents:
                where = "is" if resolved == dres else "lies inside"
                raise OutputPathError(
                    f"{what} {where} the input folder {os.fspath(dpath)!r} read by this run "
                    f"({dname}); {fix}"
                )
        if resolved in seen:
            raise OutputPathError(
                f"{what} is also this run's output {seen[resolved]}: the second write would "
                "replace the first; give each output its own path"
            )
        seen[resolved] = name
        for fres, fname in out_files.items():
            if fres in resolved.parents:
                raise OutputPathError(
                    f"{what} lies under {os.fspath(fres)!r}, this run's output file {fname}; "
                    "a file cannot hold a folder: choose another path"
                )
    for name, path, is_dir in targets:
        _check_writable(f"output {name} {os.fspath(path)!r}", path, is_dir)


def _resolved(path: PathArg) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop
        return Path(os.path.abspath(path))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_writable(what: str, path: Path, is_dir: bool) -> None:
    """Refuse an output that cannot be written (see :func:`check_outputs`)."""
    target = Path(os.path.abspath(path))
    if is_dir and target.exists() and not target.is_dir():
        raise OutputPathError(f"{what} is an existing file, not a directory; expected a folder")
    if not is_dir and target.is_dir():
        raise OutputPathError(f"{what} is a directory; expected a file name (e.g. inside it)")
    # The folder that is written into, or the nearest existing ancestor that will be created in.
    folder = target if is_dir else target.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(
            f"{what} lies under {os.fspath(folder)!r}, a regular file, not a folder; expected a "
            "path whose parent folder exists or can be created"
        )
    why = _unwritable(folder)
    if why:
        raise OutputPathError(
            f"{what} cannot be written: the folder {os.fspath(folder)!r} is not writable "
            f"({why}); choose a folder this process can write"
        )


def _unwritable(folder: Path) -> str:
    """Why no file can be created in ``folder`` ("" when one can).

    ``os.access`` first, then a real probe (a temporary file created and removed), since
    ``os.access`` says yes to root in a read-only folder, and to anyone on a read-only mount.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(prefix=".informer-audit-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return ""


@dataclass
class RunPaths:
    """A run's inputs and outputs by parameter, in one place, for :func:`check_outputs`.

    Attributes
    ----------
    inputs, input_dirs, outputs, output_dirs : dict
        As :func:`check_outputs` takes them (``None`` values are skipped).
    """

    inputs: dict[str, Any] = field(default_factory=dict)
    input_dirs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    output_dirs: dict[str, Any] = field(default_factory=dict)

    def check(self, more_inputs: Mapping[str, Any] | None = None) -> None:
        """Add ``more_inputs`` (e.g. a model's external data once it is loaded) and check."""
        self.inputs.update(more_inputs or {})
        check_outputs(self.inputs, self.input_dirs, self.outputs, self.output_dirs)


def write_outputs(writes: Sequence[tuple[str, Path, Callable[[Path], Any]]]) -> list[Any]:
    """Write a run's outputs; one that fails is written to a fresh recovery folder instead.

    Every output is attempted. When any write fails with an :class:`OSError` (disk full, the
    folder removed or made read-only during the run), the failed outputs are written again
    into a new ``informer-audit-recovered-*`` folder in the system's temporary folder, so the
    computed results are not lost, and :class:`~.errors.OutputWriteError` says where.

    Parameters
    ----------
    writes : sequence of (parameter, path, writer)
        ``writer(path)`` writes one output (a file or a folder) at ``path``; what it returns
        is collected.

    Returns
    -------
    list
        What each writer returned, in order.

    Raises
    ------
    OutputWriteError
        Naming each failed output, the operating system's reason, and where its content was
        saved (or that the recovery write failed too).
    """
    results: list[Any] = []
    failed: list[tuple[str, Path, Callable[[Path], Any], OSError]] = []
    for name, path, writer in writes:
        try:
            results.append(writer(path))
        except OSError as exc:
            results.append(None)
            failed.append((name, Path(path), writer, exc))
    if not failed:
        return results
    no_recovery = ""
    try:
        recovery: Path | None = Path(tempfile.mkdtemp(prefix="informer-audit-recovered-"))
    except OSError as mkdtemp_error:
        recovery, no_recovery = None, _reason(mkdtemp_error)
    parts = []
    for i, (name, path, writer, error) in enumerate(failed):
        text = f"cannot write {name} {os.fspath(path)!r}: {_reason(error)}"
        if recovery is None:
            parts.append(f"{text}; its results are lost (no recovery folder: {no_recovery})")
            continue
        saved = recovery / (path.name or "output")
        if saved.exists() or saved.is_symlink():
            saved = recovery / f"{i}-{path.name or 'output'}"
        try:
            writer(saved)
        except OSError as again:
            parts.append(f"{text}; its results are lost (recovery failed: {_reason(again)})")
        else:
            parts.append(f"{text}; its results were saved as {os.fspath(saved)!r}")
    where = f" Recovered results are in {os.fspath(recovery)!r}." if recovery else ""
    raise OutputWriteError("; ".join(parts) + "." + where)


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


__all__ = ["check_outputs", "printable", "safe_child", "safe_filename", "write_outputs"]
