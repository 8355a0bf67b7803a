"""Fleet runs report the speculative-decoding metrics by simulate's definitions (one home: simulate.metrics).

On the bundled real trace, a one-device fleet plays each utterance once, so its acceptance metrics must be
simulate's for the same policy; and each is recomputed here by hand from the fleet's own per-caption rows.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main

NAMES = ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_emitted_tokens", "drafted_tokens",
         "draft_acceptance_rate", "mean_acceptance_length", "system_efficiency")


@pytest.mark.parametrize("k, gate, accept", [("5", "entropy:2.5", "rank:20"), ("3", "always", "top1")])
def test_fleet_acceptance_metrics_are_simulates(tmp_path, k, gate, accept):
    runner = CliRunner()
    pol = ["--k", k, "--gate", gate, "--accept", accept]
    out = tmp_path / "f.parquet"
    fl = runner.invoke(main, ["fleet", "--devices", "1", *pol, "--json", "--out", str(out)])
    assert fl.exit_code == 0, fl.output
    sim = runner.invoke(main, ["simulate", *pol, "--json"])
    assert sim.exit_code == 0, sim.output
    run = json.loads(fl.output)["runs"][0]
    want = next(r for r in json.loads(sim.output)["summary"] if r["policy"].startswith(f"k={k} "))
    for name in NAMES:
        assert run[name] == pytest.approx(want[name], rel=1e-12), name
    rows = pl.read_parquet(out)
    assert rows.height == 12
    assert run["mean_acceptance_length"] == pytest.approx(1 + rows["accepted"].sum() / rows["verify_calls"].sum())
    assert run["draft_acceptance_rate"] == pytest.approx(rows["accepted"].sum() / rows["verified"].sum())
    assert run["num_drafts"] == pytest.approx(rows["verify_calls"].mean())
    assert 0 <= run["draft_acceptance_rate"] <= 1 and run["mean_acceptance_length"] >= 1
    assert all(name in json.loads(fl.output)["definitions"] for name in NAMES)
