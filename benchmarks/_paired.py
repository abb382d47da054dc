"""Interleaved rounds and paired ratios: how the benchmarks decide on a noisy, shared machine.

Each round runs every compared side, in an order that alternates between rounds (A B C,
C B A, A B C, ...), so that a drift of the machine's load hits every side alike; each timed run
waits for idle CPUs and is redone once if other processes used them (``_quiet.measure``). With
``repeats`` > 1 a side is run that many times back to back within its turn and the fastest run
is kept: noise on a shared machine only ever adds time (another process's burst, a frequency
drop), so the minimum of a few back-to-back runs is the least disturbed estimate of the work's
cost, and it halves the round-to-round spread of the ratios on these machines. A comparison is
the ratio of two sides within each round, and the verdict is taken on the median of those paired
ratios, printed with their spread: one disturbed round cannot decide it.

Used by the benchmarks (run as scripts, so this module is imported from their folder).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _quiet import BUSY, measure, timed


@dataclass
class Rounds:
    """Wall seconds (and other processes' CPU share) of each side, one entry per round."""

    seconds: dict[str, list[float]]
    shares: list[float]
    results: dict[str, Any]

    def ratios(self, a: str, b: str) -> list[float]:
        """Per round, seconds of ``a`` / seconds of ``b``."""
        return [x / y for x, y in zip(self.seconds[a], self.seconds[b], strict=True)]

    def median(self, side: str) -> float:
        return float(statistics.median(self.seconds[side]))

    @property
    def busiest(self) -> float:
        """Largest share of the CPUs other processes used during a kept run."""
        finite = [s for s in self.shares if s == s]
        return max(finite) if finite else float("nan")


Timer = Callable[[Callable[[], Any]], tuple[float, float, Any]]


def best_of(
    fn: Callable[[], Any], repeats: int, *, first: Timer = measure, again: Timer = timed
) -> tuple[float, float, Any]:
    """The fastest of ``repeats`` back-to-back runs of ``fn``: ``(wall, share, result)``.

    The first run is timed by ``first`` (waits for idle CPUs, redone once if disturbed), the
    others by ``again`` straight after it; a run during which other processes took more than
    ``_quiet.BUSY`` of the CPUs is kept only if every run was disturbed.
    """
    runs = [first(fn)] + [again(fn) for _ in range(max(1, repeats) - 1)]
    quiet = [r for r in runs if not r[1] > BUSY] or runs
    return min(quiet, key=lambda r: r[0])


def interleave(
    sides: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    repeats: int = 1,
    timer: Timer = measure,
    again: Timer = timed,
) -> Rounds:
    """Run every side once per round (best of ``repeats``), the order reversed every other round.

    Returns
    -------
    Rounds
        ``results`` holds each side's return value from its first round.
    """
    names = list(sides)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    shares: list[float] = []
    results: dict[str, Any] = {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, share, result = best_of(sides[name], repeats, first=timer, again=again)
            seconds[name].append(wall)
            shares.append(share)
            results.setdefault(name, result)
    return Rounds(seconds, shares, results)


@dataclass(frozen=True)
class Spread:
    """Median and range of paired per-round ratios."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    def text(self, digits: int = 3) -> str:
        """``0.712 (rounds 0.705-0.731, n=3)``."""
        lo, hi = min(self.values), max(self.values)
        return (
            f"{self.median:.{digits}f} (rounds {lo:.{digits}f}-{hi:.{digits}f}, "
            f"n={len(self.values)})"
        )


def result_line(
    name: str, figure: float, unit: str, op: str, target: float, digits: int = 3
) -> str:
    """The last line: ``RESULT <name> <figure> <unit> target <op> <value> PASS|FAIL``."""
    shown = round(figure, digits)  # the verdict is on the figure as printed
    ok = shown <= target if op == "<=" else shown >= target
    return (
        f"RESULT {name} {figure:.{digits}f} {unit} target {op} {target:.2f} "
        f"{'PASS' if ok else 'FAIL'}"
    )


def describe_machine() -> str:
    """``host <CPU model>, <n> CPUs, <OS>; Python, ONNX Runtime and numpy versions``.

    The first line of each recorded benchmark, so that a figure names the machine it came from.
    """
    import platform

    import numpy as np
    import onnxruntime as ort

    from informer_audit.batchsize import _cpu_count, _cpu_name  # the probe's cache key uses them

    cpu, cpus = _cpu_name(), _cpu_count()
    return (
        f"host         {cpu}, {cpus} CPUs, {platform.system()} {platform.machine()}; "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__} "
        f"({', '.join(ort.get_available_providers())}), numpy {np.__version__}"
    )
