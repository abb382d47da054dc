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
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from .errors import SaliencyError
from .progress import Progress

if TYPE_CHECKING:
    from .model import OnnxClassifier

logger = logging.getLogger(__name__)

ProgressCallback = Progress
"""The :class:`~.progress.Progress` protocol; adapters call ``progress(done, total)`` with counts
of forward passes (or other work units) and no stage."""


@dataclass(frozen=True)
class AdapterOption:
    """One setting of an adapter as a front end offers it (the CLI makes an option of it).

    Adapters list theirs in :attr:`SaliencyAdapter.options`, so that a front end needs no list of
    its own and a third-party adapter's settings reach it like the built-ins'.

    Attributes
    ----------
    flag : str
        Command-line spelling, e.g. ``"--patch-size"``; unique across adapters, except that
        adapters may share one option object (e.g. :data:`ORT_BATCH_SIZE`).
    param : str
        The keyword of the adapter's ``__init__`` the value goes to (``"patch_size"``).
    type : type or callable
        ``int``, ``float``, ``str``, ``pathlib.Path`` (an existing file), or a converter from the
        text given to the value, raising :class:`ValueError` with the expected form.
    help : str
        One line; says the adapter's default in brackets, e.g. ``"patch side in model pixels
        [16]."`` (the front end prefixes the adapter's name).
    default : object, optional
        Value passed when the option is not given; ``None`` (the usual case): nothing is passed
        and the adapter's own default applies.
    choices : tuple of str, optional
    min : float, optional
        Smallest accepted value (inclusive) of an ``int`` or ``float`` option.
    init : bool
        False for an option the front end consumes itself instead of passing it to
        ``__init__`` (the gradient adapter's torch checkpoint, from which the front end builds
        the ``module``).
    """

    flag: str
    param: str
    type: Any = str
    help: str = ""
    default: Any = None
    choices: tuple[str, ...] | None = None
    min: float | None = None
    init: bool = True


ORT_BATCH_SIZE = AdapterOption(
    "--batch-size",
    "batch_size",
    int,
    "images per ONNX Runtime run (does not change results).",
    default=32,
    min=1,
)
"""The batch size of the score-only adapters (fd, lime): images per ONNX Runtime run."""


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
    options: ClassVar[tuple[AdapterOption, ...]] = ()
    """The settings a front end offers, each an :class:`AdapterOption` (none by default)."""

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


def adapter_options() -> dict[str, tuple[AdapterOption, tuple[str, ...]]]:
    """Every registered adapter's options by flag, each with the adapters that take it.

    An option that another adapter declares differently under the same flag is left out (and
    logged): a plug-in cannot change a built-in's option.
    """
    found: dict[str, tuple[AdapterOption, tuple[str, ...]]] = {}
    for name, cls in available_adapters().items():
        for option in cls.options:
            known = found.get(option.flag)
            if known is None:
                found[option.flag] = (option, (name,))
            elif known[0] == option:
                found[option.flag] = (option, (*known[1], name))
            else:
                logger.warning(
                    "saliency adapter %s: option %s is taken by %s; left out",
                    name,
                    option.flag,
                    ", ".join(known[1]),
                )
    return found


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
