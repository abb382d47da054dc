"""File plumbing shared by every module that writes or fingerprints files.

Atomic writes (a reader sees the old file or the whole new one, never a part), content hashes,
and the one canonical JSON text that hashes and journals are computed from. Nothing here knows
about monitors, journals or caches; they all import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def sha256_files(paths: Sequence[str | Path]) -> str:
    """SHA-256 (hex) over the bytes of ``paths`` in the given order.

    Raises
    ------
    OSError
        When a file cannot be read.
    """
    digest = hashlib.sha256()
    for p in paths:
        with Path(p).open("rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of one file's bytes; raises ``OSError`` when it cannot be read."""
    return sha256_files([path])


def plain_json(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, tuples to lists, keys to str."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def canonical_json(doc: Any) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN: one text per document.

    Raises
    ------
    ValueError
        For NaN or infinite numbers; ``TypeError`` for values JSON cannot hold.
    """
    return json.dumps(
        plain_json(doc), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def sha256_json(doc: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of ``doc``."""
    return hashlib.sha256(canonical_json(doc).encode("ascii")).hexdigest()


def fsync_folder(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp(path: Path, data: bytes, suffix: str = ".tmp") -> Path:
    """Write ``data`` to a new, fsynced temporary file beside ``path`` (same filesystem, so
    a rename onto ``path`` is atomic) with normal permissions; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and a rename."""
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "canonical_json",
    "content_sha256",
    "fsync_folder",
    "plain_json",
    "sha256_files",
    "sha256_json",
    "write_temp",
]
