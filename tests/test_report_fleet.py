"""`sectrace report --fleet`: the throughput–latency section from `fleet --out` rows, numbers as `fleet` prints them.

The fleet runs are played on the bundled real trace (two policies × two Poisson rates); the section's table
must hold, per run, the summary `fleet --json` printed for the same run (same engine, same seed), and a file that
is not fleet output is refused with one sentence.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from sectrace.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    runner = CliRunner()
    args = ["fleet", "--devices", "4", "--utterances-per-device", "3", "--arrival-rate", "0.05,0.3", "--k", "3,5"]
    res = runner.invoke(main, [*args, "--out", str(d / "f.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(main, ["simulate", "--out", str(d / "r.parquet")]).exit_code == 0
    return d, json.loads(res.output)["runs"]


def test_the_fleet_section_shows_what_fleet_printed(runs):
    d, printed = runs
    res = CliRunner().invoke(main, ["report", str(d / "r.parquet"), "--no-quality", "--fleet", str(d / "f.parquet"),
                                    "--out", str(d / "rep")])
    assert res.exit_code == 0, res.output
    html = (d / "rep" / "report.html").read_text()
    assert "Fleet: throughput and latency" in html and 'href="#fleet"' in html
    assert (d / "rep" / "figures" / "fleet.png").stat().st_size > 1000
    table = pl.read_csv(d / "rep" / "tables" / "fleet.csv")
    assert table.height == len(printed) == 4
    for run in printed:
        row = table.filter((pl.col("policy") == run["policy"]) & (pl.col("arrival_rate") == run["arrival_rate"]))
        assert row.height == 1
        for col in ("captions_per_s", "response_p50_s", "response_p95_s", "response_p99_s", "queue_mean_s",
                    "mean_acceptance_length"):
            assert row[col][0] == pytest.approx(run[col], rel=1e-9), col
        assert row["response_p50_s"][0] <= row["response_p95_s"][0] <= row["response_p99_s"][0]


def test_a_file_that_is_not_fleet_output_is_refused(runs):
    d, _ = runs
    res = CliRunner().invoke(main, ["report", str(d / "r.parquet"), "--no-quality", "--fleet", str(d / "r.parquet"),
                                    "--out", str(d / "bad")])
    assert res.exit_code == 2 and "is not `sectrace fleet --out` output" in res.output
    assert "Traceback" not in res.output and not (d / "bad" / "report.html").exists()
