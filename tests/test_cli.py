"""The command line as a researcher uses it."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_simulate_bundled_sample_out_of_the_box():
    res = invoke("simulate", "--rtt", "50ms")
    assert res.exit_code == 0, res.output
    assert "12 utterances; measured trace" in res.output  # the bundled sample: real models, scripts/make_sample_trace.py
    for name in ("edge-only", "cloud-only", "k=5 gate=entropy:2.5 accept=rank:20"):
        assert name in res.output


def test_simulate_sweep_json_and_parquet(small_trace_path, tmp_path):
    out = tmp_path / "r.parquet"
    res = invoke("simulate", "--trace", str(small_trace_path), "--k", "3,5", "--gate", "always", "--gate", "entropy:1.5",
                 "--rtt", "20ms,0.1s", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["provenance"]["synthetic"] is True
    assert len(doc["summary"]) == (2 + 4) * 2  # baselines + k×gate, per RTT
    df = pl.read_parquet(out)
    assert df.height == 6 * 2 * 6  # policies × RTTs × utterances
    assert set(df["rtt_s"].unique().to_list()) == {0.02, 0.1}
    cloud = df.filter(pl.col("policy") == "cloud-only")
    assert cloud["exact_match_cloud"].min() == 1.0


def test_latency_grows_with_rtt(small_trace_path):
    res = invoke("simulate", "--trace", str(small_trace_path), "--gate", "always", "--rtt", "10ms,500ms", "--json")
    rows = [r for r in json.loads(res.output)["summary"] if r["gate"] == "always" and r["k"] == 5]
    lo, hi = sorted(rows, key=lambda r: r["rtt_s"])
    assert hi["latency_s"] - lo["latency_s"] == pytest.approx(0.49 * lo["cloud_calls"], rel=1e-9)


@pytest.mark.parametrize("args,phrase", [
    (["--rtt", "50 parsecs"], "cannot read --rtt"),
    (["--rtt", "50"], "has no unit; write 50ms or 50s"),
    (["--uplink", "fast"], "cannot read --uplink"),
    (["--gate", "vibes:3"], "unknown gate"),
    (["--accept", "rank:-2"], "whole number R >= 1"),
    (["--k", "five"], "not a whole number"),
    (["--gate", "random:2"], "between 0 and 1"),
    (["--trace", "does-not-exist"], "no trace at"),
])
def test_bad_input_is_one_sentence_and_exit_2(args, phrase):
    res = CliRunner().invoke(main, ["simulate", *args])
    assert res.exit_code == 2
    assert phrase in res.output
    assert "Traceback" not in res.output


def test_trace_synth_and_info(tmp_path):
    out = tmp_path / "syn"
    res = invoke("trace", "synth", str(out), "-n", "3", "--alpha", "0.9", "--seed", "4")
    assert res.exit_code == 0, res.output
    res = invoke("trace", "info", str(out))
    assert res.exit_code == 0 and "valid       yes" in res.output
    assert "synthetic   YES" in res.output
    again = CliRunner().invoke(main, ["trace", "synth", str(out), "-n", "3"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = CliRunner().invoke(main, ["trace", "synth", str(tmp_path / "b"), "--alpha", "1.5"])
    assert bad.exit_code == 2 and "alpha" in bad.output


def test_help_teaches():
    res = invoke("--help")
    commands = res.output.split("Commands:")[1]
    for name in ("simulate", "trace", "collect", "sweep", "breakeven", "fleet", "gates", "report", "timeline", "data",
                 "weights", "serve", "validate"):
        assert f"  {name} " in commands
    for name in ("serve", "validate"):
        sub = invoke(name, "--help").output
        assert "sectrace " + name in sub and "Options" in sub
    res = invoke("simulate", "--help")
    assert "50ms" in res.output and "Examples" in res.output


def test_bundled_sample_is_real_and_lossless_replays():
    from sectrace.protocol import cloud_only, lossless
    from sectrace.simulate import Replayer
    from sectrace.trace import load_trace, sample_trace_path

    tr = load_trace(sample_trace_path())
    assert not tr.synthetic and tr.manifest["drafter"]["name"].startswith("Qwen2.5-Coder-0.5B")
    rp = Replayer(tr)
    cloud = rp.replay(cloud_only(32))
    for k in (3, 5):
        rep = rp.replay(lossless(k, 32))
        assert all(a is not None and a.tokens == b.tokens for a, b in zip(rep.runs, cloud.runs))
