"""Timing on a shared machine: wait for idle CPUs, and redo a run that others disturbed.

Used by the benchmarks (run as scripts, so this module is imported from their folder).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
BUSY = 0.10
"""A timed run during which other processes used more than this share of the CPUs is redone."""
IDLE_WAIT = float(os.environ.get("BENCH_IDLE_WAIT", "90"))
"""Longest wait for idle CPUs before a timed run, in seconds (``BENCH_IDLE_WAIT``; 0 for a
smoke run, whose times then mean little)."""


def _busy_seconds() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot (Linux), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _own_seconds() -> float:
    t = os.times()  # this process, all its threads (ORT's pool included)
    return t.user + t.system


def timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, share of the CPUs other processes used meanwhile, fn's result)."""
    busy, own, start = _busy_seconds(), _own_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    busy_after = _busy_seconds()
    if busy is None or busy_after is None:
        return wall, float("nan"), result
    others = (busy_after - busy) - (_own_seconds() - own)
    return wall, max(0.0, others) / (wall * (os.cpu_count() or 1)), result


def wait_until_idle(limit: float | None = None) -> None:
    """Wait (up to ``limit`` seconds) until other processes leave the CPUs alone for 1 s."""
    deadline = time.monotonic() + (IDLE_WAIT if limit is None else limit)
    while time.monotonic() < deadline:
        _, share, _ = timed(lambda: time.sleep(1.0))
        if not share > BUSY:  # also stops on NaN (no /proc/stat)
            return


def measure(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Time ``fn`` on an idle machine; a run that others disturbed is redone once (min kept)."""
    wait_until_idle()
    wall, share, result = timed(fn)
    if share > BUSY:
        wait_until_idle()
        again = timed(fn)
        if again[0] < wall:
            wall, share, result = again
    return wall, share, result
