"""How fast the demo's data and on-device front end run: `python benchmarks/bench_demo_frontend.py [--clips 72]`.

Prints (1) the time to synthesise the emotional speech set with espeak-ng + sox, (2) Whisper tiny.en
load time, (3) front-end time per clip (ASR + prosody) over the set, and (4) the mean bytes a
`features`-mode verifier receives versus `token-only`, plus agreement of the transcript with the script.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sectrace.demo import frontend
from sectrace.demo.speech import load_manifest, synthesise


def words(text: str) -> set[str]:
    return {w.strip(".,!?\"'").lower() for w in text.split()} - {""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=72)
    ap.add_argument("--describe", type=int, default=24, help="How many clips to run the front end on.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        synthesise(Path(td) / "ds", args.clips, seed=0)
        t1 = time.perf_counter()
        print(f"synthesise {args.clips} clips (espeak-ng + sox): {t1 - t0:.2f} s ({(t1 - t0) / args.clips * 1000:.0f} ms/clip)")
        rows = load_manifest(Path(td) / "ds")[: args.describe]
        t0 = time.perf_counter()
        frontend.whisper()
        print(f"load Whisper tiny.en (int8, 2 threads): {time.perf_counter() - t0:.2f} s")
        per, asr, feat, tok, audio_s, recall = [], [], [], [], [], []
        for r in rows:
            t0 = time.perf_counter()
            d = frontend.describe(r["audio"])
            per.append(time.perf_counter() - t0)
            asr.append(d.asr_seconds)
            feat.append(d.payload_bytes("features"))
            tok.append(d.payload_bytes("token-only"))
            audio_s.append(d.prosody.duration_s)
            said = words(r["transcript"])
            recall.append(len(said & words(d.transcript)) / len(said))
        print(f"front end over {len(rows)} clips (mean {statistics.mean(audio_s):.2f} s of audio): "
              f"median {statistics.median(per):.2f} s/clip, mean {statistics.mean(per):.2f} s/clip "
              f"(ASR {statistics.mean(asr):.2f} s), real-time factor {sum(per) / sum(audio_s):.2f}")
        print(f"first-call payload without token ids: features {statistics.mean(feat):.0f} B, "
              f"token-only {statistics.mean(tok):.0f} B (audio-derived text {statistics.mean(feat) - statistics.mean(tok):.0f} B)")
        print(f"transcript word recall against the script: {statistics.mean(recall):.2f}")


if __name__ == "__main__":
    main()
