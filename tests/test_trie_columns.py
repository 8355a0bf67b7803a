"""The columnar trie replays exactly as the per-node-object trie did: runs, misses, schedules, simulate rows.

The reference below is the TrieSession sectrace shipped before the columnar one (a Python object per
node, built from ``to_list`` columns), kept verbatim as the straightforward walk to compare against.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sectrace.explore import default_exploration
from sectrace.gates import parse_gate
from sectrace.network import Network
from sectrace.protocol import Accept, CoverageMiss, DraftToken, Judgement, Policy
from sectrace.simulate import CostModel, Replayer, simulate
from sectrace.trace import TrieSession, load_trace, sample_trace_path
from sectrace.trace.trie import TrieColumns


class _RefJudgements:
    def __init__(self, session, start, tokens, mode):
        self.session, self.start, self.tokens, self.mode = session, start, tokens, mode
        self._nodes = [start]

    def __len__(self):
        return len(self.tokens) + 1

    def __getitem__(self, j):
        nodes, s = self._nodes, self.session
        while len(nodes) <= j:
            nodes.append(s.advance(nodes[-1], self.tokens[len(nodes) - 1]))
        node = nodes[j]
        jg = s.verdict[self.mode][node]
        if jg is None or (j < len(self.tokens) and jg.rank == 0):
            raise CoverageMiss(s.depth[node], f"{self.mode} verifier judgement not recorded")
        return jg


class ReferenceSession:
    """The pre-columnar TrieSession: per-node DraftToken/Judgement objects."""

    def __init__(self, df, modes, extra_cols=()):
        ids = df["node_id"].to_list()
        row_of = {nid: i for i, nid in enumerate(ids)}

        def rows(col):
            return [None if v is None else row_of[v] for v in df[col].to_list()]

        self.depth = df["depth"].to_list()
        self.root = df["parent_id"].to_list().index(None)
        self.keep = rows("keep_child")
        self.d_token = df["d_token"].to_list()
        extras = [df[c].to_list() for c in extra_cols]
        names = [c[2:] for c in extra_cols]
        self.drafts = []
        for i, (tok, lp, ent, mar, eos, tki, tkp) in enumerate(zip(
                self.d_token, df["d_logprob"].to_list(), df["d_entropy"].to_list(), df["d_margin"].to_list(),
                df["d_eos"].to_list(), df["d_topk_ids"].to_list(), df["d_topk_probs"].to_list())):
            if tok is None:
                self.drafts.append(None)
                continue
            extra = {n: col[i] for n, col in zip(names, extras)} if names else None
            self.drafts.append(DraftToken(tok, lp, ent, mar, bool(eos), extra, tuple(tki or ()), tuple(tkp or ())))
        self.children, self.top1, self.verdict = {}, {}, {}
        for m in modes:
            self.children[m] = rows(f"v_{m}_child")
            self.top1[m] = df[f"v_{m}_top1"].to_list()
            self.verdict[m] = [
                None if top1 is None else Judgement(rank or 0, math.nan if prob is None else prob, top1, tprob,
                                                    bool(teos), math.nan if ent is None else ent)
                for rank, prob, top1, tprob, teos, ent in zip(
                    df[f"v_{m}_rank"].to_list(), df[f"v_{m}_prob"].to_list(), self.top1[m],
                    df[f"v_{m}_top1_prob"].to_list(), df[f"v_{m}_top1_eos"].to_list(),
                    df[f"v_{m}_entropy"].to_list())]
        self.modes = tuple(modes)

    def draft(self, i):
        d = self.drafts[i]
        if d is None:
            raise CoverageMiss(self.depth[i], "drafter not evaluated")
        return d

    def advance(self, i, token):
        if self.d_token[i] == token and self.keep[i] is not None:
            return self.keep[i]
        for m in self.modes:
            if self.top1[m][i] == token and self.children[m][i] is not None:
                return self.children[m][i]
        raise CoverageMiss(self.depth[i] + 1, "state not explored")

    def judge(self, i, tokens, mode):
        if mode not in self.verdict:
            raise CoverageMiss(self.depth[i], f"the trace has no {mode} verifier judgements")
        return _RefJudgements(self, i, tokens, mode)


def _reference_replayer(trace):
    rp = Replayer(trace)
    extra = [c for c in trace.nodes.columns if c.startswith("x_")]
    rp.sessions = {k[0]: ReferenceSession(df, trace.modes, extra)
                   for k, df in trace.nodes.partition_by("utt_id", as_dict=True).items()}
    return rp


def _policies(trace):
    max_new = int(trace.manifest["decoding"]["max_new_tokens"])
    pols = default_exploration(max_new)
    for k, gate, privacy, cache, adaptive in [(4, "oracle", "features", "stateful", None),
                                              (6, "margin:0.2", "token-only", "stateless", 0.3),
                                              (5, "entropy:2.5", "raw", "stateful", 0.5),
                                              (2, "never", "features", "stateless", None)]:
        pols.append(Policy(k=k, gate=parse_gate(gate, trace), gate_spec=gate, accept=Accept.parse("rank:5"),
                           privacy=privacy, cloud_cache=cache, adaptive=adaptive, max_new_tokens=max_new))
    if "x_stability" in trace.nodes.columns:
        pols.append(Policy(k=3, gate=parse_gate("stability:0.5", trace), gate_spec="stability:0.5",
                           max_new_tokens=max_new))
    return pols


@pytest.fixture(scope="module", params=["bundled", "synthetic"])
def trace(request, small_trace):
    return load_trace(sample_trace_path()) if request.param == "bundled" else small_trace


def _miss(m):
    return None if m is None else (m.depth, m.what)


def test_every_policy_replays_bit_for_bit(trace):
    new, ref = Replayer(trace), _reference_replayer(trace)
    pols = _policies(trace)
    for pol in pols:
        a, b = new.replay(pol), ref.replay(pol)
        assert a.utt_ids == b.utt_ids
        assert [dataclasses.asdict(r) if r else None for r in a.runs] == \
               [dataclasses.asdict(r) if r else None for r in b.runs], pol.label
        assert [_miss(m) for m in a.misses] == [_miss(m) for m in b.misses], pol.label
        for f in ("total", "first", "bytes_up", "bytes_down", "audio_bytes_up"):
            assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), (pol.label, f)
    assert any(r is not None for pol in pols for r in new.replay(pol).runs)
    configs = [(CostModel(), Network(rtt_s=r)) for r in (0.02, 0.05, 0.1)]
    some = pols[:3] + pols[-5:]
    assert_frame_equal(simulate(trace, some, configs, replayer=new), simulate(trace, some, configs, replayer=ref),
                       check_exact=True)


def test_session_views_hold_the_same_records(trace):
    """Every node's draft (top-k lists included) and judgements, as the per-node objects held them."""
    extra = [c for c in trace.nodes.columns if c.startswith("x_")]
    for _, df in list(trace.nodes.partition_by("utt_id", as_dict=True).items())[:4]:
        ref, new = ReferenceSession(df, trace.modes, extra), TrieSession(df, trace.modes, extra)
        assert new.root == ref.root and list(new.depth) == ref.depth
        assert [None if d is None else d._replace(extra=None if d.extra is None else dict(d.extra))
                for d in new.drafts] == ref.drafts
        for m in trace.modes:
            for x, y in zip(new.verdict[m], ref.verdict[m]):
                assert (x is None and y is None) or \
                       (x[2:5] == y[2:5] and x.rank == y.rank and _same(x.prob, y.prob) and _same(x.entropy, y.entropy))


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def test_node_ids_need_not_be_row_numbers(small_trace):
    """Any unique numbering and row order gives the same replay (links go through a sorted key)."""
    nodes = small_trace.nodes
    shuffled = nodes.with_columns([(pl.col(c) * 7 + 3).alias(c) for c in
                                   ("node_id", "parent_id", "keep_child", "v_audio_child", "v_blind_child")])
    shuffled = shuffled.sample(fraction=1.0, shuffle=True, seed=1)
    other = dataclasses.replace(small_trace, nodes=shuffled)
    cols = other.trie()
    assert isinstance(cols, TrieColumns) and sorted(cols.utt_ids) == sorted(small_trace.utterances["utt_id"])
    for pol in _policies(small_trace)[:40]:
        a, b = Replayer(small_trace).replay(pol), Replayer(other).replay(pol)
        assert [r.tokens if r else None for r in a.runs] == [r.tokens if r else None for r in b.runs]
        assert np.array_equal(a.total, b.total, equal_nan=True)


def _table_distance(a, b):
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[len(b)]


def test_bit_vector_edit_distance_equals_the_table():
    from sectrace.simulate.replay import edit_distance, similarity

    rng = np.random.default_rng(0)
    for _ in range(3000):
        a = rng.integers(0, rng.integers(1, 12), rng.integers(0, 90)).tolist()
        b = (a[: rng.integers(0, len(a) + 1)] + rng.integers(0, 12, rng.integers(0, 20)).tolist()
             if rng.random() < 0.5 else rng.integers(0, 12, rng.integers(0, 90)).tolist())
        d = _table_distance(a, b)
        assert edit_distance(a, b) == d, (a, b)
        if a and b and a != b:
            assert similarity(a, b) == 1.0 - d / max(len(a), len(b))


def test_a_trace_sent_to_another_process_replays_the_same():
    """A dask worker receives the trace pickled: its trie columns (memoryviews) stay behind and are built again,
    so the worker's replay equals the sender's (it once read token ids as bytes and ran every caption to the end)."""
    import pickle

    from sectrace.protocol import cloud_only, drafter_only

    tr = load_trace(sample_trace_path())
    before = {p.name: Replayer(tr).replay(p) for p in (drafter_only(64), cloud_only(64))}
    again = pickle.loads(pickle.dumps(tr))
    assert again._trie is None and again.nodes.equals(tr.nodes)
    for p in (drafter_only(64), cloud_only(64)):
        after = Replayer(again).replay(p)
        assert [r.tokens for r in after.runs] == [r.tokens for r in before[p.name].runs]
