"""The prefix trie: recording it from a live source, and walking it as a protocol session.

With a greedy drafter and a deterministic verifier, the whole protocol state is the
committed prefix, so one trie holds every policy's run exactly, as far as it was explored.
:class:`TrieRecorder` wraps any source whose states are prefixes (live models, the
synthetic model) and memoises what the protocol asked of it; :class:`TrieSession` replays
from the written trie and raises :class:`CoverageMiss` instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
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


_tuple_new = tuple.__new__


class _Extras(Mapping):
    """A drafted node's x_* signals, read from the columns when a gate asks (most gates never do)."""

    __slots__ = ("_c", "_i")

    def __init__(self, columns, i):
        self._c, self._i = columns, i

    def __getitem__(self, name):
        c = self._c
        try:
            v, null = c.extra_v[c.extra_names.index(name)]
        except ValueError:
            raise KeyError(name) from None
        return None if null is not None and null[self._i] else v[self._i]

    def __iter__(self):
        return iter(self._c.extra_names)

    def __len__(self):
        return len(self._c.extra_names)

    def __repr__(self):
        return repr(dict(self))


class TrieColumns:
    """Every utterance's trie as flat shared columns, one row per node: what replay walks.

    A trace of 10,000 utterances has ~8 M nodes; a Python object per node cost ~8 µs and ~10×
    the trace's disk size, and kept the garbage collector busy walking them. Here each field is
    one numpy array taken from its Parquet column, links (the keep child, each mode's top-1
    child) are global row numbers (-1 where absent), and a :class:`TrieSession` is an
    utterance's root row over these arrays. The hot path reads scalars through memoryviews,
    which give Python ints, floats and bools straight from the buffers (a float32 widens to the
    same double that ``to_list`` gave), so gates see exactly the values they saw before.

    ``topk=False`` leaves out the drafter's top-k lists (no gate reads them; they are half the
    memory of a big trace): drafts then carry empty ``topk_ids``/``topk_probs``.
    """

    def __init__(self, source, modes: Sequence[str], extra_cols: Sequence[str] = (), topk: bool = True):
        """``source``: a nodes DataFrame, or a function from a column name to that column (so a loader can
        read nodes.parquet one column at a time and never hold the whole table)."""
        get = source.__getitem__ if isinstance(source, pl.DataFrame) else source
        self.modes = tuple(modes)
        uid = get("utt_id")
        self.n = n = len(uid)
        change = (uid != uid.shift(1)).fill_null(True).to_numpy()
        starts = np.flatnonzero(change)
        names = uid.gather(starts)
        #: Rows of the source in the order the columns hold them (None: the source's order); an utterance's rows
        #: must be contiguous, and a source whose are not is grouped, stably.
        self.order = None
        if names.n_unique() != len(starts):
            self.order = uid.to_frame("u").with_row_index("r").sort("u", maintain_order=True)["r"].to_numpy()
            raw = get
            get = lambda c: raw(c).gather(self.order)
            uid = get("utt_id")
            starts = np.flatnonzero((uid != uid.shift(1)).fill_null(True).to_numpy())
            names = uid.gather(starts)
        del uid
        self.utt_ids: list[str] = names.to_list()
        self.starts = starts.astype(np.int64)
        self.counts = np.diff(np.append(self.starts, n))
        code = np.repeat(np.arange(len(starts), dtype=np.int32 if len(starts) < 2**31 else np.int64), self.counts)
        self.code = code
        self.node_id_a = get("node_id").to_numpy()
        self.row_of, self.repeats_ids = self._row_mapper(code, self.node_id_a)

        def col(name, fill, dtype):
            s = get(name)
            return (s.fill_null(fill) if s.null_count() else s).to_numpy().astype(dtype, copy=False)

        def link(name, present):
            ids = get(name)
            rows = self.row_of(code, ids.fill_null(0).to_numpy().astype(np.int64))
            rows[ids.is_null().to_numpy() | ~present] = -1
            return rows.astype(np.int32 if n < 2**31 else np.int64)

        self.depth_a = col("depth", 0, np.int32)
        roots = np.flatnonzero(get("parent_id").is_null().to_numpy())
        self.root_rows = roots
        self.root_of = dict(zip(code[roots].tolist(), roots.tolist()))
        has_d = get("d_token").is_not_null().to_numpy()
        self.has_d_a = has_d
        self.d_token_a = col("d_token", 0, np.int32)
        self.keep_a = link("keep_child", has_d)
        self.d_eos_a = col("d_eos", False, np.bool_)
        self.d_float = {}
        self.d_null = {}
        for name in ("d_logprob", "d_entropy", "d_margin"):
            self.d_float[name], self.d_null[name] = self._nullable(get(name), has_d)
        self.extra_names = tuple(c[2:] for c in extra_cols)
        self.extra = [self._nullable(get(c), has_d) for c in extra_cols]
        self.topk = topk
        if self.topk:
            self.topk_cols = [self._lists(get(c)) for c in ("d_topk_ids", "d_topk_probs")]
        self.has_v, self.top1_a, self.child_a, self.rank_a, self.prob_a, self.tprob_a, self.teos_a = \
            {}, {}, {}, {}, {}, {}, {}
        self.tprob_null, self.v_ent_a = {}, {}
        for m in self.modes:
            has_v = get(f"v_{m}_top1").is_not_null().to_numpy()
            self.has_v[m] = has_v
            self.top1_a[m] = col(f"v_{m}_top1", 0, np.int32)
            self.child_a[m] = link(f"v_{m}_child", has_v)
            self.rank_a[m] = col(f"v_{m}_rank", 0, np.int32)
            self.prob_a[m] = col(f"v_{m}_prob", np.nan, np.float32)
            self.tprob_a[m], self.tprob_null[m] = self._nullable(get(f"v_{m}_top1_prob"), has_v)
            self.teos_a[m] = col(f"v_{m}_top1_eos", False, np.bool_)
            self.v_ent_a[m] = col(f"v_{m}_entropy", np.nan, np.float32)
        self.get = get  # the source's columns in this row order, for checks that need more (validate)
        self._views()

    @staticmethod
    def _row_mapper(code: np.ndarray, node_id: np.ndarray):
        """(utterance code, node id) → global row, -1 where no such node; and whether an id repeats.

        Traces written by sectrace number each utterance's nodes 0…n-1 in row order, so a row is
        its utterance's first row plus the id; any other numbering goes through a sorted key."""
        n = len(code)
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if n else np.zeros(0, np.int64)
        first = np.repeat(starts, np.diff(np.append(starts, n)))
        counts = np.diff(np.append(starts, n))
        if n and np.array_equal(node_id, np.arange(n) - first):
            def direct(c, ids):
                ok = (ids >= 0) & (ids < counts[c])
                return np.where(ok, starts[c] + ids, -1)
            return direct, False
        key = (code.astype(np.int64) << 33) + node_id.astype(np.int64) + 2**32
        order = np.argsort(key, kind="stable")
        skey = key[order]

        def searched(c, ids):
            if not n:
                return np.full(len(ids), -1, np.int64)
            want = (c.astype(np.int64) << 33) + ids.astype(np.int64) + 2**32
            pos = np.minimum(np.searchsorted(skey, want), n - 1)
            return np.where(skey[pos] == want, order[pos], -1)
        return searched, bool(n and (skey[1:] == skey[:-1]).any())

    @staticmethod
    def _nullable(s: pl.Series, present: np.ndarray):
        """Values as a native array, and a null mask only where a value is missing on a row that needs it."""
        null = s.is_null().to_numpy()
        vals = s.fill_null(0).to_numpy() if s.null_count() else s.to_numpy()
        if vals.dtype.kind not in "fiub":
            vals = vals.astype(np.float64)
        return np.ascontiguousarray(vals), (memoryview(null) if (null & present).any() else None)

    @staticmethod
    def _lists(s: pl.Series):
        """A list column as (offsets, values): CSR, nulls and empty lists alike are empty."""
        lens = s.list.len().fill_null(0).to_numpy().astype(np.int64)
        offsets = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        vals = s.explode().drop_nulls().to_numpy() if len(s) else np.zeros(0)
        return memoryview(offsets), memoryview(np.ascontiguousarray(vals))

    def release_checks(self):
        """Drop what only checking needed (row mapping, ids, the source): replay walks the links alone."""
        self.get = self.row_of = self.code = self.node_id_a = None

    def _views(self):
        self.depth = memoryview(self.depth_a)
        self.has_d = memoryview(self.has_d_a)
        self.d_token = memoryview(self.d_token_a)
        self.keep = memoryview(self.keep_a)
        self.d_eos = memoryview(self.d_eos_a)
        self.d_lp, self.d_ent, self.d_mar = (memoryview(self.d_float[c]) for c in ("d_logprob", "d_entropy",
                                                                                    "d_margin"))
        self.d_nulls = tuple(self.d_null[c] for c in ("d_logprob", "d_entropy", "d_margin"))
        self.d_any_null = any(n is not None for n in self.d_nulls)
        self.extra_v = [(memoryview(v), null) for v, null in self.extra]
        self.v = {m: (memoryview(self.has_v[m]), memoryview(self.top1_a[m]), memoryview(self.child_a[m]),
                      memoryview(self.rank_a[m]), memoryview(self.prob_a[m]), memoryview(self.tprob_a[m]),
                      self.tprob_null[m], memoryview(self.teos_a[m]), memoryview(self.v_ent_a[m]))
                  for m in self.modes}

    # --- per-node records, built on demand -------------------------------------------------------
    def draft_token(self, i: int) -> DraftToken | None:
        if not self.has_d[i]:
            return None
        lp, ent, mar = self.d_lp[i], self.d_ent[i], self.d_mar[i]
        if self.d_any_null:
            nl, ne, nm = self.d_nulls
            lp, ent, mar = (None if nl is not None and nl[i] else lp, None if ne is not None and ne[i] else ent,
                            None if nm is not None and nm[i] else mar)
        extra = _Extras(self, i) if self.extra_names else None
        if self.topk:
            (io, iv), (po, pv) = self.topk_cols
            topk = (tuple(iv[io[i]:io[i + 1]].tolist()), tuple(pv[po[i]:po[i + 1]].tolist()))
        else:
            topk = ((), ())
        # tuple.__new__ skips the NamedTuple's Python-level __new__: the same value, a third of the cost.
        return _tuple_new(DraftToken, (self.d_token[i], lp, ent, mar, self.d_eos[i], extra, *topk))

    def judgement(self, mode: str, i: int) -> Judgement | None:
        has, top1, _, rank, prob, tprob, tnull, teos, ent = self.v[mode]
        if not has[i]:
            return None
        return Judgement(rank[i], prob[i], top1[i], None if tnull is not None and tnull[i] else tprob[i], teos[i],
                         ent[i])

    def session(self, utt: int) -> TrieSession:
        """The session of the ``utt``-th utterance (in row order)."""
        return TrieSession(self, root=self.root_of[utt])


class _Judgements:
    """Lazy judgements along a block: reading position j walks the trie only as far as j."""

    __slots__ = ("_nodes", "mode", "session", "start", "tokens")

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
        has, top1, _, rank, prob, tprob, tnull, teos, ent = s._v[self.mode]
        if not has[node] or (j < len(self.tokens) and rank[node] == 0):
            raise CoverageMiss(s._depth[node], f"{self.mode} verifier judgement not recorded")
        return _tuple_new(Judgement, (rank[node], prob[node], top1[node],
                                      None if tnull is not None and tnull[node] else tprob[node], teos[node],
                                      ent[node]))


class _Rows:
    """A per-node record sequence (drafts, a mode's verdicts) read from the columns on indexing."""

    __slots__ = ("get", "n")

    def __init__(self, get, n):
        self.get, self.n = get, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.get(i % self.n)


class TrieSession:
    """One utterance's trie as a protocol session: states are row numbers of the shared columns.

    ``TrieSession(df, modes, extra_cols)`` builds the columns of one utterance's rows of
    nodes.parquet (rows keep their order, so row ``i`` of ``df`` is state ``i``);
    ``TrieSession(columns, root=row)`` is a view into columns shared by a whole trace.
    """

    __slots__ = ("_d_token", "_depth", "_draft", "_has_d", "_keep", "_links", "_v", "columns", "modes", "root")

    def __init__(self, df, modes: Sequence[str] = (), extra_cols: Sequence[str] = (), root: int | None = None):
        cols = df if isinstance(df, TrieColumns) else TrieColumns(df, modes, extra_cols)
        if root is None:
            if len(cols.root_of) != 1:
                raise ValueError(f"TrieSession needs one utterance's nodes (one root), got {len(cols.root_of)}")
            root = next(iter(cols.root_of.values()))
        self.columns, self.root, self.modes = cols, root, cols.modes
        self._depth, self._has_d, self._d_token, self._keep = cols.depth, cols.has_d, cols.d_token, cols.keep
        self._v = cols.v
        self._links = tuple((v[1], v[2]) for v in cols.v.values())
        self._draft = cols.draft_token

    @property
    def depth(self):
        return self._depth

    @property
    def drafts(self) -> _Rows:
        return _Rows(self.columns.draft_token, self.columns.n)

    @property
    def verdict(self) -> dict[str, _Rows]:
        c = self.columns
        return {m: _Rows(lambda i, m=m: c.judgement(m, i), c.n) for m in self.modes}

    def draft(self, i):
        d = self._draft(i)
        if d is None:
            raise CoverageMiss(self._depth[i], "drafter not evaluated")
        return d

    def advance(self, i, token):
        k = self._keep[i]
        if k >= 0 and self._d_token[i] == token:
            return k
        for top1, child in self._links:
            c = child[i]
            if c >= 0 and top1[i] == token:
                return c
        raise CoverageMiss(self._depth[i] + 1, "state not explored")

    def judge(self, i, tokens, mode):
        if mode not in self._v:
            raise CoverageMiss(self._depth[i], f"the trace has no {mode} verifier judgements")
        return _Judgements(self, i, tokens, mode)
