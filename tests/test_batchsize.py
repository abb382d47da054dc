"""The batch size chosen for the machine: the probe's rules, its cache, and that results stay."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from conftest import calibrate, flag
from informer_audit import batchsize
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.adapters.lime import LimeSaliency
from informer_audit.baselines import tta_spread
from informer_audit.batchsize import BatchChoice, choose_batch_size, probe
from informer_audit.errors import EvaluationError
from informer_audit.model import OnnxClassifier


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Every test here keeps its cache file under its own tmp_path, and sees an idle machine
    (other processes' load is unmeasured, so a busy test machine does not skip the cache)."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv(batchsize.CACHE_ENV, str(folder))
    monkeypatch.setattr(batchsize, "_cpu_seconds", lambda: None)
    return folder


class FakeMachine:
    """``run(b)`` advances a fake clock by ``b`` x the per-image cost of ``b`` (+ spikes)."""

    def __init__(self, cost, spikes=None, fail_at=None):
        self.cost, self.spikes, self.fail_at = cost, dict(spikes or {}), fail_at
        self.now, self.runs = 0.0, []

    def clock(self):
        return self.now

    def run(self, b):
        if b == self.fail_at:
            raise RuntimeError("out of memory")
        self.runs.append(b)
        nth = self.runs.count(b)
        self.now += b * self.cost[b] * self.spikes.get((b, nth), 1.0)


LADDER = (1, 2, 4, 8, 16)


def run_probe(machine, **kw):
    kw.setdefault("budget_s", 1e9)
    return probe(machine.run, LADDER, clock=machine.clock, **kw)


def test_the_fastest_size_per_image_is_chosen():
    machine = FakeMachine({1: 10.0, 2: 8.0, 4: 6.0, 8: 7.0, 16: 9.0})
    size, per_image, seconds, note = run_probe(machine)
    assert size == 4 and note == ""
    assert per_image == {1: 10.0, 2: 8.0, 4: 6.0, 8: 7.0, 16: 9.0}
    # warm-up at 1, one climbing round, two more rounds in alternating order
    assert machine.runs == [1, 1, 2, 4, 8, 16, 16, 8, 4, 2, 1, 1, 2, 4, 8, 16]
    assert seconds == pytest.approx(10 + 3 * (10 + 16 + 24 + 56 + 144))


def test_near_ties_go_to_the_smaller_size():
    tie = FakeMachine({1: 10.0, 2: 10.0, 4: 6.1, 8: 6.0, 16: 9.0})
    assert run_probe(tie)[0] == 4  # 6.1 is within 2% of 6.0
    clear = FakeMachine({1: 10.0, 2: 10.0, 4: 6.2, 8: 6.0, 16: 9.0})
    assert run_probe(clear)[0] == 8  # 3.3% slower is no tie


def test_one_disturbed_run_neither_decides_nor_ends_the_climb():
    # size 2's climbing run is 5x slow: the median of three rounds ignores it, and the
    # remaining sizes are priced at the fastest rate seen (size 1's), not at the spike.
    machine = FakeMachine({1: 10.0, 2: 8.0, 4: 6.0, 8: 7.0, 16: 9.0}, spikes={(2, 1): 5.0})
    size, per_image, _, _ = probe(machine.run, LADDER, clock=machine.clock, budget_s=700.0)
    assert size == 4 and per_image[2] == 8.0
    assert 16 in per_image


def test_the_budget_stops_the_climb():
    machine = FakeMachine({1: 10.0, 2: 10.0, 4: 10.0, 8: 10.0, 16: 10.0})
    size, per_image, seconds, _ = probe(
        machine.run, LADDER, clock=machine.clock, budget_s=300.0, min_images=0
    )
    # Before size b: elapsed + 10 * (2 * sum(kept) + 3 * b). Before 8: elapsed 80 (warm-up
    # 10, runs 10 + 20 + 40), projected 80 + 10 * (2 * 7 + 24) = 460 > 300: stop at 4.
    assert sorted(per_image) == [1, 2, 4]
    assert seconds == pytest.approx(10 + 3 * 70)
    assert size == 1  # all tie: the smallest


def test_min_images_keeps_small_sizes_on_a_slow_machine():
    machine = FakeMachine({b: 10.0 for b in LADDER})
    # A budget too small for anything but the first size, yet 1 + 3 * (1 + 2 + 4 + 8) = 46
    # images are within min_images=48: the sizes 1-8 are compared, 16 is not.
    _, per_image, _, _ = probe(
        machine.run, LADDER, clock=machine.clock, budget_s=1e-3, min_images=48
    )
    assert sorted(per_image) == [1, 2, 4, 8]


def test_a_failing_size_ends_the_climb_with_a_note(caplog):
    machine = FakeMachine({1: 10.0, 2: 8.0, 4: 7.0, 8: 6.0, 16: 1.0}, fail_at=16)
    with caplog.at_level(logging.WARNING, logger="informer_audit.batchsize"):
        size, per_image, _, note = run_probe(machine)
    assert size == 8 and sorted(per_image) == [1, 2, 4, 8]
    assert "batch 16 failed" in note and "out of memory" in note
    assert "batch 16 failed" in caplog.text
    nothing = FakeMachine({1: 1.0}, fail_at=1)
    assert run_probe(nothing)[0] is None


def test_bad_probe_settings_are_refused():
    with pytest.raises(EvaluationError, match="rounds"):
        probe(lambda b: None, LADDER, rounds=0)


def test_ladders_respect_the_device_and_the_input_size():
    assert batchsize.ladder_for("cpu", 100) == batchsize.CPU_LADDER
    assert batchsize.ladder_for("cuda", 100)[-1] == 1024
    big = batchsize.MAX_INPUT_BYTES // 20  # 20 such images fit in one run, not 32
    assert batchsize.ladder_for("cuda", big) == (1, 2, 4, 8, 16)
    assert batchsize.ladder_for("cpu", batchsize.MAX_INPUT_BYTES * 2) == (1,)


def test_describe_says_how_the_size_was_chosen(tmp_path):
    times = {1: 0.01, 8: 0.005}
    assert BatchChoice(32, "given").describe() == "batch size 32 (given)"
    assert BatchChoice(4, "fixed").describe() == "batch size 4 (the model's fixed batch)"
    probed = BatchChoice(8, "probe", 0.31, times, tmp_path / "c.json")
    assert probed.describe() == (
        "batch size 8 (chosen for this machine: 0.31 s probe of sizes 1-8, cached)"
    )
    assert BatchChoice(8, "probe", 0.31, times).describe().endswith("1-8, not cached)")
    assert BatchChoice(8, "cache", 0.31, times).describe() == (
        "batch size 8 (chosen for this machine: cached 0.31 s probe of sizes 1-8)"
    )


# -- on real ONNX Runtime sessions (tiny models) -------------------------------------------------
def test_a_probe_is_cached_per_model_and_machine(tiny_model, cache_in_tmp):
    path, _ = tiny_model(hidden=6)
    first = choose_batch_size(OnnxClassifier(path, device="cpu"))
    assert first.source == "probe" and first.size in batchsize.CPU_LADDER
    assert first.size in first.seconds_per_image and first.cache_file is not None
    doc = json.loads(first.cache_file.read_text())
    assert first.cache_file == cache_in_tmp / batchsize.CACHE_FILE
    (entry,) = doc["entries"].values()
    assert doc["schema"] == 1 and entry["batch_size"] == first.size
    assert entry["key"]["device"] == "cpu" and entry["key"]["cpus"] >= 1
    again = choose_batch_size(OnnxClassifier(path, device="cpu"))  # a new session, same machine
    assert (again.source, again.size) == ("cache", first.size)
    # Another thread count is another key: probed again, and both entries kept.
    other = choose_batch_size(OnnxClassifier(path, device="cpu", threads=1))
    assert other.source == "probe"
    assert len(json.loads(first.cache_file.read_text())["entries"]) == 2


def test_the_same_model_object_is_probed_once(tiny_model, cache_in_tmp, monkeypatch):
    path, _ = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    first = choose_batch_size(model, use_cache=False)
    monkeypatch.setattr(batchsize, "probe", lambda *a, **k: pytest.fail("probed twice"))
    assert choose_batch_size(model) is first
    assert batchsize.batch_size_for(model, 99) == first.size
    assert not cache_in_tmp.exists()  # use_cache=False wrote nothing


def test_a_given_size_is_kept_and_nothing_is_probed(tiny_model, monkeypatch):
    path, _ = tiny_model()
    monkeypatch.setattr(batchsize, "probe", lambda *a, **k: pytest.fail("probed"))
    model = OnnxClassifier(path, device="cpu")
    assert choose_batch_size(model, 7) == BatchChoice(7, "given")
    with pytest.raises(EvaluationError, match="positive integer"):
        choose_batch_size(model, 0)


def test_a_fixed_batch_model_keeps_its_batch(tmp_path, monkeypatch):
    from conftest import build_linear_model, card_dict

    monkeypatch.setattr(batchsize, "probe", lambda *a, **k: pytest.fail("probed"))
    w = np.ones((3 * 16 * 16, 2))
    card = card_dict(["A", "B"], 16, 3)
    path = build_linear_model(tmp_path / "f.onnx", w, np.zeros(2), channels=3, size=16, batch=4,
                              card=card)  # fmt: skip
    assert choose_batch_size(OnnxClassifier(path, device="cpu")) == BatchChoice(4, "fixed")


def test_a_damaged_cache_file_is_ignored_and_replaced(tiny_model, cache_in_tmp, caplog):
    cache_in_tmp.mkdir()
    file = cache_in_tmp / batchsize.CACHE_FILE
    for damage in ("{not json", '{"schema": 99, "entries": {}}', "[1, 2]"):
        file.write_text(damage)
        path, _ = tiny_model(name=f"m{len(damage)}.onnx", seed=len(damage))
        with caplog.at_level(logging.WARNING, logger="informer_audit.batchsize"):
            choice = choose_batch_size(OnnxClassifier(path, device="cpu"))
        assert choice.source == "probe" and "ignored" in caplog.text
        assert json.loads(file.read_text())["schema"] == 1  # replaced by a good file
        caplog.clear()
    # a damaged entry in a good file: probed again, the entry rewritten
    doc = json.loads(file.read_text())
    (digest,) = doc["entries"]
    doc["entries"][digest]["batch_size"] = "eight"
    file.write_text(json.dumps(doc))
    choice = choose_batch_size(OnnxClassifier(path, device="cpu"))
    assert choice.source == "probe"
    assert isinstance(json.loads(file.read_text())["entries"][digest]["batch_size"], int)


def test_an_unwritable_cache_costs_a_probe_not_the_run(tiny_model, cache_in_tmp, caplog):
    cache_in_tmp.write_text("a file where the folder should be")
    path, _ = tiny_model()
    with caplog.at_level(logging.WARNING, logger="informer_audit.batchsize"):
        choice = choose_batch_size(OnnxClassifier(path, device="cpu"))
    assert choice.source == "probe" and choice.cache_file is None
    assert "cache not written" in choice.note and "not written" in caplog.text
    assert choice.describe().endswith("not cached)")


def test_a_probe_on_a_busy_machine_is_used_but_not_cached(tiny_model, cache_in_tmp, monkeypatch):
    monkeypatch.setattr(batchsize, "_cpu_seconds", lambda: (0.0, 0.0))
    monkeypatch.setattr(batchsize, "_others_share", lambda *a: 0.6)
    path, _ = tiny_model()
    choice = choose_batch_size(OnnxClassifier(path, device="cpu"))
    assert choice.source == "probe" and choice.cache_file is None and choice.busy == 0.6
    assert not (cache_in_tmp / batchsize.CACHE_FILE).exists()
    assert "60% of the CPUs" in choice.note
    assert "on a busy machine (60% of the CPUs taken by others), not cached" in choice.describe()


def test_the_share_of_other_processes_is_their_cpu_time_over_the_machines():
    cpus = os.cpu_count() or 1
    # the machine was busy 3 CPU-seconds over 2 s, this process took 1 of them
    assert batchsize._others_share((10.0, 5.0), (13.0, 6.0), 2.0) == pytest.approx(1.0 / cpus)
    assert batchsize._others_share(None, (1.0, 1.0), 1.0) is None


def test_an_empty_cache_variable_disables_the_cache(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(batchsize.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert batchsize.cache_dir() is None
    path, _ = tiny_model()
    choice = choose_batch_size(OnnxClassifier(path, device="cpu"))
    assert choice.source == "probe" and choice.cache_file is None
    assert not (tmp_path / "xdg").exists()
    monkeypatch.delenv(batchsize.CACHE_ENV)
    assert batchsize.cache_dir() == tmp_path / "xdg" / "informer-audit"


def test_the_probe_is_not_counted_as_the_models_work(tiny_model):
    path, _ = tiny_model()
    model = OnnxClassifier(path, device="cpu")
    choose_batch_size(model)
    assert model.n_forward == 0


# -- the chosen size never changes results -------------------------------------------------------
@pytest.fixture
def chosen_model(tiny_model, monkeypatch):
    """A tiny model whose 'chosen' size is 3 (odd: batches straddle images)."""
    path, _ = tiny_model(hidden=6)
    model = OnnxClassifier(path, device="cpu")
    monkeypatch.setattr(batchsize, "probe", lambda *a, **k: (3, {1: 2.0, 2: 1.5, 3: 1.0}, 0.01, ""))
    assert batchsize.batch_size_for(model, 99) == 3
    return model


def test_fd_maps_at_the_chosen_size_equal_the_given_sizes(chosen_model):
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    auto = FiniteDifferenceIxG(patch_size=4).explain(chosen_model, x)
    assert FiniteDifferenceIxG(patch_size=4).batch_size is None
    for b in (1, 64):
        given = FiniteDifferenceIxG(patch_size=4, batch_size=b).explain(chosen_model, x)
        np.testing.assert_allclose(auto, given, rtol=1e-5, atol=1e-7)


def test_lime_maps_at_the_chosen_size_equal_the_given_sizes(chosen_model):
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    settings = {"num_samples": 40, "segmentation": "slic", "n_segments": 6}
    auto = LimeSaliency(**settings).explain(chosen_model, x)
    given = LimeSaliency(**settings, batch_size=64).explain(chosen_model, x)
    np.testing.assert_allclose(auto, given, rtol=1e-6, atol=1e-9)


def test_tta_spread_at_the_chosen_size_equals_the_given_sizes(chosen_model):
    x = np.random.default_rng(2).normal(size=(4, 3, 16, 16)).astype(np.float32)
    auto = tta_spread(chosen_model, x, copies=3, blur_size=3, padding=2)
    given = tta_spread(chosen_model, x, copies=3, blur_size=3, padding=2, batch_size=12)
    np.testing.assert_allclose(auto, given, rtol=1e-6, atol=1e-9)


# -- the command line ----------------------------------------------------------------------------
def test_calibrate_and_flag_say_the_batch_size_in_their_header(labelled, cache_in_tmp):
    env = labelled(n_val=6, n_audit=2)
    monitor = env["tmp"] / "monitor.json"
    env = {**env, "monitor": monitor}
    r = calibrate(env, monitor, "--cv-repeats", 0)
    assert r.exit_code == 0, r.output
    words = " ".join(r.output.split())
    assert "batch size" in words and "(chosen for this machine:" in words
    assert (cache_in_tmp / batchsize.CACHE_FILE).is_file()
    r = flag(env, env["tmp"] / "flags.csv")
    assert r.exit_code == 0, r.output
    assert "(chosen for this machine: cached" in " ".join(r.output.split())
    r = flag(env, env["tmp"] / "flags2.csv", "--batch-size", 5)
    assert r.exit_code == 0, r.output
    assert "batch size 5 (given)" in " ".join(r.output.split())
    assert (env["tmp"] / "flags.csv").read_bytes() == (env["tmp"] / "flags2.csv").read_bytes()


def test_methods_without_onnx_runtime_batches_do_not_probe(labelled, cache_in_tmp):
    env = labelled(n_val=6, n_audit=2)
    r = calibrate(env, env["tmp"] / "m.json", "--method", "entropy", "--cv-repeats", 0,
                  saliency=())  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "batch size" not in r.output and not cache_in_tmp.exists()
