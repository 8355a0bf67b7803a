"""Make a demo trace like the bundled sample from scratch, on a CPU: `sectrace demo collect` with these flags.

    python scripts/make_sample_trace.py                      # writes build/demo-trace (never the package)
    python scripts/make_sample_trace.py --clips 2 --no-probes --policies "k=1 gate=never;k=5 gate=always"
    python scripts/make_sample_trace.py --replace-bundled    # regenerates src/sectrace/data/sample-trace

Steps: `sectrace data synth` speaks the espeak-ng emotional speech set; the on-device front end (Whisper
tiny.en + prosody) turns each picked clip into text; `sectrace collect` runs the Qwen2.5-Coder 0.5B drafter
and 1.5B verifier (`sectrace weights setup` first) on a cascaded prompt, exploring the policies, with timing
probes; the trace records the clips' texts and the synthesis seed, so `sectrace demo data` can remake its
exact dataset anywhere. Costs (measured, docs/demo.md): 12 clips ~15 min on 2 cores, peak 13.5 GB RAM.
Needs: apt-get install -y espeak-ng sox; pip install torch==2.13.0;
pip install -e '.[collect,demo,demo-weights]'; sectrace weights setup.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/demo-trace", help="trace to write (default: build/demo-trace)")
    ap.add_argument("--work", default="build/demo-work", help="speech, texts and collect.jsonl (default: %(default)s)")
    ap.add_argument("--clips", type=int, default=12, help="how many clips, emotions taking turns (default: 12)")
    ap.add_argument("--policies", action="append", default=[],
                    help="exploration policies, several with ';' (default: the bundled trace's 19)")
    ap.add_argument("--no-probes", action="store_true", help="skip the timing probes")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--signals", default=None, help="passed to `sectrace demo collect --signals` (e.g. "
                                                      "mc-dropout,stability,audio-shift): the optional RQ1 signals")
    ap.add_argument("--replace-bundled", action="store_true",
                    help="write over the bundled sample trace in src/sectrace/data (only with this flag)")
    args = ap.parse_args(argv)
    from sectrace.cli import main as cli

    cmd = ["demo", "collect", "--work", args.work, "--clips", str(args.clips), "--max-new-tokens",
           str(args.max_new_tokens)]
    cmd += ["--replace-bundled"] if args.replace_bundled else ["--out", args.out]
    for p in args.policies:
        cmd += ["--policy", p]
    if args.signals:
        cmd += ["--signals", args.signals]
    if args.no_probes:
        cmd.append("--no-probes")
    print("+ sectrace " + " ".join(cmd), flush=True)
    try:
        cli(cmd, prog_name="sectrace", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
