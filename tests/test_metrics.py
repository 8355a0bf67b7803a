"""The one summary (simulate/metrics.py): vLLM's definitions on a trie replayed by hand, bootstrap intervals
that cover the truth as often as they claim, paired comparisons narrower than unpaired ones, and results
that carry what rebuilds their runs (from_row) and where they came from."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from scipy.stats import bootstrap

from sectrace.cli import main
from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Accept, DraftToken, Judgement, Policy, run
from sectrace.simulate.metrics import summary_columns, utterance_counts
from sectrace.trace import sample_trace_path

EOS = 0


class HandTrie:
    """One utterance's decoding as two small tables: the drafter's greedy token and the verifier's top-1
    at each prefix the run reaches (a trie written out by hand)."""

    root = ()

    def __init__(self, drafter: dict, verifier: dict):
        self.d, self.v = drafter, verifier

    def draft(self, state):
        tok = self.d[state]
        return DraftToken(tok, -0.1, 0.5, 0.5, tok == EOS)

    def advance(self, state, token):
        return state + (token,)

    def judge(self, state, tokens, mode):
        out = []
        for i in range(len(tokens) + 1):
            top = self.v[state + tuple(tokens[:i])]
            rank = 0 if i == len(tokens) else (1 if tokens[i] == top else 2)
            out.append(Judgement(rank, 0.5, top, 0.9, top == EOS))
        return out


# A: the drafter writes 1 2 3 ..., the verifier wants 1 2 9 4 5 <eos>.
#   block [1 2]: both accepted, bonus 9                      → commits 1 2 9   (accepted 2, bonus 1)
#   block [4 <eos>]: 4 accepted, <eos> rejected, correction 5 → commits 4 5     (accepted 1, corrected 1)
#   block [<eos>]: accepted; no bonus after an end of caption → commits <eos>   (accepted 1)
UTT_A = HandTrie({(): 1, (1,): 2, (1, 2, 9): 4, (1, 2, 9, 4): EOS, (1, 2, 9, 4, 5): EOS},
                 {(): 1, (1,): 2, (1, 2): 9, (1, 2, 9): 4, (1, 2, 9, 4): 5, (1, 2, 9, 4, 5): EOS,
                  # asked for the position past a block (its bonus), never used after a rejection or an end
                  (1, 2, 9, 4, EOS): EOS, (1, 2, 9, 4, 5, EOS): EOS})
# B: both write 6 <eos>: one block [6 <eos>], both accepted, no bonus after <eos>.
UTT_B = HandTrie({(): 6, (6,): EOS}, {(): 6, (6,): EOS, (6, EOS): EOS})


def test_vllm_metrics_on_a_trie_replayed_by_hand():
    pol = Policy(k=2, gate=parse_gate("always"), gate_spec="always", accept=Accept.parse("top1"), bonus=True,
                 max_new_tokens=10)
    runs = [run(UTT_A, pol), run(UTT_B, pol)]
    assert runs[0].tokens == [1, 2, 9, 4, 5, EOS] and runs[1].tokens == [6, EOS]
    c = utterance_counts(runs, k=2)
    # per utterance, counted by hand from the comments above
    assert c["verify_calls"].tolist() == [3, 1]
    assert c["verified"].tolist() == [5, 2]          # drafted tokens sent: 2 + 2 + 1, and 2
    assert c["accepted"].tolist() == [4, 2]
    assert c["corrected"].tolist() == [1, 0] and c["bonus_tokens"].tolist() == [1, 0]
    assert c["emitted"].tolist() == [6, 2]           # (2+1) + (1+1) + 1, and 2
    assert c["n_tokens"].tolist() == [6, 2]
    assert c["accepted_per_pos"].tolist() == [[3, 1], [1, 1]]
    counts = {k: v for k, v in c.items() if k != "accepted_per_pos"}
    timed = {"latency_s": np.array([[3.0], [1.0]])}
    s = summary_columns(counts, timed, 1, accepted_per_pos=c["accepted_per_pos"])
    want = {
        "num_drafts": 4 / 2, "num_draft_tokens": 7 / 2, "num_accepted_tokens": 6 / 2, "num_emitted_tokens": 8 / 2,
        "drafted_tokens": 7 / 2,
        "draft_acceptance_rate": 6 / 7,            # Σ accepted / Σ draft tokens
        "mean_acceptance_length": 1 + 6 / 4,       # 1 + Σ accepted / Σ drafts
        "system_efficiency": 8 / (7 + 4),          # Σ emitted / Σ (block length + 1)
        "cloud_calls": 4 / 2,
        "cloud_written_share": (1 + 1) / 8,        # (corrections + bonus tokens) / caption tokens
        "n_tokens": 8 / 2, "latency_s": 2.0, "tokens_per_s": 8 / 4.0,
    }
    for name, value in want.items():
        assert s[name][0] == pytest.approx(value), name
    assert s["acceptance_rate_per_pos"][0] == pytest.approx([4 / 4, 2 / 4])
    for name in want:  # every interval brackets its point value
        assert s[f"{name}_lo"][0] <= s[name][0] + 1e-12 and s[name][0] <= s[f"{name}_hi"][0] + 1e-12, name


def test_intervals_cover_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(20240601)
    mu, hits, reps, n = 5.0, 0, 300, 40
    ones = np.ones(n)
    for _ in range(reps):
        x = rng.normal(mu, 2.0, n)
        s = summary_columns({"n_tokens": ones, "corrected": 0 * ones, "bonus_tokens": 0 * ones},
                            {"latency_s": x[:, None]}, 1)
        hits += s["latency_s_lo"][0] <= mu <= s["latency_s_hi"][0]
        assert s["latency_s"][0] == pytest.approx(x.mean())
    assert 0.90 <= hits / reps <= 0.98, hits / reps


def test_paired_speedup_is_narrower_than_unpaired_on_correlated_utterances():
    # utterance lengths vary a lot; the policy is 20 % faster than edge-only on every one of them, plus noise
    rng = np.random.default_rng(7)
    n = 30
    size = rng.lognormal(1.5, 0.6, n)
    edge = size * 1.0 + rng.normal(0, 0.05, n)
    pol = size * 0.8 + rng.normal(0, 0.05, n)
    cloud = size * 1.5 + rng.normal(0, 0.05, n)
    ones = np.ones(n)
    s = summary_columns({"n_tokens": ones, "corrected": 0 * ones, "bonus_tokens": 0 * ones},
                        {"latency_s": pol[:, None]}, 1,
                        baselines={"edge_latency_s": edge[:, None], "cloud_latency_s": cloud[:, None]})
    assert s["paired_covered"][0] == n
    assert s["speedup_vs_edge"][0] == pytest.approx(edge.sum() / pol.sum())
    paired = s["speedup_vs_edge_hi"][0] - s["speedup_vs_edge_lo"][0]
    # the same ratio with the two policies resampled independently (as if on different utterances)
    unp = bootstrap((edge, pol), lambda a, b, axis=-1: a.mean(axis) / b.mean(axis), paired=False, vectorized=True,
                    n_resamples=2000, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert s["speedup_vs_edge_lo"][0] <= edge.sum() / pol.sum() <= s["speedup_vs_edge_hi"][0]
    assert paired < (unp.high - unp.low) / 5  # pairing removes the spread of utterance lengths
    assert 1.2 < s["speedup_vs_edge_lo"][0] and s["speedup_vs_edge_hi"][0] < 1.3


def _sim(tmp_path, *args):
    out = tmp_path / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", "--out", str(out), "--force", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, pl.read_parquet(out)


def test_results_rebuild_their_runs_with_any_flags(tmp_path):
    from sectrace.simulate import Replayer, cost_vector, latency
    from sectrace.simulate.results import from_row
    from sectrace.trace import load_trace

    flags = ["--gate-cost", "5ms", "--overhead", "300B", "--edge-speedup", "3", "--cloud-tps", "30",
             "--jitter", "expon(scale=0.004)", "--loss", "0.02", "--rto", "150ms", "--rtt", "20ms,120ms"]
    out, df = _sim(tmp_path, *flags)
    tr = load_trace(sample_trace_path())
    rp = Replayer(tr)
    for row in df.filter(pl.col("covered")).unique(subset=["policy", "config"]).iter_rows(named=True):
        setup = from_row(row)
        assert setup.network.overhead_bytes == 300 and setup.network.loss == 0.02 and setup.network.rto_s == 0.15
        assert setup.network.jitter == "expon(scale=0.004)" and setup.cost.gate_s == 0.005
        assert setup.cost.cloud_step_a == pytest.approx(1 / 30)
        rep = rp.replay(setup.policy)
        i = rep.utt_ids.index(row["utt_id"])
        lat = latency(rep.total[i:i + 1], cost_vector(setup.cost, setup.network)[:, None])[0, 0]
        assert lat == pytest.approx(row["latency_s"], rel=1e-12)  # the rebuilt run is the very run priced
    # provenance: the command as typed, the trace's content hash (the same as `trace info` says), versions
    row = df.row(0, named=True)
    assert row["command"] == ("sectrace simulate --rtt 20ms,120ms --overhead 300B --jitter 'expon(scale=0.004)' "
                              "--loss 0.02 --rto 150ms --cloud-tps 30.0 --gate-cost 5ms --edge-speedup 3.0 "
                              f"--out {out} --force")
    info = json.loads(CliRunner().invoke(main, ["trace", "info", "--json"]).stdout)
    assert row["trace_sha256"] == info["sha256"] and len(info["sha256"]) == 64
    assert "numpy" in row["packages"] and row["tool_version"]
    # breakdown and timeline of those results, which used to be refused
    from sectrace.reports.breakdown import overhead_breakdown

    bd, note = overhead_breakdown(df, 1)
    assert bd is not None, note
    means = df.filter((pl.col("config") == 1) & pl.col("covered")).group_by("policy", maintain_order=True) \
        .agg(pl.col("latency_s").mean())
    j = bd.join(means, on="policy")
    assert np.allclose(j.select(pl.exclude("policy", "latency_s")).to_numpy().sum(axis=1), j["latency_s"])
    assert (bd.select(pl.exclude("policy")).to_numpy() >= 0).all()
    t = CliRunner().invoke(main, ["timeline", str(out), "--policy", "k=5 gate=entropy:2.5 accept=rank:20 features",
                                  "--config", "1", "--out", str(tmp_path / "t.json")])
    assert t.exit_code == 0, t.output


def test_old_results_are_told_to_resimulate(tmp_path):
    from sectrace.reports.breakdown import cost_and_net
    from sectrace.simulate.results import from_row

    _, df = _sim(tmp_path, "--rtt", "50ms")
    old = df.drop([c for c in df.columns if c.startswith("cost_") and c != "cost_source"] + ["overhead_bytes"])
    with pytest.raises(UserError, match="re-simulate"):
        from_row(old.row(0, named=True))
    cost, net, why = cost_and_net(None, old.row(0, named=True))
    assert cost is None and why.count(". ") == 0 and "re-simulate" in why
    old.write_parquet(tmp_path / "old.parquet")
    r = CliRunner().invoke(main, ["timeline", str(tmp_path / "old.parquet"), "--policy", "edge-only",
                                  "--out", str(tmp_path / "t.json")])
    assert r.exit_code == 2 and "re-simulate" in r.output


def test_summary_from_rows_equals_the_sweep_and_marks_partial_rows(tmp_path):
    from sectrace.simulate import summarise

    out, df = _sim(tmp_path, "--rtt", "50ms", "--gate", "entropy:2.5", "--k", "5,7")
    s = summarise(df)
    # every row's metrics average the same utterances; k=7 leaves the explored trie on some
    k7 = s.filter(pl.col("k") == 7).row(0, named=True)
    assert k7["covered"] < k7["utterances"]
    sub = df.filter((pl.col("k") == 7) & pl.col("covered"))
    assert k7["latency_s"] == pytest.approx(sub["latency_s"].mean())
    assert k7["paired_covered"] == sub.height  # the baselines cover every utterance
    r = CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--gate", "entropy:2.5", "--k", "5,7"])
    line = next(ln for ln in r.output.splitlines() if ln.startswith("k=7"))
    assert f"{k7['covered']}/{k7['utterances']}*" in line and "±" in line
    assert "* some utterances left the explored trie" in r.output
    # the table's ± is half the interval the JSON gives
    j = json.loads(CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--json"]).stdout)
    hyb = j["summary"][2]
    assert hyb["latency_s_lo"] < hyb["latency_s"] < hyb["latency_s_hi"]
    assert set(j["definitions"]) >= {"draft_acceptance_rate", "mean_acceptance_length", "speedup_vs_edge"}
    assert j["provenance"]["command"] == "sectrace simulate --rtt 50ms --json"


def test_summary_out_and_csv(tmp_path):
    csv = tmp_path / "r.csv"
    summ = tmp_path / "s.csv"
    r = CliRunner().invoke(main, ["simulate", "--rtt", "50ms", "--out", str(csv), "--summary-out", str(summ)])
    assert r.exit_code == 0, r.output
    rows = pl.read_csv(csv)
    assert {"accepted_per_pos", "cost_verify_a", "trace_sha256", "overhead_bytes"} <= set(rows.columns)
    s = pl.read_csv(summ)
    assert s.height == 3 and {"latency_s_lo", "latency_s_hi", "command", "trace_sha256"} <= set(s.columns)
    assert (s["latency_s_lo"] <= s["latency_s"]).all() and (s["latency_s"] <= s["latency_s_hi"]).all()


def test_gates_eval_intervals_resample_clips():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from sectrace.analysis.evaluate import _grouped, weighted_aucs

    rng = np.random.default_rng(3)
    n, g = 400, 15
    group = rng.integers(0, g, n)
    y = (rng.uniform(size=n) < 0.3).astype(int)
    score = np.round(rng.normal(size=n) + y, 1)  # ties on purpose
    pos, neg = _grouped(score, y, group, g)
    w = rng.integers(0, 3, (4, g)).astype(float)
    got = weighted_aucs(pos, neg, w)
    for i in range(4):
        sw = w[i][group]
        keep = sw > 0
        assert got[i, 0] == pytest.approx(roc_auc_score(y[keep], score[keep], sample_weight=sw[keep]))
        assert got[i, 1] == pytest.approx(average_precision_score(y[keep], score[keep], sample_weight=sw[keep]))
    r = CliRunner().invoke(main, ["gates", "eval", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["signals"]
    for row in rows:
        assert row["roc_auc_lo"] <= row["roc_auc"] <= row["roc_auc_hi"]
        assert row["pr_auc_lo"] <= row["pr_auc"] <= row["pr_auc_hi"]
        assert row["utterances"] == 12
