"""Timelines: one utterance's simulated run as Chrome/Perfetto trace JSON whose spans add up to its latency."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import synthetic_sample as sample_trace_path

from sectrace.cli import main

SAMPLE = str(sample_trace_path())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tl") / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", "--trace", SAMPLE, "--gate", "entropy:2.5", "--k", "3", "--rtt", "20ms,100ms",
                                  "--privacy", "token-only", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("policy", ["k=3 gate=entropy:2.5 accept=rank:20 token-only", "cloud-only", "edge-only"])
def test_timeline_spans_add_up(results, tmp_path, policy):
    out = tmp_path / "t.json"
    r = CliRunner().invoke(main, ["timeline", str(results), "--trace", SAMPLE, "--policy", policy,
                                  "--utt", "synth-0002", "--config", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    spans = [e for e in d["traceEvents"] if e["ph"] == "X"]
    lanes = {e["args"]["name"] for e in d["traceEvents"] if e["name"] == "thread_name"}
    assert lanes == {"edge", "network", "cloud"}
    row = pl.read_parquet(results).filter((pl.col("policy") == policy) & (pl.col("config") == 1)
                                          & (pl.col("utt_id") == "synth-0002")).row(0, named=True)
    end = max(e["ts"] + e["dur"] for e in spans)
    assert end / 1e6 == pytest.approx(row["latency_s"], rel=1e-6)
    assert sum(e["dur"] for e in spans) / 1e6 == pytest.approx(row["latency_s"], rel=1e-6)  # back to back
    names = {e["name"] for e in spans}
    if policy == "edge-only":
        assert "draft" in names and not {"uplink", "verify", "cloud prefill"} & names
    else:
        assert "uplink" in names and any(n.startswith("downlink") for n in names)
        assert any(n.startswith("cloud prefill") for n in names)
        assert d["otherData"]["policy"] == policy and d["otherData"]["rtt_s"] == 0.1
    if policy.startswith("k=3"):
        # the first (stateful) call prefills and verifies in one pass; later calls only verify
        assert row["escalations"] >= 1 and "draft" in names
        assert [e["name"] for e in spans].count("cloud prefill + verify") == 1
        assert [e["name"] for e in spans].count("verify") == row["escalations"] - 1


def test_timeline_unknown_policy(results, tmp_path):
    r = CliRunner().invoke(main, ["timeline", str(results), "--trace", SAMPLE, "--policy", "nope",
                                  "--out", str(tmp_path / "t.json")])
    assert r.exit_code == 2 and "no results row for policy 'nope'" in r.output
