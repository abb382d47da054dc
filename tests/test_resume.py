"""Resumable audits: kill -9 part way, rerun, and nothing is lost, redone or written twice.

The subprocess tests run the real CLI through a small driver that logs every image the
pipeline loads (an image is loaded exactly when it is scored: cached and journaled images
never are) and can slow loading down, so that SIGKILL lands in the middle of the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    calibrate_args,
    count_loads,
    flag_args,
    invoke,
    labelled_folder,
    read_rows,
    write_images,
)
from informer_audit.errors import ResumeError
from informer_audit.journal import JOURNAL_FORMAT, FlagJournal, journal_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

N_AUDIT = 40
DRIVER = """
import os, sys, time
from informer_audit import audit as pipeline

_load = pipeline.load_image


def load_image(path):
    with open(os.environ["IA_LOAD_LOG"], "a", encoding="utf-8") as fh:
        fh.write(str(path) + "\\n")
    time.sleep(float(os.environ.get("IA_DELAY", "0")))
    return _load(path)


pipeline.load_image = load_image
from informer_audit.cli import main

sys.argv[0] = "informer-audit"
main()
"""


@pytest.fixture
def setup(tmp_path):
    s = labelled_folder(tmp_path, n_val=16, n_audit=N_AUDIT - 8, model_name="tiny.onnx")
    write_images(s["audit"] / "sub", 8, size=20, seed=6)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    s.update(driver=driver, monitor=tmp_path / "monitor.json")
    r = invoke(*calibrate_args(s, s["monitor"]))
    assert r.exit_code == 0, r.output
    return s


def spawn(s, args, log: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, IA_LOAD_LOG=str(log), IA_DELAY=str(delay), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(s["driver"]), *map(str, args), "--threads", "1"],
        cwd=s["tmp"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def loaded(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def journal_records(path: Path) -> list[dict]:
    lines = path.read_bytes().split(b"\n")
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the torn last line of the killed write, if any
    return records


# -- kill -9 and resume, through the CLI ----------------------------------------------------------
def test_flag_killed_with_sigkill_resumes_without_recomputing(setup):
    s = setup
    reference = s["tmp"] / "reference.csv"
    r = invoke(*flag_args(s, reference))
    assert r.exit_code == 0, r.output

    out = s["tmp"] / "flags.csv"
    journal = journal_path(out)
    first_log, second_log = s["tmp"] / "first.log", s["tmp"] / "second.log"
    proc = spawn(s, flag_args(s, out), first_log, delay=0.08)

    def third_chunk_in_flight() -> bool:
        if not journal.exists():
            return False
        n_records = journal.read_bytes().count(b"\n") - 1
        return n_records >= 16 and len(loaded(first_log)) > n_records

    # Kill once two chunks (8 images each) are journaled and a third is being scored.
    wait_for(third_chunk_in_flight, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # never a half-written final file
    done = {rec["path"] for rec in journal_records(journal)}
    assert 16 <= len(done) < N_AUDIT
    assert len(loaded(first_log)) >= len(done)
    # A kill in the middle of a write leaves a torn last line: simulate the worst case.
    with journal.open("ab") as fh:
        fh.write(b'{"image_sha256": "3f2a')

    proc = spawn(s, flag_args(s, out), second_log, delay=0.0)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert f"resumed: {len(done)} image(s)" in output
    # No finished image was scored again; every other image exactly once.
    again = loaded(second_log)
    assert len(again) == len(set(again)) == N_AUDIT - len(done)
    assert not set(again) & done
    # Identical to the uninterrupted run, byte for byte; one row per image; no leftovers.
    assert out.read_bytes() == reference.read_bytes()
    rows = read_rows(out)
    assert len(rows) == N_AUDIT == len({row["path"] for row in rows})
    assert not journal.exists() and not out.with_name("flags.csv.partial").exists()


PROBES = 8
"""calibrate's default --input-probes."""


def test_calibrate_killed_with_sigkill_keeps_its_cached_scores(setup):
    s = setup
    reference = s["tmp"] / "reference.json"
    assert s["monitor"].is_file()  # the fixture's uninterrupted run without a cache
    cache = s["tmp"] / "cache"
    out = s["tmp"] / "m.json"
    first_log, second_log, third_log = (s["tmp"] / f"{n}.log" for n in ("1", "2", "3"))
    proc = spawn(s, calibrate_args(s, out, "--cache", cache), first_log, delay=0.15)
    wait_for(lambda: len(list(cache.glob("*/*.npz"))) >= 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cached = len(list(cache.glob("*/*.npz")))
    assert 8 <= cached < 16 and not out.exists()

    proc = spawn(s, calibrate_args(s, out, "--cache", cache), second_log, delay=0.0)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    # Only what the killed run had not stored, then the input check's 8 probe images, read
    # again to be corrupted (--input-direction auto; their copies are never cached).
    again = loaded(second_log)
    assert len(again) == 16 - cached + PROBES
    assert f"{cached} hit(s), {16 - cached} computed" in output

    proc = spawn(s, calibrate_args(s, reference, "--cache", cache), third_log, delay=0.0)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert loaded(third_log) == again[-PROBES:] and "16 hit(s), 0 computed" in output
    # Cached scores are the computed ones: the same monitor as the run without a cache.
    assert out.read_bytes() == s["monitor"].read_bytes() == reference.read_bytes()


# -- resume rules, in process -------------------------------------------------------------------
def test_renamed_and_moved_images_reuse_their_rows(setup, monkeypatch):
    s = setup
    reference = s["tmp"] / "reference.csv"
    assert invoke(*flag_args(s, reference)).exit_code == 0
    out = s["tmp"] / "flags.csv"
    count_loads(monkeypatch, stop_at=12)  # the first chunk of 8 is journaled, then Ctrl-C
    r = invoke(*flag_args(s, out))
    assert r.exit_code == 130  # interrupted: not 1, which means "done, some files failed"
    assert "interrupted" in r.output and "rerun the same command to resume" in r.output
    assert len(journal_records(journal_path(out))) == 8
    # Rename a finished image, move another into a new folder.
    (s["audit"] / "img_000.png").rename(s["audit"] / "renamed.png")
    (s["audit"] / "moved").mkdir()
    (s["audit"] / "img_001.png").rename(s["audit"] / "moved" / "img_001.png")
    loads = count_loads(monkeypatch)
    r = invoke(*flag_args(s, out))
    assert r.exit_code == 0, r.output
    assert "resumed: 8 image(s)" in r.output
    assert len(loads) == N_AUDIT - 8
    assert not set(loads) & {s["audit"] / "renamed.png", s["audit"] / "moved" / "img_001.png"}
    rows = {row["path"]: row for row in read_rows(out)}
    ref = {row["path"]: row for row in read_rows(reference)}
    audit = str(s["audit"])
    for old, new in [("img_000.png", "renamed.png"), ("img_001.png", "moved/img_001.png")]:
        moved = rows.pop(f"{audit}/{new}")
        original = ref.pop(f"{audit}/{old}")
        assert {**moved, "path": ""} == {**original, "path": ""}
    assert rows == ref


def test_failed_images_are_retried_on_resume(setup, monkeypatch):
    s = setup
    broken = s["audit"] / "broken.png"  # sorts first: in the first chunk
    fixed = write_images(s["tmp"] / "spare", 1, size=20, seed=99)[0].read_bytes()
    broken.write_bytes(fixed[: len(fixed) // 2])  # truncated PNG
    out = s["tmp"] / "flags.csv"
    count_loads(monkeypatch, stop_at=12)
    assert invoke(*flag_args(s, out)).exit_code == 130  # interrupted, not "some files failed"
    assert len(journal_records(journal_path(out))) == 7  # the failure is not recorded
    broken.write_bytes(fixed)  # repaired before the rerun
    loads = count_loads(monkeypatch)
    r = invoke(*flag_args(s, out))
    assert r.exit_code == 0, r.output
    assert broken in loads and len(loads) == N_AUDIT + 1 - 7
    row = {row["path"]: row for row in read_rows(out)}[str(broken)]
    assert (row["status"], row["error"]) == ("ok", "")


def test_a_journal_of_other_settings_is_refused_until_restart(setup, monkeypatch):
    s = setup
    out = s["tmp"] / "flags.csv"
    count_loads(monkeypatch, stop_at=12)
    assert invoke(*flag_args(s, out)).exit_code == 130  # interrupted, not "some files failed"
    monkeypatch.undo()
    r = invoke(*flag_args(s, out, "--with-matrix"))
    assert r.exit_code == 2
    assert "other settings left this journal" in r.output and "restart=True" in r.output
    assert r.output.rstrip().endswith("(command line: --restart)")
    assert "columns" in r.output  # names what differs
    assert not out.exists() and journal_path(out).exists()  # nothing discarded silently
    loads = count_loads(monkeypatch)
    r = invoke(*flag_args(s, out, "--with-matrix", "--restart"))
    assert r.exit_code == 0, r.output
    assert len(loads) == N_AUDIT and "resumed" not in r.output
    assert "dist_A|B" in read_rows(out)[0]


def test_same_inputs_give_byte_identical_outputs(setup):
    s = setup
    again = s["tmp"] / "again.json"
    assert invoke(*calibrate_args(s, again)).exit_code == 0
    assert again.read_bytes() == s["monitor"].read_bytes()
    a, b = s["tmp"] / "a.csv", s["tmp"] / "b.csv"
    assert invoke(*flag_args(s, a, "--with-matrix")).exit_code == 0
    assert invoke(*flag_args(s, b, "--with-matrix", "--batch-size", 3)).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


# -- the journal file itself --------------------------------------------------------------------
SETTINGS = {"columns": ["path", "status", "error", "x"], "binding": {"model_sha256": "ab" * 32}}
SHA = [f"{i:064x}" for i in range(5)]


def test_journal_round_trip_torn_and_damaged_lines(tmp_path):
    path = tmp_path / "out.csv.journal"
    with FlagJournal(path, SETTINGS, 3) as j:
        for i, sha in enumerate(SHA[:3]):
            j.append(sha, f"img{i}.png", ["ok", "", str(i)])
    data = path.read_bytes()
    lines = data.split(b"\n")
    header = json.loads(lines[0])
    assert header["format"] == JOURNAL_FORMAT and header["settings"] == SETTINGS
    # A damaged middle line and a torn last line are skipped; the rest resumes.
    damaged = b"\n".join([lines[0], lines[1], b"\x00" * 20, lines[3], b""]) + lines[2][:30]
    path.write_bytes(damaged)
    with FlagJournal(path, SETTINGS, 3) as j:
        assert (len(j), j.n_skipped_lines) == (2, 2)
        assert SHA[0] in j and SHA[1] not in j and SHA[2] in j
        assert j.cells(SHA[2]) == ["ok", "", "2"]
        j.append(SHA[1], "img1.png", ["ok", "", "1"])  # appended after the cut-off torn line
    with FlagJournal(path, SETTINGS, 3) as j:
        assert len(j) == 3 and j.n_skipped_lines == 1  # the NUL line only
        assert [j.cells(sha)[2] for sha in SHA[:3]] == ["0", "1", "2"]
        j.remove()
    assert not path.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"format": "something else"}\n', "not an informer-audit flag journal"),
        (b"path,status\n", "not an informer-audit flag journal"),
        (
            json.dumps({"format": JOURNAL_FORMAT, "version": 99}).encode() + b"\n",
            "journal version 99",
        ),
    ],
)
def test_a_file_that_is_not_this_journal_is_refused(tmp_path, content, match):
    path = tmp_path / "out.csv.journal"
    path.write_bytes(content)
    with pytest.raises(ResumeError, match=match):
        FlagJournal(path, SETTINGS, 3)
    assert path.read_bytes() == content  # left alone
    with FlagJournal(path, SETTINGS, 3, restart=True) as j:
        assert len(j) == 0
    assert json.loads(path.read_bytes().split(b"\n")[0])["format"] == JOURNAL_FORMAT


def test_torn_header_starts_over_and_restart_discards(tmp_path):
    path = tmp_path / "out.csv.journal"
    path.write_bytes(b'{"format": "informer-au')  # killed while writing the header
    with FlagJournal(path, SETTINGS, 3) as j:
        assert len(j) == 0
        j.append(SHA[0], "a.png", ["ok", "", "0"])
    with FlagJournal(path, SETTINGS, 3, restart=True) as j:
        assert len(j) == 0 and j.discarded == 1


def test_other_settings_name_the_difference(tmp_path):
    path = tmp_path / "out.csv.journal"
    FlagJournal(path, SETTINGS, 3).close()
    other = {**SETTINGS, "binding": {"model_sha256": "cd" * 32}}
    with pytest.raises(ResumeError, match=r"binding\.model_sha256 is 'abab.*' there but 'cdcd"):
        FlagJournal(path, other, 3)


def test_two_runs_cannot_write_one_journal(tmp_path):
    path = tmp_path / "out.csv.journal"
    with FlagJournal(path, SETTINGS, 3):
        with pytest.raises(ResumeError, match="another informer-audit run is writing"):
            FlagJournal(path, SETTINGS, 3)
    FlagJournal(path, SETTINGS, 3).close()  # free again once the first is closed


def test_records_of_the_wrong_width_are_refused(tmp_path):
    with FlagJournal(tmp_path / "j", SETTINGS, 3) as j:
        with pytest.raises(ValueError, match="needs 3 cells, got 2"):
            j.append(SHA[0], "a.png", ["ok", ""])
