"""Default exploration policies: the runs a trace records so that common questions replay without misses."""

from __future__ import annotations

from ..gates.spec import parse_gate
from ..protocol import Accept, Policy, cloud_only, drafter_only

EXPLORE_GATES = ("entropy:1.5", "entropy:2.5", "entropy:3.5", "margin:0.1", "margin:0.3", "logprob:-1.0",
                 "logprob:-2.0", "random:0.25", "random:0.5", "random:0.75")


def default_exploration(max_new_tokens: int = 64, ks=(1, 3, 5, 8), ranks=(1, 3, 5, 10, 20)) -> list[Policy]:
    """Edge-only, cloud greedy (both verifier modes), always-escalate with rank <= R, built-in gates at a few thresholds."""
    pols = [drafter_only(max_new_tokens), cloud_only(max_new_tokens)]
    pols.append(Policy(k=0, gate=parse_gate("always"), gate_spec="always", accept=Accept("top1", 1),
                       privacy="token-only", max_new_tokens=max_new_tokens, name="cloud-only-blind"))
    for privacy in ("features", "token-only"):
        for k in ks:
            for r in ranks:
                acc = Accept("top1", 1) if r == 1 else Accept("rank", r)
                pols.append(Policy(k=k, gate=parse_gate("always"), gate_spec="always", accept=acc,
                                   privacy=privacy, max_new_tokens=max_new_tokens))
            for spec in EXPLORE_GATES:
                for acc in (Accept("top1", 1), Accept("rank", 20)):
                    pols.append(Policy(k=k, gate=parse_gate(spec), gate_spec=spec, accept=acc, privacy=privacy,
                                       max_new_tokens=max_new_tokens))
    return pols
