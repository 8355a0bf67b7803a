"""Extra drafter cost of `collect --signals` on random Qwen2 models (CPU, no downloads), per trie node.

For each signal (mc-dropout, stability, audio-shift): forward passes, positions computed
(batch rows; audio-shift includes its no-audio prompt's prefill once per utterance) and
seconds per drafted node and per trie node, against the drafter's own work on the same
exploration; and the positions a cache-less implementation would compute (the whole
prompt + prefix again for every row), i.e. what reusing the prefix's KV cache saves.
Usage: PYTHONPATH=src python benchmarks/signal_cost.py [--hidden 256 --layers 4 --max-new 16 --n 8 --k 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=8, help="MC-dropout passes")
    ap.add_argument("--k", type=int, default=8, help="stability candidates")
    a = ap.parse_args()
    import torch
    from tiny_models import CORPUS, make_qwen2, make_tokenizer

    from sectrace.explore.recorder import explore
    from sectrace.gates import parse_policy
    from sectrace.models.lm import CachedLM
    from sectrace.models.pair import PairSource, load_pair
    from sectrace.models.signals import parse_signals, with_signals

    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp())
    tok = make_tokenizer(root / "tok")
    make_qwen2(root / "d", tok, 1, layers=a.layers, hidden=a.hidden, dtype="float32")
    make_qwen2(root / "v", tok, 2, layers=a.layers + 2, hidden=a.hidden, dtype="float32")
    info = load_pair(str(root / "d"), str(root / "v"))
    pols = [parse_policy(p, a.max_new) for p in ("k=1 gate=never accept=top1", "k=3 gate=always accept=top1",
                                                  "k=3 gate=entropy:2.5 accept=top1", "k=5 gate=always accept=rank:5")]
    spec = parse_signals(f"mc-dropout:n={a.n},stability:k={a.k},audio-shift")
    tot = {"nodes": 0, "drafted": 0, "d_s": 0.0, "d_pos": 0, "naive": {s: 0 for s in spec.names}}
    cost = {s: {"passes": 0, "positions": 0, "seconds": 0.0} for s in spec.names}
    for i in range(a.prompts):
        text = "Transcript: " + CORPUS[i % len(CORPUS)] + "\nDescribe the emotion."
        prompt = tok(text)["input_ids"]
        blind = tok("Transcript: \nDescribe the emotion.")["input_ids"]
        d = CachedLM(info.drafter, info.shared_vocab)
        vs = {"audio": CachedLM(info.verifier, info.shared_vocab)}
        src = with_signals(PairSource(d, prompt, vs, {"audio": prompt}, info.eos), spec,
                           CachedLM(info.drafter, info.shared_vocab), blind)
        t0 = time.perf_counter()
        ex = explore(src, pols, ("audio",))
        wall = time.perf_counter() - t0
        nodes = ex.recorder.nodes
        drafted = [p for p, r in nodes.items() if "d" in r]
        tot["nodes"] += len(nodes)
        tot["drafted"] += len(drafted)
        tot["d_s"] += d.counters.seconds
        tot["d_pos"] += d.counters.tokens
        summary = src.signals.summary()
        for s in spec.names:
            for key in cost[s]:
                cost[s][key] += summary[s][key]
        for p in drafted:
            tot["naive"]["mc-dropout"] += a.n * (len(prompt) + len(p))
            tot["naive"]["stability"] += a.k * (len(prompt) + len(p) + 1)
            tot["naive"]["audio-shift"] += len(blind) + len(p)
        print(f"prompt {i}: {len(nodes)} trie nodes, {len(drafted)} drafted, {wall:.2f} s exploring")
    dn, tn = tot["drafted"], tot["nodes"]
    print(f"\nrandom Qwen2 drafter: hidden {a.hidden}, {a.layers} layers, float32, {a.threads} threads; "
          f"{tn} trie nodes, {dn} drafted")
    print(f"drafter itself: {tot['d_pos'] / dn:.2f} positions, {tot['d_s'] / dn * 1e3:.2f} ms per drafted node "
          "(prompt prefill included)")
    head = f"{'signal':<12} {'passes/node':>11} {'positions/node':>14} {'no-cache pos.':>13} {'ms/drafted':>10} " \
           f"{'ms/trie node':>12} {'x draft':>8}"
    print(head)
    for s in spec.names:
        c = cost[s]
        print(f"{s:<12} {c['passes'] / dn:>11.2f} {c['positions'] / dn:>14.2f} {tot['naive'][s] / dn:>13.1f} "
              f"{c['seconds'] / dn * 1e3:>10.2f} {c['seconds'] / tn * 1e3:>12.2f} {c['seconds'] / tot['d_s']:>8.2f}")
    print("positions/node: computed with the prefix's KV cache reused; no-cache pos.: a fresh full pass per row; "
          "x draft: signal seconds / the drafter's own seconds")


if __name__ == "__main__":
    main()
