"""Security: no pickle, no network at run time, no write outside the chosen output folder."""

from __future__ import annotations

import ast
import csv
import os
import subprocess
from pathlib import Path

import pytest

from conftest import (
    CLI_MAIN,
    REPO,
    calibrate_args,
    flag_args,
    labelled_folder,
    run_python,
    write_images,
)
from informer_audit.errors import OutputPathError
from informer_audit.paths import printable, safe_child, safe_filename

SOURCES = sorted([*(REPO / "informer_audit").rglob("*.py"), *(REPO / "adapters").rglob("*.py")])


# -- no pickle ----------------------------------------------------------------------------------
def _call_name(node: ast.Call) -> str:
    """Dotted name of the called function, e.g. "np.load", "pickle.loads", "read_pickle"."""
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword_is(node: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in node.keywords
    )


def unsafe_loads(path: Path) -> list[str]:
    """Calls in a source file that could unpickle: where, and what."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        where = f"{path}:{node.lineno} {name}"
        last = name.rsplit(".", 1)[-1]
        if name.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}:
            if last in {"load", "loads", "Unpickler", "open"}:
                found.append(where)
        elif last in {"read_pickle", "Unpickler"}:
            found.append(where)
        elif name in {"np.load", "numpy.load"} and not _keyword_is(node, "allow_pickle", False):
            found.append(where + " without allow_pickle=False")
        elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append(where + " without weights_only=True")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, numpy as np, torch, pandas as pd\n"
        "pickle.loads(b'')\n"
        "np.load('a.npz')\n"
        "np.load('a.npz', allow_pickle=True)\n"
        "torch.load('w.pt')\n"
        "torch.load('w.pt', weights_only=False)\n"
        "pd.read_pickle('x')\n"
        "np.load('ok.npz', allow_pickle=False)\n"
        "torch.load('ok.pt', map_location='cpu', weights_only=True)\n"
    )
    found = unsafe_loads(bad)
    assert [f.split(" ", 1)[0].rsplit(":", 1)[1] for f in found] == ["2", "3", "4", "5", "6", "7"]


def test_no_pickle_anywhere_in_the_package() -> None:
    assert len(SOURCES) > 20
    problems = [p for path in SOURCES for p in unsafe_loads(path)]
    assert problems == []
    # ... and no file enables pickle by any other spelling.
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert "allow_pickle=True" not in text, path
        assert "weights_only=False" not in text, path


# -- no network at run time ---------------------------------------------------------------------
SITECUSTOMIZE = """
import os
import socket

_LOG = os.environ["IA_NET_LOG"]
with open(_LOG, "a") as fh:
    fh.write("sockets blocked\\n")


def _refuse(*args, **kwargs):
    with open(_LOG, "a") as fh:
        fh.write(f"network access attempted: {args!r}\\n")
    raise OSError("network access is blocked in this test")


class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _refuse(*args)


socket.socket = _NoSocket
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
socket.socketpair = _refuse
"""


def test_cli_runs_with_sockets_blocked(tmp_path: Path) -> None:
    e = labelled_folder(tmp_path, n_val=8, n_audit=0, label_seed=0)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {"IA_NET_LOG": str(log), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": None}

    def run(*args: object) -> subprocess.CompletedProcess:
        # From tmp_path: the installed informer_audit, not the source folder (editable or not).
        return run_python("-c", CLI_MAIN, *args, cwd=tmp_path, env=env, timeout=300)

    probe = run_python(
        "-c", "import socket; socket.create_connection(('127.0.0.1', 9))", cwd=tmp_path, env=env
    )
    assert probe.returncode != 0 and "network access is blocked" in probe.stderr
    calibrate = run(*calibrate_args(e, tmp_path / "m.json", "--cache", tmp_path / "cache"))
    assert calibrate.returncode == 0, calibrate.stderr + calibrate.stdout
    flag = run(
        *flag_args(e, tmp_path / "flags.csv", "--with-matrix", monitor=tmp_path / "m.json",
                   images=e["val"])
    )  # fmt: skip
    assert flag.returncode == 0, flag.stderr + flag.stdout
    assert (tmp_path / "flags.csv").is_file()
    attempts = log.read_text().splitlines()
    assert attempts.count("sockets blocked") == 3  # the probe and both commands ran blocked
    # The one attempt is the probe's: calibrate and flag made none.
    assert [a for a in attempts if a != "sockets blocked"] == [
        "network access attempted: (('127.0.0.1', 9),)"
    ]


# -- output paths -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["report.html", "maps/x.png", "./a.json", "a..b.json", "a/./b.png", "...", "é.png"],
)
def test_safe_child_accepts_names_inside(tmp_path: Path, name: str) -> None:
    assert safe_child(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "empty"),
        ("  ", "empty"),
        ("..", "'..' component"),
        ("../x.png", "'..' component"),
        ("a/../../x.png", "'..' component"),
        ("a/../b.png", "'..' component"),
        ("/etc/passwd", "absolute path"),
        ("C:\\x.png", "backslash"),
        ("C:x.png", "absolute path"),
        ("\\\\host\\share\\x.png", "backslash"),
        ("a\\b.png", "backslash"),
        ("x\x00.png", "NUL byte"),
        (".", "the output folder itself"),
    ],
)
def test_safe_child_refuses_names_that_leave_the_folder(
    tmp_path: Path, name: str, why: str
) -> None:
    with pytest.raises(OutputPathError, match="refused to write") as info:
        safe_child(tmp_path, name)
    assert why in str(info.value)


def test_safe_child_follows_symbolic_links(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "inside").mkdir(parents=True)
    elsewhere.mkdir()
    try:
        (out / "escape").symlink_to(elsewhere)
        (out / "alias").symlink_to(out / "inside")
    except OSError as exc:  # pragma: no cover - platforms without symlinks
        pytest.skip(f"cannot create a symlink here: {exc}")
    with pytest.raises(OutputPathError, match="outside the output folder"):
        safe_child(out, "escape/x.png")
    assert safe_child(out, "alias/x.png") == out / "alias" / "x.png"


@pytest.mark.parametrize(
    "text",
    ["scans/a/x.png", "../../etc/passwd", "/abs/x.dcm", "a b\n,c.png", os.fsdecode(b"\xff.png")],
)
def test_safe_filename_is_flat_unique_and_accepted(tmp_path: Path, text: str) -> None:
    name = safe_filename(text, ".png")
    assert "/" not in name and "\\" not in name and name.endswith(".png")
    assert safe_child(tmp_path, name) == tmp_path / name
    name.encode("ascii")
    assert safe_filename(text, ".png") == name  # deterministic
    assert safe_filename(text + "x", ".png") != name


def test_safe_filename_tells_same_named_files_apart() -> None:
    assert safe_filename("a/x.png") != safe_filename("b/x.png")
    with pytest.raises(OutputPathError, match="suffix"):
        safe_filename("x", "/../.png")


def test_printable_escapes_only_undecodable_bytes() -> None:
    assert printable("plain/é.png") == "plain/é.png"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert printable("lone \ud800 surrogate") == "lone \\ud800 surrogate"


def test_flag_writes_nothing_but_its_output_whatever_the_names(tmp_path: Path, tiny_model) -> None:
    from click.testing import CliRunner

    from informer_audit.cli import cli

    model, _ = tiny_model(hidden=5, seed=1)
    val = tmp_path / "val"
    images = write_images(val, 6, seed=2)
    (val / "labels.csv").write_text(
        "path,A,B,C\n"
        + "".join(f"{p.name},{i % 2},{(i // 2) % 2},1\n" for i, p in enumerate(images))
    )
    runner = CliRunner()
    args = ["calibrate", model, "--images", val, "--labels", val / "labels.csv"]
    r = runner.invoke(cli, [str(a) for a in [*args, "-o", tmp_path / "m.json", "--patch-size", 8]])
    assert r.exit_code == 0, r.output
    audit = tmp_path / "audit"
    # Names a shell, a CSV or a path join could misread (hidden names are skipped by design).
    hostile = ["a..png", "$(touch pwned).png", "x;rm -rf ~.png", "-o.png", "a\nb,c.png", "é.png"]
    write_images(audit / "x..y" / "deeper", 1, seed=3)
    sources = write_images(tmp_path / "src", len(hostile), seed=4)
    for name, src in zip(hostile, sources, strict=True):
        src.rename(audit / name)
    out = tmp_path / "out" / "flags.csv"
    before = {p for p in tmp_path.rglob("*")}
    r = runner.invoke(
        cli,
        [
            str(a)
            for a in ["flag", model, "--monitor", tmp_path / "m.json", "--images", audit, "-o", out]
        ],
    )
    assert r.exit_code == 0, r.output
    assert {p for p in tmp_path.rglob("*")} - before == {out.parent, out}
    assert len(list(csv.DictReader(out.open(newline="")))) == len(hostile) + 1
