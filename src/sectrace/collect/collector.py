"""The collection run: utterances → live exploration → a trace, sharded, resumable, atomic.

Layout while running: ``OUT.parts/`` beside the output holds ``config.json`` (what this
run is), the timing probes, and one pair of files per finished utterance (its trie rows,
then a small JSON that marks it done; both written to a temporary name and renamed). A
killed run restarted with the same command skips every finished utterance; a different
command on the same parts is refused. When the shard's last utterance is done the trace is
written with :func:`sectrace.trace.write_trace` (atomic, validated) and the parts removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from .. import __version__
from ..errors import UserError
from ..explore.recorder import BudgetRecorder, explore, seed_recorder
from ..models.dataset import Utterance, read_manifest, shard_of
from ..trace import load_trace, rebase_paths, trace_relative, write_trace
from ..trace import schema as S


@dataclass
class CollectConfig:
    manifest: Path
    drafter: str
    verifier: str
    out: Path
    policies: list  # Policy objects (the exploration)
    modes: tuple[str, ...] = ("audio", "blind")
    backend: str = "causal-lm"
    prompt: str | None = None
    max_new_tokens: int = 64
    max_nodes: int | None = 4000
    edge_device: str = "cpu"
    edge_threads: int | None = 2
    cloud_device: str = "cpu"
    dtype: str = "auto"
    edge_dtype: str | None = None  # default: dtype
    shard: tuple[int, int] = (0, 1)
    timing_repeats: int = 5
    probes: bool = True
    limit: int | None = None
    extend: Path | None = None
    dataset_name: str | None = None
    stop_after: int | None = None  # testing aid: stop (as if killed) after this many utterances
    extra: dict = field(default_factory=dict)


def _atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_parquet(df: pl.DataFrame, path: Path):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.write_parquet(tmp, compression="zstd")
    os.replace(tmp, path)


def _safe(utt_id: str) -> str:
    h = hashlib.blake2b(utt_id.encode(), digest_size=4).hexdigest()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", utt_id)[:60] + "-" + h


def _file_sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:24]


def collection_identity(cfg: CollectConfig, tok_fp: str, base_id: str | None) -> dict:
    """Everything that changes the trace's content; shards of one collection share it."""
    return {
        "drafter": cfg.drafter, "verifier": cfg.verifier, "tokenizer_fingerprint": tok_fp, "backend": cfg.backend,
        "prompt": cfg.prompt, "modes": list(cfg.modes), "max_new_tokens": cfg.max_new_tokens,
        "max_nodes": cfg.max_nodes, "policies": [p.label for p in cfg.policies], "dtype": cfg.dtype,
        "edge_dtype": cfg.edge_dtype,
        "manifest_sha": _file_sha(cfg.manifest), "limit": cfg.limit, "extends": base_id,
    }


def _id_of(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def model_card(path: str, model, tok_fp: str) -> dict:
    cfg = model.config
    return {"name": path, "revision": getattr(cfg, "_commit_hash", None) or "local",
            "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
            "tokenizer_fingerprint": tok_fp, "architecture": (cfg.architectures or [type(model).__name__])[0],
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def collect(cfg: CollectConfig, progress_factory=None, echo=print, log=None) -> dict:
    """Run (or resume) one shard of a collection; returns a summary dict.

    ``log`` gets plain progress lines (model loading, probes, and each utterance when the progress bar is
    hidden, as it is off a terminal), so a run in a batch job or a pipe is never silent for minutes."""
    from ..models.audio import DEFAULT_INSTRUCTION
    from ..models.backends import DEFAULT_TEXT_PROMPT
    from ..models.pair import tokenizer_fingerprint
    from .probes import GpuSampler, hardware, peaks

    log = log or (lambda line: None)

    if not cfg.policies:
        raise UserError("no exploration policies to run; give at least one --policy")
    utts_all = read_manifest(cfg.manifest)
    if cfg.limit:
        utts_all = utts_all[: cfg.limit]
    i, n = cfg.shard
    utts = shard_of(utts_all, i, n)
    base = None
    base_id = None
    if cfg.extend is not None:
        base = load_trace(cfg.extend)
        base_id = base.manifest.get("collection", {}).get("id", _file_sha(cfg.extend / "manifest.json"))
        have = set(base.utterances["utt_id"].to_list())
        utts = [u for u in utts if u.utt_id in have]
        missing_modes = set(cfg.modes) - set(base.modes)
        if missing_modes:
            raise UserError(f"{cfg.extend} has no {', '.join(sorted(missing_modes))} judgements; extend with "
                            f"--modes {','.join(base.modes)}")
    if not utts:
        raise UserError(f"shard {i}/{n} has no utterances to collect (the manifest lists {len(utts_all)})")

    out = Path(cfg.out)
    parts = out.with_name(out.name + ".parts")
    # Cheap checks before the heavy load: tokenizers first.
    pair = _load(cfg, log)
    tok_fp = tokenizer_fingerprint(pair.tokenizer)
    if cfg.prompt is None:
        cfg.prompt = DEFAULT_TEXT_PROMPT if cfg.backend == "causal-lm" else DEFAULT_INSTRUCTION
    ident = collection_identity(cfg, tok_fp, base_id)
    coll_id = _id_of(ident)
    if out.exists():
        try:
            m = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            m = {}
        if m.get("collection", {}).get("id") == coll_id and m["collection"].get("shard") == [i, n]:
            echo(f"{out} is already complete for this command; nothing to do")
            return {"complete": True, "skipped": True, "out": str(out)}
        raise UserError(f"{out} already exists and was made by another command; choose another --out or remove it")
    parts.mkdir(parents=True, exist_ok=True)
    cpath = parts / "config.json"
    mine = {"id": coll_id, "shard": [i, n], "identity": ident}
    if cpath.exists():
        old = json.loads(cpath.read_text())
        if old.get("id") != coll_id or old.get("shard") != [i, n]:
            raise UserError(f"{parts} holds a partial run of a different command (models, prompt, policies, "
                            "manifest or shard differ); rerun that command to finish it, or delete the folder")
    else:
        _atomic_write_bytes(cpath, json.dumps(mine, indent=2).encode())

    backend = _backend(cfg, pair)
    hw_path = parts / "hardware.json"
    tpath = parts / "timings.parquet"
    if cfg.probes and not tpath.exists():
        prepared_first = backend.prepare(utts[0], cfg.modes, cfg.edge_device, cfg.cloud_device)
        timings, load = run_probes(cfg, pair, prepared_first, log)
        _atomic_write_bytes(parts / "probe_load.json", json.dumps(load).encode())
        _atomic_parquet(timings, tpath)
    if not hw_path.exists():
        _atomic_write_bytes(hw_path, json.dumps({"edge": hardware(cfg.edge_device, cfg.edge_threads),
                                                 "cloud": hardware(cfg.cloud_device, None)}).encode())

    done = {p.name[: -len(".json")] for p in parts.glob("utt-*.json")}
    todo = [(k, u) for k, u in enumerate(utts) if f"utt-{_safe(u.utt_id)}" not in done]
    bar = progress_factory(total=len(utts), initial=len(utts) - len(todo)) if progress_factory else None
    plain = bar is None or getattr(bar, "disable", False)  # tqdm hides itself off a terminal: say it in lines
    if plain and todo:
        log(f"exploring {len(todo)} utterance(s) with {len(cfg.policies)} policies"
            + (f" ({len(utts) - len(todo)} already done)" if len(todo) < len(utts) else "") + "…")
    t_start = time.perf_counter()
    nodes_made = 0
    with GpuSampler(cfg.cloud_device) as gpu:
        for count, (_, u) in enumerate(todo):
            if cfg.stop_after is not None and count >= cfg.stop_after:
                if bar:
                    bar.close()
                return {"complete": False, "out": str(out), "parts": str(parts)}
            stats = _collect_one(cfg, pair, backend, u, base)
            stem = parts / f"utt-{_safe(u.utt_id)}"
            _atomic_parquet(stats.pop("nodes"), stem.with_suffix(".nodes.parquet"))
            _atomic_write_bytes(stem.with_suffix(".json"), json.dumps(stats).encode())
            nodes_made += stats["nodes_new"]
            rate = nodes_made / max(time.perf_counter() - t_start, 1e-9)
            if bar:
                bar.set_postfix_str(f"{rate:.1f} nodes/s")
                bar.update(1)
            if plain:
                done_n = len(utts) - len(todo) + count + 1
                log(f"utterance {done_n}/{len(utts)} {u.utt_id}: {stats['n_nodes']} nodes in {stats['seconds']:.1f}s "
                    f"({rate:.1f} nodes/s so far)")
    if bar:
        bar.close()
    usage = {**peaks(cfg.cloud_device), **gpu.summary(), "nodes_per_s_this_session": round(
        nodes_made / max(time.perf_counter() - t_start, 1e-9), 2)}
    return _assemble(cfg, pair, utts, parts, out, mine, ident, tok_fp, base, usage)


def _load(cfg, log):
    """Both models, with a line before and after: loading takes minutes for real models."""
    from ..models.pair import load_pair

    log(f"loading the drafter ({cfg.drafter}, {cfg.edge_device}) and the verifier ({cfg.verifier}, "
        f"{cfg.cloud_device})…")
    t0 = time.perf_counter()
    pair = load_pair(cfg.drafter, cfg.verifier, cfg.edge_device, cfg.cloud_device, cfg.dtype, cfg.edge_threads,
                     cfg.backend, cfg.edge_dtype)
    log(f"models loaded in {time.perf_counter() - t0:.1f}s")
    return pair


def _backend(cfg, pair):
    from ..models.audio import AudioChatBackend, load_feature_extractor
    from ..models.backends import CausalLMBackend

    if cfg.backend == "causal-lm":
        return CausalLMBackend(pair.tokenizer, cfg.prompt)
    return AudioChatBackend(cfg.backend, pair.tokenizer, pair.verifier, load_feature_extractor(cfg.drafter),
                            cfg.prompt)


def run_probes(cfg, pair, prepared, log=None) -> tuple[pl.DataFrame, dict]:
    """The timing probes of both sides on one prepared utterance, and how busy the machine was meanwhile.

    A busy machine is said at once (``log``) and recorded with the timings, never silently stored as if quiet."""
    from ..trace.schema import TIMINGS
    from .probes import CAPTION_CTX, LoadMonitor, load_warning, probe

    log = log or (lambda line: None)
    rows = []
    cmode = "audio" if "audio" in cfg.modes else cfg.modes[0]
    sides = [("edge", pair.drafter, prepared.edge_prompt, cfg.edge_device, cfg.edge_threads, prepared.edge_kwargs,
              False),
             ("cloud", pair.verifier, prepared.cloud_prompts[cmode], cfg.cloud_device, None,
              prepared.cloud_kwargs.get(cmode), True)]
    with LoadMonitor() as mon:
        for side, model, prompt, device, threads, kwargs, verify in sides:
            what = "prefill, decode" + (", verify of 1-16 tokens" if verify else "")
            log(f"timing probes, {side} ({what}; {cfg.timing_repeats} repeats at {len(CAPTION_CTX)} contexts)…")
            t0 = time.perf_counter()
            done = [0]

            def step(side=side, t0=t0, done=done):
                done[0] += 1
                log(f"timing probes, {side}: context {done[0]}/{len(CAPTION_CTX)} done "
                    f"({time.perf_counter() - t0:.1f}s)")

            rows += probe(model, pair.shared_vocab, prompt, side, device, threads, cfg.timing_repeats, kwargs,
                          verify=verify, progress=step)
    load = mon.result
    warning = load_warning(load)
    if warning:
        log(f"warning: {warning}")
    return pl.DataFrame(rows, schema=TIMINGS, orient="row"), load


def _collect_one(cfg, pair, backend, u: Utterance, base) -> dict:
    from ..models.lm import CachedLM  # torch: only when models run, so `trace merge` stays light

    prep = backend.prepare(u, cfg.modes, cfg.edge_device, cfg.cloud_device)
    d = CachedLM(pair.drafter, pair.shared_vocab, prep.edge_kwargs)
    vs = {m: CachedLM(pair.verifier, pair.shared_vocab, prep.cloud_kwargs.get(m)) for m in cfg.modes}
    from ..models.pair import PairSource

    src = PairSource(d, prep.edge_prompt, vs, {m: prep.cloud_prompts[m] for m in cfg.modes}, pair.eos)
    rec = BudgetRecorder(src, cfg.modes, cfg.max_nodes)
    seeded = 0
    if base is not None:
        seeded = seed_recorder(rec, base.nodes.filter(pl.col("utt_id") == u.utt_id), cfg.modes)
        rec.max_nodes = None if cfg.max_nodes is None else max(cfg.max_nodes, seeded + cfg.max_nodes)
    t0 = time.perf_counter()
    ex = explore(src, cfg.policies, cfg.modes, recorder=rec)
    secs = time.perf_counter() - t0
    nodes = rec.frames(u.utt_id)
    row = {"utt_id": u.utt_id, "references": u.references, "audio_seconds": prep.audio_seconds,
           "edge_prompt_tokens": len(prep.edge_prompt), "cloud_prompt_tokens": len(prep.cloud_prompts.get(
               "audio", prep.edge_prompt)), "blind_prompt_tokens": len(prep.cloud_prompts.get("blind", [])),
           "feature_bytes": prep.feature_bytes, "raw_audio_bytes": prep.raw_audio_bytes, "emotion": u.emotion}
    vc = {m: v.counters for m, v in vs.items()}
    return {"row": row, "nodes": nodes, "n_nodes": nodes.height, "nodes_new": nodes.height - seeded,
            "seconds": secs, "truncated": ex.truncated, "source_calls": dict(rec.source_calls),
            "drafter_tokens": d.counters.tokens, "drafter_prompt_tokens": d.counters.prefill_tokens,
            "drafter_recomputed": d.counters.recomputed, "drafter_calls": d.counters.calls,
            "verifier_tokens": {m: c.tokens for m, c in vc.items()},
            "verifier_prompt_tokens": {m: c.prefill_tokens for m, c in vc.items()},
            "verifier_calls": {m: c.calls for m, c in vc.items()}}


def _assemble(cfg, pair, utts, parts, out, mine, ident, tok_fp, base, peak) -> dict:
    rows, frames, stats = [], [], []
    for u in utts:
        stem = parts / f"utt-{_safe(u.utt_id)}"
        st = json.loads(stem.with_suffix(".json").read_text())
        rows.append(st["row"])
        frames.append(pl.read_parquet(stem.with_suffix(".nodes.parquet")))
        stats.append(st)
    nodes = pl.concat(frames, how="diagonal_relaxed")
    tpath = parts / "timings.parquet"
    timings = pl.read_parquet(tpath) if tpath.exists() else (base.timings if base is not None else
                                                                pl.DataFrame(schema=S.TIMINGS))
    hw = json.loads((parts / "hardware.json").read_text())
    hw["usage"] = peak  # peak RSS of the collecting process (both sides), GPU peaks and sampled utilisation
    lpath = parts / "probe_load.json"
    if lpath.exists():
        hw["probe_load"] = json.loads(lpath.read_text())
    elif not tpath.exists() and base is not None and "probe_load" in base.manifest.get("hardware", {}):
        hw["probe_load"] = base.manifest["hardware"]["probe_load"]  # the timings kept are the base's
    n_nodes = sum(s["n_nodes"] for s in stats)
    drafted = sum(s["source_calls"]["draft"] for s in stats)
    new_nodes = sum(s["nodes_new"] for s in stats)
    d_tokens = sum(s["drafter_tokens"] - s["drafter_prompt_tokens"] for s in stats)
    v_tokens = {m: sum(s["verifier_tokens"][m] - s["verifier_prompt_tokens"][m] for s in stats) for m in cfg.modes}
    judged = {m: int(nodes[f"v_{m}_top1"].is_not_null().sum()) for m in cfg.modes}
    vocab = pl.DataFrame({"id": list(range(pair.shared_vocab)),
                          "piece": [_piece(pair.tokenizer, t) for t in range(pair.shared_vocab)]}, schema=S.VOCAB)
    policies = [p.label for p in cfg.policies]
    if base is not None:
        policies = list(base.manifest.get("exploration", {}).get("policies", [])) + policies
    manifest = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthetic": False,
        "drafter": model_card(cfg.drafter, pair.drafter, tok_fp),
        "verifier": model_card(cfg.verifier, pair.verifier, tok_fp),
        "shared_vocab_size": pair.shared_vocab,
        "vocab_note": "logits of both models are compared over the tokenizer's ids (0..shared_vocab_size-1); "
                      "padding rows of larger output layers are ignored",
        "eos_token_ids": sorted(pair.eos),
        "verifier_modes": list(cfg.modes),
        "prompt_template": ident["prompt"] or "",
        "backend": cfg.backend,
        "decoding": {"greedy": True, "max_new_tokens": cfg.max_new_tokens, "topk_logged": S.TOPK},
        "hardware": hw,
        "dataset": None,  # below, once the rows are final
        "exploration": {"policies": policies, "nodes": n_nodes, "max_nodes_per_utterance": cfg.max_nodes,
                        "truncated_utterances": [s["row"]["utt_id"] for s in stats if s["truncated"]],
                        "extended_from": trace_relative(cfg.extend, out) if cfg.extend else None},
        "compute": {
            "drafter_tokens_per_node": round(d_tokens / max(new_nodes, 1), 4),
            "drafter_tokens_per_drafted_node": round(d_tokens / max(drafted, 1), 4),
            "drafter_recomputed_tokens": sum(s["drafter_recomputed"] for s in stats),
            "verifier_tokens_per_judged_node": {m: round(v_tokens[m] / max(judged[m], 1), 4) for m in cfg.modes},
            "verifier_calls": {m: sum(s["verifier_calls"][m] for s in stats) for m in cfg.modes},
            "seconds_exploring": round(sum(s["seconds"] for s in stats), 3),
            "note": "caption tokens run through each model per trie node (per node it judged, for the verifier), "
                    "prompt prefill excluded; 1.0 means no position was computed twice",
        },
        "collection": {"id": mine["id"], "shard": mine["shard"], "identity": ident},
    }
    if base is not None:
        # Utterances the extension did not touch (other shards) keep their recorded rows.
        keep = base.utterances.filter(~pl.col("utt_id").is_in([r["utt_id"] for r in rows]))
        if keep.height:
            rows += keep.to_dicts()
            nodes = pl.concat([nodes, base.nodes.filter(pl.col("utt_id").is_in(keep["utt_id"]))],
                              how="diagonal_relaxed")
    manifest["dataset"] = _dataset_record(cfg, out, ident, utts, rows)
    write_trace(out, manifest, rows, nodes, timings, vocab)
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    return {"complete": True, "out": str(out), "utterances": len(rows), "nodes": nodes.height,
            "compute": manifest["compute"], "truncated": len(manifest["exploration"]["truncated_utterances"])}


def _dataset_record(cfg, out: Path, ident: dict, utts: list, rows: list) -> dict:
    """Which data set the trace was collected from, recorded so the trace can be moved and its data found again.

    ``manifest`` is the path relative to the trace directory and ``file`` its name (looked for under
    ``--data DIR`` when the trace travels alone); ``content_sha`` identifies the rows of the trace's
    utterances (ids, texts, references, emotions, audio file names) wherever they lie; ``manifest_sha`` is
    the file's hash, part of the collection's identity. ``cfg.extra["dataset"]`` adds fields a recipe
    knows (the demo records how to regenerate its data)."""
    from ..models.dataset import content_sha, read_manifest

    by_id = {u.utt_id: u for u in utts}
    if any(r["utt_id"] not in by_id for r in rows):  # an extension keeps rows from the base's other shards
        by_id.update({u.utt_id: u for u in read_manifest(cfg.manifest)})
    mine = [by_id[r["utt_id"]] for r in rows if r["utt_id"] in by_id]
    record = {"name": cfg.dataset_name or Path(cfg.manifest).stem, "manifest": trace_relative(cfg.manifest, out),
              "file": Path(cfg.manifest).name, "manifest_sha": ident["manifest_sha"],
              "content_sha": content_sha(mine) if len(mine) == len(rows) else None, "n_utterances": len(rows)}
    record.update((cfg.extra or {}).get("dataset", {}))
    return record


def _piece(tok, t: int) -> bytes:
    try:
        return tok.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False).encode("utf-8",
                                                                                                    "surrogatepass")
    except Exception:
        return b""


def merge_traces(paths: list[Path], out: Path, force: bool = False) -> dict:
    """Join the shards of one collection; refuse traces from different collections or overlapping shards."""
    if len(paths) < 2:
        raise UserError("give at least two shard traces to merge")
    traces = [load_trace(p) for p in paths]
    ids = {t.manifest.get("collection", {}).get("id") for t in traces}
    if None in ids:
        raise UserError("a trace has no collection record (not made by `sectrace collect`); "
                        "only collect's shards merge")
    if len(ids) > 1:
        raise UserError("these traces come from different collections (models, prompt, policies or manifest "
                        "differ); merge only the shards of one `sectrace collect` command")
    shards = [tuple(t.manifest["collection"]["shard"]) for t in traces]
    counts = {n for _, n in shards}
    if len(counts) > 1 or len(set(shards)) != len(shards):
        raise UserError(f"shards {sorted(shards)} repeat or disagree on the shard count; give each shard once")
    utt = pl.concat([t.utterances for t in traces], how="diagonal_relaxed")
    if utt["utt_id"].n_unique() != utt.height:
        raise UserError("two shards hold the same utterance; give each shard once")
    nodes = pl.concat([t.nodes for t in traces], how="diagonal_relaxed")
    timings = pl.concat([t.timings for t in traces], how="diagonal_relaxed")
    m = rebase_paths(traces[0].manifest, paths[0], out)  # its paths are relative to the first shard's directory
    from ..models.dataset import add_content

    m["dataset"]["content_sha"] = add_content([t.manifest.get("dataset", {}).get("content_sha") for t in traces])
    m["hardware_by_shard"] = {f"{i}/{n}": t.manifest["hardware"] for (i, n), t in zip(shards, traces)}
    m["collection"]["shard"] = "merged"
    m["collection"]["shards"] = sorted([list(s) for s in shards])
    m["collection"]["complete"] = len(shards) == next(iter(counts))
    m["dataset"]["n_utterances"] = utt.height
    m["exploration"]["nodes"] = nodes.height
    m["exploration"]["truncated_utterances"] = sum((t.manifest["exploration"]["truncated_utterances"]
                                                    for t in traces), [])
    m["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    m.pop("format", None)
    m.pop("schema_version", None)
    write_trace(out, m, utt, nodes, timings, traces[0].vocab, overwrite=force)
    return {"utterances": utt.height, "nodes": nodes.height, "shards": len(shards),
            "complete": m["collection"]["complete"]}


def reprobe(trace_path: Path, cfg: CollectConfig, out: Path | None = None, data: Path | None = None,
            log=None) -> dict:
    """Re-measure an existing trace's timing probes on this machine, without exploring again.

    Why: probes taken on a busy machine (``hardware.probe_load.busy``) or on another machine than the one
    to be simulated price every replay wrongly, while the trie itself (what the models said) is still
    right; re-exploring would cost the whole collection again. The models must be the trace's (same
    tokenizer), and the trace's first utterance must be found (``cfg.manifest``, ``data`` or the trace's
    own record) so the probes run on the prompt the collection probed. Backend, prompt, verifier modes
    and, unless given, dtypes come from the trace. Only ``timings.parquet`` and the hardware description
    change; the trace is rewritten atomically in place, or written to ``out``.
    """
    from ..models.dataset import locate_dataset
    from ..models.pair import tokenizer_fingerprint
    from .probes import hardware

    log = log or (lambda line: None)
    trace_path = Path(trace_path)
    tr = load_trace(trace_path)
    m = tr.manifest
    ident = m.get("collection", {}).get("identity", {})
    cfg.backend = m.get("backend", cfg.backend)
    cfg.prompt = m.get("prompt_template") or None
    cfg.modes = tuple(tr.modes)
    if cfg.dtype == "auto" and ident.get("dtype"):
        cfg.dtype, cfg.edge_dtype = ident["dtype"], cfg.edge_dtype or ident.get("edge_dtype")
    if out is not None and Path(out).exists():
        raise UserError(f"{out} already exists; choose another --out, or leave --out away to update {trace_path} "
                        "in place")
    ids = tr.utterances["utt_id"].to_list()
    look = locate_dataset(m.get("dataset", {}), tr.path, ids, manifest=cfg.manifest, data=data)
    if not look.ok:
        raise UserError(look.problem() + " (the probes run on the trace's first utterance)")
    first = look.utterances[0]
    pair = _load(cfg, log)
    fp = tokenizer_fingerprint(pair.tokenizer)
    if fp != m["drafter"]["tokenizer_fingerprint"]:
        raise UserError(f"these models' tokenizer ({fp}) is not the trace's ({m['drafter']['tokenizer_fingerprint']}); "
                        "re-probe with the models the trace was collected with")
    prep = _backend(cfg, pair).prepare(first, cfg.modes, cfg.edge_device, cfg.cloud_device)
    want = int(tr.utterances["edge_prompt_tokens"][0])
    if len(prep.edge_prompt) != want:
        raise UserError(f"utterance {first.utt_id}: the edge prompt has {len(prep.edge_prompt)} tokens here but {want} "
                        "in the trace; the manifest or prompt differ from the collection's")
    timings, load = run_probes(cfg, pair, prep, log)
    dest = Path(out) if out is not None else trace_path
    manifest = rebase_paths(m, trace_path, dest) if out is not None else json.loads(json.dumps(m))
    hw = manifest.setdefault("hardware", {})
    previous = hw.get("probe_load")
    hw.update(edge=hardware(cfg.edge_device, cfg.edge_threads), cloud=hardware(cfg.cloud_device, None),
              probe_load=load)
    hw["reprobed"] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "timing_repeats": cfg.timing_repeats, "dtype": cfg.dtype, "edge_dtype": cfg.edge_dtype,
                      "utterance": first.utt_id, "previous_probe_load": previous,
                      "previous_timings": tr.timings.height}
    write_trace(dest, manifest, tr.utterances, tr.nodes, timings, tr.vocab, overwrite=out is None)
    return {"out": str(dest), "timings": timings.height, "load": load, "previous_timings": tr.timings.height}
