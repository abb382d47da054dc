"""Labels CSV files as text tables: reading, format detection, NIH file-name lookup.

:mod:`.labels` turns a table into a label matrix; this module only reads the file (every cell
as stripped text, columns addressed by position), guesses its layout from the header, and finds
NIH's bare file names under an images folder.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .errors import LabelFormatError

logger = logging.getLogger(__name__)


class LabelTable:
    """A CSV read as text: header names plus cells addressed by column position.

    Columns are addressed by position so that a repeated header name is only an error when that
    name is actually used.
    """

    def __init__(self, source: Path, names: list[str], frame: pd.DataFrame) -> None:
        self.source = source
        self.names = names
        self._frame = frame
        self.n_rows = len(frame)

    @classmethod
    def read(cls, source: Path) -> LabelTable:
        expect = "expected a CSV file with a header row and at least one data row"
        if not source.exists():
            raise LabelFormatError(f"{source}: labels file not found; {expect}")
        if not source.is_file():
            raise LabelFormatError(f"{source}: not a file; {expect}")
        try:
            # header=None keeps repeated header names apart (pandas would rename them silently).
            raw = pd.read_csv(
                source, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig"
            )
        except pd.errors.EmptyDataError as exc:
            raise LabelFormatError(f"{source}: the file is empty; {expect}") from exc
        except (ValueError, UnicodeError) as exc:  # pandas' ParserError is a ValueError
            raise LabelFormatError(f"{source}: cannot be parsed as CSV ({exc}); {expect}") from exc
        except OSError as exc:
            raise LabelFormatError(f"{source}: cannot be read ({exc}); {expect}") from exc
        # Rows shorter than the header come back as NaN: treat those cells as blank.
        raw = raw.fillna("")
        names = [str(v).strip() for v in raw.iloc[0].tolist()]
        frame = raw.iloc[1:].reset_index(drop=True)
        if frame.empty:
            raise LabelFormatError(f"{source}: the file has a header but no data rows; {expect}")
        return cls(source, names, frame)

    def find(self, name: str) -> int | None:
        """Position of column ``name``: exact match, else a unique case-insensitive one."""
        exact = [i for i, n in enumerate(self.names) if n == name]
        if not exact:
            exact = [i for i, n in enumerate(self.names) if n.casefold() == name.casefold()]
        if len(exact) > 1:
            raise LabelFormatError(
                f"{self.source}: column {name!r} appears {len(exact)} times in the header "
                f"({quoted(self.names[i] for i in exact)}); expected it once"
            )
        return exact[0] if exact else None

    def cells(self, pos: int, rows: NDArray[np.intp]) -> NDArray[np.object_]:
        """Stripped text of column ``pos`` at data rows ``rows`` (0-based), shape (len(rows),)."""
        column = self._frame.iloc[:, pos].tolist()
        return np.array([str(column[r]).strip() for r in rows], dtype=object).reshape(-1)

    def where(self, row: int, key: str | None = None) -> str:
        """Human reference to 0-based data row ``row``: 1-based data row number and path."""
        return f"data row {row + 1}" + (f" (path {key!r})" if key else "")


def detect_format(names: Sequence[str]) -> str:
    """``"nih"``, ``"chexpert"`` or ``"plain"``, from the header names."""
    present = set(names)
    if {"Image Index", "Finding Labels"} <= present:
        return "nih"
    if {"Path", "Frontal/Lateral"} <= present:
        return "chexpert"
    return "plain"


def format_hint(detected: str, used: str) -> str:
    """A note for messages when the format used is not the one the header suggests."""
    if detected == used:
        return ""
    return f" (the columns look like the {detected!r} format)"


class NihLookup:
    """Finds NIH file names directly in ``root`` or, failing that, anywhere below it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, list[Path]] | None = None

    def resolve(self, key: str) -> Path:
        direct = self.root / key
        if direct.is_file():
            return direct
        if self._index is None:
            self._index = self._build()
        hits = self._index.get(Path(key).name, [])
        if len(hits) > 1:
            raise LabelFormatError(
                f"the file name {Path(key).name!r} occurs {len(hits)} times under {self.root} "
                f"({quoted(str(h) for h in hits)}); expected it once (point the images folder "
                "at one copy)"
            )
        # Not found: keep the direct path, so the image stage records it as missing.
        return hits[0] if hits else direct

    def _build(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = {}
        seen: set[str] = set()
        # Links are followed (image folders are often linked in), with a guard against cycles.
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            subfolders.sort()
            for name in sorted(files):
                index.setdefault(name, []).append(Path(folder) / name)
        logger.debug("indexed %d file names under %s", len(index), self.root)
        return index


def normalise(name: str) -> str:
    """Lower case, letters and digits only: ``"Pleural_Effusion"`` -> ``"pleuraleffusion"``."""
    return re.sub(r"[\W_]+", "", name.casefold())


def quoted(items: Iterable[str]) -> str:
    """``'a', 'b'``: names for a message."""
    return ", ".join(repr(str(i)) for i in items)


__all__ = ["LabelTable", "NihLookup", "detect_format", "format_hint", "normalise", "quoted"]
