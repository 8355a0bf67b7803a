"""A drafter and verifier small enough to replay by hand: every state the tests visit is written out below.

Tokens are small ints, 0 is EOS. States are prefixes. Every number is exact in float32 (0.25, 1.5, ...),
so values written to a trace and read back sit exactly on the thresholds the tests put them on.

The drafter's greedy path from the root is 1 2 3 4 EOS; the verifier (both modes alike) says:

    state      drafted  rank  prob    verifier top-1   drafter entropy / margin / logprob
    ()         1        1     0.5     1                0.5  / 0.5  / -0.25
    (1)        2        3     0.25    7                1.5  / 0.75 / -1.5
    (1 2)      3        4     0.125   8                0.25 / 0.25 / -0.5
    (1 2 3)    4        2     0.25    9                0.5  / 0.5  / -0.25
    (1 2 3 4)  EOS      1     0.5     EOS
    (1 2 3 9)  EOS      1     0.5     EOS
    (1 2 8)    EOS      1     0.75    EOS
    (1 7)      5        1     0.5     5
    (1 7 5)    EOS      1     0.5     EOS

Unlisted drafter states raise (a test that walks somewhere unexpected fails loudly); the verifier's
view just after an EOS (only ever read as an unused bonus position) is "EOS again".
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from sectrace.explore.synth import AlphaModel, synth_trace
from sectrace.protocol import DraftToken, Judgement, drafter_only
from sectrace.trace import TrieRecorder, load_trace, write_trace

EOS = 0
#: prefix -> (drafted token, logprob, entropy, margin)
DRAFTER = {
    (): (1, -0.25, 0.5, 0.5),
    (1,): (2, -1.5, 1.5, 0.75),
    (1, 2): (3, -0.5, 0.25, 0.25),
    (1, 2, 3): (4, -0.25, 0.5, 0.5),
    (1, 2, 3, 4): (EOS, -0.25, 0.5, 0.5),
    (1, 2, 3, 9): (EOS, -0.25, 0.5, 0.5),
    (1, 2, 8): (EOS, -0.25, 0.5, 0.5),
    (1, 7): (5, -0.25, 0.5, 0.5),
    (1, 7, 5): (EOS, -0.25, 0.5, 0.5),
}
#: prefix -> (rank of the drafted token, its probability, verifier top-1, top-1 probability)
VERIFIER = {
    (): (1, 0.5, 1, 0.5),
    (1,): (3, 0.25, 7, 0.5),
    (1, 2): (4, 0.125, 8, 0.5),
    (1, 2, 3): (2, 0.25, 9, 0.5),
    (1, 2, 3, 4): (1, 0.5, EOS, 0.5),
    (1, 2, 3, 9): (1, 0.5, EOS, 0.5),
    (1, 2, 8): (1, 0.75, EOS, 0.75),
    (1, 7): (1, 0.5, 5, 0.5),
    (1, 7, 5): (1, 0.5, EOS, 0.5),
}
MODES = ("audio", "blind")
UTT = {"utt_id": "hand", "edge_prompt_tokens": 50, "cloud_prompt_tokens": 70, "blind_prompt_tokens": 20,
       "feature_bytes": 3000, "raw_audio_bytes": 64000}


class HandSession:
    """The table above as a protocol session (states are prefixes)."""

    root: tuple = ()

    def draft(self, prefix):
        tok, lp, ent, mar = DRAFTER[prefix]
        return DraftToken(tok, lp, ent, mar, tok == EOS, None, (tok,), (math.exp(lp),))

    def advance(self, prefix, token):
        return prefix + (int(token),)

    def judge(self, prefix, tokens, mode):
        assert mode in MODES
        out = []
        for i in range(len(tokens) + 1):
            state = prefix + tuple(tokens[:i])
            if i < len(tokens):
                assert tokens[i] == DRAFTER[state][0], "only the drafter's greedy tokens are judged"
                rank, prob, top1, tprob = VERIFIER[state]
                out.append(Judgement(rank, prob, top1, tprob, top1 == EOS, 1.0))
            elif state and state[-1] == EOS:
                out.append(Judgement(0, math.nan, EOS, 1.0, True, 0.0))
            else:
                _, _, top1, tprob = VERIFIER[state]
                out.append(Judgement(0, math.nan, top1, tprob, top1 == EOS, 1.0))
        return out


def hand_trace(path: Path, policies) -> object:
    """The hand world written as a one-utterance trace explored with ``policies``, loaded back."""
    rec = TrieRecorder(HandSession(), MODES)
    from sectrace.protocol import run

    for pol in policies:
        run(rec, pol)
    manifest, utts, _, timings, vocab = synth_trace(AlphaModel(seed=1), 1, [drafter_only(4)])
    manifest["dataset"] = {"name": "hand", "description": "tests/hand_world.py", "n_utterances": 1}
    manifest.pop("synthetic_model")  # written by hand: no generating model to extend from
    row = utts.row(0, named=True) | UTT
    utts = pl.DataFrame([row], schema=utts.schema)
    write_trace(path, manifest, utts, rec.frames("hand"), timings, vocab)
    return load_trace(path)
