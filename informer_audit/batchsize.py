"""The batch size of ONNX Runtime runs, chosen for the machine and the model: a short probe.

Images per ``session.run`` never change results (each image's scores are the same in any batch:
the adapters' batch-invariance tests, and bitwise on the reference DenseNet121 on CPU), but they
change the time per image. On a 2-core CPU the reference model's landscape is flat from 8 to 32
(within 1-3% per image, and which size wins moves from day to day), small batches (1-4) and 64
are slower; on a GPU the best batch is far larger. So when no batch size is given,
:func:`choose_batch_size` times a few sizes on the model's own session and input shape, and
departs from the fixed default (:data:`DEFAULT_BATCH`, 32: the *reference*) only where a size
measured clearly faster:

* the ladder of sizes is :data:`CPU_LADDER` (1 ... 64) or :data:`CUDA_LADDER` (1 ... 1024), cut
  where one run's input would exceed :data:`MAX_INPUT_BYTES`; the reference is the largest
  size of the ladder up to 32 (:func:`reference_size`);
* after one untimed warm-up run at the reference (a fresh session's first runs are up to 2x
  slow: threads start, the arena grows), the climb times one run per size up to the reference,
  always,
  and beyond it while the projected cost (the next size's run and its confirming run, priced at
  the fastest time per image so far) keeps the probe within ``budget_s`` (:data:`BUDGET_S`,
  0.4 s): on a 2-core CPU that stops at 32, on a GPU it climbs on;
* when the fastest other size (the *rival*) beat the reference by more than :data:`TIE` (2%),
  both run once more, in the other order, and each keeps its fastest run (noise on a shared
  machine only ever adds time);
* the reference stays unless a size is faster per image by more than :data:`TIE`; among such
  sizes those within :data:`TIE` of the fastest tie, and the largest wins (a real workload
  adds per-batch work the bare session run does not have, which favours larger batches).

So the choice is never a size the probe measured slower than the default, and on a flat
landscape it is the default itself. The probe costs about 64 images' passes on CPU (112 when
a rival is confirmed), 1-3% of a 140-image calibration of the bundled example
(``benchmarks/batch_choice.py``).

A model with a fixed batch axis keeps its batch (no probe). The choice is cached per model,
input shape, device, provider, thread count, ONNX Runtime version and machine (CPU model and
count, GPU name) in ``batch-size.json`` under :func:`cache_dir`, written atomically; a damaged
cache file is ignored with a logged warning, and a cache that cannot be written only costs a
probe next time. A probe during which other processes took more than :data:`BUSY_SHARE` of the
CPUs (Linux: ``/proc/stat``) is used for the run but not cached. In one process the choice is
also kept per model object (:func:`batch_size_for`), so the probe runs at most once per
session. Nothing here prints: the choice is logged, and :meth:`BatchChoice.describe` gives the
words for a run header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .errors import EvaluationError

if TYPE_CHECKING:
    from .model import OnnxClassifier

logger = logging.getLogger(__name__)

CPU_LADDER: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
"""Candidate batch sizes on CPU (in order; the budget usually stops the climb earlier)."""
CUDA_LADDER: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Candidate batch sizes on CUDA."""
BUDGET_S = 0.4
"""Seconds the probe may spend climbing past the reference size (the sizes up to it are always
timed: on a 2-core CPU the budget stops the climb at 32, on a GPU it allows far larger)."""
TIE = 0.02
"""A size replaces the reference only when faster per image by more than this fraction; sizes
within it of the fastest tie (the largest wins)."""
MAX_INPUT_BYTES = 64 * 1024**2
"""Largest input of one probe run: bounds the host memory and the arena a GPU session keeps."""
CACHE_ENV = "INFORMER_AUDIT_CACHE_DIR"
"""Environment variable naming the cache folder; set to an empty string to disable the cache."""
CACHE_FILE = "batch-size.json"
CACHE_SCHEMA = 1
MAX_ENTRIES = 64
"""Entries kept in the cache file (the oldest go first)."""
PROBE_VERSION = 2
"""Part of the cache key: a change of the probe's rules invalidates old choices."""

BUSY_SHARE = 0.25
"""A probe during which other processes used more than this share of the CPUs is not cached:
its timings measure the others' load as much as the sizes (a later run probes again)."""
DEFAULT_BATCH = 32
"""The reference size of the probe (the CLI's former fixed default), and the batch size when
the probe cannot run a single size (the model fails at batch 1)."""


@dataclass(frozen=True)
class BatchChoice:
    """A batch size and how it was chosen.

    Attributes
    ----------
    size : int
        Images per ONNX Runtime run.
    source : str
        ``"given"`` (by the caller), ``"fixed"`` (the model's fixed batch axis), ``"probe"``
        (timed in this run), ``"cache"`` (a probe of an earlier run on this machine) or
        ``"default"`` (the probe could not run a single size; see ``note``).
    probe_seconds : float or None
        Wall time of the probe that chose the size (for ``"cache"``, the earlier probe's).
    seconds_per_image : dict of int to float
        Median seconds per image of each size the probe timed.
    cache_file : Path or None
        Where the choice is cached (``None``: not cached).
    note : str
        Why the cache was not used or written, or why the probe failed ("" when nothing went
        wrong).
    busy : float or None
        Share of the machine's CPUs other processes used during this run's probe (``None``:
        no probe here, or not measurable on this system).
    """

    size: int
    source: str
    probe_seconds: float | None = None
    seconds_per_image: dict[int, float] = field(default_factory=dict)
    cache_file: Path | None = None
    note: str = ""
    busy: float | None = None

    def describe(self) -> str:
        """Words for a run header, e.g. ``"batch size 8 (chosen for this machine: ...)"``."""
        head = f"batch size {self.size}"
        if self.source == "given":
            return f"{head} (given)"
        if self.source == "fixed":
            return f"{head} (the model's fixed batch)"
        if self.source == "default":
            return f"{head} (default; {self.note})"
        sizes = sorted(self.seconds_per_image)
        tried = f"sizes {sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"size {sizes[0]}"
        seconds = f"{self.probe_seconds:.2f} s" if self.probe_seconds is not None else "a"
        if self.source == "cache":
            return f"{head} (chosen for this machine: cached {seconds} probe of {tried})"
        if len(sizes) > 1 and self.size == reference_size(sizes):
            tried += f", none {TIE:.0%} faster than {self.size}"
        cached = "cached" if self.cache_file is not None else "not cached"
        if self.busy is not None and self.busy > BUSY_SHARE:
            cached = f"on a busy machine ({self.busy:.0%} of the CPUs taken by others), not cached"
        return f"{head} (chosen for this machine: {seconds} probe of {tried}, {cached})"


def ladder_for(device: str, image_bytes: int) -> tuple[int, ...]:
    """The candidate sizes for ``device`` whose input stays within :data:`MAX_INPUT_BYTES`.

    Parameters
    ----------
    device : {"cpu", "cuda"}
    image_bytes : int
        Bytes of one model input image.

    Returns
    -------
    tuple of int
        Ascending; at least ``(1,)``.
    """
    ladder = CUDA_LADDER if device == "cuda" else CPU_LADDER
    kept = tuple(b for b in ladder if b * max(image_bytes, 1) <= MAX_INPUT_BYTES)
    return kept or (1,)


class ProbeResult(NamedTuple):
    """What :func:`probe` measured and chose."""

    size: int | None
    """The chosen size; ``None`` when not even the first size ran."""
    seconds_per_image: dict[int, float]
    """Per size timed, the fastest of its runs, in seconds per image."""
    seconds: float
    """Wall time of the probe."""
    note: str
    """The sizes that failed and why ("" when none did)."""


def reference_size(ladder: Sequence[int]) -> int:
    """The size a probe must beat: the largest of ``ladder`` up to :data:`DEFAULT_BATCH`."""
    kept = [b for b in ladder if b <= DEFAULT_BATCH]
    return max(kept) if kept else min(ladder)


def probe(
    run: Callable[[int], Any],
    ladder: Sequence[int],
    *,
    budget_s: float = BUDGET_S,
    tie: float = TIE,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Time ``run(b)`` for the sizes of ``ladder``; keep the default unless one clearly beats it.

    Parameters
    ----------
    run : callable
        ``run(b)`` runs one batch of ``b`` images; an exception stops the climb at the sizes
        that ran (a GPU out of memory, say).
    ladder : sequence of int
        Ascending candidate sizes.
    budget_s : float
        Seconds the probe may spend on sizes above the reference (:func:`reference_size`); the
        sizes up to it are always timed.
    tie : float
        A size is chosen over the reference only when it is faster per image by more than this
        fraction; among such sizes, those within it of the fastest tie and the largest wins.
    clock : callable
        Seconds (injectable for tests).

    Returns
    -------
    ProbeResult
    """
    if not ladder or budget_s <= 0 or not 0 <= tie < 1:
        raise EvaluationError(
            f"probe needs sizes, a positive budget and a tie margin in [0, 1); got ladder "
            f"{list(ladder)}, budget {budget_s}, tie {tie}"
        )
    start = clock()
    times: dict[int, list[float]] = {}
    reference = reference_size(ladder)

    notes: list[str] = []

    def timed(b: int) -> bool:
        """Time one run of ``b``; False (with a note) when it raised."""
        t0 = clock()
        try:
            run(b)
        except Exception as exc:  # ORT raises its own types (out of memory, invalid shape, ...)
            notes.append(f"batch {b} failed ({type(exc).__name__}: {exc})")
            logger.warning("batch-size probe: %s", notes[-1])
            return False
        times.setdefault(b, []).append((clock() - t0) / b)
        return True

    def best() -> float:
        return min(min(ts) for ts in times.values())

    # The reference runs first (ONNX Runtime starts its threads and grows its arena to the
    # largest shape the descent needs; this first run of a fresh session is up to 2x slow) and
    # again last; it keeps the faster of its two runs.
    timed(reference)
    # Down from the reference while the sizes keep up with the fastest so far: the first one
    # slower by more than twice the tie margin ends the descent (smaller sizes only lose more
    # per image: the per-run overhead grows). A size that fails (out of memory) is skipped.
    for b in sorted((c for c in ladder if c < reference), reverse=True):
        if timed(b) and min(times[b]) > best() * (1.0 + 2 * tie):
            break
    # Up from the reference within the budget, two runs per size (a new, larger shape's first
    # run is slow); the fastest time per image so far prices the next size, so a run that
    # others disturbed does not end the climb. The first failure ends it.
    if reference in times:
        for b in (c for c in ladder if c > reference):
            if (clock() - start) + best() * 2 * b > budget_s:
                break
            if not (timed(b) and timed(b)):
                break
        timed(reference)
    seconds = clock() - start
    note = "; ".join(dict.fromkeys(notes))
    if not times:
        return ProbeResult(None, {}, seconds, note)
    fastest = {c: float(min(ts)) for c, ts in sorted(times.items())}
    anchor = reference if reference in fastest else max(fastest)
    beat = [c for c in fastest if c != anchor and fastest[c] < fastest[anchor] * (1.0 - tie)]
    if beat:
        top = min(fastest[c] for c in beat)
        size = max(c for c in beat if fastest[c] <= top * (1.0 + tie))
    else:
        size = anchor
    return ProbeResult(size, fastest, seconds, note)


# -- the cache ----------------------------------------------------------------------------------
def cache_dir() -> Path | None:
    """The cache folder: ``$INFORMER_AUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/informer-audit``,
    else ``~/.cache/informer-audit``; ``None`` when the variable is set but empty (no cache)."""
    if CACHE_ENV in os.environ:
        value = os.environ[CACHE_ENV]
        return Path(value).expanduser() if value else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "informer-audit"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    """NVIDIA GPU models the driver lists (Linux), without starting any CUDA library."""
    names = []
    root = Path("/proc/driver/nvidia/gpus")
    try:
        for info in sorted(root.glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    return names


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_key(model: OnnxClassifier, ladder: Sequence[int], budget_s: float) -> dict[str, Any]:
    """What the best batch size depends on: model, input, device, ONNX Runtime, machine."""
    import onnxruntime as ort

    threads = int(model._session.get_session_options().intra_op_num_threads)
    return {
        "probe": {"version": PROBE_VERSION, "ladder": list(ladder), "budget_s": budget_s},
        "model_sha256": model.sha256,
        "input": [model.input.type, *_input_shape(model)],
        "device": model.device,
        "providers": list(model.providers),
        "threads": threads or "default",
        "onnxruntime": ort.__version__,
        "cpu": _cpu_name(),
        "cpus": _cpu_count(),
        "gpus": _gpu_names() if model.device == "cuda" else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; empty (with a logged warning) for a damaged file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("batch-size cache %s cannot be read (%s); ignored", path, exc)
        return {}
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not (
        isinstance(doc, dict) and doc.get("schema") == CACHE_SCHEMA and isinstance(entries, dict)
    ):
        logger.warning(
            "batch-size cache %s is not a schema-%d cache file; ignored (it is replaced on the "
            "next write)",
            path,
            CACHE_SCHEMA,
        )
        return {}
    return entries


def _cached_choice(entry: Any) -> tuple[int, float | None, dict[int, float]] | None:
    """``(size, probe seconds, seconds per image)`` of a valid entry, else None."""
    if not isinstance(entry, dict):
        return None
    size, seconds, per_image = entry.get("batch_size"), entry.get("probe_seconds"), {}
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    raw = entry.get("seconds_per_image")
    if isinstance(raw, dict):
        for b, t in raw.items():
            if isinstance(b, str) and b.isdigit() and isinstance(t, int | float):
                per_image[int(b)] = float(t)
    return size, float(seconds) if isinstance(seconds, int | float) else None, per_image


def _write_cache(path: Path, digest: str, entry: dict[str, Any]) -> str:
    """Add ``entry`` to the cache file atomically; "" on success, else why it failed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {k: v for k, v in _read_cache(path).items() if k != digest}
        entries[digest] = entry
        for old in list(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
            del entries[old]
        doc = {"schema": CACHE_SCHEMA, "entries": entries}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("batch-size cache %s not written (%s)", path, exc)
        return f"cache not written: {exc}"
    return ""


# -- choosing -----------------------------------------------------------------------------------
def _input_shape(model: OnnxClassifier) -> tuple[int, ...]:
    card = model.card
    h, w = card.image_size
    return (card.channels, h, w) if card.layout == "NCHW" else (h, w, card.channels)


def _session_runner(model: OnnxClassifier, largest: int, seed: int) -> Callable[[int], Any]:
    """``run(b)``: one session run of ``b`` seeded random images of the model's input shape.

    Straight through the model's session (not :meth:`~.model.OnnxClassifier.logits`), so that
    the probe's runs are not counted in ``model.n_forward``.
    """
    from .model import _INPUT_DTYPES

    dtype = _INPUT_DTYPES[model.input.type]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((largest, *_input_shape(model))).astype(dtype)
    session, name, out = model._session, model.input.name, model.output.name

    def run(b: int) -> Any:
        return session.run([out], {name: x[:b]})

    return run


_CHOSEN: weakref.WeakKeyDictionary[Any, BatchChoice] = weakref.WeakKeyDictionary()
"""Per model object, the choice made in this process (a probe runs once per session)."""


def choose_batch_size(
    model: OnnxClassifier,
    given: int | None = None,
    *,
    use_cache: bool = True,
    budget_s: float = BUDGET_S,
    seed: int = 0,
) -> BatchChoice:
    """The batch size for ``model``'s ONNX Runtime runs: ``given``, else chosen (module doc).

    Parameters
    ----------
    model : OnnxClassifier
    given : int, optional
        A batch size the user chose: returned as is (never changed).
    use_cache : bool
        Read and write the cache file (:func:`cache_dir`); the in-process choice per model
        object is reused either way.
    budget_s : float
        The probe's time budget in seconds.
    seed : int
        Seed of the probe's random input images (their values do not matter for the timing).

    Returns
    -------
    BatchChoice

    Raises
    ------
    EvaluationError
        ``given`` is not a positive integer.
    """
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int | np.integer) or given < 1:
            raise EvaluationError(f"batch_size must be a positive integer, got {given!r}")
        return BatchChoice(int(given), "given")
    if model.fixed_batch is not None:
        return BatchChoice(model.fixed_batch, "fixed")
    known = _CHOSEN.get(model)
    if known is not None:
        return known
    image_bytes = int(np.prod(_input_shape(model))) * np.dtype(_dtype(model)).itemsize
    ladder = ladder_for(model.device, image_bytes)
    folder = cache_dir() if use_cache else None
    path = folder / CACHE_FILE if folder is not None else None
    key = machine_key(model, ladder, budget_s)
    digest = _key_hash(key)
    if path is not None:
        cached = _cached_choice(_read_cache(path).get(digest))
        if cached is not None:
            choice = BatchChoice(cached[0], "cache", cached[1], cached[2], path)
            logger.info("%s (%s)", choice.describe(), path)
            _CHOSEN[model] = choice
            return choice
    before = _cpu_seconds()
    size, per_image, seconds, note = probe(
        _session_runner(model, ladder[-1], seed), ladder, budget_s=budget_s
    )
    busy = _others_share(before, _cpu_seconds(), seconds)
    if size is None:
        note = f"the probe failed: {note}"
        return BatchChoice(DEFAULT_BATCH, "default", seconds, {}, None, note)
    written = None
    if busy is not None and busy > BUSY_SHARE:
        why = f"other processes used {busy:.0%} of the CPUs during the probe: not cached"
        logger.warning("batch-size probe: %s", why)
        note = "; ".join(n for n in (note, why) if n)
    elif path is not None:
        entry = {
            "batch_size": size,
            "probe_seconds": round(seconds, 4),
            "seconds_per_image": {str(b): t for b, t in sorted(per_image.items())},
            "key": key,
        }
        why = _write_cache(path, digest, entry)
        note = "; ".join(n for n in (note, why) if n)
        written = None if why else path
    choice = BatchChoice(size, "probe", seconds, per_image, written, note, busy)
    logger.info(
        "%s; seconds per image: %s",
        choice.describe(),
        ", ".join(f"{b}: {t:.4g}" for b, t in sorted(per_image.items())),
    )
    _CHOSEN[model] = choice
    return choice


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU-seconds the machine spent busy since boot, this process's CPU-seconds); Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    own = os.times()  # this process, all its threads (ONNX Runtime's pool included)
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    return busy, own.user + own.system


def _others_share(
    before: tuple[float, float] | None, after: tuple[float, float] | None, seconds: float
) -> float | None:
    """Share of the machine's CPUs that other processes used over ``seconds`` of wall time."""
    if before is None or after is None or seconds <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (seconds * (os.cpu_count() or 1))


def _dtype(model: OnnxClassifier) -> Any:
    from .model import _INPUT_DTYPES

    return _INPUT_DTYPES[model.input.type]


def batch_size_for(model: Any, fallback: int) -> int:
    """The batch size an adapter given none uses: chosen for an :class:`~.model.OnnxClassifier`
    (:func:`choose_batch_size`, once per model object), ``fallback`` for any other model."""
    from .model import OnnxClassifier

    if not isinstance(model, OnnxClassifier):
        return fallback
    return choose_batch_size(model).size


__all__ = [
    "BUDGET_S",
    "CACHE_ENV",
    "BatchChoice",
    "ProbeResult",
    "batch_size_for",
    "cache_dir",
    "choose_batch_size",
    "ladder_for",
    "machine_key",
    "probe",
    "reference_size",
]
