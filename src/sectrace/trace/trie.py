"""The prefix trie: recording it from a live source, and walking it as a protocol session.

With a greedy drafter and a deterministic verifier, the whole protocol state is the
committed prefix, so one trie holds every policy's run exactly, as far as it was explored.
:class:`TrieRecorder` wraps any source whose states are prefixes (live models, the
synthetic model) and memoises what the protocol asked of it; :class:`TrieSession` replays
from the written trie and raises :class:`CoverageMiss` instead of guessing.
"""

from __future__ import annotations

import math
from typing import Sequence

import polars as pl

from ..protocol import CoverageMiss, DraftToken, Judgement
from . import schema as S


class TrieRecorder:
    """A memoising session over a prefix-keyed source; every state the protocol visits becomes a node."""

    def __init__(self, source, modes: Sequence[str]):
        self.source = source
        self.modes = tuple(modes)
        self.root: tuple[int, ...] = ()
        self.nodes: dict[tuple[int, ...], dict] = {(): {}}
        self.source_calls = {"draft": 0, "judge": 0}

    def draft(self, prefix):
        rec = self.nodes.setdefault(prefix, {})
        d = rec.get("d")
        if d is None:
            d = rec["d"] = self.source.draft(prefix)
            self.source_calls["draft"] += 1
        return d

    def advance(self, prefix, token):
        child = prefix + (int(token),)
        self.nodes.setdefault(child, {})
        return child

    def judge(self, prefix, tokens, mode):
        n = len(tokens)
        path = [prefix + tuple(tokens[:i]) for i in range(n + 1)]
        recs = [self.nodes.setdefault(p, {}) for p in path]
        have = [r.get(mode) for r in recs]
        if all(h is not None and h.rank > 0 for h in have[:n]) and have[n] is not None:
            return have
        got = list(self.source.judge(prefix, tokens, mode))
        self.source_calls["judge"] += 1
        for i, (rec, jg) in enumerate(zip(recs, got)):
            old = rec.get(mode)
            if old is None or (old.rank == 0 and jg.rank > 0):
                rec[mode] = jg
        return got

    def frames(self, utt_id: str) -> pl.DataFrame:
        """The recorded trie as rows of nodes.parquet (node ids in breadth-first order)."""
        order = sorted(self.nodes, key=len)
        ids = {p: i for i, p in enumerate(order)}
        rows = []
        for p in order:
            rec = self.nodes[p]
            d: DraftToken | None = rec.get("d")
            row = {
                "utt_id": utt_id, "node_id": ids[p], "parent_id": ids[p[:-1]] if p else None,
                "token": p[-1] if p else None, "depth": len(p),
                "is_eos": False,
                "d_token": None, "d_logprob": None, "d_entropy": None, "d_margin": None,
                "d_topk_ids": None, "d_topk_probs": None, "d_eos": None, "keep_child": None,
            }
            if d is not None:
                row.update(d_token=d.token, d_logprob=d.logprob, d_entropy=d.entropy, d_margin=d.margin,
                           d_topk_ids=list(d.topk_ids), d_topk_probs=list(d.topk_probs), d_eos=d.eos,
                           keep_child=ids.get(p + (d.token,)))
                for key, value in (d.extra or {}).items():
                    row[f"x_{key}"] = value
            for m in self.modes:
                jg: Judgement | None = rec.get(m)
                cols = S.verifier_columns(m)
                row.update(dict.fromkeys(cols))
                if jg is not None:
                    known = jg.rank > 0 and d is not None
                    row.update({
                        f"v_{m}_rank": jg.rank if known else None,
                        f"v_{m}_prob": jg.prob if known else None,
                        f"v_{m}_top1": jg.top1, f"v_{m}_top1_prob": jg.top1_prob,
                        f"v_{m}_entropy": None if math.isnan(jg.entropy) else jg.entropy,
                        f"v_{m}_top1_eos": jg.top1_eos, f"v_{m}_child": ids.get(p + (jg.top1,)),
                    })
            rows.append(row)
        # A node's is_eos: the token that led to it is an end-of-sequence token, as its parent said.
        eos_children = set()
        for p in order:
            rec = self.nodes[p]
            d = rec.get("d")
            if d is not None and d.eos:
                eos_children.add(p + (d.token,))
            for m in self.modes:
                jg = rec.get(m)
                if jg is not None and jg.top1_eos:
                    eos_children.add(p + (jg.top1,))
        for p, row in zip(order, rows):
            row["is_eos"] = p in eos_children
        schema = S.nodes_schema(self.modes)
        extra_cols = sorted({k for r in rows for k in r if k not in schema})
        for c in extra_cols:
            schema[c] = pl.Float32
        return pl.DataFrame(rows, schema=schema, strict=False)


class _Judgements:
    """Lazy judgements along a block: reading position j walks the trie only as far as j."""

    __slots__ = ("session", "start", "tokens", "mode", "_nodes")

    def __init__(self, session, start, tokens, mode):
        self.session, self.start, self.tokens, self.mode = session, start, tokens, mode
        self._nodes = [start]

    def __len__(self):
        return len(self.tokens) + 1

    def __getitem__(self, j):
        nodes = self._nodes
        s = self.session
        while len(nodes) <= j:
            nodes.append(s.advance(nodes[-1], self.tokens[len(nodes) - 1]))
        node = nodes[j]
        jg = s.verdict[self.mode][node]
        if jg is None or (j < len(self.tokens) and jg.rank == 0):
            raise CoverageMiss(s.depth[node], f"{self.mode} verifier judgement not recorded")
        return jg


class TrieSession:
    """One utterance's trie as a protocol session: states are row indices."""

    def __init__(self, df: pl.DataFrame, modes: Sequence[str], extra_cols: Sequence[str] = ()):
        ids = df["node_id"].to_list()
        row_of = {nid: i for i, nid in enumerate(ids)}

        def rows(col):
            return [None if v is None else row_of[v] for v in df[col].to_list()]

        self.depth = df["depth"].to_list()
        parents = df["parent_id"].to_list()
        self.root = parents.index(None)
        self.keep = rows("keep_child")
        self.d_token = df["d_token"].to_list()
        extras = [df[c].to_list() for c in extra_cols]
        names = [c[2:] for c in extra_cols]
        self.drafts: list[DraftToken | None] = []
        for i, (tok, lp, ent, mar, eos, tki, tkp) in enumerate(zip(
                self.d_token, df["d_logprob"].to_list(), df["d_entropy"].to_list(), df["d_margin"].to_list(),
                df["d_eos"].to_list(), df["d_topk_ids"].to_list(), df["d_topk_probs"].to_list())):
            if tok is None:
                self.drafts.append(None)
                continue
            extra = {n: col[i] for n, col in zip(names, extras)} if names else None
            self.drafts.append(DraftToken(tok, lp, ent, mar, bool(eos), extra,
                                          tuple(tki or ()), tuple(tkp or ())))
        self.children: dict[str, list] = {}
        self.top1: dict[str, list] = {}
        self.verdict: dict[str, list] = {}
        for m in modes:
            self.children[m] = rows(f"v_{m}_child")
            self.top1[m] = df[f"v_{m}_top1"].to_list()
            verdict = []
            for rank, prob, top1, tprob, teos, ent in zip(
                    df[f"v_{m}_rank"].to_list(), df[f"v_{m}_prob"].to_list(), self.top1[m],
                    df[f"v_{m}_top1_prob"].to_list(), df[f"v_{m}_top1_eos"].to_list(),
                    df[f"v_{m}_entropy"].to_list()):
                if top1 is None:
                    verdict.append(None)
                else:
                    verdict.append(Judgement(rank or 0, math.nan if prob is None else prob, top1, tprob,
                                             bool(teos), math.nan if ent is None else ent))
            self.verdict[m] = verdict
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
        return _Judgements(self, i, tokens, mode)
