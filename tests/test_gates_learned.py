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


# --- train_gate's own steps on a hand-made node table (what mutation testing found unpinned) ----------------
def _hand_table(n_pos: int, n: int = 20, n_utts: int = 4, label: str = "reject"):
    """n rows over n_utts utterances, one feature that separates the classes only roughly, n_pos positives."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.array([1] * n_pos + [0] * (n - n_pos)))
    f = y + rng.normal(0, 0.8, n)
    return pl.DataFrame({"utt_id": [f"u{i % n_utts}" for i in range(n)], "f": f, label: y,
                         "impact" if label == "reject" else "reject": y})


def _patch_table(monkeypatch, tab):
    from sectrace.gates import learned

    monkeypatch.setattr(learned, "node_table", lambda trace, feats, mode="audio", rank=1: tab)


@pytest.mark.parametrize("n_pos,ok", [(4, False), (5, True), (15, True), (16, False)])
def test_train_gate_needs_five_examples_of_each_class(small, monkeypatch, n_pos, ok):
    _patch_table(monkeypatch, _hand_table(n_pos))
    if ok:
        assert train_gate(small, "logreg", folds=2, features=["f"])["trained_on"]["tokens"] == 20
    else:
        with pytest.raises(UserError) as e:
            train_gate(small, "logreg", folds=2, features=["f"])
        assert str(e.value) == f"too few reject examples ({n_pos} of 20) to train a gate on this trace"


def test_train_gate_refuses_with_one_sentence(small, monkeypatch):
    for kw, msg in (({"kind": "svm"}, "unknown model 'svm'; use logreg or gbt"),
                    ({"label": "wrong"}, "unknown label 'wrong'; use reject or impact")):
        with pytest.raises(UserError) as e:
            train_gate(small, **{"kind": "logreg", **kw})
        assert str(e.value) == msg
    _patch_table(monkeypatch, _hand_table(10, n_utts=1))
    with pytest.raises(UserError) as e:
        train_gate(small, "logreg", features=["f"])
    assert str(e.value) == "cross-validation needs at least 2 utterances in the trace"


def test_train_gate_document_by_field(small, monkeypatch):
    """Folds are capped by the utterances (4 here), progress ticks once per fold and once for the final fit, and
    the document says where it came from."""
    from datetime import datetime, timedelta, timezone

    from sectrace import __version__

    _patch_table(monkeypatch, _hand_table(8, label="impact"))
    ticks = []
    d = train_gate(small, "logreg", label="impact", mode="blind", rank=3, features=["f"], folds=9, seed=7,
                   progress=ticks.append)
    assert ticks == [1] * 5
    assert (d["format"], d["version"], d["tool_version"]) == ("sectrace-learned-gate", 1, __version__)
    created = datetime.fromisoformat(d["created"])
    assert created.tzinfo == timezone.utc and created.microsecond == 0
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
    assert d["features"] == ["f"] and d["label"] == {"name": "impact", "mode": "blind", "rank": 3}
    assert d["trained_on"] == {"trace": str(small.path), "name": small.name, "synthetic": True, "utterances": 4,
                               "tokens": 20, "tokenizer": small.manifest.get("drafter", {}).get("tokenizer_fingerprint")}
    assert {k: d["cv"][k] for k in ("folds", "grouped_by", "seed", "base_rate")} == {
        "folds": 4, "grouped_by": "utt_id", "seed": 7, "base_rate": 0.4}
    assert d["calibration"]["method"] == "platt on out-of-fold scores" and d["emotion_ids"] == []


def test_train_gate_calibration_is_the_platt_fit_of_the_out_of_fold_scores(small, monkeypatch):
    """(a, b) maximise the likelihood of the labels given the out-of-fold scores (the log-likelihood's gradient
    vanishes there), and the CV Brier score is that of sigmoid(a·score + b), both checked by hand formulas."""
    from sectrace.gates import learned

    tab = _hand_table(8).with_row_index("rowid").with_columns(pl.col("rowid").cast(pl.Float64))
    _patch_table(monkeypatch, tab)
    real_score, oof = learned.raw_score, np.full(20, np.nan)

    def score(model, X):
        out = real_score(model, X)
        oof[X[:, 1].astype(int)] = out  # the rowid feature says which rows this fold scored
        return out

    monkeypatch.setattr(learned, "raw_score", score)
    d = train_gate(small, "logreg", features=["f", "rowid"], folds=4)
    assert not np.isnan(oof).any()
    y = tab["reject"].to_numpy()
    a, b = d["calibration"]["a"], d["calibration"]["b"]
    p = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    assert abs(np.sum(p - y)) < 1e-3 and abs(np.sum((p - y) * oof)) < 1e-3  # score equations of the fit
    assert d["cv"]["brier"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-9)


def test_train_gate_defaults(small, monkeypatch):
    """By default: boosted trees, the reject label as the audio verifier judges it at rank 1, 5 folds, seed 0."""
    from sectrace.gates import learned

    asked = []
    tab = _hand_table(8, n=30, n_utts=6)

    def table(trace, feats, mode="audio", rank=1):
        asked.append((list(feats), mode, rank))
        return tab

    def fit(kind, X, y, seed):  # the study's 120 trees take seconds; three show the kind and seed as well
        from sklearn.ensemble import GradientBoostingClassifier

        fits.append((kind, seed))
        return GradientBoostingClassifier(n_estimators=3, random_state=seed).fit(X, y) if kind == "gbt" else \
            real_fit(kind, X, y, seed)

    real_fit, fits = learned._fit, []
    monkeypatch.setattr(learned, "node_table", table)
    monkeypatch.setattr(learned, "_fit", fit)
    d = train_gate(small, features=["f"])
    assert asked == [(["f"], "audio", 1)] and fits == [("gbt", 0)] * 6  # 5 folds and the final fit
    assert d["model"]["kind"] == "gbt" and d["label"] == {"name": "reject", "mode": "audio", "rank": 1}
    assert (d["cv"]["folds"], d["cv"]["seed"]) == (5, 0)
    d = train_gate(small, "logreg", "impact", "blind", 3, features=["f"], folds=2, seed=4)
    assert asked[-1] == (["f"], "blind", 3) and d["model"]["kind"] == "logreg" and fits[6:] == [("logreg", 4)] * 3


def test_train_gate_two_utterances_are_enough_and_sklearn_is_named_when_missing(small, monkeypatch):
    import sys

    _patch_table(monkeypatch, _hand_table(10, n_utts=2))
    assert train_gate(small, "logreg", features=["f"])["cv"]["folds"] == 2
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)  # import now raises ImportError
    with pytest.raises(UserError) as e:
        train_gate(small, "logreg", features=["f"])
    assert str(e.value) == "training gates needs scikit-learn: pip install 'sectrace[gates]'"


def test_train_gate_document_of_a_trace_in_memory_without_a_drafter_card(small, monkeypatch):
    """A trace built in memory has no path and may lack the drafter's model card: the document says so with nulls
    (not the string "None", not a crash)."""
    _patch_table(monkeypatch, _hand_table(8))
    manifest = {k: v for k, v in small.manifest.items() if k != "drafter"}
    bare = type(small)(manifest, small.utterances, small.nodes, small.timings, small.vocab, None)
    d = train_gate(bare, "logreg", features=["f"], folds=2)
    assert d["trained_on"] == {"trace": None, "name": "synthetic", "synthetic": True, "utterances": 4, "tokens": 20,
                               "tokenizer": None}
