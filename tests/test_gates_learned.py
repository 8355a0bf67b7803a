"""Learned gates: grouped CV, the JSON export equals scikit-learn, safe loading, feature checks, CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")

from conftest import synthetic_replayer, synthetic_sample, synthetic_trace, trace_subset

from sectrace.cli import main
from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.gates.features import available_features, block_matrix, node_table
from sectrace.gates.learned import _fit, export_model, load_learned, raw_score, save_gate, train_gate
from sectrace.protocol import Accept, Always, Block, Never, Policy

SAMPLE = synthetic_sample()


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


@pytest.fixture(scope="module")
def small(trace):
    """The first 12 utterances: enough for 3-fold grouped CV, fast enough for the default test run."""
    return trace_subset(trace, 12)


@pytest.fixture(scope="module")
def logreg_doc(small):
    return train_gate(small, "logreg", folds=3)


def test_node_table_is_drafter_side(trace):
    feats = available_features(trace)
    assert feats[:5] == ["logprob", "entropy", "margin", "p2", "depth"]
    assert "x_stability" in feats and "emotion_word" in feats
    tab = node_table(trace, feats)
    assert not any(c.startswith("v_") for c in tab.columns)  # no verifier-side feature leaks in
    assert 0.1 < tab["reject"].mean() < 0.6
    assert (tab["impact"] <= tab["reject"]).all()  # high impact is a subset of rejection


@pytest.mark.parametrize("kind", ["logreg", "gbt"])
def test_export_matches_sklearn(small, kind):
    feats = available_features(small)
    tab = node_table(small, feats)
    X, y = tab.select(feats).to_numpy().astype(float), tab["reject"].to_numpy().astype(int)
    est = _fit(kind, X[:1500], y[:1500], 0) if kind == "logreg" else _fit_small_gbt(X[:1500], y[:1500])
    ours = raw_score(export_model(kind, est), X[1500:1700])
    np.testing.assert_allclose(ours, est.decision_function(X[1500:1700]), rtol=1e-6, atol=1e-8)


def _fit_small_gbt(X, y):
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(X, y)


def test_train_records_provenance_and_cv(logreg_doc, small):
    d = logreg_doc
    assert d["features"] == available_features(small)
    assert d["trained_on"]["utterances"] == 12 and d["trained_on"]["synthetic"] is True
    assert d["cv"]["grouped_by"] == "utt_id" and d["cv"]["folds"] == 3
    # coupling 0.6 makes drafter confidence predictive: well above chance, below perfect
    assert 0.8 < d["cv"]["roc_auc"] < 1.0
    assert d["label"] == {"name": "reject", "mode": "audio", "rank": 1}
    json.dumps(d)  # plain JSON all the way down


def test_train_gate_cross_validation_is_grouped_by_utterance(small, monkeypatch):
    """The project's own CV loop (train_gate), observed from inside: every utterance's rows sit in exactly
    one test fold and never in that fold's training rows, and every row is scored out of fold exactly once.

    A row-index column rides along as an extra feature so that the rows each fit and each scoring see can
    be told apart; a plain KFold (contiguous row chunks that cut through utterances) fails this."""
    from sectrace.gates import learned

    real_table, real_fit, real_score = learned.node_table, learned._fit, learned.raw_score
    seen = {"table": None, "fit": [], "score": []}

    def table(trace, feats, mode="audio", rank=1):
        tab = real_table(trace, [f for f in feats if f != "rowid"], mode, rank)
        tab = tab.with_row_index("rowid").with_columns(pl.col("rowid").cast(pl.Float64))
        seen["table"] = tab
        return tab

    def fit(kind, X, y, seed):
        seen["fit"].append(X[:, -1].astype(int))
        return real_fit(kind, X, y, seed)

    def score(model, X):
        seen["score"].append(X[:, -1].astype(int))
        return real_score(model, X)

    monkeypatch.setattr(learned, "node_table", table)
    monkeypatch.setattr(learned, "_fit", fit)
    monkeypatch.setattr(learned, "raw_score", score)
    doc = train_gate(small, "logreg", folds=3, features=["logprob", "entropy", "rowid"])
    assert doc["cv"]["folds"] == 3 and doc["cv"]["grouped_by"] == "utt_id"
    utt = np.array(seen["table"]["utt_id"].to_list())
    n = len(utt)
    assert len(seen["score"]) == 3 and len(seen["fit"]) == 4  # 3 folds, then the final fit on everything
    assert sorted(seen["fit"][-1].tolist()) == list(range(n))
    tested = np.concatenate(seen["score"])
    assert sorted(tested.tolist()) == list(range(n))  # each row scored out of fold exactly once
    fold_of_utt = {}
    for train_rows, test_rows in zip(seen["fit"], seen["score"]):
        assert set(train_rows.tolist()) == set(range(n)) - set(test_rows.tolist())
        assert not set(utt[train_rows]) & set(utt[test_rows])
        for u in set(utt[test_rows]):
            assert u not in fold_of_utt, f"utterance {u} is split across test folds"
            fold_of_utt[u] = len(fold_of_utt)
    assert set(fold_of_utt) == set(utt) and len(set(utt)) == 12


def test_learned_gate_roundtrip_and_escalation(tmp_path, logreg_doc, trace):
    path = tmp_path / "g.json"
    save_gate(logreg_doc, path)
    lo = parse_gate(f"learned:{path}:0.05", trace)
    hi = parse_gate(f"learned:{path}:0.999", trace)
    shaky = {"mc_agree": 0.5, "mc_prob_var": 0.05, "mc_entropy": 3.0}
    sure = {"mc_agree": 1.0, "mc_prob_var": 0.0, "mc_entropy": 0.1}
    risky = Block((5, 6), (-3.0, -0.1), (4.0, 0.5), (0.01, 0.9), 3,
                  ({"stability": 0.05, "audio_shift": 0.1, **shaky}, {"stability": 0.9, "audio_shift": 0.1, **sure}))
    safe = Block((5,), (-0.01,), (0.1,), (0.98,), 3, ({"stability": 0.99, "audio_shift": 0.1, **sure},))
    assert lo.block_prob(risky) > lo.block_prob(safe)
    assert lo.escalate(risky) and not hi.escalate(safe)
    # In a replay: a calibrated probability is > 0 for every block and never > 1, so thresholds 0 and 1
    # must replay exactly as the always and never gates; 0.05 escalates some blocks but not all.
    rp = synthetic_replayer()

    def replay(gate, spec):
        return rp.replay(Policy(k=3, gate=gate, gate_spec=spec, accept=Accept("top1", 1), privacy="features"))

    for thr, ref_gate in (("0", Always()), ("1", Never())):
        got = replay(parse_gate(f"learned:{path}:{thr}", trace), f"learned:{thr}")
        ref = replay(ref_gate, f"ref-{thr}")
        assert ref.covered.all() and got.covered.all()
        for a, b in zip(got.runs, ref.runs):
            assert a.tokens == b.tokens and a.events == b.events
    mid = replay(lo, "learned:0.05")
    assert mid.covered.all()
    escalated = sum(r.escalations for r in mid.runs)
    assert 0 < escalated < sum(r.blocks for r in mid.runs)


def test_missing_features_fail_clearly(tmp_path, logreg_doc, trace):
    path = tmp_path / "g.json"
    save_gate(logreg_doc, path)
    bare = type(trace)(trace.manifest, trace.utterances, trace.nodes.drop("x_audio_shift"), trace.timings,
                       trace.vocab, trace.path)
    with pytest.raises(UserError, match="x_audio_shift"):
        load_learned(path, 0.5, bare)
    g = load_learned(path, 0.5)
    with pytest.raises(UserError, match="x_audio_shift"):
        g.escalate(Block((5,), (-0.1,), (0.1,), (0.9,), 0, ({"stability": 0.5},)))


def test_loading_is_safe(tmp_path):
    bad = tmp_path / "evil.json"
    bad.write_bytes(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(UserError, match="not a sectrace learned gate"):
        load_learned(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not a sectrace learned gate"):
        load_learned(other)
    with pytest.raises(UserError, match="no learned gate"):
        load_learned(tmp_path / "missing.json")
    with pytest.raises(UserError, match="probability"):
        parse_gate(f"learned:{other}:1.5")


def test_block_matrix_matches_node_table(trace):
    feats = available_features(trace)
    tab = node_table(trace, feats).head(1)
    row = trace.nodes.filter((pl.col("utt_id") == tab["utt_id"][0]) & (pl.col("node_id") == tab["node_id"][0]))
    r = row.row(0, named=True)
    blk = Block((r["d_token"],), (r["d_logprob"],), (r["d_entropy"],), (r["d_margin"],), r["depth"],
                ({c[2:]: v for c, v in r.items() if c.startswith("x_")},))  # every x_* signal the trace has
    from sectrace.gates.features import emotion_ids

    np.testing.assert_allclose(block_matrix(blk, feats, emotion_ids(trace))[0],
                               tab.select(feats).to_numpy()[0], rtol=1e-5)


def test_cli_train_eval_simulate(tmp_path, small, trace):
    out = tmp_path / "gate.json"
    runner = CliRunner()
    res = runner.invoke(main, ["gates", "train", "--trace", str(SAMPLE), "--model", "logreg", "--out", str(out),
                               "--folds", "2", "--features", "logprob,entropy,x_stability"])
    assert res.exit_code == 0, res.output
    assert "ROC-AUC" in res.output and out.exists()
    res = runner.invoke(main, ["gates", "eval", "--trace", str(SAMPLE), "--gate", str(out), "--out", str(tmp_path / "e.parquet")])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(tmp_path / "e.parquet")
    assert {"entropy", "stability", "audio"} <= set(df["signal"].to_list())
    res = runner.invoke(main, ["simulate", "--trace", str(SAMPLE), "--gate", f"learned:{out}:0.5", "--k", "3", "--accept", "top1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["gates", "train", "--out", str(tmp_path / "g2.json"), "--features", "nope"])
    assert res.exit_code == 2 and "unknown feature" in res.output


def test_impact_label_and_blind_mode(small):
    d = train_gate(small, "logreg", label="impact", mode="blind", rank=3, folds=2,
                   features=["logprob", "x_audio_shift", "emotion_word"])
    assert d["label"] == {"name": "impact", "mode": "blind", "rank": 3}
    assert d["emotion_ids"] and 0.5 < d["cv"]["roc_auc"] <= 1.0
    with pytest.raises(UserError, match="no nope verifier"):
        train_gate(small, "logreg", mode="nope")
