"""Per-image score cache: never recompute a saliency map (or TTA spread) already computed.

An entry holds the few arrays that one image gave for one model, one preprocessing, one set of
audited classes and one scoring method with its settings (e.g. the logits, the K x K
cosine-distance matrix and ``d`` for INFORMER). Its key is the SHA-256 of a canonical JSON
document (sorted keys, no whitespace) of

* ``model_sha256``: the model file's fingerprint;
* ``image_sha256``: the SHA-256 of the image file's bytes (not of its path: a renamed or
  copied file is still a hit, an edited one is a miss);
* ``kind``: what was computed (:attr:`.scorers.Scorer.cache_kind`: ``"informer"``, ``"tta"``
  or ``"probs"`` for the built-in methods);
* ``settings``: the settings that change the result (:meth:`.scorers.Scorer.cache_settings`:
  an adapter's :meth:`~.saliency.SaliencyAdapter.settings`, :func:`~.baselines.tta_settings`);
* ``classes``: the audited classes, in order;
* ``preprocessing``: the model card (a model without metadata can be given other cards);
* ``format``: :data:`CACHE_FORMAT`, so that a change of layout never reads old entries.

The execution device is not part of the key: CPU and GPU compute the same function, up to
float rounding.

Entries are small ``.npz`` files (``numpy.savez``, float64 arrays plus the key document as a
unicode array), read with ``allow_pickle=False``: nothing is ever unpickled. They live in
``DIR/<first two hex digits>/<key>.npz`` and are written atomically (a temporary file in the
same folder, then ``os.replace``), so a reader sees a whole entry or none. An entry that cannot
be read, whose stored key document differs, or whose arrays have unexpected names, shapes or
non-finite values is a miss (logged as a warning) and is overwritten by the next store; a store
that fails (disk full, read-only folder) is logged and the run goes on. Writes are not fsynced:
after a crash an entry is either whole or reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .fileio import content_sha256, plain_json

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the entry layout; part of every key."""

KINDS = ("informer", "tta", "probs")
"""What the built-in methods' entries hold: INFORMER scores, a TTA spread, or the logits alone.
A registered scorer may name another kind."""

_KEY_ARRAY = "_key"
_CHUNK = 1 << 20


def key_document(
    *,
    model_sha256: str,
    image_sha256: str,
    kind: str,
    settings: Mapping[str, Any],
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
) -> str:
    """The canonical JSON document a cache key is the hash of (see the module docstring).

    Raises
    ------
    ValueError
        For a ``kind`` that is not a non-empty name, or settings that JSON cannot hold (NaN,
        objects).
    """
    if not (isinstance(kind, str) and kind.isidentifier()):
        raise ValueError(f"cache kind must be a name such as {list(KINDS)}, got {kind!r}")
    doc = {
        "format": CACHE_FORMAT,
        "model_sha256": str(model_sha256),
        "image_sha256": str(image_sha256),
        "kind": kind,
        "settings": plain_json(settings),
        "classes": [str(c) for c in classes],
        "preprocessing": plain_json(preprocessing),
    }
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def cache_key(**fields: Any) -> str:
    """SHA-256 (hex) of :func:`key_document` of the same keyword arguments."""
    return hashlib.sha256(key_document(**fields).encode("ascii")).hexdigest()


class ScoreCache:
    """A folder of per-image score entries.

    Parameters
    ----------
    directory : path
        Created on the first store.

    Attributes
    ----------
    directory : Path
    n_corrupt : int
        Entries found unreadable or inconsistent so far (each was treated as a miss).
    n_write_errors : int
        Stores that failed so far (each was logged and skipped).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.n_corrupt = 0
        self.n_write_errors = 0

    def path(self, document: str) -> Path:
        """Where the entry of a key document lives."""
        key = hashlib.sha256(document.encode("ascii")).hexdigest()
        return self.directory / key[:2] / f"{key}.npz"

    def get(
        self, document: str, expected: Mapping[str, tuple[int, ...]]
    ) -> dict[str, NDArray[np.float64]] | None:
        """The arrays stored under a key document, or ``None`` (a miss).

        Parameters
        ----------
        document : str
            :func:`key_document` of the entry.
        expected : mapping of str to tuple of int
            The array names the entry must hold and the shape of each, e.g.
            ``{"logits": (K,), "dist": (K, K), "d": (K,)}``.

        Returns
        -------
        dict of str to ndarray (float64, shapes as ``expected``), or None
            ``None`` when there is no entry, and (after a warning) when the entry is corrupt
            or does not hold exactly the expected finite arrays.
        """
        path = self.path(document)
        if not path.is_file():
            return None
        names: set[str] = set()
        stored: str | None = None
        arrays: dict[str, NDArray[np.float64]] = {}
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                stored = str(npz[_KEY_ARRAY]) if _KEY_ARRAY in names else None
                arrays = {
                    name: np.asarray(npz[name], dtype=np.float64)
                    for name in expected
                    if name in names
                }
        except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            # TypeError: a plain .npy file where an .npz belongs (no context manager).
            why = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            why = self._inconsistency(document, expected, names, stored, arrays)
        if why:
            self.n_corrupt += 1
            logger.warning("score cache entry %s ignored (recomputed): %s", path, why)
            return None
        return arrays

    @staticmethod
    def _inconsistency(
        document: str,
        expected: Mapping[str, tuple[int, ...]],
        names: set[str],
        stored: str | None,
        arrays: Mapping[str, NDArray[np.float64]],
    ) -> str:
        """Why a readable entry cannot be used ("" when it can)."""
        if stored != document:
            return "its stored key differs from the one asked for"
        if names != {*expected, _KEY_ARRAY}:
            return f"holds arrays {sorted(names - {_KEY_ARRAY})}, expected {sorted(expected)}"
        for name, shape in expected.items():
            arr = arrays[name]
            if arr.shape != tuple(shape):
                return f"array {name!r} has shape {arr.shape}, expected {tuple(shape)}"
            if not np.isfinite(arr).all():
                return f"array {name!r} has non-finite values"
        return ""

    def put(self, document: str, arrays: Mapping[str, NDArray[np.floating]]) -> bool:
        """Store arrays under a key document, atomically; replaces an existing entry.

        Parameters
        ----------
        document : str
            :func:`key_document` of the entry.
        arrays : mapping of str to ndarray
            Stored as float64; names must not start with an underscore.

        Returns
        -------
        bool
            Whether the entry was written (a failure is logged, never raised).
        """
        bad = [name for name in arrays if not name or name.startswith("_")]
        if bad:
            raise ValueError(f"cache array names must not start with '_', got {bad}")
        path = self.path(document)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it normal permissions
                payload: dict[str, Any] = {
                    name: np.asarray(a, dtype=np.float64) for name, a in arrays.items()
                }
                payload[_KEY_ARRAY] = np.asarray(document)  # a unicode array: no pickle
                np.savez(fh, **payload)
            os.replace(tmp, path)
            return True
        except OSError as exc:
            self.n_write_errors += 1
            logger.warning("score cache: could not store %s (%s); going on without it", path, exc)
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)  # only left when the write or the rename failed


__all__ = ["CACHE_FORMAT", "KINDS", "ScoreCache", "cache_key", "content_sha256", "key_document"]
