"""The benchmarks' shared timing rules (benchmarks/_paired.py): best of repeats, interleaving,
paired ratios and the RESULT line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _paired import Spread, best_of, interleave, result_line  # noqa: E402


def fake_timer(walls):
    """A timer that returns the next (wall, share) of ``walls`` and calls fn."""
    it = iter(walls)

    def timer(fn):
        wall, share = next(it)
        return wall, share, fn()

    return timer


def test_best_of_keeps_the_fastest_quiet_run():
    timer = fake_timer([(3.0, 0.0), (2.0, 0.5), (2.5, 0.0)])  # 2.0 was disturbed (50% busy)
    wall, share, result = best_of(lambda: "r", 3, first=timer, again=timer)
    assert (wall, share, result) == (2.5, 0.0, "r")
    noisy = fake_timer([(3.0, 0.9), (2.0, 0.5)])  # all disturbed: the fastest of them
    assert best_of(lambda: None, 2, first=noisy, again=noisy)[0] == 2.0


def test_interleave_alternates_the_order_and_pairs_the_rounds():
    order = []
    sides = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    walls = iter([1.0, 2.0, 4.0, 2.0, 1.5, 3.0])  # a b | b a | a b

    def timer(fn):
        fn()
        return next(walls), 0.0, None

    runs = interleave(sides, 3, timer=timer)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert runs.seconds == {"a": [1.0, 2.0, 1.5], "b": [2.0, 4.0, 3.0]}
    assert runs.ratios("a", "b") == [0.5, 0.5, 0.5]


def test_interleave_with_repeats_runs_each_side_back_to_back():
    calls = []
    timer = fake_timer([(2.0, 0.0), (1.0, 0.0), (5.0, 0.0), (4.0, 0.0)])
    runs = interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        1,
        repeats=2,
        timer=timer,
        again=timer,
    )
    assert calls == ["a", "a", "b", "b"]
    assert runs.seconds == {"a": [1.0], "b": [4.0]}


def test_spread_and_the_result_line():
    spread = Spread.of([1.2, 0.9, 1.0])
    assert spread.median == 1.0 and spread.text() == "1.000 (rounds 0.900-1.200, n=3)"
    assert result_line("x", 1.0996, "x", "<=", 1.10) == "RESULT x 1.100 x target <= 1.10 PASS"
    assert result_line("x", 1.1006, "x", "<=", 1.10).endswith("FAIL")
    assert result_line("y", 0.5, "x", ">=", 0.6).endswith("FAIL")


def test_record_rewrites_only_its_block_from_the_runs_output(tmp_path):
    import record

    page = "intro\n<!-- record demo -->\nold text\n<!-- /record demo -->\nafter\n"
    runs = [
        record.Run(1, "host         CPU X, 2 CPUs\nratio  a / b 0.97 (rounds 0.9-1.0, n=3)\n"
                   "RESULT demo 0.970 x target <= 1.00 PASS\n"),
        record.Run(2, "host         CPU X, 2 CPUs\nratio  a / b 0.99 (rounds 0.9-1.1, n=3)\n"
                   "RESULT demo 0.990 x target <= 1.00 PASS\n"),
    ]  # fmt: skip
    body = record.block("demo", runs)
    new = record.replace_block(page, "demo", body)
    assert new.startswith("intro\n<!-- record demo -->\n") and new.endswith("demo -->\nafter\n")
    assert "old text" not in new and "Machine: CPU X, 2 CPUs." in new
    assert "| 1 | 0.970 x (target <= 1.00) | PASS | ratio a / b 0.97 (rounds 0.9-1.0, n=3) |" in new
    assert "figure 0.97–0.99; verdict PASS in every run." in new
    assert record.replace_block("no markers", "demo", body) is None
    failing = record.Run(3, "RESULT demo 1.020 x target <= 1.00 FAIL\n")
    assert "verdict FAIL / PASS (they differ)." in record.block("demo", [*runs, failing])
