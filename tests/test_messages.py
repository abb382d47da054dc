"""Library messages name parameters, not CLI flags; the CLI adds the flag spelling.

An error or warning lists the parameters its message names in ``params``; the CLI appends
``(command line: --flag)`` from one mapping (:func:`informer_audit.cli.options.flags_for`).
"""

from __future__ import annotations

import ast
import inspect
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

import informer_audit.errors as errors
from conftest import calibrate, flag, invoke, labelled_folder
from informer_audit.cli import cli
from informer_audit.cli.options import LIBRARY_NAMES, flags_for
from informer_audit.journal import journal_path
from informer_audit.modelcard import CARD_FIELDS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*(ROOT / "informer_audit").glob("*.py"), *(ROOT / "adapters").glob("*.py")])
FLAG = re.compile(r"--[a-z]")
# Documented exceptions: command lines of other tools (pip), which the user types as they are.
ALLOWED = re.compile(r"pip install[^`;)]*")
STARRED = {"missing": CARD_FIELDS}
"""``params=(..., *NAME)`` at a raise site -> the names NAME can hold (modelcard: the fields)."""


def _docs_and_declarations(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are documentation or AdapterOption declarations."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))  # docstrings, attribute docstrings
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "AdapterOption":
                skip.update(id(n) for n in ast.walk(node))
    return skip


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docs_and_declarations(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value  # f-strings' literal parts are Constants too


def test_no_library_message_spells_a_cli_flag() -> None:
    assert len(LIBRARY) > 30
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in LIBRARY
        for line, text in _strings(path)
        if FLAG.search(ALLOWED.sub("", text))
    ]
    assert not found, "\n".join(found)


def test_the_scan_sees_flags_in_messages_and_skips_documentation(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        '"""Module doc: --doc."""\n'
        'A = AdapterOption("--patch-size", "patch_size", int, "help with --x.")\n'
        'def f(n):\n    """--doc"""\n    raise ValueError(f"use --patch-size {n}")\n'
        'B = "pip install --no-deps onnx2torch"\n'
    )
    hits = [t for _, t in _strings(path) if FLAG.search(ALLOWED.sub("", t))]
    assert hits == ["use --patch-size "]


def _raised_params() -> dict[str, list[str]]:
    """Every name given in a ``params=(...)`` keyword in the library -> where."""
    names: dict[str, list[str]] = {}
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "params" or not isinstance(kw.value, ast.Tuple | ast.IfExp):
                    continue
                for elt in ast.walk(kw.value):
                    if isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
                        given = list(STARRED[elt.value.id])
                    elif isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                        given = [elt.value]
                    else:
                        continue
                    for name in given:
                        names.setdefault(name, []).append(f"{path.name}:{node.lineno}")
    return names


def _commands() -> Iterator[tuple[click.Command, click.Context]]:
    """Every command of the informer-audit CLI, with a context to read its options."""
    root = click.Context(cli, info_name="informer-audit")

    def walk(
        group: click.Group, parent: click.Context
    ) -> Iterator[tuple[click.Command, click.Context]]:
        for name, command in group.commands.items():
            ctx = click.Context(command, info_name=name, parent=parent)
            yield command, ctx
            if isinstance(command, click.Group):
                yield from walk(command, ctx)

    yield from walk(cli, root)


def _long_options(command: click.Command, ctx: click.Context) -> set[str]:
    return {o for p in command.get_params(ctx) if isinstance(p, click.Option) for o in p.opts}


def test_every_param_an_error_names_is_a_cli_option() -> None:
    raised = _raised_params()
    assert {"device", "restart", "patch_size", "step", "num_samples", "saliency"} <= set(raised)
    unmapped = []
    for name, sites in sorted(raised.items()):
        flags = set()
        for command, ctx in _commands():
            given = flags_for((name,), ctx)
            assert set(given) <= _long_options(command, ctx), (name, command.name, given)
            flags.update(given)
        if not flags:
            unmapped.append(f"{name} ({', '.join(sites)})")
    assert not unmapped, f"params no option of any command sets: {unmapped}"


def test_library_names_point_at_real_options() -> None:
    dests = {p.name for command, ctx in _commands() for p in command.get_params(ctx)}
    stale = {d for ds in LIBRARY_NAMES.values() for d in ds} - dests
    assert not stale


def test_maps_dir_is_per_command() -> None:
    by_name = {command.name: ctx for command, ctx in _commands()}
    assert flags_for(("maps_dir",), by_name["report"]) == ["--maps"]
    assert flags_for(("maps_dir",), by_name["flag"]) == ["--save-maps"]
    assert flags_for(("output",), by_name["info"]) == ["--output-kind"]  # not -o/--output
    assert flags_for(("step", "device"), by_name["calibrate"]) == ["--fd-step", "--device"]
    assert flags_for(("no_such_param",), by_name["calibrate"]) == []


def _classes(base: type) -> list[type]:
    return [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, base)]


@pytest.mark.parametrize(
    "cls",
    _classes(errors.InformerAuditError) + _classes(errors.InformerAuditWarning),
    ids=lambda c: c.__name__,
)
def test_every_error_and_warning_class_takes_params(cls: type) -> None:
    plain = cls("what came; expected this")
    assert str(plain) == "what came; expected this" and plain.params == ()
    named = cls("device='cuda': no GPU", params=["device"])
    assert str(named) == "device='cuda': no GPU" and named.params == ("device",)
    assert isinstance(named, Exception) and named.args == ("device='cuda': no GPU",)
    again: Any = pickle.loads(pickle.dumps(named))
    assert type(again) is cls and str(again) == str(named) and again.params == ("device",)
    with pytest.raises(cls) as info:
        raise cls("x", params=("restart",))
    assert info.value.params == ("restart",)


# -- the CLI appends the flags ----------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return labelled_folder(tmp_path_factory.mktemp("messages"))


def test_cli_hint_device(env: dict[str, Path], onnx_providers: Callable[[str], None]) -> None:
    onnx_providers("cpu-build")
    r = invoke("info", env["model"], "--device", "cuda")
    assert r.exit_code == 3, r.output
    assert "error: device='cuda': this ONNX Runtime build has no CUDAExecutionProvider" in r.output
    assert r.output.rstrip().endswith("or use device='cpu' (command line: --device)")


def test_cli_hint_restart(env: dict[str, Path], tmp_path: Path) -> None:
    monitor = tmp_path / "monitor.json"
    assert calibrate(env, monitor).exit_code == 0
    out = tmp_path / "f.csv"
    journal_path(out).write_text("path,status\nsomething else\n")
    r = flag(env, out, monitor=monitor)
    assert r.exit_code == 2, r.output
    assert "pass restart=True to discard it and start over (command line: --restart)" in r.output


def test_cli_hint_patch_size(env: dict[str, Path], tmp_path: Path) -> None:
    r = calibrate(env, tmp_path / "m.json", saliency=("--patch-size", 16))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "error: fd: patch_size 16 covers the whole 16x16 model input" in text
    assert text.endswith("e.g. patch_size=8) (command line: --patch-size)")


def test_cli_hint_on_a_warning(env: dict[str, Path], tmp_path: Path) -> None:
    lime = ("--saliency", "lime", "--lime-samples", 20, "--lime-seed", 1)
    r = calibrate(env, tmp_path / "m.json", saliency=lime)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning: lime: num_samples 20 is below 100" in text
    assert "use num_samples=250 or more (command line: --lime-samples)" in text
