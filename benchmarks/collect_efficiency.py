"""Collect efficiency on random Qwen2 models (CPU, no downloads): model tokens per trie node and nodes/s.

Prints, for the default exploration on a few prompts: trie nodes, drafter and verifier
tokens computed per node (prompt prefill excluded; 1.0 = nothing computed twice), the
tokens a cache-less implementation would compute (prompt + prefix for every call), and
throughput. Usage: PYTHONPATH=src python benchmarks/collect_efficiency.py [--hidden 256 --layers 4 --max-new 32]
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
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from tiny_models import CORPUS, make_qwen2, make_tokenizer

    from sectrace.explore.recorder import explore
    from sectrace.models.lm import CachedLM
    from sectrace.models.pair import PairSource, load_pair
    from sectrace.explore import default_exploration

    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp())
    tok = make_tokenizer(root / "tok")
    make_qwen2(root / "d", tok, 1, layers=a.layers, hidden=a.hidden, dtype="float32")
    make_qwen2(root / "v", tok, 2, layers=a.layers + 2, hidden=a.hidden, dtype="float32")
    info = load_pair(str(root / "d"), str(root / "v"))
    pols = default_exploration(a.max_new)
    tot = {"nodes": 0, "d": 0, "v": 0, "judged": 0, "naive_d": 0, "naive_v": 0, "s": 0.0, "calls_v": 0}
    for i in range(a.prompts):
        prompt = tok("Transcript: " + CORPUS[i % len(CORPUS)] + "\nDescribe the emotion.")["input_ids"]
        d = CachedLM(info.drafter, info.shared_vocab)
        vs = {m: CachedLM(info.verifier, info.shared_vocab) for m in ("audio", "blind")}
        src = PairSource(d, prompt, vs, {"audio": prompt, "blind": prompt[-6:]}, info.eos)
        t0 = time.perf_counter()
        ex = explore(src, pols, ("audio", "blind"))
        tot["s"] += time.perf_counter() - t0
        nodes = ex.recorder.nodes
        tot["nodes"] += len(nodes)
        tot["d"] += d.counters.tokens - d.counters.prefill_tokens
        for m, v in vs.items():
            tot["v"] += v.counters.tokens - v.counters.prefill_tokens
            tot["calls_v"] += v.counters.calls
            tot["judged"] += sum(1 for r in nodes.values() if m in r)
        tot["naive_d"] += sum(len(prompt) + len(p) for p, r in nodes.items() if "d" in r)
    print(f"models: drafter {a.layers} layers, verifier {a.layers + 2} layers, hidden {a.hidden}, float32, "
          f"{a.threads} threads; {len(pols)} exploration policies, max {a.max_new} new tokens, {a.prompts} prompts")
    print(f"trie nodes                     {tot['nodes']}")
    print(f"drafter tokens per node        {tot['d'] / tot['nodes']:.3f}")
    print(f"verifier tokens per judged node {tot['v'] / max(tot['judged'], 1):.3f} ({tot['calls_v']} verifier passes)")
    print(f"drafter tokens without caching {tot['naive_d'] / tot['nodes']:.1f} per node "
          f"({tot['naive_d'] / max(tot['d'], 1):.0f}x more)")
    print(f"throughput                     {tot['nodes'] / tot['s']:.1f} nodes/s ({tot['s']:.1f} s)")


if __name__ == "__main__":
    main()
