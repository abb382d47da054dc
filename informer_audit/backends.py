"""Where images are scored: in this process (``local``), or on the workers of a Ray cluster.

The local backend is :class:`~.audit.Auditor` itself, and stays the reference. The Ray backend,
:class:`RayAuditor`, is an :class:`~.audit.Auditor` whose :meth:`~RayAuditor.run` scores the
images on a fixed set of stateful Ray actors (Ray Core; not Ray Data) and yields the same
:class:`~.audit.ImageResult` objects, in the same order, so that :func:`~.audit.calibrate`,
:func:`~.audit.flag_folder` and the evaluation run on it unchanged: the driver (this process)
lists and hashes the files, reads the score cache, skips what the journal already has, and is
the only writer of the journal, the cache and every output.

How the work is spread:

- Each worker builds its own ONNX Runtime session once, from the model's bytes (put in the
  object store once: a session cannot be pickled), with ``intra_op_num_threads`` set to the
  worker's CPUs -- ONNX Runtime ignores the ``OMP_NUM_THREADS`` Ray sets and would otherwise
  start a thread per core of the node for every worker. A worker that holds a GPU runs CUDA on
  device 0 of what Ray left visible to it (``CUDA_VISIBLE_DEVICES``).
- One task is one image; its bytes travel with the task, so the workers need no shared file
  system, and write nothing but their private copy of the model. A bounded number of images is
  in flight (``in_flight`` per worker, waited on with ``ray.wait``), and results are handed on
  in input order.
- A worker that dies (killed, out of memory, a crash in a decoder) is restarted by Ray and each
  image it had in flight is sent again alone, to a worker with nothing else in flight; an image
  that kills its worker even then, ``max_task_retries`` more times, becomes a failure row that
  says so. An error raised while scoring one image is that
  image's failure row, as in the local backend; a model or adapter problem stops the run with
  its own error.
- Results do not depend on which worker computed them: every random choice is seeded from the
  image's content, and the scores are batch invariant.

Ray traps handled here (each measured with Ray 2.60):

- ``ray.init()`` with no address silently attaches to a Ray already running on the machine
  (and then refuses ``num_cpus=``). With no ``address`` (and no ``RAY_ADDRESS``) this module
  always starts a new, private local Ray (``address="local"``) and shuts it down at the end.
- Ray's local mode no longer exists: tests run a real local cluster.
- With a small ``/dev/shm`` Ray silently moves the object store to ``/tmp`` (much slower); the
  store's size is set explicitly (``object_store_mb``, default 512 MiB or half the free
  ``/dev/shm``, whichever is smaller).
- Ray's Unix socket paths live under its temporary folder and must stay under 108 bytes: a
  local start uses a short folder of its own (``/tmp/ia-ray-<uid>``), never ``$TMPDIR``.
- A local start writes an authentication token to ``~/.ray/auth_token`` (token
  authentication is on by default for local clusters since Ray 2.59). A private local Ray gets
  a fresh token of this process's own, through ``RAY_AUTH_TOKEN`` in its environment while it
  runs: nothing is written to the home folder. Joining a cluster uses the cluster's own token
  (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as Ray reads it).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import Auditor, ImageResult
from .errors import (
    BackendError,
    EvaluationError,
    InformerAuditError,
    ModelSpecError,
    SaliencyError,
)
from .model import OnnxClassifier

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
"""The values of ``--backend``."""

_FATAL = (ModelSpecError, SaliencyError, EvaluationError)
"""Errors that are the model's or the adapter's, not one image's: they stop the run."""


@dataclass(frozen=True)
class RaySettings:
    """How to reach a Ray cluster and how many workers to run on it.

    Attributes
    ----------
    address : str or None
        A running cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None``
        reads ``RAY_ADDRESS``, and with neither a new local Ray is started with this machine's
        CPUs (and GPUs).
    workers : int or None
        Worker actors; ``None``: as many as the cluster's CPUs (and GPUs, with
        ``gpus_per_worker``) allow.
    cpus_per_worker : int
        CPUs Ray reserves for each worker; also its ONNX Runtime thread count.
    gpus_per_worker : float
        GPUs each worker holds (0: run on the CPU). A worker with a GPU runs CUDA.
    in_flight : int
        Images sent ahead per worker (bounds the driver's memory: image bytes and results).
    object_store_mb : int or None
        Object store size of a local Ray, in MiB (``None``: 512 or half the free ``/dev/shm``).
    max_task_retries : int
        How many times an image that killed its worker while scored alone is sent again before
        its row says so.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    in_flight: int = 2
    object_store_mb: int | None = None
    max_task_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("cpus_per_worker", "in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackendError(
                    f"{name} must be a positive integer, got {value!r}", params=(name,)
                )
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise BackendError(
                f"workers must be a positive integer, got {self.workers!r}", params=("workers",)
            )
        if not (isinstance(self.gpus_per_worker, int | float) and self.gpus_per_worker >= 0):
            raise BackendError(
                f"gpus_per_worker must be a number >= 0, got {self.gpus_per_worker!r}",
                params=("gpus_per_worker",),
            )
        if self.max_task_retries < 0:
            raise BackendError(f"max_task_retries must be >= 0, got {self.max_task_retries!r}")


def import_ray() -> Any:
    """Import Ray, or say how to install it (the ``ray`` extra)."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError(
            "the Ray backend needs Ray: pip install 'informer-audit[ray]' (or pip install ray)",
            params=("backend",),
        ) from exc
    return ray


def _short_temp_dir() -> str:
    """A temporary folder for a local Ray whose socket paths stay far below 108 bytes."""
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return os.path.join(base, f"ia-ray-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


_TOKEN: list[str] = []


def _process_token() -> str:
    """This process's token for the private local Rays it starts (one value: Ray's client
    keeps the first token it read for the life of the process)."""
    if not _TOKEN:
        _TOKEN.append(secrets.token_hex(32))
    return _TOKEN[0]


def _object_store_bytes(mb: int | None) -> int:
    if mb is not None:
        return int(mb) * 1024 * 1024
    want = 512 * 1024 * 1024
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return want
    # Ray's smallest object store is 75 MiB; below that it is the caller's to set.
    return max(80 * 1024 * 1024, min(want, free // 2))


class RayCluster:
    """A connection to Ray for one run: a private local Ray, or a running cluster.

    Use as a context manager: it connects on entry and, on exit, shuts down what it started
    (a private local Ray) or disconnects from a cluster it joined. When this process is
    already connected (``ray.is_initialized()``, a library user's own ``ray.init``), that
    connection is used and left as it is.

    Attributes
    ----------
    description : str
        Which cluster, e.g. ``"a local Ray 2.60.0 started for this run (2 CPUs)"``.
    resources : dict
        The cluster's total resources (``CPU``, ``GPU``, ...).
    """

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self.description = ""
        self.resources: dict[str, float] = {}
        self._owned = False
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> RayCluster:
        ray = import_ray()
        address = self.settings.address or os.environ.get("RAY_ADDRESS") or None
        # Ray's own notices (its token banner, "Started a local Ray instance") are not this
        # run's: errors only. Worker output stays in Ray's logs; errors come back as rows.
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
        if ray.is_initialized():
            where = "the Ray this process is already connected to"
        elif address:
            try:
                ray.init(address=address, **quiet)
            except Exception as exc:  # ConnectionError, RuntimeError, ... from Ray's client
                raise BackendError(
                    f"cannot join the Ray cluster at {address!r}: {type(exc).__name__}: {exc}",
                    params=("address",),
                ) from exc
            self._owned = True
            where = f"the Ray cluster at {address}"
        else:
            # A private cluster: never ray.init() with no address (it would attach to any Ray
            # running here); a per-run token in the environment, not ~/.ray/auth_token.
            for name, value in (
                ("RAY_AUTH_TOKEN", os.environ.get("RAY_AUTH_TOKEN") or _process_token()),
                ("RAY_ADDRESS", None),
            ):
                self._saved_env[name] = os.environ.get(name)
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            try:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    object_store_memory=_object_store_bytes(self.settings.object_store_mb),
                    _temp_dir=_short_temp_dir(),
                    **quiet,
                )
            except Exception as exc:
                self._restore_env()
                raise BackendError(
                    f"cannot start a local Ray: {type(exc).__name__}: {exc}", params=("backend",)
                ) from exc
            self._owned = True
            where = f"a local Ray {ray.__version__} started for this run"
        self.resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus, gpus = self.resources.get("CPU", 0.0), self.resources.get("GPU", 0.0)
        self.description = (
            f"{where} ({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs"
            + (f", {gpus:g} GPUs" if gpus else "")
            + ")"
        )
        return self

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def __exit__(self, *exc_info: object) -> None:
        if self._owned:
            ray = import_ray()
            ray.shutdown()
            self._owned = False
        self._restore_env()

    def worker_count(self, settings: RaySettings | None = None) -> int:
        """The workers to start: as asked, or as many as the cluster's resources allow.

        ``settings``: another worker layout on this cluster (default: the cluster's own).
        """
        s = settings or self.settings
        cpus, gpus = self.resources.get("CPU", 0.0), self.resources.get("GPU", 0.0)
        fit = int(cpus // s.cpus_per_worker)
        if s.gpus_per_worker:
            fit = min(fit, int(gpus // s.gpus_per_worker))
        if s.workers is None:
            if fit < 1:
                raise BackendError(
                    f"{self.description} cannot hold one worker of {s.cpus_per_worker} CPU(s)"
                    + (f" and {s.gpus_per_worker:g} GPU(s)" if s.gpus_per_worker else ""),
                    params=("cpus_per_worker",),
                )
            return fit
        if s.workers > fit:
            raise BackendError(
                f"{s.workers} workers of {s.cpus_per_worker} CPU(s)"
                + (f" and {s.gpus_per_worker:g} GPU(s)" if s.gpus_per_worker else "")
                + f" do not fit on {self.description}: at most {fit}",
                params=("workers",),
            )
        return s.workers


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker needs to build its own auditor (pickled once by Ray)."""

    model_sha256: str
    model_name: str
    card: Mapping[str, Any]
    scorer: Any
    classes: tuple[str, ...]
    keep_maps: bool
    images_per_chunk: int
    device: str
    threads: int


class _Worker:
    """A Ray actor: one ONNX Runtime session and one scorer, built once, scoring image bytes.

    Every call carries ``refs`` (the spec's and the model bytes' object references, in a list so
    that Ray passes the references, not the values); the first call builds the auditor. A worker
    Ray restarted after a death so rebuilds it on its next call, and its constructor holds no
    arguments that could go out of scope (Ray warns about those; ray issue 53727).
    """

    def __init__(self) -> None:
        self.auditor: Auditor | None = None
        self.threads = 0
        self._dir = ""

    def _build(self, refs: list[Any]) -> Auditor:
        if self.auditor is not None:
            return self.auditor
        import ray

        spec, model_files = ray.get(refs)
        # The worker's private copy of the model (ONNX Runtime and onnx read external data
        # from files beside the model); removed when the process ends.
        self._dir = tempfile.mkdtemp(prefix="informer-audit-model-")
        for rel, data in model_files:
            target = Path(self._dir, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        model = OnnxClassifier(
            Path(self._dir, spec.model_name),
            overrides=dict(spec.card),
            device=spec.device,
            threads=spec.threads,
        )
        if model.sha256 != spec.model_sha256:
            raise ModelSpecError(
                f"{spec.model_name}: the worker's copy of the model has SHA-256 {model.sha256}, "
                f"the driver's {spec.model_sha256}: the bytes changed on the way"
            )
        self.threads = spec.threads
        self.auditor = Auditor(
            model,
            spec.scorer,
            list(spec.classes),
            images_per_chunk=spec.images_per_chunk,
            keep_maps=spec.keep_maps,
        )
        return self.auditor

    def info(self, refs: list[Any]) -> dict[str, Any]:
        import ray

        auditor = self._build(refs)
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": auditor.model.device,
            "threads": self.threads,
            "n_forward": auditor.model.n_forward,
        }

    def score(self, refs: list[Any], items: list[tuple[str, str, bytes]]) -> list[ImageResult]:
        return self._build(refs).score_bytes(items)

    def __del__(self) -> None:
        # getattr: Ray's actor class wraps this one, and its handles are never initialised.
        folder = getattr(self, "_dir", "")
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _model_files(model: OnnxClassifier) -> list[tuple[str, bytes]]:
    """The model file and its external data files, relative to the model's folder."""
    root = model.path.parent
    return [(os.path.relpath(p, root), Path(p).read_bytes()) for p in model.files]


class RayAuditor(Auditor):
    """An :class:`~.audit.Auditor` that scores images on the workers of a Ray cluster.

    Parameters
    ----------
    model, scorer, classes, images_per_chunk, keep_maps, cache
        As for :class:`~.audit.Auditor` (the driver's model is used for the checks, the
        binding and the cache keys; the workers build their own copies).
    cluster : RayCluster
        Connected (entered); the workers live until :meth:`close` or the cluster's exit.
    settings : RaySettings, optional
        The workers' layout (count, CPUs, GPUs, in flight, retries); default the cluster's.

    Attributes
    ----------
    n_workers : int
    workers_info : list of dict
        Each worker's process id, node, device, thread count and forward passes so far
        (``pid``, ``node``, ``device``, ``threads``, ``n_forward``), as :meth:`start` found them.
    """

    def __init__(
        self,
        model: OnnxClassifier,
        scorer: Any,
        classes: Sequence[str] | None = None,
        *,
        cluster: RayCluster,
        settings: RaySettings | None = None,
        images_per_chunk: int = 8,
        keep_maps: bool = False,
        cache: Any = None,
    ) -> None:
        super().__init__(
            model,
            scorer,
            classes,
            images_per_chunk=images_per_chunk,
            keep_maps=keep_maps,
            cache=cache,
        )
        self.cluster = cluster
        self.settings = settings or cluster.settings
        self.n_workers = cluster.worker_count(self.settings)
        self.workers_info: list[dict[str, Any]] = []
        self._actors: list[Any] = []
        self._refs: list[Any] = []

    @classmethod
    def from_auditor(
        cls, auditor: Auditor, cluster: RayCluster, settings: RaySettings | None = None
    ) -> RayAuditor:
        """The same audit as ``auditor`` (model, scorer, classes, maps, cache), on Ray."""
        return cls(
            auditor.model,
            auditor.scorer,
            auditor.classes,
            cluster=cluster,
            settings=settings,
            images_per_chunk=auditor.images_per_chunk,
            keep_maps=auditor.keep_maps,
            cache=auditor.cache,
        )

    @property
    def description(self) -> str:
        s = self.settings
        per = f"{s.cpus_per_worker} CPU" + ("s" if s.cpus_per_worker != 1 else "")
        if s.gpus_per_worker:
            per += f" + {s.gpus_per_worker:g} GPU"
        return f"Ray: {self.n_workers} worker(s) of {per} on {self.cluster.description}"

    # -- the workers ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (once) and wait until each has built its session."""
        if self._actors:
            return
        ray = import_ray()
        s = self.settings
        files = ray.put(_model_files(self.model))
        spec = _WorkerSpec(
            model_sha256=self.model.sha256,
            model_name=self.model.path.name,
            card=self.model.card.to_dict(),
            scorer=self.scorer,
            classes=tuple(self.classes),
            keep_maps=self.keep_maps,
            images_per_chunk=self.images_per_chunk,
            device="cuda" if s.gpus_per_worker else "cpu",
            threads=s.cpus_per_worker,
        )
        actor = ray.remote(
            num_cpus=s.cpus_per_worker,
            num_gpus=s.gpus_per_worker,
            max_restarts=-1,
            max_task_retries=0,  # resent by run(), alone, to find the image that kills it
        )(_Worker)
        self._refs = [ray.put(spec), files]
        self._actors = [actor.remote() for _ in range(self.n_workers)]
        try:
            self.workers_info = ray.get([a.info.remote(self._refs) for a in self._actors])
        except Exception as exc:
            cause = _cause(exc)
            self.close()
            if isinstance(cause, InformerAuditError):
                raise cause from exc
            raise ModelSpecError(
                f"{self.model.path}: the Ray workers could not build the model: "
                f"{type(cause).__name__}: {cause}"
            ) from exc

    def close(self) -> None:
        """Stop the workers (the cluster stays up)."""
        if not self._actors:
            return
        ray = import_ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception as exc:  # already gone
                logger.debug("ray.kill of a worker failed: %s", exc)
        self._actors, self._refs = [], []

    def worker_info(self) -> list[dict[str, Any]]:
        """Each running worker's ``workers_info`` entry now (for benchmarks, tests, diagnostics)."""
        ray = import_ray()
        return list(ray.get([a.info.remote(self._refs) for a in self._actors]))

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [int(i["pid"]) for i in self.worker_info()]

    # -- scoring ------------------------------------------------------------------------------
    def run(
        self,
        items: Iterable[tuple[str, Path]],
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Score ``(key, path)`` items on the workers; yields one result per item, in order.

        When a worker dies, Ray restarts it, and each image it had in flight is sent again
        *alone* (to a worker with nothing else in flight, which takes nothing else until it is
        done): an image that kills its worker even then is the culprit, and after
        ``max_task_retries`` more deaths its row says so; the images that only shared its
        worker are scored as if nothing had happened.
        """
        ray = import_ray()
        self.start()
        window = self.n_workers * self.settings.in_flight
        done: dict[int, ImageResult] = {}
        pending: dict[Any, _Task] = {}  # ObjectRef -> the task
        load = [0] * len(self._actors)  # images in flight per worker
        alone: deque[_Task] = deque()  # images to send again, each on a worker of its own
        exclusive: set[int] = set()  # workers scoring one of those
        source = iter(items)
        exhausted = False
        sent = emitted = 0

        def submit(task: _Task, w: int) -> None:
            load[w] += 1
            task.worker = w
            if task.alone:
                exclusive.add(w)
            item = (task.result.key, str(task.path), task.data)
            pending[self._actors[w].score.remote(self._refs, [item])] = task

        def shared_worker() -> int | None:
            free = [w for w in range(len(load)) if w not in exclusive]
            return min(free, key=load.__getitem__) if free else None

        while True:
            while alone:
                idle = next((w for w in range(len(load)) if load[w] == 0), None)
                if idle is None:
                    break
                submit(alone.popleft(), idle)
            # New images only while none waits to be sent alone (so that workers drain).
            while not exhausted and not alone and sent - emitted < window:
                w = shared_worker()
                if w is None:
                    break
                try:
                    key, path = next(source)
                except StopIteration:
                    exhausted = True
                    break
                task = self._prepare(sent, key, Path(path))
                sent += 1
                if task.data is None:
                    done[task.seq] = task.result
                else:
                    submit(task, w)
            while emitted in done:
                r = done.pop(emitted)
                emitted += 1
                if on_result is not None:
                    on_result(r)
                yield r
            if not pending:
                if exhausted and not alone:
                    return
                continue
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                load[task.worker] -= 1
                exclusive.discard(task.worker)
                if self._collect(ray, ref, task):
                    done[task.seq] = task.result
                else:
                    task.alone = True
                    alone.append(task)

    def _prepare(self, seq: int, key: str, path: Path) -> _Task:
        """The task of one image: from the cache, a read failure, or its bytes to send."""
        r = ImageResult(key, path)
        document = self._cache_document(path)
        if document is not None and self.cache is not None and not self.keep_maps:
            if self._from_cache(self.cache, r, document):
                return _Task(seq, r, path, None, None)
        # The same messages as load_image's, so that a failure row reads the same either way.
        if not path.is_file():
            r.error = f"{path}: file not found"
            return _Task(seq, r, path, None, None)
        try:
            data = path.read_bytes()
        except OSError as exc:
            r.error = f"{path}: cannot read or convert the image: {exc}"
            return _Task(seq, r, path, None, None)
        return _Task(seq, r, path, data, document)

    def _collect(self, ray: Any, ref: Any, task: _Task) -> bool:
        """Take a finished task's result, or its failure, into ``task.result``.

        False: its worker died; send the image again, alone.
        """
        try:
            [scored] = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            task.attempts += 1
            if task.alone:
                task.deaths += 1
            retries = self.settings.max_task_retries
            if task.deaths <= retries and task.attempts <= retries + _UNAVAILABLE_RESENDS:
                logger.info("%s: its Ray worker died (%s); sending it again", task.result.key, exc)
                return False
            task.result.error = (
                f"the Ray worker scoring this image died {task.deaths} time(s) with no other "
                f"image in flight ({type(exc).__name__}): the image crashes the decoder or the "
                "runtime, or needs more memory than the worker has"
            )
            logger.warning("%s: %s", task.result.key, task.result.error)
            return True
        except ray.exceptions.RayTaskError as exc:
            cause = _cause(exc)
            if isinstance(cause, _FATAL):
                raise cause from exc
            task.result.error = f"scoring failed: {type(cause).__name__}: {cause}"
            return True
        scored.path = task.path
        task.result = scored
        if scored.ok and task.document is not None and self.cache is not None:
            self._to_cache(self.cache, scored, task.document)
        task.data = None  # free the bytes now
        return True


_UNAVAILABLE_RESENDS = 3
"""Resends beyond ``max_task_retries`` for an image whose worker was lost while it waited with
others (a worker restarting, a node leaving): deaths with the image alone count apart."""


@dataclass
class _Task:
    seq: int
    result: ImageResult
    path: Path
    data: bytes | None
    document: str | None
    worker: int = -1
    alone: bool = False  # sent again after a worker death, on a worker of its own
    attempts: int = 0  # sends that ended in a worker's death
    deaths: int = 0  # of those, sends on a worker of its own


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor constructor raised, unwrapped from Ray's error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _cause(cause)
    return exc


__all__ = ["BACKENDS", "RayAuditor", "RayCluster", "RaySettings", "import_ray"]
