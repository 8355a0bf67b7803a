"""Loopback load test of `sectrace serve`: many edge clients at once against one verifier service.

    python benchmarks/bench_live_load.py                      # 32 clients x 4 utterances, tiny random models
    python benchmarks/bench_live_load.py --clients 64 --utterances 8 --rounds 3
    python benchmarks/bench_live_load.py --drafter D --verifier V   # real local model directories (causal LMs)

Why this shape: the service runs as its own process (`python -m sectrace serve`, as deployed) so its
resident memory can be sampled on its own while the load runs, and the edges use the real edge client
(`LiveSession` + `decode_live`, one keep-alive connection and one API key per client) so the calls are the
ones a device makes. Every caption is first decoded alone, one utterance at a time, as the reference: under
load each must come out identical, or a session was lost (the edge fell back or reopened it) or mixed up
with another client's. Rounds repeat the same load, so memory that grows round after round shows a leak.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sectrace.errors import UserError
from sectrace.live.client import CloudClient, CloudInputs, LiveSession, decode_live
from sectrace.live.process import ServeProcess

TEXTS = ["the speaker sounds", "she sounds angry", "a happy voice", "he is sad", "the tone is nervous",
         "a neutral, flat voice", "warm and bright", "speaking slowly", "her voice is sharp and loud",
         "calm and steady", "without strong emotion", "he speaks softly", "the tone is fast", "a bright voice",
         "she is happy", "the speaker is calm"]
POLICIES = ["k=4 gate=always accept=top1 token-only", "k=4 gate=always accept=rank:20 token-only",
            "k=4 gate=always accept=top1 token-only stateless"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32, help="Concurrent edge clients (one thread, key and "
                    "connection each).")
    ap.add_argument("--utterances", type=int, default=4, help="Utterances each client decodes per round.")
    ap.add_argument("--rounds", type=int, default=2, help="Times the whole load is repeated (memory growth).")
    ap.add_argument("--max-new", type=int, default=24, help="Caption length limit (tokens).")
    ap.add_argument("--policy", action="append", help=f"Policy label, repeatable; cycled over utterances "
                    f"(default: {'; '.join(POLICIES)}). cloud-only streams /v1/generate.")
    ap.add_argument("--drafter", help="Edge model directory (default: tiny random models built in a temp dir).")
    ap.add_argument("--verifier", help="Cloud model directory (with --drafter).")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--service-threads", type=int, default=1, help="Torch threads in the service.")
    ap.add_argument("--edge-threads", type=int, default=1, help="Torch threads in this (edge) process.")
    ap.add_argument("--service-cpus", help="Pin the service to these cores (e.g. 1 or 2-3).")
    ap.add_argument("--timeout", type=float, default=60.0, help="Per-call timeout of the edge client (s).")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args(argv)
    if bool(args.drafter) != bool(args.verifier):
        ap.error("give both --drafter and --verifier, or neither (tiny models)")
    return args


def tiny_models(root: Path) -> tuple[str, str]:
    """The test suite's tiny pair (vocab 300): fast enough that the service, not the model, is what is loaded."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import make_pair

    _, d, v = make_pair(root)
    return str(d), str(v)


class ServiceProcess(ServeProcess):
    """`sectrace serve` in a child process with one key per client; its pid is what psutil samples."""

    def __init__(self, verifier: str, keys: dict[str, str], workdir: Path, args):
        super().__init__(verifier, keys, workdir,
                         ["--threads", str(args.service_threads), "--dtype", args.dtype, "--sessions-per-client", "4",
                          "--max-sessions", str(max(256, 2 * len(keys)))],
                         args.service_cpus, start_timeout_s=600, poll_s=0.05)

    def __enter__(self):
        try:
            super().__enter__()
        except UserError:
            raise SystemExit(f"the service did not start:\n{self.log_path.read_text()[-2000:]}") from None
        self.ps = psutil.Process(self.proc.pid)
        return self

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


class TimedClient(CloudClient):
    """The edge client, with every verify call timed end to end and the service's own queue/compute times kept."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[float, float, float]] = []  # (seconds, queue_ms, compute_ms)

    def post(self, path, obj):
        t0 = time.perf_counter()
        out = super().post(path, obj)
        self.calls.append((time.perf_counter() - t0, out.get("queue_ms", 0.0), out.get("compute_ms", 0.0)))
        return out


@dataclass
class Edge:
    """What every edge client shares: the drafter (read-only in inference), tokenizer, vocabulary, end ids."""

    tokenizer: object
    drafter: object
    vocab: int
    eos: frozenset
    policies: list


def load_edge(drafter_dir: str, info: dict, args) -> Edge:
    import torch

    from sectrace.gates import parse_policy
    from sectrace.models.pair import eos_ids, load_model, load_tokenizer, model_rows
    from sectrace.protocol import cloud_only, drafter_only

    torch.set_num_threads(args.edge_threads)
    tok = load_tokenizer(drafter_dir, "drafter")
    drafter = load_model("causal-lm", drafter_dir, "drafter", "cpu", args.dtype)
    labels = args.policy or POLICIES
    pols = [cloud_only(args.max_new) if p in ("cloud-only", "cloud") else drafter_only(args.max_new)
            if p in ("edge-only", "edge") else parse_policy(p, args.max_new) for p in labels]
    return Edge(tok, drafter, min(len(tok), model_rows(drafter), info["vocab"]),
                eos_ids(tok, drafter) | frozenset(info["eos"]), pols)


def jobs_of(client: int, args, edge: Edge) -> list[tuple[str, object]]:
    """Client i's utterances: texts and policies spread so neighbours decode different captions."""
    n = args.utterances
    return [(TEXTS[(client * n + j) % len(TEXTS)], edge.policies[(client + j) % len(edge.policies)])
            for j in range(n)]


@dataclass
class Outcome:
    captions: list = field(default_factory=list)
    fallbacks: int = 0
    reopened: int = 0
    failures: int = 0  # calls that failed (5xx, 429/503, connection): the client raised CloudUnavailable
    errors: list = field(default_factory=list)  # anything else that stopped an utterance
    calls: list = field(default_factory=list)


def run_client(edge: Edge, url: str, key: str, jobs, timeout: float) -> Outcome:
    """One edge device: its utterances in turn over one keep-alive connection."""
    from sectrace.models.lm import CachedLM

    out = Outcome()
    cl = TimedClient(url, key, timeout)
    try:
        for text, pol in jobs:
            ids = edge.tokenizer(text)["input_ids"]
            try:
                s = LiveSession(CachedLM(edge.drafter, edge.vocab, slots=1), ids, edge.eos, cl, pol, CloudInputs(ids))
                lr = decode_live(s, pol)
            except Exception as exc:  # noqa: BLE001  (counted: the load test reports, it does not stop)
                out.captions.append(None)
                out.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            out.captions.append(list(lr.run.tokens))
            out.fallbacks += lr.fallbacks
            out.reopened += lr.reopened
    finally:
        out.failures = cl.traffic.failures
        out.calls = cl.calls
        cl.close()
    return out


class Monitor(threading.Thread):
    """Samples the service's RSS every 20 ms while the load runs."""

    def __init__(self, service: ServiceProcess):
        super().__init__(daemon=True)
        self.service, self.peak, self.stop = service, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.service.rss())
            time.sleep(0.02)


def held_sessions(url: str, keys: dict[str, str]) -> int:
    """Sessions the service still holds, summed over every client (each key sees only its own)."""
    total = 0
    for key in keys.values():
        c = CloudClient(url, key)
        try:
            total += c.info()["sessions"]
        finally:
            c.close()
    return total


def cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def load_round(edge: Edge, service: ServiceProcess, keys: list[str], args) -> tuple[list[Outcome], dict]:
    """All clients at once (a barrier lines their first calls up): the outcomes, wall time, peak RSS, CPU used.

    CPU seconds of the service and of this process (the edges) say which side limits throughput: on a small
    machine the edges' Python threads, not the service, are often the bottleneck."""
    outcomes: list = [None] * args.clients
    barrier = threading.Barrier(args.clients + 1)

    def client(i):
        barrier.wait()
        outcomes[i] = run_client(edge, service.url, keys[i], jobs_of(i, args, edge), args.timeout)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    mon = Monitor(service)
    mon.start()
    for t in threads:
        t.start()
    barrier.wait()
    t0, s0, e0 = time.perf_counter(), service.cpu_s(), cpu_s()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    used = {"service_cpu_s": service.cpu_s() - s0, "edge_cpu_s": cpu_s() - e0}
    mon.stop.set()
    mon.join()
    return outcomes, {"wall": wall, "peak": mon.peak, **used}


def pct(xs, q):
    if len(xs) < 2:
        return xs[0] if xs else float("nan")
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def figures(outcomes: list[Outcome], reference: list[list], wall: float) -> dict:
    calls = [c for o in outcomes for c in o.calls]
    lat = [c[0] * 1e3 for c in calls]
    queue = [c[1] for c in calls]
    mixed = sum(1 for o, ref in zip(outcomes, reference) for got, want in zip(o.captions, ref)
                if got is not None and got != want)
    return {"utterances": sum(len(o.captions) for o in outcomes), "wall_s": wall, "verify_calls": len(calls),
            "calls_per_s": len(calls) / wall if wall else float("nan"),
            "utterances_per_s": sum(len(o.captions) for o in outcomes) / wall if wall else float("nan"),
            "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
            "queue_p50_ms": pct(queue, 50), "queue_p95_ms": pct(queue, 95),
            "compute_p50_ms": pct([c[2] for c in calls], 50),
            "failed_calls": sum(o.failures for o in outcomes), "fallbacks": sum(o.fallbacks for o in outcomes),
            "sessions_reopened": sum(o.reopened for o in outcomes),
            "utterances_failed": sum(len(o.errors) for o in outcomes), "captions_mixed_up": mixed,
            "errors": sorted({e for o in outcomes for e in o.errors})[:5]}


ROWS = [("utterances", "utterances", "{:d}"), ("wall time (s)", "wall_s", "{:.2f}"),
        ("verify calls", "verify_calls", "{:d}"), ("verify calls/s", "calls_per_s", "{:.1f}"),
        ("utterances/s", "utterances_per_s", "{:.2f}"), ("call latency p50 (ms)", "p50_ms", "{:.1f}"),
        ("call latency p95 (ms)", "p95_ms", "{:.1f}"), ("call latency p99 (ms)", "p99_ms", "{:.1f}"),
        ("service queue p50 / p95 (ms)", ("queue_p50_ms", "queue_p95_ms"), "{:.1f} / {:.1f}"),
        ("service compute p50 (ms)", "compute_p50_ms", "{:.2f}"),
        ("CPU s: service / edges", ("service_cpu_s", "edge_cpu_s"), "{:.1f} / {:.1f}"),
        ("failed calls (5xx/429/503/conn.)", "failed_calls", "{:d}"), ("edge fallbacks", "fallbacks", "{:d}"),
        ("sessions lost (reopened)", "sessions_reopened", "{:d}"), ("utterances failed", "utterances_failed", "{:d}"),
        ("captions mixed up", "captions_mixed_up", "{:d}"), ("service RSS start (MiB)", "rss_start_mib", "{:.1f}"),
        ("service RSS peak (MiB)", "rss_peak_mib", "{:.1f}"), ("service RSS end (MiB)", "rss_end_mib", "{:.1f}"),
        ("sessions held at end", "sessions_end", "{:d}")]


def print_table(columns: list[tuple[str, dict]]):
    cells = [["", *[name for name, _ in columns]]]
    for label, key, fmt in ROWS:
        row = [label]
        for _, f in columns:
            keys = key if isinstance(key, tuple) else (key,)
            row.append(fmt.format(*(f[k] for k in keys)) if all(k in f for k in keys) else "")
        cells.append(row)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None):
    args = parse_args(argv)
    mib = 2**-20
    with tempfile.TemporaryDirectory(prefix="sectrace-load-") as tmp:
        tmp = Path(tmp)
        drafter, verifier = (args.drafter, args.verifier) if args.drafter else tiny_models(tmp / "models")
        keys = {f"edge{i:03d}": secrets.token_urlsafe(18) for i in range(args.clients)}
        with ServiceProcess(verifier, keys, tmp, args) as service:
            probe = CloudClient(service.url, next(iter(keys.values())))
            info = probe.info()
            probe.close()
            edge = load_edge(drafter, info, args)
            key_list = list(keys.values())
            rss_ready = service.rss()
            print(f"service pid {service.proc.pid} at {service.url}: {info['model']} (vocab {info['vocab']}), "
                  f"RSS {rss_ready * mib:.1f} MiB; {args.clients} clients x {args.utterances} utterances x "
                  f"{args.rounds} rounds; policies: {'; '.join(p.label for p in edge.policies)}", flush=True)
            t0, s0, e0 = time.perf_counter(), service.cpu_s(), cpu_s()
            ref_out = [run_client(edge, service.url, key_list[i], jobs_of(i, args, edge), args.timeout)
                       for i in range(args.clients)]  # alone: one utterance at a time
            used = {"service_cpu_s": service.cpu_s() - s0, "edge_cpu_s": cpu_s() - e0}
            reference = [o.captions for o in ref_out]
            columns = [("sequential", {**figures(ref_out, reference, time.perf_counter() - t0), **used,
                                       "rss_start_mib": rss_ready * mib, "rss_end_mib": service.rss() * mib,
                                       "sessions_end": held_sessions(service.url, keys)})]
            if any(c is None for r in reference for c in r):
                print("warning: the sequential reference run itself failed:", figures(ref_out, reference, 1)["errors"])
            for r in range(args.rounds):
                start = service.rss()
                outcomes, m = load_round(edge, service, key_list, args)
                time.sleep(0.2)
                f = figures(outcomes, reference, m["wall"])
                f.update(rss_start_mib=start * mib, rss_peak_mib=max(m["peak"], start) * mib,
                         rss_end_mib=service.rss() * mib, sessions_end=held_sessions(service.url, keys),
                         service_cpu_s=m["service_cpu_s"], edge_cpu_s=m["edge_cpu_s"])
                columns.append((f"load round {r + 1}", f))
                print(f"round {r + 1} done in {m['wall']:.1f} s", flush=True)
        print()
        print_table(columns)
        for name, f in columns:
            if f["errors"]:
                print(f"{name}: errors seen: {f['errors']}")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items()},
                                             "columns": dict(columns)}, indent=1))
        bad = any(f["captions_mixed_up"] or f["utterances_failed"] or f["failed_calls"] or f["sessions_end"]
                  for _, f in columns)
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
