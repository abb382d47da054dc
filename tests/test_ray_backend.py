"""The Ray backend: the same rows, monitors and tables as the local backend, and its faults.

Every test runs a real Ray (local mode no longer exists): a private local Ray started by the
CLI, or a two-node cluster on this machine (``ray.cluster_utils.Cluster``). Workers that must
be slow or die on cue get a scorer defined here, which Ray pickles by value
(``register_pickle_by_value``) so that the workers need not import this test module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import (
    calibrate_args,
    flag_args,
    invoke,
    labelled_folder,
    read_rows,
    write_images,
)
from informer_audit.audit import Auditor, flag_folder
from informer_audit.images import load_image
from informer_audit.journal import journal_path
from informer_audit.model import OnnxClassifier
from informer_audit.monitorfile import load_monitor
from informer_audit.scorers import InformerScorer, scorer_from_binding

ray = pytest.importorskip("ray", reason="the Ray backend's tests need ray (the [ray] extra)")

from informer_audit.backends import RayAuditor, RayCluster, RaySettings  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and a local Ray"),
]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def _no_ray_left_connected():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def env(tmp_path):
    """A tiny model, its monitor, and an audit folder with one corrupt file."""
    s = labelled_folder(tmp_path, n_val=12, n_audit=9)
    (s["audit"] / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    s["monitor"] = tmp_path / "monitor.json"
    r = invoke(*calibrate_args(s, s["monitor"], "--cv-repeats", "2"))
    assert r.exit_code == 0, r.output
    return s


def local_reference(s: dict[str, Path], name: str = "local.csv") -> Path:
    out = s["tmp"] / name
    r = invoke(*flag_args(s, out))
    assert r.exit_code == 1, r.output  # the corrupt file is a failure row
    return out


# -- the same results --------------------------------------------------------------------------
def test_flag_on_a_private_local_ray_writes_the_local_csv_byte_for_byte(env):
    reference = local_reference(env)
    out = env["tmp"] / "ray.csv"
    r = invoke(*flag_args(env, out, "--backend", "ray", "--ray-workers", 2))
    assert r.exit_code == 1, r.output  # the same exit code: one file failed
    assert out.read_bytes() == reference.read_bytes()
    assert "2 worker(s) of 1 CPU on a local Ray" in r.output
    assert "started for this run" in r.output
    # each worker chooses the batch size for its own session (1 thread), not the driver's
    assert "batch size chosen by each Ray worker" in " ".join(r.output.split())
    rows = read_rows(out)
    bad = [row for row in rows if row["path"].endswith("corrupt.png")]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and "cannot read" in bad[0]["error"]
    assert not ray.is_initialized()  # the private Ray was shut down


def test_calibrate_on_ray_writes_the_local_monitor_byte_for_byte(env):
    out = env["tmp"] / "ray-monitor.json"
    r = invoke(*calibrate_args(env, out, "--cv-repeats", "2", "--backend", "ray"))
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == env["monitor"].read_bytes()
    assert "scored on Ray" in r.output


def test_evaluate_on_ray_writes_the_local_tables(tmp_path):
    s = labelled_folder(tmp_path, n_val=12, n_audit=0)
    test_labels = s["labels"]  # the same images: the tables only need to match each other
    base = [
        "evaluate", s["model"], "--calib-images", s["val"], "--calib-labels", s["labels"],
        "--test-images", s["val"], "--test-labels", test_labels, "--methods", "informer,entropy",
        "--patch-size", 8, "--device", "cpu", "--bootstrap", 20, "--resamples", 20,
        "--no-plots", "--no-cache",
    ]  # fmt: skip
    r = invoke(*base, "-o", tmp_path / "local")
    assert r.exit_code == 0, r.output
    r = invoke(*base, "-o", tmp_path / "ray", "--backend", "ray", "--ray-workers", 2)
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert "monitor_informer_fd.json" in written and "table1.csv" in written
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == written
    for name in written:
        local, remote = ((tmp_path / d / name).read_bytes() for d in ("local", "ray"))
        assert remote == local, name


def test_a_two_node_cluster_spreads_the_work_and_writes_the_same_csv(env, monkeypatch):
    from ray.cluster_utils import Cluster

    from informer_audit.backends import _process_token

    # A cluster of its own with token authentication: its nodes and this driver share the
    # token through RAY_AUTH_TOKEN (Ray's client keeps the first token a process read).
    monkeypatch.setenv("RAY_AUTH_TOKEN", _process_token())
    reference = local_reference(env)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = env["tmp"] / "cluster.csv"
        r = invoke(*flag_args(env, out, "--backend", "ray", "--ray-address", cluster.address))
        assert r.exit_code == 1, r.output
        assert out.read_bytes() == reference.read_bytes()
        assert "2 nodes, 2 CPUs" in r.output and "2 worker(s)" in r.output
        # One worker on each node: the scheduler had to use both.
        with RayCluster(RaySettings(address=cluster.address)) as connected:
            auditor = ray_auditor(env, connected)
            auditor.start()
            assert len({info["node"] for info in auditor.workers_info}) == 2
            auditor.close()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


# -- faults ------------------------------------------------------------------------------------
class SlowScorer(InformerScorer):
    """INFORMER's scores, a little slowly; an all-black image kills the worker's process."""

    def score(self, model: Any, x: Any, logits: Any, index: Any) -> Any:
        # Runs only in the workers (the driver of a Ray run scores nothing itself).
        flat = np.asarray(x).reshape(len(x), x.shape[1], -1)
        if (flat.std(axis=2) == 0).all(axis=1).any():
            os._exit(17)  # a constant image (the "poison" file): die as a crash would
        time.sleep(0.15)
        return super().score(model, x, logits, index)


def ray_auditor(s: dict[str, Path], cluster: RayCluster, scorer_type: type = InformerScorer):
    loaded = load_monitor(s["monitor"])
    model = OnnxClassifier(s["model"], device="cpu")
    base = scorer_from_binding(loaded.binding)
    scorer = scorer_type(base.adapter) if scorer_type is not InformerScorer else base
    local = Auditor(model, scorer, loaded.binding["audited_classes"])
    return RayAuditor.from_auditor(local, cluster)


def run_flag(s: dict[str, Path], auditor: Auditor, out: Path, **kw: Any) -> Any:
    loaded = load_monitor(s["monitor"])
    return flag_folder(auditor, loaded.monitor, loaded.binding, s["audit"], out, **kw)


def test_a_worker_killed_mid_run_is_replaced_and_every_image_lands_once(env):
    write_images(env["audit"] / "more", 8, size=20, seed=9)
    reference = env["tmp"] / "local.csv"
    loaded = load_monitor(env["monitor"])
    model = OnnxClassifier(env["model"], device="cpu")
    local = Auditor(model, scorer_from_binding(loaded.binding), loaded.binding["audited_classes"])
    run_flag(env, local, reference)
    out = env["tmp"] / "killed.csv"
    with RayCluster(RaySettings(workers=2, in_flight=3)) as cluster:
        auditor = ray_auditor(env, cluster, SlowScorer)
        auditor.start()
        before = auditor.worker_pids()
        killed: list[int] = []

        def kill_once(_result: Any) -> None:
            if not killed:  # a worker with images in flight (3 each, 0.15 s per image)
                killed.append(before[0])
                os.kill(before[0], signal.SIGKILL)

        summary = run_flag(env, auditor, out, on_result=kill_once)
        after = auditor.worker_pids()
        auditor.close()
    assert killed and before[0] not in after and len(after) == 2  # replaced
    assert summary.n_images == 18 and summary.n_failed == 1  # the corrupt file only
    rows = read_rows(out)
    assert len(rows) == 18 == len({row["path"] for row in rows})
    assert out.read_bytes() == reference.read_bytes()


def test_an_image_that_kills_its_worker_every_time_becomes_a_failure_row(env):
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(env["audit"] / "poison.png")
    out = env["tmp"] / "poison.csv"
    with RayCluster(RaySettings(workers=2, max_task_retries=1)) as cluster:
        auditor = ray_auditor(env, cluster, SlowScorer)
        summary = run_flag(env, auditor, out)
        auditor.close()
    rows = {Path(row["path"]).name: row for row in read_rows(out)}
    assert len(rows) == 11 and summary.n_failed == 2 and summary.return_code == 1
    assert rows["poison.png"]["status"] == "failed"
    assert "died 2 time(s)" in rows["poison.png"]["error"]
    assert all(
        r["status"] == "ok" for k, r in rows.items() if k not in ("poison.png", "corrupt.png")
    )


DRIVER = """
import os, sys, time
from informer_audit import backends

_prepare = backends.RayAuditor._prepare


def prepare(self, seq, key, path):
    # Log every image sent to a worker (= scored: journaled images never are), slowly.
    with open(os.environ["IA_SENT_LOG"], "a", encoding="utf-8") as fh:
        fh.write(key + "\\n")
    time.sleep(float(os.environ.get("IA_DELAY", "0")))
    return _prepare(self, seq, key, path)


backends.RayAuditor._prepare = prepare
from informer_audit.cli import main

sys.argv[0] = "informer-audit"
main()
"""


def test_a_driver_killed_with_sigkill_resumes_from_its_journal(env):
    write_images(env["audit"] / "more", 15, size=20, seed=9)
    reference = local_reference(env)
    driver = env["tmp"] / "driver.py"
    driver.write_text(DRIVER)
    out = env["tmp"] / "flags.csv"
    journal = journal_path(out)
    args = [*flag_args(env, out), "--backend", "ray", "--ray-workers", "2"]

    def spawn(log: Path, delay: float) -> subprocess.Popen:
        e = dict(os.environ, IA_SENT_LOG=str(log), IA_DELAY=str(delay))
        return subprocess.Popen(
            [sys.executable, str(driver), *map(str, args)],
            cwd=env["tmp"], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip

    first, second = env["tmp"] / "first.log", env["tmp"] / "second.log"
    proc = spawn(first, 0.3)
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") - 1 >= 5):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "the Ray run made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    journaled = set()
    for line in journal.read_bytes().split(b"\n")[1:]:
        try:
            journaled.add(json.loads(line)["path"])
        except (ValueError, KeyError):
            pass  # the torn last line of the killed write, if any
    n_done = len(journaled)
    assert 5 <= n_done < 24 and not out.exists()

    proc = spawn(second, 0.0)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, output  # the corrupt file
    assert f"resumed: {n_done} image(s)" in output
    sent = second.read_text().splitlines()
    assert len(sent) == len(set(sent)) == 25 - n_done  # the rest, each once
    assert not set(sent) & journaled
    assert out.read_bytes() == reference.read_bytes()


# -- the interface -----------------------------------------------------------------------------
def test_ray_options_without_the_ray_backend_are_refused(env):
    r = invoke(*flag_args(env, env["tmp"] / "x.csv", "--ray-workers", 2))
    assert r.exit_code == 2 and "--ray-workers need --backend ray" in r.output


def test_more_workers_than_the_cluster_holds_are_refused(env):
    r = invoke(*flag_args(env, env["tmp"] / "x.csv", "--backend", "ray", "--ray-workers", 64))
    assert r.exit_code == 2
    assert "64 workers of 1 CPU(s) do not fit" in r.output and "--ray-workers" in r.output
    assert not (env["tmp"] / "x.csv").exists()


def test_without_ray_the_backend_says_how_to_install_it(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    r = invoke(*flag_args(env, env["tmp"] / "x.csv", "--backend", "ray"))
    assert r.exit_code == 2 and "pip install 'informer-audit[ray]'" in r.output


def test_a_private_local_ray_writes_no_token_to_the_home_folder(env, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    r = invoke(*flag_args(env, env["tmp"] / "t.csv", "--backend", "ray"))
    assert r.exit_code == 1, r.output
    assert not (home / ".ray").exists()
    assert "RAY_AUTH_TOKEN" not in os.environ  # restored


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg", "dcm"])
def test_an_image_decodes_the_same_from_its_bytes_as_from_its_file(tmp_path, fmt):
    from conftest import write_dicom

    path = tmp_path / f"x.{fmt}"
    pixels = np.random.default_rng(3).integers(0, 255, (12, 10), dtype=np.uint8)
    if fmt == "dcm":
        write_dicom(path, pixels)
    else:
        Image.fromarray(pixels).save(path)
    a, b = load_image(path), load_image(path, path.read_bytes())
    assert a.dtype == b.dtype and a.source_bits == b.source_bits
    np.testing.assert_array_equal(a, b)
