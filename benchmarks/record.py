"""Run benchmarks several times and write their figures into the docs' benchmarks page.

    python benchmarks/record.py lime_vs_lime exact_vs_captum batch_choice [--runs 3]
        [--docs docs/benchmarks.md] [--logs docs/benchmark-runs] [--from-logs]

Each named benchmark (``benchmarks/<name>.py``, run with its defaults) runs ``--runs`` times in
turn: run 1 of every benchmark, then run 2 of every one, ... so that a slow hour of the machine
does not fall on one benchmark's runs only. Each run's whole output is kept in
``<logs>/<name>-<run>.txt``. In the docs page, the block between the lines
``<!-- record NAME -->`` and ``<!-- /record NAME -->`` is then replaced with what the runs
printed: the command, the machine (the benchmark's own ``host`` line), a table of the runs (the
RESULT figure and verdict, and the lines that carry the comparison), the range of the figure
over the runs, and every run's full output. Nothing in that block is typed by hand.

``--from-logs`` rewrites the blocks from the logs already in ``<logs>`` (no run). The exit code
is 1 when a block is missing from the page, a run printed no RESULT line, or the runs of one
benchmark disagree on the verdict; 0 otherwise (a benchmark whose runs all FAIL is recorded as
failing, consistently).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(
    r"^RESULT (?P<name>\S+) (?P<figure>\S+) (?P<unit>\S+) target (?P<op>\S+) (?P<target>\S+) "
    r"(?P<verdict>PASS|FAIL)$"
)
KEY_PREFIXES = ("ratio", "vs lime", "overhead", "probe cost", "choices", "same size")
"""Lines that carry a benchmark's comparison; they go into the runs' table."""


@dataclass
class Run:
    number: int
    text: str

    @property
    def result(self) -> re.Match[str] | None:
        lines = [ln for ln in self.text.splitlines() if ln.startswith("RESULT ")]
        return RESULT.match(lines[-1]) if lines else None

    def line(self, prefix: str) -> str:
        return next((ln for ln in self.text.splitlines() if ln.startswith(prefix)), "")

    def key_lines(self) -> list[str]:
        return [
            " ".join(ln.split())
            for ln in self.text.splitlines()
            if ln.lstrip().startswith(KEY_PREFIXES)
        ]


def run_once(name: str, number: int, logs: Path) -> Run:
    script = ROOT / "benchmarks" / f"{name}.py"
    print(f"record: {name} run {number} ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    text = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode not in (0, 1) else "")
    (logs / f"{name}-{number}.txt").write_text(text, encoding="utf-8")
    return Run(number, text)


def block(name: str, runs: list[Run]) -> str:
    """The docs' block for ``name`` from its runs' outputs."""
    results = [r.result for r in runs]
    host = runs[-1].line("host").removeprefix("host").strip() or "not printed"
    out = [
        f"Recorded with `python benchmarks/record.py {name} --runs {len(runs)}` (the "
        f"benchmark's defaults; `python benchmarks/{name}.py` runs it once). Machine: {host}.",
        "",
        "| run | figure | verdict | comparison (median of paired rounds, range) |",
        "|---|---|---|---|",
    ]
    for run, m in zip(runs, results, strict=True):
        figure = f"{m['figure']} {m['unit']} (target {m['op']} {m['target']})" if m else "-"
        verdict = m["verdict"] if m else "no RESULT line"
        key = "<br>".join(run.key_lines()).replace("|", "/")
        out.append(f"| {run.number} | {figure} | {verdict} | {key} |")
    figures = [float(m["figure"]) for m in results if m]
    verdicts = sorted({m["verdict"] for m in results if m})
    if figures:
        out += [
            "",
            f"Over the {len(runs)} runs: figure {min(figures):g}–{max(figures):g}; "
            f"verdict {' / '.join(verdicts)}"
            + (" in every run." if len(verdicts) == 1 and all(results) else " (they differ)."),
        ]
    for run in runs:
        out += [
            "",
            f"<details><summary>Run {run.number}: full output</summary>",
            "",
            "```text",
            run.text.rstrip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(out)


def replace_block(page: str, name: str, body: str) -> str | None:
    start, end = f"<!-- record {name} -->", f"<!-- /record {name} -->"
    if start not in page or end not in page:
        return None
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="benchmarks/<name>.py")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--logs", type=Path, default=ROOT / "docs" / "benchmark-runs")
    ap.add_argument("--from-logs", action="store_true", help="rewrite from the logs, no run")
    args = ap.parse_args()

    for name in args.names:
        if not (ROOT / "benchmarks" / f"{name}.py").is_file():
            print(f"record: no benchmarks/{name}.py", file=sys.stderr)
            return 2
    args.logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Run]] = {name: [] for name in args.names}
    for number in range(1, args.runs + 1):
        for name in args.names:
            if args.from_logs:
                path = args.logs / f"{name}-{number}.txt"
                if not path.is_file():
                    print(f"record: {path} missing (run without --from-logs)", file=sys.stderr)
                    return 2
                runs[name].append(Run(number, path.read_text(encoding="utf-8")))
            else:
                runs[name].append(run_once(name, number, args.logs))

    page = args.docs.read_text(encoding="utf-8")
    status = 0
    for name, its in runs.items():
        new = replace_block(page, name, block(name, its))
        if new is None:
            print(f"record: {args.docs} has no '<!-- record {name} -->' block", file=sys.stderr)
            status = 1
            continue
        page = new
        results = [r.result for r in its]
        verdicts = {m["verdict"] for m in results if m}
        line = ", ".join(m["figure"] + " " + m["verdict"] if m else "no RESULT" for m in results)
        print(f"{name}: {line}")
        if not all(results) or len(verdicts) > 1:
            status = 1
    args.docs.write_text(page, encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
