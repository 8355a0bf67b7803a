"""Replay: (trace, policy) → per-utterance runs and schedules, exactly, or a reported coverage miss.

Replays are cached per policy (policies are frozen, hashable values), so a sweep over
networks and devices walks the trie once per policy and reuses the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ..protocol import CloudStart, CloudStep, Commit, CoverageMiss, Draft, GateCall, Policy, Prefill, Run, Verify, run
from ..trace import Trace, TrieSession
from .costs import VERIFY_TABLE_MAX

TOKEN_BYTES = 4  # a token id on the wire (int32)
DOWN_PAYLOAD_BYTES = 8  # accepted count + correction/bonus token id

#: Verify calls of one block size each (1 … 16; the last counts calls of 16 tokens or more): a measured verify
#: table prices each call at its own size's time and stays linear (see costs.CostModel, timing.cost_theta).
VERIFY_SIZE_FEATURES = tuple(f"verify_calls_n{j}" for j in range(1, VERIFY_TABLE_MAX + 1))

#: Linear schedule features. Latency = features · cost vector (see timing.py); names are stable API.
FEATURES = (
    "edge_prefills", "edge_prefill_tokens", "draft_steps", "draft_ctx", "gate_calls",
    "up_msgs", "up_bytes", "down_msgs", "down_bytes",
    "cloud_prefills", "cloud_prefill_tokens", "verify_calls", "verify_tokens", "verify_ctx", "prefill_verify_tokens",
    "cloud_steps", "cloud_ctx", *VERIFY_SIZE_FEATURES,
)
FI = {name: i for i, name in enumerate(FEATURES)}


def cloud_tokens(features: np.ndarray) -> np.ndarray:
    """Tokens the cloud ran beyond prompts, per row of schedule features: verified (with their resync, in a call
    of its own or merged into a prefilling pass) and decoded. One definition for simulate, sweep and fleet."""
    return features[..., FI["verify_tokens"]] + features[..., FI["prefill_verify_tokens"]] + \
        features[..., FI["cloud_steps"]]


@dataclass
class Replay:
    """One policy over a trace: runs per utterance (None where the trie was left) and schedule features."""

    policy: Policy
    utt_ids: list[str]
    runs: list[Run | None]
    misses: list[CoverageMiss | None]
    total: np.ndarray  # (utterances, features): the whole run
    first: np.ndarray  # (utterances, features): up to the first committed token
    bytes_up: np.ndarray
    bytes_down: np.ndarray
    audio_bytes_up: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return np.array([r is not None for r in self.runs])


def payload(ev, policy: Policy, utt: dict) -> tuple[int, int, int]:
    """Bytes up, bytes down and audio-derived bytes up for one event, by privacy mode and cloud cache.

    Stateful clouds get the audio payload and the instruction's token ids on the first call and
    afterwards only token ids they have not seen; stateless clouds get everything every call.
    """
    kind = type(ev)
    if kind is Verify:
        audio = _audio_payload(policy, utt) if (ev.first or policy.cloud_cache == "stateless") else 0
        if policy.cloud_cache == "stateless":
            ids = utt["blind_prompt_tokens"] + ev.ctx + ev.n
        else:
            ids = ev.unsent + ev.n + (utt["blind_prompt_tokens"] if ev.first else 0)
        return audio + TOKEN_BYTES * ids, DOWN_PAYLOAD_BYTES, audio
    if kind is CloudStart:
        audio = _audio_payload(policy, utt)
        return audio + TOKEN_BYTES * utt["blind_prompt_tokens"], 0, audio
    return 0, 0, 0


def _audio_payload(policy: Policy, utt: dict) -> int:
    return {"token-only": 0, "features": utt["feature_bytes"], "raw": utt["raw_audio_bytes"]}[policy.privacy]


def schedule_features(run_: Run, policy: Policy, utt: dict,
                      marks: list | None = None) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Turn a run's ordered events into linear cost features (whole run, and up to the first commit).

    With ``marks`` (a list), the running feature totals after each event are appended to it, and
    once more at the end: the SimPy engine cuts the schedule into timed steps from their differences,
    so both engines price the very same features.

    Passes merge the way a real decoder runs them (measured by ``sectrace validate``): a prefill pass
    yields the first token's logits, so the first draft step (edge) and the first cloud decoding step
    cost nothing of their own, and a verify call that prefills (the first stateful call, every
    stateless call) runs prompt, resync and block in one pass from an empty cache: one prefill over all
    of them (``prefill_verify_tokens`` are priced at the prefill slope), no verify call of its own. The
    live per-event residuals showed why: pricing that pass's block at the verify table's slope
    over-predicted the session-opening call by ~0.3 s per run (docs/live.md). A call of its own runs
    ``pending + n`` tokens (the resync and the block) on the cached context: it is counted under that
    block size too, so a per-block-size verify table prices it."""
    f = np.zeros(len(FEATURES))
    first = None
    audio_up = 0
    edge_prompt = utt["edge_prompt_tokens"]
    cloud_prompt = utt["blind_prompt_tokens"] if policy.verifier_mode == "blind" else utt["cloud_prompt_tokens"]
    stateless = policy.cloud_cache == "stateless"
    for ev in run_.events:
        kind = type(ev)
        if kind is Draft:
            if ev.ctx:  # the first token's logits come out of the edge prefill: no step of its own
                f[FI["draft_steps"]] += 1
                f[FI["draft_ctx"]] += edge_prompt + ev.ctx
        elif kind is GateCall:
            f[FI["gate_calls"]] += 1
        elif kind is Verify:
            up, down, audio = payload(ev, policy, utt)
            audio_up += audio
            if stateless or ev.first:  # one pass from an empty cache: prompt, resync and block at the prefill slope
                f[FI["cloud_prefills"]] += 1
                f[FI["cloud_prefill_tokens"]] += cloud_prompt
                f[FI["prefill_verify_tokens"]] += (ev.ctx if stateless else ev.pending) + ev.n
            else:  # a call of its own on the cached context
                f[FI["verify_calls"]] += 1
                f[FI["verify_tokens"]] += ev.pending + ev.n
                f[FI["verify_ctx"]] += cloud_prompt + ev.ctx - ev.pending
                f[FI[VERIFY_SIZE_FEATURES[min(ev.pending + ev.n, VERIFY_TABLE_MAX) - 1]]] += 1
            f[FI["up_msgs"]] += 1
            f[FI["up_bytes"]] += up
            f[FI["down_msgs"]] += 1
            f[FI["down_bytes"]] += down
        elif kind is Commit:
            if first is None and ev.n > 0:
                first = f.copy()
                if policy.k == 0:  # streamed cloud decoding: the first token still has to come down
                    first[FI["down_msgs"]] += 1
                    first[FI["down_bytes"]] += TOKEN_BYTES
        elif kind is CloudStep:
            if ev.ctx:  # the first token comes out of the cloud prefill
                f[FI["cloud_steps"]] += 1
                f[FI["cloud_ctx"]] += cloud_prompt + ev.ctx
        elif kind is Prefill:
            f[FI["edge_prefills"]] += 1
            f[FI["edge_prefill_tokens"]] += edge_prompt
        elif kind is CloudStart:
            up, _, audio = payload(ev, policy, utt)
            audio_up += audio
            f[FI["up_msgs"]] += 1
            f[FI["up_bytes"]] += up
            f[FI["cloud_prefills"]] += 1
            f[FI["cloud_prefill_tokens"]] += cloud_prompt
        if marks is not None:
            marks.append(f.copy())
    if policy.k == 0:  # the caption streams down: one message, its bytes, arriving after the last step
        f[FI["down_msgs"]] += 1
        f[FI["down_bytes"]] += TOKEN_BYTES * len(run_.tokens)
    if first is None:
        first = f.copy()
    if marks is not None:
        marks.append(f.copy())
    return f, first, int(f[FI["up_bytes"]]), int(f[FI["down_bytes"]]), audio_up


def schedule_frame(run_: Run, policy: Policy, utt: dict) -> pl.DataFrame:
    """One utterance's ordered schedule as a table: every event, its fields, and bytes per escalation."""
    rows = []
    for i, ev in enumerate(run_.events):
        up, down, audio = payload(ev, policy, utt)
        rows.append({"step": i, "event": type(ev).__name__, **ev._asdict(), "bytes_up": up, "bytes_down": down,
                     "audio_bytes_up": audio})
    return pl.DataFrame(rows, infer_schema_length=None)


class Replayer:
    """Replays policies over one trace, caching schedules.

    Sessions are views (a root row) into the trace's shared trie columns (``Trace.trie``), so
    making them costs nothing per node and holds no per-node objects."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.utt_ids = trace.utterances["utt_id"].to_list()
        self._utts = {r["utt_id"]: r for r in trace.utterances.iter_rows(named=True)}
        cols = trace.trie()
        self.sessions = {uid: TrieSession(cols, root=cols.root_of[j]) for j, uid in enumerate(cols.utt_ids)}
        self._cache: dict[Policy, Replay] = {}

    def replay(self, policy: Policy) -> Replay:
        try:
            hit = self._cache.get(policy)
        except TypeError:  # a gate object that is not hashable: replay without caching
            hit, cacheable = None, False
        else:
            cacheable = True
        if hit is not None:
            return hit
        runs, misses, tot, fst, up, down, aup = [], [], [], [], [], [], []
        nfeat = len(FEATURES)
        for uid in self.utt_ids:
            try:
                r = run(self.sessions[uid], policy)
            except CoverageMiss as miss:
                runs.append(None)
                misses.append(miss)
                tot.append(np.full(nfeat, np.nan))
                fst.append(np.full(nfeat, np.nan))
                up.append(-1)
                down.append(-1)
                aup.append(-1)
                continue
            f, first, bu, bd, au = schedule_features(r, policy, self._utts[uid])
            runs.append(r)
            misses.append(None)
            tot.append(f)
            fst.append(first)
            up.append(bu)
            down.append(bd)
            aup.append(au)
        rep = Replay(policy, self.utt_ids, runs, misses, np.array(tot), np.array(fst), np.array(up),
                     np.array(down), np.array(aup))
        if cacheable:
            self._cache[policy] = rep
        return rep


def similarity(a: list[int], b: list[int]) -> float:
    """1 − normalised token edit distance (1.0 = identical captions)."""
    if a == b:
        return 1.0
    n, m = len(a), len(b)
    if not n or not m:
        return 0.0
    return 1.0 - edit_distance(a, b) / max(n, m)


def edit_distance(a, b) -> int:
    """Levenshtein distance (unit insert, delete, substitute) between two token sequences.

    Hyyrö's bit-vector form of Myers' algorithm: one column of the dynamic-programming table is
    a pair of bit masks over ``a`` (Python ints of any width), so a 64-token pair costs 64 steps of
    a few integer operations instead of 4,096 cells; the result is the same distance, so
    :func:`similarity` gives the same floats (tests/test_trie_columns.py checks it against the table)."""
    m = len(a)
    if not m:
        return len(b)
    peq: dict = {}
    for i, tok in enumerate(a):
        peq[tok] = peq.get(tok, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for tok in b:
        eq = peq.get(tok, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
    return score


def runs_frame(rep: Replay) -> pl.DataFrame:
    """Per-utterance counts of a replay (no timing)."""
    rows = []
    for uid, r, miss in zip(rep.utt_ids, rep.runs, rep.misses):
        if r is None:
            rows.append({"utt_id": uid, "covered": False, "miss_depth": miss.depth, "miss_reason": miss.what})
            continue
        rows.append({"utt_id": uid, "covered": True, "miss_depth": None, "miss_reason": None,
                     "n_tokens": len(r.tokens), "drafted": r.drafted, "blocks": r.blocks,
                     "escalations": r.escalations, "verified": r.verified, "accepted": r.accepted,
                     "corrected": r.corrected, "bonus_tokens": r.bonus, "wasted": r.wasted, "eos": r.eos,
                     "tokens": r.tokens})
    return pl.DataFrame(rows, infer_schema_length=None)
