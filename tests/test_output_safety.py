"""Outputs never overwrite inputs, are checked before the work, and a failed write loses nothing.

Tables, in the style of ``test_bad_input.py``:

* collisions, one row per case per command: an output that is an input file (also through a
  symbolic or hard link), lies inside an input folder, or is another output of the run; each
  row asserts exit code 2, the message fragment, and that the input's bytes are unchanged;
* outputs that cannot be written (under a regular file, in a read-only folder, a folder where
  a file is expected): exit code 2 before any image is scored;
* the principle: for every command, an output equal to each of its inputs is refused;
* a write that fails after the work: exit code 2, and the results are in a recovery folder;
* the ``flag`` messages about rows taken from an interrupted run vs. duplicate files.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from conftest import (
    CARD,
    CLASSES,
    calibrate,
    count_loads,
    flag,
    invoke,
    labelled_folder,
    write_images,
    write_labels,
)
from informer_audit import audit as pipeline
from informer_audit import monitorfile
from informer_audit.journal import journal_path
from informer_audit.monitorfile import load_monitor


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    e = labelled_folder(tmp_path_factory.mktemp("outputs"))
    tmp = e["tmp"]
    e["card"] = tmp / "card.json"
    e["card"].write_text(json.dumps(CARD))
    e["monitor"] = tmp / "monitor.json"
    r = calibrate(e, e["monitor"])
    assert r.exit_code == 0, r.output
    e["flags"] = tmp / "flags.csv"
    r = flag(e, e["flags"])
    assert r.exit_code == 0, r.output
    e["weights"] = tmp / "weights.pt"
    e["weights"].write_bytes(b"not read: the output check comes first")
    e["image"] = e["audit"] / "img_000.png"
    return e


def args_for(command: str, e: dict[str, Path], **given: Any) -> list[Any]:
    """The command's arguments, with ``given`` replacing options (``o=...`` is ``-o``)."""
    opts: dict[str, Any]
    if command == "calibrate":
        opts = {"--images": e["val"], "--labels": e["labels"], "-o": e["tmp"] / "m.json"}
        head: list[Any] = ["calibrate", given.pop("MODEL", e["model"]), "--patch-size", 8]
    elif command == "flag":
        opts = {"--monitor": e["monitor"], "--images": e["audit"], "-o": e["tmp"] / "f.csv"}
        head = ["flag", given.pop("MODEL", e["model"]), "--device", "cpu"]
    elif command == "report":
        opts = {"--monitor": e["monitor"], "-o": e["tmp"] / "report"}
        head = ["report", given.pop("FLAGS_CSV", e["flags"])]
    elif command == "evaluate":
        opts = {
            "--calib-images": e["val"],
            "--calib-labels": e["labels"],
            "--test-images": e["val"],
            "--test-labels": e["labels"],
            "-o": e["tmp"] / "eval",
            "--methods": "msp",
        }
        head = ["evaluate", given.pop("MODEL", e["model"]), "--device", "cpu"]
    elif command == "export":
        opts = {"--classes": "A,B,C", "--image-size": 16, "--random-init": None, "-o": "x.onnx"}
        head = ["export", "densenet121"]
    else:
        raise ValueError(command)
    opts.update(given)
    out = list(head)
    for key, value in opts.items():
        out += [key] if value is None else [key, value]
    return out


# -- 1. collisions -----------------------------------------------------------------------------
class Collision(NamedTuple):
    id: str
    args: Callable[[dict[str, Path]], list[Any]]
    message: str
    protected: str  # env key of the input whose bytes must not change


COLLISIONS = [
    Collision(
        "flag-o-is-an-image-in-images",
        lambda e: args_for("flag", e, **{"-o": e["image"]}),
        "lies inside the input folder",
        "image",
    ),
    Collision(
        "flag-o-inside-images",
        lambda e: args_for("flag", e, **{"-o": e["audit"] / "flags.csv"}),
        "(--images)",
        "image",
    ),
    Collision(
        "flag-o-is-the-monitor",
        lambda e: args_for("flag", e, **{"-o": e["monitor"]}),
        "read by this run (--monitor)",
        "monitor",
    ),
    Collision(
        "flag-o-is-the-model",
        lambda e: args_for("flag", e, **{"-o": e["model"]}),
        "read by this run (MODEL)",
        "model",
    ),
    Collision(
        "calibrate-o-is-the-labels",
        lambda e: args_for("calibrate", e, **{"-o": e["labels"]}),
        "read by this run (--labels)",
        "labels",
    ),
    Collision(
        "calibrate-o-is-the-model",
        lambda e: args_for("calibrate", e, **{"-o": e["model"]}),
        "read by this run (MODEL)",
        "model",
    ),
    Collision(
        "calibrate-o-is-the-model-card",
        lambda e: args_for("calibrate", e, **{"-o": e["card"], "--model-card": e["card"]}),
        "read by this run (--model-card)",
        "card",
    ),
    Collision(
        "calibrate-scores-csv-is-o",
        lambda e: args_for(
            "calibrate", e, **{"-o": e["tmp"] / "same", "--scores-csv": e["tmp"] / "same"}
        ),
        "is also this run's output -o",
        "monitor",
    ),
    Collision(
        "calibrate-o-inside-images",
        lambda e: args_for("calibrate", e, **{"-o": e["val"] / "monitor.json"}),
        "lies inside the input folder",
        "labels",
    ),
    Collision(
        "flag-save-maps-is-the-journal",
        lambda e: args_for("flag", e, **{"--save-maps": e["tmp"] / "f.csv.journal"}),
        "is also this run's output -o's journal",
        "monitor",
    ),
    Collision(
        "flag-report-inside-images",
        lambda e: args_for("flag", e, **{"--report": e["audit"] / "report"}),
        "(--images)",
        "image",
    ),
    Collision(
        "report-o-inside-images",
        lambda e: args_for("report", e, **{"--images": e["audit"], "-o": e["audit"] / "r"}),
        "lies inside the input folder",
        "image",
    ),
    Collision(
        "evaluate-outdir-inside-calib-images",
        lambda e: args_for("evaluate", e, **{"-o": e["val"] / "eval"}),
        "(--calib-images)",
        "labels",
    ),
    Collision(
        "evaluate-cache-inside-calib-images",
        lambda e: args_for("evaluate", e, **{"--cache": e["val"] / "cache"}),
        "(--calib-images)",
        "labels",
    ),
    Collision(
        "export-o-is-the-weights",
        lambda e: (
            args_for("export", e, **{"--random-init": None, "--weights": e["weights"]})
            + ["-o", e["weights"]]
        ),
        "read by this run (--weights)",
        "weights",
    ),
    Collision(
        "flag-o-is-a-symlink-to-the-monitor",
        lambda e: args_for("flag", e, **{"-o": link(e, "monitor", "symlink")}),
        "read by this run (--monitor)",
        "monitor",
    ),
    Collision(
        "calibrate-o-is-a-hard-link-to-the-labels",
        lambda e: args_for("calibrate", e, **{"-o": link(e, "labels", "hardlink")}),
        "read by this run (--labels)",
        "labels",
    ),
]


def link(e: dict[str, Path], key: str, kind: str) -> Path:
    path = e["tmp"] / f"{kind}-to-{key}"
    if not (path.exists() or path.is_symlink()):
        (os.symlink if kind == "symlink" else os.link)(e[key], path)
    return path


@pytest.mark.parametrize("case", COLLISIONS, ids=lambda c: c.id)
def test_collision_is_refused_and_the_input_is_unchanged(
    env: dict[str, Path], case: Collision
) -> None:
    if case.id.startswith("export"):
        pytest.importorskip("torch")
    before = env[case.protected].read_bytes()
    r = invoke(*case.args(env))
    assert r.exit_code == 2, r.output
    assert case.message in r.output, r.output
    assert "Traceback" not in r.output
    assert env[case.protected].read_bytes() == before


def test_an_image_listed_by_the_labels_outside_images_is_an_input(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    outside = write_images(tmp_path / "elsewhere", 1, seed=8)[0]
    labels = write_labels(
        tmp_path / "labels.csv", [str(outside)] + [f"img_{i:03d}.png" for i in range(3)]
    )
    before = outside.read_bytes()
    r = invoke(*args_for("calibrate", env, **{"--labels": labels, "-o": outside}))
    assert r.exit_code == 2 and "images listed in --labels" in r.output, r.output
    assert outside.read_bytes() == before


# -- 2. outputs that cannot be written: refused before any image is scored ---------------------
def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write. Root writes a 0o555 folder, so then /sys is used
    (read-only for root too in a container); skipped when neither is unwritable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no folder this process cannot write")


class Unwritable(NamedTuple):
    id: str
    output: Callable[[Path], Path]
    message: str
    option: str = "-o"


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "plain.txt").write_text("a regular file")
    return tmp_path / "plain.txt" / "sub" / "monitor.json"


def existing_folder(tmp_path: Path) -> Path:
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


UNWRITABLE = [
    Unwritable("o-under-a-regular-file", under_a_file, "a regular file, not a folder"),
    Unwritable("scores-csv-under-a-regular-file", under_a_file, "a regular file", "--scores-csv"),
    Unwritable("o-in-a-read-only-folder", lambda t: read_only_folder(t) / "m.json", "not writable"),
    Unwritable(
        "o-in-a-new-folder-of-a-read-only-folder",
        lambda t: read_only_folder(t) / "new" / "m.json",
        "not writable",
    ),
    Unwritable("o-an-existing-directory", existing_folder, "is a directory"),
    Unwritable(
        "scores-csv-an-existing-directory", existing_folder, "is a directory", "--scores-csv"
    ),
]


@pytest.mark.parametrize("case", UNWRITABLE, ids=lambda c: c.id)
def test_unwritable_output_is_refused_before_scoring(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, case: Unwritable
) -> None:
    loads: list[Path] = []
    monkeypatch.setattr(pipeline, "load_image", lambda p: loads.append(p) or 1 / 0)
    out = case.output(tmp_path)
    given = {case.option: out}
    if case.option != "-o":
        given["-o"] = tmp_path / "monitor.json"
    r = invoke(*args_for("calibrate", env, **given))
    assert r.exit_code == 2, r.output
    assert case.message in r.output, r.output
    assert loads == []  # failed fast: not one image was read
    assert not (tmp_path / "monitor.json").exists()


def test_flag_save_maps_that_is_a_file_and_evaluate_outdir_under_a_file(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    r = invoke(*args_for("flag", env, **{"--report": under_a_file(tmp_path)}))
    assert r.exit_code == 2 and "a regular file, not a folder" in r.output, r.output
    r = invoke(*args_for("evaluate", env, **{"-o": under_a_file(tmp_path)}))
    assert r.exit_code == 2 and "a regular file, not a folder" in r.output, r.output


# -- 3. the principle: for every command, an output equal to any of its inputs is refused -------
PRINCIPLE = [
    ("calibrate", "-o", "MODEL"),
    ("calibrate", "-o", "--model-card"),
    ("calibrate", "-o", "--labels"),
    ("calibrate", "-o", "--torch-weights"),
    ("calibrate", "-o", "image"),
    ("calibrate", "--scores-csv", "MODEL"),
    ("calibrate", "--scores-csv", "--labels"),
    ("calibrate", "--scores-csv", "--model-card"),
    ("flag", "-o", "MODEL"),
    ("flag", "-o", "--model-card"),
    ("flag", "-o", "--monitor"),
    ("flag", "-o", "--torch-weights"),
    ("flag", "-o", "image"),
    ("report", "-o", "FLAGS_CSV"),
    ("report", "-o", "--monitor"),
    ("report", "-o", "--model"),
    ("report", "-o", "--model-card"),
    ("report", "-o", "--labels"),
    ("report", "-o", "--images"),
    ("report", "-o", "--maps"),
    ("evaluate", "-o", "MODEL"),
    ("evaluate", "-o", "--model-card"),
    ("evaluate", "-o", "--calib-labels"),
    ("evaluate", "-o", "--test-labels"),
    ("evaluate", "-o", "--torch-weights"),
    ("evaluate", "-o", "--calib-images"),
    ("evaluate", "-o", "--test-images"),
    ("export", "-o", "--weights"),
]
INPUT_OF = {
    "MODEL": "model",
    "--model": "model",
    "--model-card": "card",
    "--labels": "labels",
    "--calib-labels": "labels",
    "--test-labels": "labels",
    "--torch-weights": "weights",
    "--weights": "weights",
    "--monitor": "monitor",
    "FLAGS_CSV": "flags",
    "image": "image",
    "--images": "audit",
    "--maps": "audit",
    "--calib-images": "val",
    "--test-images": "val",
}


@pytest.mark.parametrize(("command", "output", "option"), PRINCIPLE)
def test_output_equal_to_an_input_is_refused(
    tmp_path: Path, env: dict[str, Path], command: str, output: str, option: str
) -> None:
    if command == "export":
        pytest.importorskip("torch")
    target = env[INPUT_OF[option]]
    given: dict[str, Any] = {output: target}
    if option == "image":  # an image of the folder (flag) or listed by the labels (calibrate)
        given["--images"] = env["audit"]
        if command == "calibrate":
            given["--labels"] = write_labels(tmp_path / "l.csv", ["img_000.png", "img_001.png"])
    else:
        given[option] = target
    if output != "-o":
        given["-o"] = tmp_path / "m.json"
    watched = [p for p in (target.rglob("*") if target.is_dir() else [target]) if p.is_file()]
    before = {p: p.read_bytes() for p in watched}
    r = invoke(*args_for(command, env, **given))
    assert r.exit_code == 2, r.output
    # Where the output is a folder, click already refuses an existing file ("is a file").
    assert "read by this run" in r.output or "is a file" in r.output, r.output
    assert {p: p.read_bytes() for p in watched} == before
    if target.is_dir():
        assert sorted(p for p in target.rglob("*") if p.is_file()) == sorted(before)


# -- 4. a write that fails after the work loses nothing ----------------------------------------
def test_failed_monitor_write_after_scoring_is_recovered(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, scores = tmp_path / "monitor.json", tmp_path / "scores.csv"
    real = monitorfile.save_monitor

    def save(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path) == out:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, *args, **kw)

    monkeypatch.setattr(monitorfile, "save_monitor", save)
    r = invoke(*args_for("calibrate", env, **{"-o": out, "--scores-csv": scores}))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert f"cannot write -o '{out}': No space left on device" in r.output, r.output
    found = re.search(r"Recovered results are in '([^']+)'", r.output)
    assert found, r.output
    recovery = Path(found.group(1))
    try:
        assert recovery.name.startswith("informer-audit-recovered-")
        loaded = load_monitor(recovery / "monitor.json")
        monitor, binding = loaded.monitor, loaded.binding
        assert monitor.method == "informer" and binding["audited_classes"] == list(CLASSES)
        assert not out.exists() and scores.is_file()  # the write that worked is in place
    finally:
        shutil.rmtree(recovery, ignore_errors=True)


def test_failed_flags_csv_write_keeps_the_rows_in_the_journal(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "f.csv"

    def fail(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EIO, "Input/output error", str(out) + ".partial")

    real = pipeline._write_flags_csv
    monkeypatch.setattr(pipeline, "_write_flags_csv", fail)
    r = invoke(*args_for("flag", env, **{"-o": out}))
    assert r.exit_code == 2, r.output
    assert "cannot write the flags CSV" in r.output and "Input/output error" in r.output
    assert "3 finished row(s) are kept in" in r.output and journal_path(out).is_file()
    monkeypatch.setattr(pipeline, "_write_flags_csv", real)
    loads: list[Path] = []
    monkeypatch.setattr(pipeline, "load_image", lambda p: loads.append(p) or 1 / 0)
    r = invoke(*args_for("flag", env, **{"-o": out}))
    assert r.exit_code == 0, r.output
    assert loads == [] and "resumed: 3 image(s)" in r.output
    assert out.read_bytes() == env["flags"].read_bytes()


# -- 5. "resumed" says what really happened -----------------------------------------------------
def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: {**r, "path": ""} for r in csv.DictReader(fh)}


DUPLICATES = "1 file(s) have the same bytes as another file in this folder"


@pytest.mark.parametrize("restart", [False, True], ids=["fresh", "restart"])
def test_duplicate_files_on_a_fresh_run_are_not_called_resumed(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    folder = tmp_path / "audit"
    images = write_images(folder, 3, seed=5)
    shutil.copy(images[0], folder / "z_copy.png")  # sorts last: img_000.png is the first
    loads = count_loads(monkeypatch)
    out = tmp_path / "f.csv"
    r = invoke(
        *args_for("flag", env, **{"--images": folder, "-o": out}),
        *(["--restart"] if restart else []),
    )
    assert r.exit_code == 0, r.output
    assert "resumed" not in r.output and DUPLICATES in r.output
    assert "not scored twice" in r.output
    assert len(loads) == 3 and folder / "z_copy.png" not in loads
    table = rows(out)
    assert table["z_copy.png"] == table["img_000.png"] and table["z_copy.png"]["status"] == "ok"


def test_a_duplicate_of_a_failed_file_is_scored_itself(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "audit"
    images = write_images(folder, 2, seed=5)
    shutil.copy(images[0], folder / "copy.png")
    real = pipeline.load_image
    loads: list[Path] = []

    def load(path: Any) -> Any:
        loads.append(Path(path))
        if Path(path).name == "copy.png" and len(loads) == 1:  # the first with those bytes
            raise OSError("flaky read")
        return real(path)

    monkeypatch.setattr(pipeline, "load_image", load)
    r = invoke(*args_for("flag", env, **{"--images": folder, "-o": tmp_path / "f.csv"}))
    assert "same bytes" not in r.output  # nothing was copied
    assert loads.count(folder / "img_000.png") == 1


def test_a_true_resume_counts_journal_rows_and_duplicates_apart(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "audit"
    images = write_images(folder, 10, seed=5)
    shutil.copy(images[0], folder / "z_copy.png")  # sorts last
    out = tmp_path / "f.csv"
    count_loads(monkeypatch, stop_at=10)  # the first chunk of 8 is journaled, then Ctrl-C
    r = invoke(*args_for("flag", env, **{"--images": folder, "-o": out}))
    assert r.exit_code == 130, r.output
    monkeypatch.undo()
    loads = count_loads(monkeypatch)
    r = invoke(*args_for("flag", env, **{"--images": folder, "-o": out}))
    assert r.exit_code == 0, r.output
    assert "resumed: 8 image(s) already audited by an interrupted run" in r.output
    assert DUPLICATES in r.output
    assert sorted(p.name for p in loads) == ["img_008.png", "img_009.png"]
    table = rows(out)
    assert table["z_copy.png"] == table["img_000.png"]
    reference = tmp_path / "reference.csv"
    assert invoke(*args_for("flag", env, **{"--images": folder, "-o": reference})).exit_code == 0
    assert rows(reference) == table
