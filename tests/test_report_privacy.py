"""Privacy accounting: what leaves the device per policy, and how much of the caption the cloud sees."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import synthetic_trace

from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, Policy
from sectrace.reports.privacy import exposure, modes_side_by_side, privacy_table
from sectrace.simulate import CostModel, Network, baselines, simulate


@pytest.fixture(scope="module")
def run():
    tr = synthetic_trace()
    pols = list(baselines(64))
    for privacy in ("token-only", "features"):
        for spec in ("entropy:2.5", "always"):
            pols.append(Policy(k=3, gate=parse_gate(spec), gate_spec=spec, accept=Accept.parse("rank:20"),
                               privacy=privacy, max_new_tokens=64))
    res = simulate(tr, pols, [(CostModel(), Network(rtt_s=0.02)), (CostModel(), Network(rtt_s=0.1))])
    return tr, res


def test_modes_and_baselines(run):
    tr, res = run
    e = exposure(tr, res, parse_gate)
    t = privacy_table(res, e)
    row = {r["policy"]: r for r in t.iter_rows(named=True)}
    edge, cloud = row["edge-only"], row["cloud-only"]
    assert edge["contact_share"] == 0 and edge["bytes_up"] == 0 and edge["cloud_seen_tokens"] == 0
    assert cloud["contact_share"] == 1 and cloud["caption_share_seen"] == 1 and cloud["audio_share"] == 1
    tok = row["k=3 gate=entropy:2.5 accept=rank:20 token-only"]
    feat = row["k=3 gate=entropy:2.5 accept=rank:20 features"]
    assert tok["audio_bytes_up"] == 0 and 0 < feat["contact_share"] < 1
    # Bytes up, from the trace's utterance sizes and the runs' counters (not from the payload code): a
    # stateful session that escalates at all sends the audio features once; token ids are 4 bytes each, at
    # least the instruction and the verified drafts, at most those plus every committed caption token.
    utts = tr.utterances.select("utt_id", "feature_bytes", "blind_prompt_tokens")
    for r, audio in ((tok, 0), (feat, 1)):
        per = (res.filter((pl.col("policy") == r["policy"]) & pl.col("covered") & (pl.col("config") == 0))
               .join(utts, on="utt_id"))
        assert per.height == r["utterances"] == 40
        called = (per["escalations"] > 0).to_numpy()
        expect_audio = audio * per["feature_bytes"].to_numpy() * called
        assert per["audio_bytes_up"].to_list() == expect_audio.tolist()
        assert r["audio_bytes_up"] == pytest.approx(expect_audio.mean(), rel=1e-12)
        ids = (per["bytes_up"] - per["audio_bytes_up"]).to_numpy()
        low = 4 * (per["blind_prompt_tokens"] + per["verified"]).to_numpy() * called
        high = low + 4 * per["n_tokens"].to_numpy() * called
        assert (ids % 4 == 0).all() and (low <= ids).all() and (ids <= high).all()
        assert r["bytes_up"] == pytest.approx(per["bytes_up"].mean(), rel=1e-12)
    assert feat["audio_bytes_up"] > 0
    assert 0 < tok["caption_share_seen"] < 1  # the entropy gate keeps part of the caption local
    always = row["k=3 gate=always accept=rank:20 token-only"]
    assert always["caption_share_seen"] == 1 and always["contact_share"] == 1
    # each utterance counts once although there are two network configurations
    assert tok["utterances"] == res.filter(pl.col("policy") == tok["policy"])["utt_id"].n_unique()
    side = modes_side_by_side(t)
    r = side.filter(pl.col("shape") == "k=3 gate=entropy:2.5 accept=rank:20").row(0, named=True)
    assert r["audio_bytes_up|token-only"] == 0 and r["audio_bytes_up|features"] > 0


def test_seen_tokens_bounded_and_consistent(run):
    tr, res = run
    e = exposure(tr, res, parse_gate)
    assert (e["seen_prefix"] <= e["caption_tokens"]).all()
    assert (e["emotion_words_seen"] <= e["emotion_words"]).all()
    n = res.filter(pl.col("covered")).select("policy", "utt_id").unique().height
    assert e.height == n


def test_results_from_another_trace_are_refused(run, tmp_path):
    tr, res = run
    bad = res.with_columns(pl.when(pl.col("utt_id") == "synth-0000").then(pl.lit("nope"))
                           .otherwise(pl.col("utt_id")).alias("utt_id"))
    with pytest.raises(UserError, match="not in trace"):
        exposure(tr, bad, parse_gate)
