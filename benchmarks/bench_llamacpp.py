"""Drafter tokens/s: llama.cpp (GGUF) against transformers float32, the same model, in one run.

Why: `collect --drafter-runtime llama-cpp` exists because an edge device runs a GGUF in llama.cpp,
not PyTorch float32; this says by how much the edge's decode cost moves on this CPU. Each runtime
decodes greedily through the interface the collection drives (``open_lm(...).logits_for(seq, 1)``:
the same cache reuse, the same float64 logits over the shared vocabulary), one token at a time after
the prompt's prefill. The runtimes alternate repeat by repeat, so a change in the machine's load
touches both. Reported: decode tokens/s (wall), CPU-seconds per token (all threads of this process:
the honest figure on a loaded machine), the prompt's prefill, the load average, and how many greedy
tokens the two runtimes agree on (quantisation and a float16 KV cache move logits a little).

Models: by default a random Qwen2 (``--hidden``, ``--layers``) built here and written as GGUF
(``--gguf-type f32|f16``); ``--demo`` takes the demo drafter (`sectrace weights setup`: the transformers
checkpoint and the GGUF it was converted from, kept beside it); ``--model DIR --gguf FILE`` any pair.
Usage: PYTHONPATH=src python benchmarks/bench_llamacpp.py [--demo] [--threads 2 --tokens 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _decode(lm, prompt: list[int], n: int) -> dict:
    """Prefill, then ``n`` greedy steps through ``logits_for``; wall and CPU seconds of each phase."""
    lm.reset()
    w0, c0 = time.perf_counter(), time.process_time()
    row = lm.logits_for(prompt, 1)[0]
    w1, c1 = time.perf_counter(), time.process_time()
    seq, out = list(prompt), []
    for _ in range(n):
        tok = int(row.argmax())
        out.append(tok)
        seq.append(tok)
        row = lm.logits_for(seq, 1)[0]
    w2, c2 = time.perf_counter(), time.process_time()
    return {"prefill_s": w1 - w0, "prefill_cpu_s": c1 - c0, "decode_s": w2 - w1, "decode_cpu_s": c2 - c1,
            "tokens": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", action="store_true", help="the demo drafter and its kept GGUF (sectrace weights setup)")
    ap.add_argument("--model", type=Path, help="a transformers checkpoint folder")
    ap.add_argument("--gguf", type=Path, help="the same model as GGUF")
    ap.add_argument("--gguf-type", choices=("f32", "f16"), default="f32", help="for the random model's GGUF")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32, help="greedy decode steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args()

    import torch

    from sectrace.models.backends import encode_prompt
    from sectrace.models.llamacpp import LlamaCppModel, check_vocab
    from sectrace.models.lm import open_lm
    from sectrace.models.pair import load_causal_lm, load_tokenizer

    torch.set_num_threads(a.threads)
    if a.demo:
        from sectrace.demo.weights import gguf_path, model_dir

        model_path, gguf = model_dir("drafter"), gguf_path("drafter")
        what = "demo drafter (Qwen2.5-Coder-0.5B-Instruct)"
    elif a.model or a.gguf:
        if not (a.model and a.gguf):
            ap.error("give both --model and --gguf (the same model in both formats)")
        model_path, gguf = a.model, a.gguf
        what = f"{a.model.name}"
    else:
        from tiny_models import make_qwen2, make_tokenizer

        from sectrace.models.gguf_export import export_qwen2_gguf

        root = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
        tok = make_tokenizer(root / "tok")
        make_qwen2(root / "m", tok, 1, layers=a.layers, hidden=a.hidden, dtype="float32")
        model_path, gguf = root / "m", export_qwen2_gguf(root / "m", root / "m.gguf", a.gguf_type)
        what = f"random Qwen2 (hidden {a.hidden}, {a.layers} layers, vocab {len(tok)})"
    tok = load_tokenizer(str(model_path), "drafter")
    hf = load_causal_lm(str(model_path), "drafter", dtype="float32")
    gg = LlamaCppModel(gguf, n_threads=a.threads)
    vocab = check_vocab(gg, tok)
    prompt = encode_prompt(tok, "Transcript: i cannot believe you did that\n"
                                "Describe the speaker's emotion in one sentence.")
    lms = {"transformers-float32": open_lm(hf, vocab, slots=1),
           f"llama.cpp-{gg.quantisation}": open_lm(gg, vocab, slots=1)}
    for lm in lms.values():  # warm-up: first-call allocations and thread start-up
        _decode(lm, prompt, 2)
    load0 = os.getloadavg()
    runs = {k: [] for k in lms}
    for _ in range(a.repeats):
        for name, lm in lms.items():
            runs[name].append(_decode(lm, prompt, a.tokens))
    load1 = os.getloadavg()
    res = {"model": what, "gguf": gguf.name, "quantisation": gg.quantisation, "threads": a.threads,
           "prompt_tokens": len(prompt), "decode_tokens": a.tokens, "repeats": a.repeats,
           "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in load1],
           "cpu_count": os.cpu_count(), "runtimes": {}}
    for name, rs in runs.items():
        dec = statistics.median(r["decode_s"] for r in rs)
        cpu = statistics.median(r["decode_cpu_s"] for r in rs)
        res["runtimes"][name] = {"decode_tok_per_s": round(a.tokens / dec, 2),
                                 "decode_cpu_s_per_token": round(cpu / a.tokens, 5),
                                 "prefill_s": round(statistics.median(r["prefill_s"] for r in rs), 4),
                                 "prefill_cpu_s": round(statistics.median(r["prefill_cpu_s"] for r in rs), 4)}
    (t_hf, t_ll) = (runs[k][0]["tokens"] for k in lms)
    # equal up to the first difference (after it the two runs decode different prefixes)
    res["greedy_tokens_agree"] = len(os.path.commonprefix([list(t_hf), list(t_ll)]))
    names = list(lms)
    r0, r1 = (res["runtimes"][k] for k in names)
    res["speedup_wall"] = round(r1["decode_tok_per_s"] / r0["decode_tok_per_s"], 2)
    res["speedup_cpu"] = round(r0["decode_cpu_s_per_token"] / r1["decode_cpu_s_per_token"], 2)
    print(f"{what}; {len(prompt)}-token prompt, {a.tokens} greedy steps x {a.repeats}, {a.threads} threads; "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'runtime':<24}{'tok/s':>9}{'CPU-s/token':>13}{'prefill s':>11}")
    for name in names:
        r = res["runtimes"][name]
        print(f"{name:<24}{r['decode_tok_per_s']:>9.2f}{r['decode_cpu_s_per_token']:>13.4f}{r['prefill_s']:>11.3f}")
    print(f"llama.cpp / transformers: {res['speedup_wall']}x tokens/s (wall), {res['speedup_cpu']}x per CPU-second; "
          f"greedy tokens agree {res['greedy_tokens_agree']}/{a.tokens} (up to the first difference)")
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
