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


LADDER = (1, 2, 4, 8, 16, 32, 64)
GPU_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def run_probe(machine, ladder=LADDER, **kw):
    kw.setdefault("budget_s", 1e-9)  # no climb past the reference unless a test asks
    return probe(machine.run, ladder, clock=machine.clock, **kw)


def test_the_reference_is_the_largest_size_up_to_the_default():
    assert batchsize.reference_size(LADDER) == batchsize.DEFAULT_BATCH == 32
    assert batchsize.reference_size((1, 2, 4, 8)) == 8  # a ladder cut by the input's size
    assert batchsize.reference_size((64, 128)) == 64


def test_a_flat_landscape_keeps_the_default():
    machine = FakeMachine({b: 10.0 for b in LADDER})
    size, per_image, seconds, note = run_probe(machine)
    assert size == 32 and note == ""
    # the reference first and last, the whole descent between (nothing fell behind)
    assert machine.runs == [32, 16, 8, 4, 2, 1, 32]
    assert per_image == {b: 10.0 for b in (1, 2, 4, 8, 16, 32)}
    assert seconds == pytest.approx(10.0 * (32 + 31 + 32))


def test_a_size_is_chosen_only_when_clearly_faster_than_the_default():
    # 16 is 1.5% faster than 32: within the tie margin, the default stays
    near = FakeMachine({64: 20.0, 32: 10.0, 16: 9.85, 8: 10.0, 4: 11.0, 2: 12.0, 1: 13.0})
    assert run_probe(near)[0] == 32
    # 8 is 5% faster; 16 (4% faster) ties with it within 2%: the larger of the two wins
    clear = FakeMachine({64: 20.0, 32: 10.0, 16: 9.6, 8: 9.5, 4: 11.0, 2: 12.0, 1: 13.0})
    assert run_probe(clear)[0] == 16
    alone = FakeMachine({64: 20.0, 32: 10.0, 16: 9.9, 8: 9.0, 4: 11.0, 2: 12.0, 1: 13.0})
    assert run_probe(alone)[0] == 8


def test_the_descent_stops_at_the_first_size_that_falls_behind():
    machine = FakeMachine({64: 20.0, 32: 10.0, 16: 10.0, 8: 10.3, 4: 10.5, 2: 12.0, 1: 13.0})
    size, per_image, _, _ = run_probe(machine)
    # 8 is 3% behind (within twice the 2% margin): on; 4 is 5% behind: the descent ends
    assert machine.runs == [32, 16, 8, 4, 32] and size == 32
    assert sorted(per_image) == [4, 8, 16, 32]


def test_the_default_keeps_the_faster_of_its_two_runs():
    # a fresh session's first run is twice as slow: it neither loses the reference its place
    # nor ends the descent (the sizes below are compared with their fastest rival)
    machine = FakeMachine({b: 10.0 for b in LADDER} | {16: 9.9}, spikes={(32, 1): 2.0})
    size, per_image, _, _ = run_probe(machine)
    assert size == 32 and per_image[32] == pytest.approx(10.0)


def test_on_a_gpu_the_climb_goes_past_the_default_within_the_budget():
    cost = {1: 50.0, 2: 30.0, 4: 20.0, 8: 12.0, 16: 8.0, 32: 5.0, 64: 3.0, 128: 2.0, 256: 1.9}
    machine = FakeMachine(cost)
    size, per_image, _, _ = run_probe(machine, GPU_LADDER, budget_s=1e9)
    assert size == 256 and sorted(per_image) == [16, 32, 64, 128, 256]
    # two runs per size above the reference; the descent stopped at 16 (60% behind)
    assert machine.runs == [32, 16, 64, 64, 128, 128, 256, 256, 32]
    # a budget that prices 256 out: elapsed before 256 = 32*5 + 16*8 + 2*(64*3 + 128*2) = 1184,
    # projected 1184 + 2.0 * 2 * 256 = 2208 > 2000 (the next size is priced at 2.0 per image)
    capped = FakeMachine(cost)
    size, per_image, _, _ = run_probe(capped, GPU_LADDER, budget_s=2000.0)
    assert size == 128 and 256 not in per_image


def test_a_failing_size_ends_the_climb_with_a_note(caplog):
    cost = {b: 10.0 / b for b in GPU_LADDER}
    machine = FakeMachine(cost, fail_at=128)
    with caplog.at_level(logging.WARNING, logger="informer_audit.batchsize"):
        size, per_image, _, note = run_probe(machine, GPU_LADDER, budget_s=1e9)
    assert size == 64 and 128 not in per_image and 256 not in machine.runs
    assert "batch 128 failed" in note and "out of memory" in note
    assert "batch 128 failed" in caplog.text


def test_a_failing_default_leaves_the_smaller_sizes_to_choose_from():
    machine = FakeMachine({1: 10.0, 2: 8.0, 4: 7.0, 8: 6.0, 16: 6.5}, fail_at=32)
    size, per_image, _, note = run_probe(machine)
    # the largest size that ran (16) stands in for the reference; 8 beats it by 7.7%
    assert size == 8 and "batch 32 failed" in note
    assert machine.runs == [16, 8, 4]  # 4 is 17% behind: the descent ends; nothing above 32
    nothing = FakeMachine({1: 1.0}, fail_at=1)
    assert run_probe(nothing, (1,))[0] is None


def test_bad_probe_settings_are_refused():
    with pytest.raises(EvaluationError, match="budget"):
        probe(lambda b: None, LADDER, budget_s=0)
    with pytest.raises(EvaluationError, match="tie"):
        probe(lambda b: None, LADDER, tie=1.5)


def test_ladders_respect_the_device_and_the_input_size():
    assert batchsize.ladder_for("cpu", 100) == batchsize.CPU_LADDER
    assert batchsize.ladder_for("cuda", 100)[-1] == 1024
    big = batchsize.MAX_INPUT_BYTES // 20  # 20 such images fit in one run, not 32
    assert batchsize.ladder_for("cuda", big) == (1, 2, 4, 8, 16)
    assert batchsize.ladder_for("cpu", batchsize.MAX_INPUT_BYTES * 2) == (1,)


def test_describe_says_how_the_size_was_chosen(tmp_path):
    times = {4: 0.0062, 8: 0.005, 16: 0.0058, 32: 0.006}
    assert BatchChoice(32, "given").describe() == "batch size 32 (given)"
    assert BatchChoice(4, "fixed").describe() == "batch size 4 (the model's fixed batch)"
    probed = BatchChoice(8, "probe", 0.81, times, tmp_path / "c.json")
    assert probed.describe() == (
        "batch size 8 (chosen for this machine: 0.81 s probe of sizes 4-32, cached)"
    )
    assert BatchChoice(8, "probe", 0.81, times).describe().endswith("4-32, not cached)")
    kept = BatchChoice(32, "probe", 0.8, times, tmp_path / "c.json")
    assert kept.describe() == (
        "batch size 32 (chosen for this machine: 0.80 s probe of sizes 4-32, none 2% faster "
        "than 32, cached)"
    )
    assert BatchChoice(8, "cache", 0.81, times).describe() == (
        "batch size 8 (chosen for this machine: cached 0.81 s probe of sizes 4-32)"
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


def test_library_scorers_given_no_batch_size_use_the_chosen_one(chosen_model, monkeypatch):
    from informer_audit.experiment import EvaluationPlan
    from informer_audit.scorers import build_scorer

    assert EvaluationPlan().batch_size is None
    fd, tta = build_scorer(saliency="fd", saliency_params={"patch_size": 4}), build_scorer("tta")
    assert fd.adapter.params()["batch_size"] is None and tta.batch_size is None
    assert build_scorer(saliency="gradient").adapter.batch_size == 8  # torch's own default
    batches = []
    logits = chosen_model.logits
    monkeypatch.setattr(chosen_model, "logits", lambda x: batches.append(len(x)) or logits(x))
    x = np.random.default_rng(3).normal(size=(2, 3, 16, 16)).astype(np.float32)
    fd.adapter.explain(chosen_model, x)
    assert max(batches[1:]) == 3  # after the clean pass: the chosen size, not the former 32


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
