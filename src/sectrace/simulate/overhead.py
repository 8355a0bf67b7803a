"""Where the time goes, and how much an overlapping edge hides (closed form, vectorised over configurations).

Breakdown parts per utterance: edge prefill, edge drafting (useful drafts), wasted drafts (drafted
then thrown away after a rejection), gate, uplink, queueing (always 0 for one device; the fleet
engine measures it), cloud prefill, cloud verify, resync (bringing the cloud's cache up to date:
tokens committed on the edge since the last call, or the whole context for a stateless cloud),
cloud decode (cloud-only), downlink. They add up to the closed-form latency.

Overlap: while a verification is in flight the edge drafts the next block as if the whole block
were accepted. When it was (no correction, and no bonus token, which the edge cannot guess), those
drafts stand and up to the round trip of drafting time is hidden; otherwise they are thrown away at
no latency cost. Hidden time per escalation is min(round trip, next block's drafting time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import Draft, GateCall, Verify
from .aggregate import Linear
from .replay import FEATURES, FI, TOKEN_BYTES, Replay, Replayer, schedule_features
from .timing import PARTS

#: resync tokens are counted apart by the pass that runs them: a call of its own (priced at the verify slope) or
#: a prefilling call (the prefill slope, as schedule_features prices them).
SHADOW = ("wasted_steps", "wasted_ctx", "resync_tokens", "resync_bytes", "resync_prefill_tokens")

BREAKDOWN_PARTS = ("edge_prefill", "edge_drafting", "wasted_drafts", "gate", "uplink", "queueing", "cloud_prefill",
                   "cloud_verify", "resync", "cloud_decode", "downlink")


@dataclass
class Overhead:
    """Per-utterance shadow counts of a replay, and its escalations' overlap features."""

    shadow: np.ndarray  # (utterances, len(SHADOW)); NaN rows where not covered
    call: np.ndarray  # (escalations, features): up + cloud + down of each call
    next_draft: np.ndarray  # (escalations, features): the next block's drafting
    valid: np.ndarray  # (escalations,) bool: the speculative drafts would have stood
    owner: np.ndarray  # (escalations,) utterance index


def overhead(replayer: Replayer, rep: Replay) -> Overhead:
    """Walk each covered run's events once; cached on the replay."""
    hit = getattr(rep, "_overhead", None)
    if hit is not None:
        return hit
    utts = replayer._utts  # noqa: SLF001  (same stage)
    stateless = rep.policy.cloud_cache == "stateless"
    nf = len(FEATURES)
    shadow = np.full((len(rep.utt_ids), len(SHADOW)), np.nan)
    calls, nexts, valid, owner = [], [], [], []
    for u, (uid, r) in enumerate(zip(rep.utt_ids, rep.runs)):
        if r is None:
            continue
        utt = utts[uid]
        prompt = utt["edge_prompt_tokens"]
        ws = wc = rt = rb = rp = 0
        block: list[int] = []
        cur: list[int] = []
        verifies = []  # (event index, Verify)
        for i, ev in enumerate(r.events):
            kind = type(ev)
            if kind is Draft:
                cur.append(ev.ctx)  # ctx 0 (the first token) comes with the prefill: free, see schedule_features
            elif kind is GateCall:
                block, cur = cur, []
            elif kind is Verify:
                verifies.append(i)
                if ev.corrected:
                    lost = block[ev.accepted:]
                    ws += sum(1 for c in lost if c)
                    wc += sum(prompt + c for c in lost if c)
                if stateless:
                    rp += ev.ctx
                    rb += TOKEN_BYTES * ev.ctx
                else:
                    if ev.first:
                        rp += ev.pending
                    else:
                        rt += ev.pending
                    rb += TOKEN_BYTES * ev.unsent
        shadow[u] = (ws, wc, rt, rb, rp)
        if not verifies or rep.policy.k == 0:
            continue
        marks: list = []
        schedule_features(r, rep.policy, utt, marks)
        marks_arr = np.array(marks)
        idx = np.array(verifies)
        # a Verify event adds exactly its call's features (uplink, cloud work, downlink)
        call = marks_arr[idx] - np.where(idx[:, None] > 0, marks_arr[np.maximum(idx - 1, 0)], 0.0)
        for j, i in enumerate(verifies):
            ev = r.events[i]
            nd = np.zeros(nf)
            for later in r.events[i + 1:]:
                if type(later) is Draft and later.ctx:
                    nd[FI["draft_steps"]] += 1
                    nd[FI["draft_ctx"]] += prompt + later.ctx
                elif type(later) is GateCall:
                    break
            calls.append(call[j])
            nexts.append(nd)
            valid.append(ev.corrected == 0 and ev.bonus == 0 and nd[FI["draft_steps"]] > 0)
            owner.append(u)
    z = np.zeros((0, nf))
    out = Overhead(shadow, np.array(calls) if calls else z, np.array(nexts) if nexts else z,
                   np.array(valid, bool), np.array(owner, int))
    rep._overhead = out
    return out


def overlap_hidden(ov: Overhead, n_utt: int, theta: np.ndarray) -> np.ndarray:
    """Seconds the overlapping edge hides, (utterances, configs); theta is (features, configs)."""
    out = np.zeros((n_utt, theta.shape[1]))
    if len(ov.owner):
        keep = ov.valid
        if keep.any():
            hidden = np.minimum(ov.call[keep] @ theta, ov.next_draft[keep] @ theta)
            owner = ov.owner[keep]  # ascending: escalations are collected utterance by utterance
            starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            out[owner[starts]] = np.add.reduceat(hidden, starts, axis=0)
    return out


#: A theta row past the features: seconds per uplink byte (1 / up_Bps), which prices the resync bytes.
_INV_UP = len(FEATURES)


def _part_features(rep: Replay, ov: Overhead, covered: bool) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Per part: its per-utterance features (signed) and the theta rows they multiply; the same for every
    configuration, so built once per replay (cached on it) and ``covered``: only the covered utterances."""
    key = "_part_features_covered" if covered else "_part_features_all"
    hit = getattr(rep, key, None)
    if hit is not None:
        return hit
    f, sh = rep.total, ov.shadow

    def part(names):
        idx = [FI[x] for x in names]
        return f[:, idx], idx

    wasted = (sh[:, [0, 1]], [FI["draft_steps"], FI["draft_ctx"]])
    resync_cloud = (sh[:, [2, 4]], [FI["verify_tokens"], FI["prefill_verify_tokens"]])
    resync_up = (sh[:, [3]], [_INV_UP])
    base = {name: part(feats) for name, feats in PARTS.items()}

    def lin(*terms):
        return np.hstack([s * x for s, (x, _) in terms]), [i for _, (_, idx) in terms for i in idx]

    out = {
        "edge_prefill": lin((1, base["edge_prefill"])),
        "edge_drafting": lin((1, base["edge_drafting"]), (-1, wasted)),
        "wasted_drafts": lin((1, wasted)),
        "gate": lin((1, base["gate"])),
        "uplink": lin((1, base["uplink"]), (-1, resync_up)),
        "queueing": (np.zeros((f.shape[0], 1)), [_INV_UP]),
        "cloud_prefill": lin((1, base["cloud_prefill"])),
        "cloud_verify": lin((1, base["cloud_verify"]), (-1, resync_cloud)),
        "resync": lin((1, resync_cloud), (1, resync_up)),
        "cloud_decode": lin((1, base["cloud_decode"])),
        "downlink": lin((1, base["downlink"])),
    }
    if covered:
        ok = rep.covered
        out = {k: (x[ok], idx) for k, (x, idx) in out.items()}
    setattr(rep, key, out)
    return out


def breakdown_linear(rep: Replay, ov: Overhead, theta: np.ndarray, up_Bps: np.ndarray,
                     covered: bool = False) -> dict[str, Linear]:
    """Seconds per part, each factored as per-utterance features @ theta (:class:`.aggregate.Linear`): every
    part is linear in the cost vector, so a sweep's mean per part is priced without the utterances ×
    configurations array. They sum to the closed-form latency.

    ``up_Bps`` (configs,) prices the resync bytes taken out of the uplink; ``covered``: the covered
    utterances only (the rows a summary reads)."""
    th = np.vstack([theta, 1.0 / np.asarray(up_Bps, float)[None, :]])
    return {name: Linear(x, th[idx]) for name, (x, idx) in _part_features(rep, ov, covered).items()}


def breakdown_parts(rep: Replay, ov: Overhead, theta: np.ndarray, up_Bps: np.ndarray) -> dict[str, np.ndarray]:
    """Seconds per part, (utterances, configs) each: :func:`breakdown_linear` multiplied out."""
    return {name: p.values() for name, p in breakdown_linear(rep, ov, theta, up_Bps).items()}
