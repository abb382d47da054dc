"""The resume journal of a ``flag`` run: finished rows survive ``kill -9`` and are never redone.

Beside the flags CSV ``OUT`` a run keeps ``OUT.journal``, a JSON-lines file (UTF-8, ASCII
escapes, one object per line):

* line 1, the header: ``{"format": "informer-audit-flag-journal", "version": 1,
  "fingerprint": <hex>, "settings": {...}}``. ``settings`` holds everything that changes a
  row (the flags CSV's columns, the monitor binding -- model SHA-256, classes, preprocessing,
  saliency or method settings -- the monitor's thresholds and the tool version) and
  ``fingerprint`` is the SHA-256 of its canonical JSON (sorted keys, no whitespace);
* then one record per scored image, appended as it finishes: ``{"image_sha256": <SHA-256 of
  the file's bytes>, "path": <its path then>, "cells": [...]}``, where ``cells`` are the exact
  CSV cells of its row after the path (``"ok"``, ``""``, then the values as written).

Images are identified by their bytes, not their names: a moved, renamed or copied image whose
bytes are in the journal reuses its row under its current path. Failed images are not recorded,
so a rerun tries them again (the file may have been fixed since).

Durability: each record is one ``write`` of one whole line followed by ``flush``, so once
:meth:`FlagJournal.append` returns the record is in the kernel and killing the process
(``kill -9``) cannot lose it. The file is ``fsync``-ed every ``sync_every`` records (the
caller passes one chunk of images) and when the run ends: a power cut loses at most the rows
of the last chunk, which costs far less than the one ``fsync`` per image it would take to
lose nothing (an image takes tens of milliseconds or more to score; an ``fsync`` a few on a
disk, and the same for a chunk of rows as for one).

Reading back: a last line without its newline (a write torn by ``kill -9`` or a power cut) is
cut off before anything is appended; any other line that is not a valid record (NUL bytes
after a power cut, a line edited by hand) is skipped with a warning. Only the header decides
whether the journal belongs to this run.

The journal is locked (``flock``, where the platform has it) while a run writes it, so two
runs with the same output refuse rather than interleave.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .binding import differences
from .errors import ResumeError
from .fileio import canonical_json, fsync_folder, plain_json, sha256_json

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

JOURNAL_FORMAT = "informer-audit-flag-journal"
JOURNAL_VERSION = 1
JOURNAL_SUFFIX = ".journal"
"""``OUT.journal`` sits beside the flags CSV ``OUT``."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RECORD_KEYS = frozenset({"image_sha256", "path", "cells"})


def journal_path(out_csv: str | Path) -> Path:
    """The journal of a flags CSV: ``OUT.journal`` in the same folder."""
    out = Path(out_csv)
    return out.with_name(out.name + JOURNAL_SUFFIX)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of a run's settings."""
    return sha256_json(settings)


class FlagJournal:
    """Open (resume or start) the journal of one ``flag`` output; a context manager.

    Parameters
    ----------
    path : path
        The journal file (:func:`journal_path` of the flags CSV).
    settings : mapping
        Everything that changes a row; stored in the header and fingerprinted.
    n_cells : int
        Cells per record: the CSV's number of columns minus the path.
    restart : bool
        Discard an existing journal instead of resuming it.
    sync_every : int
        ``fsync`` after this many appended records (and in :meth:`sync`, :meth:`close`).

    Attributes
    ----------
    fingerprint : str
    n_resumable : int
        Distinct images whose rows were found in an existing journal.
    n_skipped_lines : int
        Lines of an existing journal that were not valid records (skipped, and a torn last
        line cut off).
    discarded : int
        Records of an existing journal that ``restart`` threw away.

    Raises
    ------
    ResumeError
        The file exists but is not a journal, was written by another version, or by a run
        with other settings (the message names the first setting that differs); or another
        run holds its lock.
    """

    def __init__(
        self,
        path: str | Path,
        settings: Mapping[str, Any],
        n_cells: int,
        *,
        restart: bool = False,
        sync_every: int = 8,
    ) -> None:
        self.path = Path(path)
        self.settings = plain_json(settings)
        self.fingerprint = settings_fingerprint(self.settings)
        self.n_cells = int(n_cells)
        self.sync_every = max(1, int(sync_every))
        self.n_resumable = 0
        self.n_skipped_lines = 0
        self.discarded = 0
        self._index: dict[str, tuple[int, int]] = {}
        self._unsynced = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+b": every write goes to the end whatever the read position.
        self._fh: IO[bytes] | None = self.path.open("a+b")
        try:
            self._lock()
            self._size = self._load(restart)
        except BaseException:
            self._fh.close()
            self._fh = None
            raise

    # -- opening ------------------------------------------------------------------------------
    def _lock(self) -> None:
        if sys.platform == "win32":
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ResumeError(
                f"{self.path}: another informer-audit run is writing this journal (it is "
                "locked); wait for that run to end, or choose another output file"
            ) from exc
        except OSError:
            logger.warning("%s: cannot lock the journal (file system without locks)", self.path)

    def _load(self, restart: bool) -> int:
        """Read an existing journal (or start one); returns the file size to append at."""
        fh = self._file
        fh.seek(0)
        header = fh.readline()
        if not header.endswith(b"\n"):
            # No journal, or only a header torn mid-write: nothing was recorded yet.
            return self._start()
        if restart:
            self.discarded = sum(1 for line in fh if line.strip())
            return self._start()
        self._check_header(header)
        offset = len(header)
        while line := fh.readline():
            if not line.endswith(b"\n"):
                logger.warning(
                    "%s: cut off a torn last line of %d bytes (the run was killed mid-write)",
                    self.path,
                    len(line),
                )
                self.n_skipped_lines += 1
                fh.truncate(offset)
                fh.flush()
                os.fsync(fh.fileno())
                break
            record = self._parse(line)
            if record is None:
                self.n_skipped_lines += 1
                logger.warning("%s: skipped a damaged line at byte %d", self.path, offset)
            else:
                self._index[record["image_sha256"]] = (offset, len(line))
            offset += len(line)
        self.n_resumable = len(self._index)
        return offset

    def _start(self) -> int:
        fh = self._file
        fh.truncate(0)
        header = {
            "format": JOURNAL_FORMAT,
            "version": JOURNAL_VERSION,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
        }
        line = (canonical_json(header) + "\n").encode("ascii")
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
        fsync_folder(self.path.parent)
        return len(line)

    def _check_header(self, line: bytes) -> None:
        restart = "pass restart=True to discard it and start over"
        try:
            header = json.loads(line)
        except (ValueError, RecursionError):  # bad UTF-8/JSON, deep nesting
            header = None
        if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
            raise ResumeError(
                f"{self.path}: not an informer-audit flag journal (its first line is not a "
                f'header with "format": "{JOURNAL_FORMAT}"); move it away, or {restart}',
                params=("restart",),
            )
        if header.get("version") != JOURNAL_VERSION:
            raise ResumeError(
                f"{self.path}: journal version {header.get('version')!r} is not the one this "
                f"informer-audit writes ({JOURNAL_VERSION}); {restart}",
                params=("restart",),
            )
        if header.get("fingerprint") == self.fingerprint:
            return
        diffs = differences(header.get("settings"), self.settings)
        what = (
            f"{diffs[0][0] or 'settings'} is {_short(diffs[0][1])} there but "
            f"{_short(diffs[0][2])} for this run"
            + (f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else "")
            if diffs
            else "its fingerprint differs"
        )
        raise ResumeError(
            f"{self.path}: an interrupted flag run with other settings left this journal: "
            f"{what}. Rerun with that run's model, monitor and options to finish it, or {restart}",
            params=("restart",),
        )

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """A valid record, or ``None``."""
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # bad UTF-8/JSON, deep nesting
            return None
        if not isinstance(record, dict) or set(record) != _RECORD_KEYS:
            return None
        sha, path, cells = record["image_sha256"], record["path"], record["cells"]
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha) and isinstance(path, str)):
            return None
        if not isinstance(cells, list) or len(cells) != self.n_cells or cells[:2] != ["ok", ""]:
            return None
        if not all(isinstance(c, str) for c in cells):
            return None
        return record

    # -- use ----------------------------------------------------------------------------------
    @property
    def _file(self) -> IO[bytes]:
        if self._fh is None:
            raise ValueError(f"{self.path}: the journal is closed")
        return self._fh

    def __contains__(self, image_sha256: object) -> bool:
        return image_sha256 in self._index

    def __len__(self) -> int:
        return len(self._index)

    def append(self, image_sha256: str, path: str, cells: Sequence[str]) -> None:
        """Record one scored image's row (flushed at once; ``fsync``-ed per ``sync_every``).

        Parameters
        ----------
        image_sha256 : str
            SHA-256 (hex) of the image file's bytes.
        path : str
            The image's path as the CSV writes it (kept for people reading the journal).
        cells : sequence of str, length ``n_cells``
            The row's cells after the path, exactly as the CSV writes them.
        """
        cells = [str(c) for c in cells]
        if len(cells) != self.n_cells:
            raise ValueError(f"a journal record needs {self.n_cells} cells, got {len(cells)}")
        record = {"image_sha256": image_sha256, "path": path, "cells": cells}
        line = (canonical_json(record) + "\n").encode("ascii")
        fh = self._file
        fh.write(line)
        fh.flush()
        self._index[image_sha256] = (self._size, len(line))
        self._size += len(line)
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.sync()

    def cells(self, image_sha256: str) -> list[str]:
        """The recorded cells of an image (read back from the file: nothing is kept in memory).

        Raises
        ------
        KeyError
            When the image has no record.
        """
        offset, length = self._index[image_sha256]
        fh = self._file
        fh.seek(offset)
        record = self._parse(fh.read(length))
        if record is None or record["image_sha256"] != image_sha256:
            raise ResumeError(f"{self.path}: the record at byte {offset} changed while in use")
        return list(record["cells"])

    def sync(self) -> None:
        """``fsync`` what was appended."""
        if self._fh is not None and self._unsynced:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """``fsync``, unlock and close; the journal stays for a later run to resume."""
        if self._fh is None:
            return
        try:
            self.sync()
        finally:
            self._fh.close()  # closing releases the lock
            self._fh = None

    def remove(self) -> None:
        """Delete the journal (its run is complete and its output written), then close it."""
        self.path.unlink(missing_ok=True)
        fsync_folder(self.path.parent)
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FlagJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_SUFFIX",
    "JOURNAL_VERSION",
    "FlagJournal",
    "canonical_json",
    "fsync_folder",
    "journal_path",
    "settings_fingerprint",
]
