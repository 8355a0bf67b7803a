"""Make a big trace from a small one by repeating its utterances under new ids (plain script).

    PYTHONPATH=src python benchmarks/replicate_trace.py SRC OUT --utterances 10000

What costs time and memory in loading and replaying is the trie's node structure per
utterance, which copies keep exactly; so a 10,000-utterance trace for
benchmarks/bench_trie_scale.py takes seconds to make from `sectrace trace synth --utterances 400`
instead of the synthetic explorer's minutes. Copy ``c`` of utterance ``u`` is ``c<c>/u``, so copies sort
apart and Parquet compresses each as it did the original (adjacent copies would shrink the file
to a fraction and flatter any "RSS per disk byte" figure). The
manifest says how it was made (``dataset.description``). Written like ``write_trace`` writes
(nodes sorted by utterance and node, zstd), without its validating re-read.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import polars as pl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--utterances", type=int, required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    if args.out.exists():
        if not args.force:
            raise SystemExit(f"{args.out} exists; pass --force")
        shutil.rmtree(args.out)
    utts = pl.read_parquet(args.src / "utterances.parquet")
    nodes = pl.read_parquet(args.src / "nodes.parquet")
    base = utts.height
    copies = -(-args.utterances // base)
    pick_u, pick_n = [], []
    for c in range(copies):
        take = min(base, args.utterances - c * base)
        ids = utts["utt_id"].head(take)
        prefix = pl.lit(f"c{c:04d}/")
        pick_u.append(utts.head(take).with_columns((prefix + pl.col("utt_id")).alias("utt_id")))
        pick_n.append(nodes.filter(pl.col("utt_id").is_in(ids.implode())).with_columns((prefix + pl.col("utt_id")).alias("utt_id")))
    args.out.mkdir(parents=True)
    pl.concat(pick_u).write_parquet(args.out / "utterances.parquet")
    pl.concat(pick_n).sort(["utt_id", "node_id"]).write_parquet(args.out / "nodes.parquet", compression="zstd")
    for name in ("timings.parquet", "vocab.parquet"):
        if (args.src / name).exists():
            shutil.copy(args.src / name, args.out / name)
    manifest = json.loads((args.src / "manifest.json").read_text())
    ds = manifest.setdefault("dataset", {})
    ds["n_utterances"] = args.utterances
    ds["description"] = f"{args.utterances} utterances: {copies} copies of {args.src.name}'s {base} under new ids"
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out}: {args.utterances} utterances, {sum(f.height for f in pick_n):,} nodes")


if __name__ == "__main__":
    main()
