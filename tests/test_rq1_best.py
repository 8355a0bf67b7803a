"""`gates eval` names the best single signal and compares every other with it, paired over utterances.

Checked on the bundled real trace: the best is the table's highest ROC-AUC (recomputed here with scikit-learn),
each paired difference's point value is the difference of the two AUCs, its interval holds it, a copy of the
best signal ties with it exactly, and a signal whose AUC is far below is beaten.
"""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")
from sklearn.metrics import roc_auc_score  # noqa: E402

from sectrace.analysis.evaluate import best_signals  # noqa: E402
from sectrace.cli import main  # noqa: E402
from sectrace.trace import load_trace, sample_trace_path, write_trace  # noqa: E402


def _hand_auc(tr, col, sign):
    nodes = tr.nodes.filter(pl.col("d_token").is_not_null() & pl.col("v_audio_rank").is_not_null())
    nodes = nodes.drop_nulls([col])
    return roc_auc_score((nodes["v_audio_rank"] > 1).to_numpy(), nodes[col].to_numpy() * sign)


def test_best_signal_and_paired_differences_on_the_real_trace():
    tr = load_trace(sample_trace_path())
    reject = next(b for b in best_signals(tr) if b["label"] == "reject")
    assert reject["best"] == "logprob"
    assert reject["roc_auc"] == pytest.approx(_hand_auc(tr, "d_logprob", -1), abs=1e-12)
    by = {o["signal"]: o for o in reject["others"]}
    for name, col, sign in (("entropy", "d_entropy", 1), ("stability", "x_stability", -1),
                            ("audio", "x_audio_shift", 1)):
        o = by[name]
        assert o["roc_auc_diff"] == pytest.approx(reject["roc_auc"] - _hand_auc(tr, col, sign), abs=1e-9)
        assert o["diff_lo"] <= o["roc_auc_diff"] <= o["diff_hi"]
    assert by["audio"]["verdict"] == "worse" and by["audio"]["diff_lo"] > 0.1


def test_a_copy_of_the_best_signal_ties_with_it(tmp_path):
    tr = load_trace(sample_trace_path())
    nodes = tr.nodes.with_columns((-pl.col("d_logprob")).alias("x_copy"))
    write_trace(tmp_path / "t", tr.manifest, tr.utterances, nodes, tr.timings, tr.vocab)
    reject = next(b for b in best_signals(load_trace(tmp_path / "t")) if b["label"] == "reject")
    assert reject["best"] in ("logprob", "x_copy")
    copy = next(o for o in reject["others"] if o["signal"] in ("logprob", "x_copy"))
    assert (copy["roc_auc_diff"], copy["diff_lo"], copy["diff_hi"], copy["verdict"]) == (0.0, 0.0, 0.0, "tie")


def test_gates_eval_prints_the_best_and_gives_it_in_json():
    res = CliRunner().invoke(main, ["gates", "eval"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("best single signal for reject"))
    assert line.startswith("best single signal for reject: logprob (ROC-AUC 0.807)")
    assert "beaten:" in line and "audio" in line.split("beaten:")[1]
