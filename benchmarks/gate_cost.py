"""Gate cost per block: how long one gate decision takes on this machine (edge time in the simulator).

Feeds ``CostModel.gate_s`` (``sectrace simulate --gate-cost``). Blocks are the real drafted
blocks of the sample trace (k tokens each); a learned gate is trained on it first.

    PYTHONPATH=src python benchmarks/gate_cost.py [--k 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sectrace.gates import parse_gate
from sectrace.gates.learned import save_gate, train_gate
from sectrace.protocol import Block
from sectrace.trace import load_trace

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "sectrace" / "data" / "sample-trace"


def blocks_from(trace, k: int, limit: int = 2000) -> list[Block]:
    """Consecutive k-token runs along each utterance's keep path: realistic drafted blocks."""
    out = []
    for (uid,), df in trace.nodes.partition_by("utt_id", as_dict=True).items():
        rows = {r["node_id"]: r for r in df.iter_rows(named=True)}
        node = rows[min(rows)]
        path = []
        while node is not None and node["d_token"] is not None:
            path.append(node)
            node = rows.get(node["keep_child"]) if node["keep_child"] is not None else None
        for s in range(0, len(path) - k + 1, k):
            blk = path[s:s + k]
            out.append(Block(tuple(r["d_token"] for r in blk), tuple(r["d_logprob"] for r in blk),
                             tuple(r["d_entropy"] for r in blk), tuple(r["d_margin"] for r in blk),
                             blk[0]["depth"],
                             tuple({"stability": r["x_stability"], "audio_shift": r["x_audio_shift"]} for r in blk)))
            if len(out) >= limit:
                return out
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tr = load_trace(SAMPLE)
    blocks = blocks_from(tr, args.k)
    tmp = Path(tempfile.mkdtemp())
    specs = ["always", "entropy:2.5", "entropy-mean:2.0", "margin:0.2", "logprob:-1.5", "random:0.5",
             "stability:0.5", "audio:0.5", "content:digits+dates+names+emotion",
             "any(entropy:2.5,content:emotion)"]
    for kind in ("logreg", "gbt"):
        path = tmp / f"{kind}.json"
        save_gate(train_gate(tr, kind, folds=2), path)
        specs.append(f"learned:{path}:0.5")
    print(f"gate cost per block: {len(blocks)} blocks of k={args.k} from {SAMPLE.name}, best of {args.repeat}")
    print(f"{'gate':<44} {'µs/block':>10}")
    for spec in specs:
        gate = parse_gate(spec, tr)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for b in blocks:
                gate.escalate(b)
            best = min(best, (time.perf_counter() - t0) / len(blocks))
        label = spec.replace(str(tmp) + "/", "")
        print(f"{label:<44} {best * 1e6:>10.1f}")
    print("use the figure as edge time per gate decision: sectrace simulate --gate-cost 20us (say)")


if __name__ == "__main__":
    main()
