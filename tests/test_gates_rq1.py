"""RQ1 measurements: per-signal AUCs, the end-to-end frontier, dominance."""

from __future__ import annotations


import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")

from conftest import synthetic_sample, trace_subset, synthetic_trace  # noqa: E402
from sectrace.cli import main  # noqa: E402
from sectrace.analysis.evaluate import default_thresholds, dominates, frontier, pareto, signal_table  # noqa: E402

SAMPLE = synthetic_sample()


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


@pytest.fixture(scope="module")
def small(trace):
    return trace_subset(trace, 10)


def test_signal_table(trace):
    df = signal_table(trace)
    rej = {r["signal"]: r for r in df.filter(pl.col("label") == "reject").iter_rows(named=True)}
    # the synthetic model couples drafter confidence to rejection; depth carries no information
    assert rej["logprob"]["roc_auc"] > 0.8 and rej["entropy"]["roc_auc"] > 0.7
    assert abs(rej["depth"]["roc_auc"] - 0.5) < 0.08
    assert all(0 <= r["pr_auc"] <= 1 for r in rej.values())
    # emotion words matter for the impact label, not for plain rejection
    imp = {r["signal"]: r for r in df.filter(pl.col("label") == "impact").iter_rows(named=True)}
    assert imp["content:emotion"]["roc_auc"] > rej["content:emotion"]["roc_auc"] + 0.05


def test_frontier_bounds(small):
    specs = ["always", "never", "oracle", "entropy:2.0", "random:0.5"]
    f = {r["spec"]: r for r in frontier(small, specs, k=3, extend=True).iter_rows(named=True)}
    assert all(r["covered"] == 10 for r in f.values())
    assert f["always"]["exact_match_cloud"] == 1.0 and f["oracle"]["exact_match_cloud"] == 1.0
    assert f["oracle"]["cloud_calls"] < f["always"]["cloud_calls"]
    assert f["never"]["cloud_calls"] == 0 and f["never"]["similarity_cloud"] < 0.5
    for spec in ("entropy:2.0", "random:0.5"):
        assert f["never"]["similarity_cloud"] <= f[spec]["similarity_cloud"] <= 1.0


def test_extend_agrees_with_replay_where_covered(small):
    specs = ["always", "oracle", "entropy:1.5"]
    a = frontier(small, specs, k=3, extend=True)
    b = frontier(small, specs, k=3, extend=False)
    for ra, rb in zip(a.iter_rows(named=True), b.iter_rows(named=True)):
        if rb["covered"] == ra["covered"]:
            assert ra["cloud_calls"] == pytest.approx(rb["cloud_calls"])
            assert ra["similarity_cloud"] == pytest.approx(rb["similarity_cloud"])


def test_thresholds_span_signal(trace):
    t = default_thresholds(trace, "entropy")
    assert len(t) >= 5 and t == sorted(t)


def test_dominance_logic():
    df = pl.DataFrame({"gate": ["a"] * 3 + ["b"] * 2,
                       "cloud_calls": [0.0, 2.0, 4.0, 1.0, 3.0],
                       "similarity_cloud": [0.2, 0.8, 1.0, 0.4, 0.85]})
    d = dominates(df, "a", "b")
    assert d["dominates"] and d["mean_gain"] > 0
    assert not dominates(df, "b", "a")["dominates"]
    assert pareto(df.filter(pl.col("gate") == "a").select("cloud_calls", "similarity_cloud").to_numpy()).shape == (3, 2)


def test_cli_frontier(tmp_path):
    out = tmp_path / "f.parquet"
    res = CliRunner().invoke(main, ["gates", "frontier", "--gate", "entropy", "--gate", "content:emotion",
                                    "--k", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert {"entropy", "content", "oracle", "always", "never"} <= set(df["gate"].to_list())
    assert "oracle" in res.output and "cloud_calls" in res.output


def test_frontier_skips_missing_signals(tmp_path, trace):
    from sectrace.trace import write_trace

    bare = tmp_path / "bare"
    write_trace(bare, trace.manifest, trace.utterances, trace.nodes.drop("x_stability", "x_audio_shift"),
                trace.timings, trace.vocab)
    res = CliRunner().invoke(main, ["gates", "frontier", str(bare), "--gate", "stability", "--gate", "margin"])
    assert res.exit_code == 0, res.output
    assert "skipping stability" in res.output and "margin:" in res.output
