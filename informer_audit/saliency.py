"""Class saliency maps: the adapter interface and the registry by name.

An adapter turns a batch of preprocessed images into one saliency map per class. It needs some
level of access to the model (scores only, or the differentiable graph) and has one verb,
:meth:`SaliencyAdapter.explain`. Adapters register by name with :func:`register_adapter`; the
CLI's ``--saliency`` choices come from :func:`available_adapters`. The built-in adapters live in
:mod:`informer_audit.adapters`; a third-party package adds one by exposing it under the entry-point
group ``informer_audit.adapters``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from .errors import SaliencyError

if TYPE_CHECKING:
    from .model import OnnxClassifier

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with counts of forward passes (or other work units)."""


class SaliencyAdapter(ABC):
    """One way of computing class-specific saliency maps.

    Subclasses set :attr:`name` and :attr:`access`, take their settings as keyword arguments in
    ``__init__`` (validated there) and implement :meth:`explain`.
    """

    name: ClassVar[str]
    """Registry name (the ``--saliency`` choice)."""
    access: ClassVar[str]
    """What the adapter needs from the model: ``"scores"`` or ``"graph"``."""
    invariant_params: ClassVar[frozenset[str]] = frozenset({"batch_size"})
    """Settings that do not change the maps (left out of :meth:`settings`)."""

    @abstractmethod
    def explain(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        *,
        logits: NDArray[np.float64] | None = None,
        progress: ProgressCallback | None = None,
    ) -> NDArray[np.float64]:
        """Saliency maps of every model output for a batch of images.

        Parameters
        ----------
        model : OnnxClassifier
        x : ndarray, shape (N, C, H, W), float32
            Preprocessed model input (NCHW, as :meth:`OnnxClassifier.preprocess` returns it).
        logits : ndarray, shape (N, K), optional
            The model's logits for ``x``, when the caller has them already.
        progress : callable, optional

        Returns
        -------
        ndarray, shape (N, K, ...), float64
            One map per image and model output; the trailing shape is the adapter's.
        """

    def check(self, model: OnnxClassifier) -> None:  # noqa: B027  (optional hook, no-op)
        """Refuse or warn about settings that this model makes meaningless, before any image.

        Called once by the auditor. Raise :class:`~.errors.SaliencyError` when the maps could
        not carry class distinctiveness at all (e.g. a single patch); warn with
        :class:`~.errors.MeaninglessSettingWarning` when they would be poorly determined. The
        default accepts everything.
        """

    def params(self) -> dict[str, Any]:
        """All settings, JSON-ready."""
        return dict(self._params)

    def settings(self) -> dict[str, Any]:
        """The settings a monitor is bound to: name plus the parameters that change maps."""
        return {
            "name": self.name,
            **{k: v for k, v in sorted(self._params.items()) if k not in self.invariant_params},
        }

    _params: dict[str, Any]


A = TypeVar("A", bound=type[SaliencyAdapter])

_REGISTRY: dict[str, type[SaliencyAdapter]] = {}
_loaded = False


def register_adapter(cls: A) -> A:
    """Class decorator: make an adapter available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise SaliencyError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise SaliencyError(
            f"saliency adapter name {name!r} is taken by {existing.__module__}.{existing.__name__}"
        )
    _REGISTRY[name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import informer_audit.adapters  # noqa: F401  (registers the built-in adapters)

    for ep in entry_points(group="informer_audit.adapters"):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not break the tool
            logger.warning("could not load saliency adapter plug-in %s: %s", ep.name, exc)


def available_adapters() -> dict[str, type[SaliencyAdapter]]:
    """Registered adapters by name (built-in and plug-ins), sorted by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_adapter(name: str, **params: Any) -> SaliencyAdapter:
    """Instantiate the adapter registered as ``name`` with its settings."""
    adapters = available_adapters()
    if name not in adapters:
        raise SaliencyError(f"unknown saliency adapter {name!r}; choose one of {list(adapters)}")
    return adapters[name](**params)


def adapter_from_settings(settings: dict[str, Any], **extra: Any) -> SaliencyAdapter:
    """Rebuild an adapter from :meth:`SaliencyAdapter.settings` (e.g. from a monitor file)."""
    params = {k: v for k, v in settings.items() if k != "name"}
    params.update({k: v for k, v in extra.items() if v is not None})
    name = settings.get("name")
    if not isinstance(name, str):
        raise SaliencyError(f"saliency settings without a 'name': {settings}")
    try:
        return get_adapter(name, **params)
    except TypeError as exc:
        raise SaliencyError(
            f"saliency settings {settings} do not fit adapter {name!r}: {exc}"
        ) from exc
