"""Class saliency maps on disk, saved at ``flag`` time so that a report need not recompute them.

A maps folder holds ``manifest.json`` (what the maps are valid for: the model's SHA-256, the
audited classes, the saliency settings) and one compressed ``.npz`` file per scored image::

    maps/
      manifest.json
      3f0c9a...e1.npz      # sha256 of the image's CSV path, never the file's own name

File names are the first 32 hex digits of the SHA-256 of the image's ``path`` as the flags CSV
writes it, so a name taken from the audited folder can never steer where a file is written, and
the report finds an image's maps from its CSV row alone. Each file holds

* ``key`` -- the CSV path (a 0-d unicode array: no pickle);
* ``image_sha256`` -- SHA-256 of the image file's bytes when it was scored ("" if unknown);
* ``maps`` -- float16, shape (K, ...): each class map divided by its largest absolute value,
  so half precision keeps about three significant digits of every map whatever its scale;
* ``scale`` -- float64, shape (K,): those largest absolute values (0 for a zero map);
* ``dist`` -- float64, shape (K, K): the cosine distances computed from the full-precision maps;
* ``d`` -- float64, shape (K,): class distinctiveness.

Files are read with ``allow_pickle=False`` and written through a temporary file and a rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .binding import check_binding
from .errors import MapStoreError, MonitorMismatchError
from .fileio import atomic_write_text
from .paths import printable, safe_child

logger = logging.getLogger(__name__)

MAPS_FORMAT = "informer-audit-maps"
MAPS_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
BOUND_FIELDS = ("model_sha256", "audited_classes", "saliency")
"""Fields of a monitor binding that a maps folder records and is checked against."""


def map_file_name(key: str) -> str:
    """The file name of an image's maps: 32 hex digits of the SHA-256 of its CSV path.

    The path is taken as the CSV shows it (:func:`~.paths.printable`: the bytes of a file name
    that is not UTF-8 as ``\\xNN`` escapes), so ``flag`` and ``report`` name the same file.
    """
    return hashlib.sha256(printable(key).encode("utf-8")).hexdigest()[:32] + ".npz"


@dataclass(frozen=True)
class StoredMaps:
    """One image's maps as read back from a maps folder.

    Attributes
    ----------
    key : str
        The image's ``path`` in the flags CSV (:func:`~.paths.printable`).
    image_sha256 : str
        SHA-256 of the image file when it was scored ("" when unknown).
    maps : ndarray, shape (K, ...), float64
        The class maps (half-precision mantissas times the per-class scale).
    dist : ndarray, shape (K, K), float64
    d : ndarray, shape (K,), float64
    """

    key: str
    image_sha256: str
    maps: NDArray[np.float64]
    dist: NDArray[np.float64]
    d: NDArray[np.float64]


def _bound(binding: Mapping[str, Any]) -> dict[str, Any]:
    missing = [f for f in BOUND_FIELDS if f not in binding]
    if missing:
        raise MapStoreError(
            f"a binding for saved maps needs {list(BOUND_FIELDS)}; missing {missing}"
        )
    return {f: binding[f] for f in BOUND_FIELDS}


class MapStore:
    """A maps folder: :meth:`create` one to write into, :meth:`open` one to read.

    Parameters
    ----------
    directory : path
    binding : mapping
        What the maps are valid for (:data:`BOUND_FIELDS` of a monitor binding).
    """

    def __init__(self, directory: str | Path, binding: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        self.binding = _bound(binding)

    @classmethod
    def create(cls, directory: str | Path, binding: Mapping[str, Any]) -> MapStore:
        """Prepare ``directory`` for writing maps bound to ``binding``.

        A folder that already holds maps of the same model, classes and saliency settings is
        reused (a rerun overwrites each image's file); one holding maps of anything else is
        refused, so that maps of two runs never mix.

        Raises
        ------
        MonitorMismatchError
            The folder holds maps made with another model, class list or saliency settings.
        MapStoreError
            The folder holds a manifest that cannot be read.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise MapStoreError(
                f"{directory}: expected a folder for the saliency maps, found a file"
            )
        store = cls(directory, binding)
        manifest = directory / MANIFEST
        if manifest.exists():
            found = cls.open(directory)
            check_binding(found.binding, store.binding, source=f"maps folder {directory}")
            return store
        directory.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": MAPS_FORMAT,
            "schema_version": MAPS_SCHEMA_VERSION,
            "binding": store.binding,
            "files": "one <sha256(path)[:32]>.npz per image: key, image_sha256, maps (float16, "
            "per-class scaled), scale, dist, d",
        }
        atomic_write_text(manifest, json.dumps(doc, indent=2) + "\n")
        return store

    @classmethod
    def open(cls, directory: str | Path) -> MapStore:
        """Open a maps folder written by :meth:`create` and :meth:`save`.

        Raises
        ------
        MapStoreError
            No folder, no manifest, or a manifest of another format or schema version.
        """
        directory = Path(directory)
        manifest = directory / MANIFEST
        if not directory.is_dir():
            raise MapStoreError(f"{directory}: maps folder not found")
        if not manifest.is_file():
            raise MapStoreError(
                f"{directory}: not a maps folder (no {MANIFEST}); expected the folder given to "
                "flag_folder(maps_dir=...)"
            )
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise MapStoreError(f"{manifest}: cannot read the maps manifest: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != MAPS_FORMAT:
            raise MapStoreError(f'{manifest}: expected "format": "{MAPS_FORMAT}"')
        if doc.get("schema_version") != MAPS_SCHEMA_VERSION:
            raise MapStoreError(
                f"{manifest}: maps schema_version {doc.get('schema_version')!r} is not supported; "
                f"expected {MAPS_SCHEMA_VERSION}"
            )
        binding = doc.get("binding")
        if not isinstance(binding, dict):
            raise MapStoreError(f"{manifest}: the manifest has no 'binding' object")
        return cls(directory, binding)

    def check(self, binding: Mapping[str, Any], source: str = "monitor") -> None:
        """Refuse maps made for another model, class list or saliency settings than ``binding``."""
        try:
            check_binding(self.binding, _bound(binding), source=f"maps folder {self.directory}")
        except MonitorMismatchError as exc:
            raise MonitorMismatchError(f"{exc} (checked against {source})") from None

    def path_for(self, key: str) -> Path:
        """Where the maps of the image with CSV path ``key`` are (or go)."""
        return safe_child(self.directory, map_file_name(key))

    def save(
        self,
        key: str,
        maps: NDArray[np.floating],
        dist: NDArray[np.floating],
        d: NDArray[np.floating],
        image_sha256: str = "",
    ) -> Path:
        """Write one image's maps (atomically).

        Parameters
        ----------
        key : str
            The image's ``path`` in the flags CSV.
        maps : ndarray, shape (K, ...)
        dist : ndarray, shape (K, K)
        d : ndarray, shape (K,)
        image_sha256 : str
        """
        maps = np.asarray(maps, dtype=np.float64)
        k = len(self.binding["audited_classes"])
        if maps.ndim < 2 or maps.shape[0] != k or not np.isfinite(maps).all():
            raise MapStoreError(
                f"{key}: expected finite maps of shape ({k}, ...), got {maps.shape}"
            )
        scale = np.abs(maps.reshape(k, -1)).max(axis=1)
        safe = np.where(scale > 0, scale, 1.0).reshape((k,) + (1,) * (maps.ndim - 1))
        target = self.path_for(key)
        fd, tmp = tempfile.mkstemp(prefix=".maps.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(
                    fh,
                    key=np.array(printable(key)),
                    image_sha256=np.array(image_sha256),
                    maps=(maps / safe).astype(np.float16),
                    scale=scale,
                    dist=np.asarray(dist, dtype=np.float64),
                    d=np.asarray(d, dtype=np.float64),
                )
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, key: str) -> StoredMaps | None:
        """One image's maps, or ``None`` when the folder has none for ``key``.

        Raises
        ------
        MapStoreError
            The file exists but is damaged, or holds another image's maps.
        """
        path = self.path_for(key)
        if not path.is_file():
            return None
        k = len(self.binding["audited_classes"])
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_key = str(npz["key"])
                image_sha256 = str(npz["image_sha256"])
                mantissa = np.asarray(npz["maps"], dtype=np.float64)
                scale = np.asarray(npz["scale"], dtype=np.float64)
                dist = np.asarray(npz["dist"], dtype=np.float64)
                d = np.asarray(npz["d"], dtype=np.float64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise MapStoreError(f"{path}: cannot read saved maps for {key!r}: {exc}") from exc
        if stored_key != printable(key):
            raise MapStoreError(f"{path}: holds the maps of {stored_key!r}, not of {key!r}")
        if (
            mantissa.ndim < 2
            or mantissa.shape[0] != k
            or scale.shape != (k,)
            or dist.shape != (k, k)
            or d.shape != (k,)
        ):
            raise MapStoreError(
                f"{path}: saved maps of {key!r} have unexpected shapes (maps {mantissa.shape}, "
                f"scale {scale.shape}, dist {dist.shape}, d {d.shape}) for {k} classes"
            )
        maps = mantissa * scale.reshape((k,) + (1,) * (mantissa.ndim - 1))
        return StoredMaps(stored_key, image_sha256, maps, dist, d)


__all__ = ["MAPS_FORMAT", "MapStore", "StoredMaps", "map_file_name"]
