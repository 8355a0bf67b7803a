"""Regenerate the bundled sample trace from real models on real (synthesised) audio, end to end, on a CPU.

    python scripts/make_sample_trace.py            # writes src/sectrace/data/sample-trace

Steps: (1) `sectrace data synth` makes the espeak-ng emotional speech set; (2) the on-device front
end (Whisper tiny.en + prosody) turns each clip into audio-derived text; (3) `sectrace collect`
runs the Qwen2.5-Coder 0.5B drafter and 1.5B verifier (`sectrace weights setup` first) on a
cascaded prompt, exploring the policies below, with timing probes; (4) the trace replaces the
bundled one. Needs: apt-get install -y espeak-ng sox; pip install torch==2.13.0;
pip install -e '.[collect,demo,demo-weights]'; sectrace weights setup.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "{transcript}\nDescribe the speaker's emotion in one short sentence, saying what in the voice shows it."
# A compact exploration: the baselines, lossless and the study's rank:20 rule at a few k, and the
# entropy/margin/log-prob gates at a few thresholds, in both privacy modes. Every policy here replays
# exactly; others replay as far as these runs explored the trie.
POLICIES = [
    "k=1 gate=never", "k=0 gate=always accept=top1 raw", "k=0 gate=always accept=top1 token-only",
    *(f"k={k} gate=always accept={a} {p}" for k in (3, 5) for a in ("top1", "rank:20") for p in ("features", "token-only")),
    *(f"k=5 gate={g} accept=rank:20 {p}" for g in ("entropy:1.5", "entropy:2.5", "margin:0.3", "logprob:-1.0")
      for p in ("features", "token-only")),
]


def run(cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def relabel(trace_dir: Path, picked_from: Path):
    """Name the models and the data in the manifest (the collector records local paths)."""
    from sectrace.demo.weights import require
    from sectrace.trace import load_trace, write_trace

    tr = load_trace(trace_dir)
    m = dict(tr.manifest)
    for side, role in (("drafter", "drafter"), ("verifier", "verifier")):
        info = json.loads((Path(require(role)) / "sectrace-weights.json").read_text())
        m[side] = {**m[side], "name": info["name"].replace(" (GGUF)", ""), "source": info["source"],
                   "gguf_sha256": info.get("gguf_sha256"), "converted_with": "transformers (GGUF dequantized)"}
    m["dataset"] = {**m["dataset"], "name": "sectrace-demo-speech",
                    "description": "espeak-ng emotional speech (synthetic audio, 6 emotions, 3 references each), "
                                   "cascaded: Whisper tiny.en transcript + prosody text on the device; models are "
                                   "stand-ins for Qwen2.5-Omni 3B/7B on MER2024",
                    "source": f"sectrace data synth ({picked_from.name}), scripts/make_sample_trace.py"}
    write_trace(trace_dir, m, tr.utterances, tr.nodes, tr.timings, tr.vocab, overwrite=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "sample-trace-work")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "sectrace" / "data" / "sample-trace")
    ap.add_argument("--utterances", type=int, default=12, help="how many clips to collect (of 72)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--signals", default=None, help="passed to `sectrace collect --signals` (e.g. "
                                                      "mc-dropout,stability,audio-shift): the optional RQ1 signals")
    args = ap.parse_args()
    from sectrace.demo.frontend import describe
    from sectrace.demo.weights import require

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "manifest.jsonl").exists():
        run(["sectrace", "data", "synth", data, "--force"])
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    # Spread the clips over emotions: round-robin, in manifest order within each emotion.
    by_emotion: dict[str, list] = {}
    for r in rows:
        by_emotion.setdefault(r["emotion"], []).append(r)
    picked = [r for group in zip(*by_emotion.values()) for r in group][: args.utterances]
    manifest = work / "collect.jsonl"
    with manifest.open("w") as fh:
        for r in picked:
            d = describe(data / r["audio"])
            fh.write(json.dumps({"utt_id": Path(r["audio"]).stem, "audio": str(data / r["audio"]),
                                 "references": r["references"], "emotion": r["emotion"],
                                 "text": d.audio_text}) + "\n")
    trace = work / "trace"
    cmd = ["sectrace", "collect", manifest, "--backend", "causal-lm", "--drafter", require("drafter"),
           "--verifier", require("verifier"), "--out", trace, "--prompt", PROMPT, "--dtype", "float32",
           "--max-new-tokens", args.max_new_tokens, "--edge-threads", "2", "--cloud-device", "cpu",
           "--timing-repeats", "3"]
    for p in POLICIES:
        cmd += ["--policy", p]
    if args.signals:
        cmd += ["--signals", args.signals]
    run(cmd)
    relabel(trace, picked_from=data)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(trace, args.out)
    run(["sectrace", "trace", "info", args.out])


if __name__ == "__main__":
    sys.exit(main())
