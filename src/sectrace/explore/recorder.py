"""Trie exploration: run the exploration policies live on one utterance, memoising every state visited.

Budgets bound the work per utterance: ``max_nodes`` stops exploring (after the policy that
crossed it) so one runaway caption cannot eat a shard's time; depth is bounded by each
policy's ``max_new_tokens``. Policies stopped by the budget simply leave coverage misses,
which replay reports and ``collect --extend`` can fill later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import Policy, Run, run
from ..trace import TrieRecorder, TrieSession


class NodeBudget(Exception):
    pass


class BudgetRecorder(TrieRecorder):
    """A TrieRecorder that refuses to grow past ``max_nodes`` states."""

    def __init__(self, source, modes, max_nodes: int | None = None):
        super().__init__(source, modes)
        self.max_nodes = max_nodes

    def advance(self, prefix, token):
        child = prefix + (int(token),)
        if self.max_nodes is not None and child not in self.nodes and len(self.nodes) >= self.max_nodes:
            raise NodeBudget()
        self.nodes.setdefault(child, {})
        return child

    def judge(self, prefix, tokens, mode):
        if self.max_nodes is not None:
            new = sum(prefix + tuple(tokens[:i]) not in self.nodes for i in range(len(tokens) + 1))
            if new and len(self.nodes) + new > self.max_nodes:
                raise NodeBudget()
        return super().judge(prefix, tokens, mode)


@dataclass
class Exploration:
    recorder: BudgetRecorder
    runs: dict[str, Run | None] = field(default_factory=dict)  # policy label -> live run (None: budget hit)
    truncated: bool = False


def explore(source, policies: list[Policy], modes, max_nodes: int | None = None,
            recorder: BudgetRecorder | None = None) -> Exploration:
    """Run each policy whose verifier mode was collected; stop at the node budget."""
    rec = recorder or BudgetRecorder(source, modes, max_nodes)
    ex = Exploration(rec)
    for pol in policies:
        if pol.verifier_mode not in rec.modes:
            continue
        try:
            ex.runs[pol.label] = run(rec, pol)
        except NodeBudget:
            ex.runs[pol.label] = None
            ex.truncated = True
            break
    return ex


def seed_recorder(rec: TrieRecorder, nodes, modes) -> int:
    """Pre-load a recorder with one utterance's recorded trie (its rows of nodes.parquet), for ``--extend``.

    Every recorded drafter output and judgement becomes a memo entry, so running more
    policies live asks the models only for the states the trace lacks. Recorded values are
    the trace's (float32), so gates decide exactly as a replay of the trace would.
    """
    modes = [m for m in modes if f"v_{m}_top1" in nodes.columns]
    sess = TrieSession(nodes, modes, [c for c in nodes.columns if c.startswith("x_")])  # keep x_* signals
    ids = nodes["node_id"].to_list()
    row_of = {nid: i for i, nid in enumerate(ids)}
    parents = nodes["parent_id"].to_list()
    tokens = nodes["token"].to_list()
    prefix_of: dict[int, tuple] = {}
    for i in sorted(range(len(ids)), key=lambda r: sess.depth[r]):
        prefix_of[i] = () if parents[i] is None else prefix_of[row_of[parents[i]]] + (int(tokens[i]),)
    for i, p in prefix_of.items():
        node = rec.nodes.setdefault(p, {})
        if sess.drafts[i] is not None:
            node["d"] = sess.drafts[i]
        for m in modes:
            if sess.verdict[m][i] is not None:
                node[m] = sess.verdict[m][i]
    return len(prefix_of)
