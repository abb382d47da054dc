"""Principle: every file the tool parses gives exit 2 and a message naming it, whatever it holds.

Each parsed kind of file (ONNX model, model card, label CSV, monitor JSON, flags CSV) is replaced
by many seeded variants: random bytes, truncations and byte flips of a valid file, valid text of
the wrong kind. Each run must end in exit 0 (a variant that happens to be valid), exit 1 (a
valid label CSV naming an image that is not there: a failure row) or exit 2 with the file's name
in the message; never a traceback (click's runner reports one as exit 1 with an exception that
is not ``SystemExit``). Images are parsed per file in a batch: a bad one is a failure row, which
``test_bad_input.py`` covers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    CARD,
    calibrate,
    calibrate_args,
    flag,
    flag_args,
    invoke,
    labelled_folder,
)

N_VARIANTS = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    e = labelled_folder(tmp_path_factory.mktemp("any-content"), n_val=8, n_audit=2,
                        labels_in_val=False)  # fmt: skip
    e["card"] = e["tmp"] / "card.json"
    e["card"].write_text(json.dumps(CARD))
    e["monitor"] = e["tmp"] / "monitor.json"
    r = calibrate(e, e["monitor"])
    assert r.exit_code == 0, r.output
    e["flags"] = e["tmp"] / "flags.csv"
    r = flag(e, e["flags"])
    assert r.exit_code == 0, r.output
    return e


def variants(valid: bytes, seed: int) -> list[bytes]:
    """Random bytes, truncations, byte flips and wrong-kind texts derived from ``valid``."""
    rng = np.random.default_rng(seed)
    out = [
        b"",
        b"\x00" * 64,
        "é\ud800".encode("utf-8", "surrogatepass"),
        b"[1, 2, 3]",
        b'{"a": ' * 2000,
        b"path\n" + b",".join([b"x"] * 5000),
    ]
    for _ in range(N_VARIANTS):
        out.append(rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes())
        out.append(valid[: int(rng.integers(1, max(2, len(valid))))])
        flipped = bytearray(valid)
        for pos in rng.integers(0, len(valid), int(rng.integers(1, 8))):
            flipped[pos] = int(rng.integers(0, 256))
        out.append(bytes(flipped))
    return out


def _run_info(e: dict[str, Path], f: Path) -> list[Any]:
    return ["info", f, "--model-card", e["card"], "--device", "cpu"]


def _run_card(e: dict[str, Path], f: Path) -> list[Any]:
    return ["info", e["model"], "--model-card", f, "--device", "cpu"]


def _run_labels(e: dict[str, Path], f: Path) -> list[Any]:
    return calibrate_args(e, e["tmp"] / "out" / "m.json", labels=f)


def _run_monitor(e: dict[str, Path], f: Path) -> list[Any]:
    return flag_args(e, e["tmp"] / "out" / "flags.csv", "--restart", monitor=f)


def _run_flags(e: dict[str, Path], f: Path) -> list[Any]:
    return [
        "report",
        f,
        "--monitor",
        e["monitor"],
        "--images",
        e["audit"],
        "-o",
        e["tmp"] / "out" / "report",
    ]


KINDS: dict[str, tuple[str, Callable[[dict[str, Path], Path], list[Any]]]] = {
    "onnx model": ("model", _run_info),
    "model card": ("card", _run_card),
    "label csv": ("labels", _run_labels),
    "monitor json": ("monitor", _run_monitor),
    "flags csv": ("flags", _run_flags),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_any_content_gives_exit_2_naming_the_file_never_a_traceback(
    env: dict[str, Path], kind: str
) -> None:
    key, command = KINDS[kind]
    suffix = env[key].suffix
    valid = env[key].read_bytes()
    for i, data in enumerate(variants(valid, seed=len(kind))):
        f = env["tmp"] / "variants" / f"{kind.replace(' ', '_')}_{i}{suffix}"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(data)
        r = invoke(*command(env, f))
        if r.exit_code == 0:
            continue  # a variant that is still valid (e.g. a flipped byte in a comment)
        assert isinstance(r.exception, SystemExit), (
            f"{kind} variant {i} ({data[:40]!r}...) raised "
            f"{type(r.exception).__name__}: {r.exception}\n{r.output}"
        )
        if r.exit_code == 1 and "failed" in r.output:
            continue  # valid, but names an image that is not there: a failure row, the run ends
        assert r.exit_code == 2, f"{kind} variant {i}: exit {r.exit_code}\n{r.output}"
        assert f.name in " ".join(r.output.split()), f"{kind} variant {i}: {r.output}"
