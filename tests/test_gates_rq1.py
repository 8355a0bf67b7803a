"""RQ1 measurements: per-signal AUCs, the end-to-end frontier, dominance."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")

from conftest import synthetic_sample, synthetic_trace, trace_subset  # noqa: E402

from sectrace.analysis.evaluate import default_thresholds, dominates, frontier, pareto, signal_table  # noqa: E402
from sectrace.cli import main  # noqa: E402
from sectrace.gates import parse_gate  # noqa: E402
from sectrace.protocol import Accept, Policy  # noqa: E402
from sectrace.simulate import Replayer  # noqa: E402

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


def test_extend_fills_what_the_trie_lacks_and_agrees_where_it_has_it(tmp_path):
    """A trace explored only with edge-only, cloud-only and always-escalate k=3: other gates leave its trie.
    Extension generates the missing states from the trace's own model (every utterance covered); on the
    utterances the trie does cover, the extended and the replayed runs are the same runs, so every mean is
    equal. The two arms really read different sources here (model vs. written trie)."""
    import polars as pl
    from conftest import make_trace

    from sectrace.protocol import cloud_only, drafter_only, lossless
    from sectrace.trace import load_trace

    tr = load_trace(make_trace(tmp_path / "thin", n=8, max_new=40, seed=5,
                               policies=[drafter_only(40), cloud_only(40), lossless(3, 40, privacy="features")]))
    specs = ["always", "oracle", "entropy:1.5", "entropy:3.0", "margin:0.3"]
    ext = {r["spec"]: r for r in frontier(tr, specs, k=3, extend=True).iter_rows(named=True)}
    rep = {r["spec"]: r for r in frontier(tr, specs, k=3, extend=False).iter_rows(named=True)}
    assert all(r["covered"] == 8 for r in ext.values())
    assert rep["always"]["covered"] == 8 and rep["entropy:3.0"]["covered"] == 8  # explored / edge-only path
    thin = [s for s in specs if rep[s]["covered"] < 8]
    assert {"oracle", "margin:0.3"} <= set(thin), rep
    cols = ("covered", "cloud_calls", "cloud_tokens", "drafted", "exact_match_cloud", "similarity_cloud", "n_tokens")
    for spec in specs:
        if spec not in thin:  # fully covered: the same runs either way
            assert [ext[spec][c] for c in cols] == [rep[spec][c] for c in cols], spec
            continue
        # which utterances the trie covers for this gate, and the two arms restricted to them
        pol = Policy(k=3, gate=parse_gate(spec, tr), gate_spec=spec, accept=Accept("top1", 1), privacy="features",
                     max_new_tokens=40)
        r = Replayer(tr).replay(pol)
        keep = [u for u, c in zip(r.utt_ids, r.covered) if c]
        assert len(keep) == rep[spec]["covered"] >= 1
        sub = type(tr)(tr.manifest, tr.utterances.filter(pl.col("utt_id").is_in(keep)),
                       tr.nodes.filter(pl.col("utt_id").is_in(keep)), tr.timings, tr.vocab, tr.path)
        a = frontier(sub, [spec], k=3, extend=True).row(0, named=True)
        b = frontier(sub, [spec], k=3, extend=False).row(0, named=True)
        assert [a[c] for c in cols] == [b[c] for c in cols], spec
        assert [b[c] for c in cols] == [rep[spec][c] for c in cols], spec


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
    res = CliRunner().invoke(main, ["gates", "frontier", "--trace", str(bare), "--gate", "stability", "--gate", "margin"])
    assert res.exit_code == 0, res.output
    assert "skipping stability" in res.output and "margin:" in res.output
