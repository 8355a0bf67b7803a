"""Learned gates: grouped CV, the JSON export equals scikit-learn, safe loading, feature checks, CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")

from conftest import synthetic_sample, trace_subset, synthetic_trace  # noqa: E402
from sectrace.cli import main  # noqa: E402
from sectrace.errors import UserError  # noqa: E402
from sectrace.gates import parse_gate  # noqa: E402
from sectrace.gates.features import available_features, block_matrix, node_table  # noqa: E402
from sectrace.gates.learned import _fit, export_model, load_learned, raw_score, save_gate, train_gate  # noqa: E402
from sectrace.protocol import Accept, Block, Policy  # noqa: E402
from sectrace.simulate import Replayer  # noqa: E402

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


def test_grouped_cv_keeps_utterances_apart(small):
    from sklearn.model_selection import GroupKFold

    tab = node_table(small, ["logprob"])
    g = tab["utt_id"].to_numpy()
    for tr_idx, te_idx in GroupKFold(n_splits=3).split(g, g, g):
        assert not set(g[tr_idx]) & set(g[te_idx])


def test_learned_gate_roundtrip_and_escalation(tmp_path, logreg_doc, trace):
    path = tmp_path / "g.json"
    save_gate(logreg_doc, path)
    lo = parse_gate(f"learned:{path}:0.05", trace)
    hi = parse_gate(f"learned:{path}:0.999", trace)
    risky = Block((5, 6), (-3.0, -0.1), (4.0, 0.5), (0.01, 0.9), 3,
                  ({"stability": 0.05, "audio_shift": 0.1}, {"stability": 0.9, "audio_shift": 0.1}))
    safe = Block((5,), (-0.01,), (0.1,), (0.98,), 3, ({"stability": 0.99, "audio_shift": 0.1},))
    assert lo.block_prob(risky) > lo.block_prob(safe)
    assert lo.escalate(risky) and not hi.escalate(safe)
    rep = Replayer(trace).replay(Policy(k=3, gate=lo, gate_spec="learned", accept=Accept("top1", 1),
                                        privacy="features"))
    assert sum(r is not None for r in rep.runs) > 0


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
                ({"stability": r["x_stability"], "audio_shift": r["x_audio_shift"]},))
    from sectrace.gates.features import emotion_ids

    np.testing.assert_allclose(block_matrix(blk, feats, emotion_ids(trace))[0],
                               tab.select(feats).to_numpy()[0], rtol=1e-5)


def test_cli_train_eval_simulate(tmp_path, small, trace):
    out = tmp_path / "gate.json"
    runner = CliRunner()
    res = runner.invoke(main, ["gates", "train", str(SAMPLE), "--model", "logreg", "--out", str(out),
                               "--folds", "2", "--features", "logprob,entropy,x_stability"])
    assert res.exit_code == 0, res.output
    assert "ROC-AUC" in res.output and out.exists()
    res = runner.invoke(main, ["gates", "eval", str(SAMPLE), "--gate", str(out), "--out", str(tmp_path / "e.parquet")])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(tmp_path / "e.parquet")
    assert {"entropy", "stability", "audio"} <= set(df["signal"].to_list())
    res = runner.invoke(main, ["simulate", str(SAMPLE), "--gate", f"learned:{out}:0.5", "--k", "3", "--accept", "top1"])
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
