"""The flags and scores CSVs: what the writer writes, the reader reads back unchanged."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from informer_audit.errors import FlagsFormatError
from informer_audit.flagsfile import (
    FIELDS,
    FlagsLayout,
    read_flags_csv,
    score_name,
    write_flags_csv,
    write_scores_csv,
)
from informer_audit.monitor import FlagMonitor

ODD = ("a,b", 'quo"te', "Ünï cöde", "pipe|x", "semi;colon")
"""Class names a CSV writer must quote or a reader could split wrongly."""


def _rows(layout: FlagsLayout, n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` scored rows of values the CSV keeps exactly (8 significant digits)."""
    rng = np.random.default_rng(seed)
    k = len(layout.classes)
    out = []
    for i in range(n):
        pred = rng.random(k) < 0.5
        flag = rng.random(k) < 0.3
        dist = np.round(rng.uniform(0, 2, (k, k)), 4)
        dist = np.triu(dist, 1) + np.triu(dist, 1).T
        out.append(
            {
                "key": f'images/sub dir/{i}, odd "name".png',
                "probs": np.round(rng.random(k), 6),
                "score": np.round(rng.uniform(0, 3, k), 6),
                "pred": pred,
                "flag": flag,
                "audited": pred ^ flag,
                "dist": dist,
            }
        )
    return out


@pytest.mark.parametrize(
    ("method", "with_matrix"),
    [("informer", True), ("informer", False), ("entropy", False), ("tta", False), ("msp", False)],
)
def test_flags_csv_round_trip(tmp_path: Path, method: str, with_matrix: bool) -> None:
    layout = FlagsLayout(ODD, score_name(method), with_matrix)
    scored = _rows(layout, 4)
    rows = [
        layout.scored_row(
            r["key"],  # type: ignore[arg-type]
            r["probs"],  # type: ignore[arg-type]
            r["pred"],  # type: ignore[arg-type]
            r["score"],  # type: ignore[arg-type]
            r["flag"],  # type: ignore[arg-type]
            r["audited"],  # type: ignore[arg-type]
            dist=r["dist"] if with_matrix else None,  # type: ignore[arg-type]
        )
        for r in scored
    ]
    rows.insert(2, layout.failed_row("broken, file.png", "cannot read as an image: truncated"))
    path = tmp_path / "flags.csv"
    write_flags_csv(path, layout, iter(rows))
    assert not path.with_name("flags.csv.partial").exists()

    table = read_flags_csv(path)
    assert table.classes == list(ODD)
    assert table.score_name == score_name(method)
    assert [r.row for r in table.rows] == [1, 2, 3, 4, 5]
    assert len(table.ok_rows) == 4 and len(table.failed_rows) == 1
    failed = table.failed_rows[0]
    assert (failed.row, failed.key, failed.error) == (3, "broken, file.png", rows[2][2])
    assert np.isnan(failed.probs).all() and not failed.flag.any()
    for want, got in zip(scored, table.ok_rows, strict=True):
        assert got.key == want["key"]
        np.testing.assert_array_equal(got.probs, want["probs"])  # type: ignore[arg-type]
        np.testing.assert_array_equal(got.score, want["score"])  # type: ignore[arg-type]
        for name in ("pred", "flag", "audited"):
            np.testing.assert_array_equal(getattr(got, name), want[name])  # type: ignore[arg-type]
        if with_matrix:
            np.testing.assert_array_equal(got.dist, want["dist"])  # type: ignore[arg-type]
        else:
            assert got.dist is None
    # Writing what was read gives the same bytes.
    again = tmp_path / "again.csv"
    write_flags_csv(
        again,
        layout,
        (
            layout.scored_row(r.key, r.probs, r.pred, r.score, r.flag, r.audited, dist=r.dist)
            if r.ok
            else layout.failed_row(r.key, r.error)
            for r in table.rows
        ),
    )
    assert again.read_bytes() == path.read_bytes()


def test_layout_positions_name_their_columns() -> None:
    for layout in (
        FlagsLayout(ODD, "d", True),
        FlagsLayout(ODD, "tta", False, with_labels=True),
    ):
        cols = layout.columns
        assert cols[:3] == ["path", "status", "error"]
        for j, c in enumerate(ODD):
            for f in layout.fields:
                assert cols[layout.index(f, j)] == layout.column(f, c)
        assert len(cols) == 3 + len(layout.fields) * len(ODD) + (
            len(ODD) * (len(ODD) - 1) // 2 if layout.with_matrix else 0
        )
    assert FlagsLayout(ODD).fields == FIELDS
    assert FlagsLayout(ODD, with_labels=True).fields == ("label", *FIELDS)


@pytest.mark.parametrize("method", ["informer", "entropy"])
def test_scores_csv_reads_back(tmp_path: Path, method: str) -> None:
    classes = list(ODD[:3])
    rng = np.random.default_rng(1)
    n, k = 30, len(classes)
    y = (rng.random((n, k)) < 0.4).astype(float)
    y[0, 1] = np.nan  # unlabelled: a blank label cell
    probs = np.round(rng.random((n, k)), 6)
    scores = np.round(rng.uniform(0, 2, (n, k)), 6)
    direction = "below" if method == "informer" else "above"
    mon = FlagMonitor(method, direction).fit(scores, y, probs, classes)
    dist = np.full((k, k), 0.5) - 0.5 * np.eye(k)
    results = [
        SimpleNamespace(key=f"img {i}.png", probs=probs[i], score=scores[i], dist=dist, error=None)
        for i in range(n)
    ]
    failures = [SimpleNamespace(key="bad.png", error="unreadable")]
    calibration = SimpleNamespace(
        monitor=mon, results=results, y=y, failures=failures, flag_scores=mon.calibration_scores_
    )
    path = tmp_path / "scores.csv"
    write_scores_csv(path, calibration, classes)  # type: ignore[arg-type]

    with path.open(encoding="utf-8", newline="") as fh:
        header, *body = list(csv.reader(fh))
    assert (
        header
        == FlagsLayout(tuple(classes), score_name(method), method == "informer", True).columns
    )
    assert body[0][header.index(f"label_{classes[1]}")] == ""
    assert body[-1][:3] == ["bad.png", "failed", "unreadable"] and not any(body[-1][3:])

    table = read_flags_csv(path)
    yhat, flags, audited = mon.audit(probs, scores)
    assert table.score_name == score_name(method)
    np.testing.assert_array_equal([r.probs for r in table.ok_rows], probs)
    np.testing.assert_array_equal([r.score for r in table.ok_rows], scores)
    np.testing.assert_array_equal([r.flag for r in table.ok_rows], flags)
    np.testing.assert_array_equal([r.audited for r in table.ok_rows], audited)
    assert [r.key for r in table.failed_rows] == ["bad.png"]


def test_reader_refuses_what_the_writer_never_writes(tmp_path: Path) -> None:
    layout = FlagsLayout(("A", "B"))
    row = layout.scored_row(
        "x.png",
        np.array([0.5, 0.5]),
        np.array([True, False]),
        np.array([0.1, 0.2]),
        np.array([True, False]),
        np.array([False, False]),
    )
    path = tmp_path / "flags.csv"
    row[layout.index("audited", 0)] = "1"  # not pred XOR flag
    write_flags_csv(path, layout, [row])
    with pytest.raises(FlagsFormatError, match="audited_A must be pred_A"):
        read_flags_csv(path)
    row[layout.index("audited", 0)] = "0"
    row[layout.index("prob", 1)] = "nan"
    write_flags_csv(path, layout, [row])
    with pytest.raises(FlagsFormatError, match="prob_B is 'nan'; expected a finite number"):
        read_flags_csv(path)
