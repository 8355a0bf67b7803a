"""The collection run: utterances → live exploration → a trace, sharded, resumable, atomic.

Layout while running: ``OUT.parts/`` beside the output holds ``config.json`` (what this
run is), the timing probes, and one pair of files per finished utterance (its trie rows,
then a small JSON that marks it done; each written to a temporary name, fsynced and
renamed). A killed run restarted with the same command skips every finished utterance.

Every moment of a run is resumable; the order that makes it so:

1. Options and every manifest row this shard reads are checked before anything is written,
   so a bad input leaves nothing behind that blocks the corrected command.
2. ``OUT.parts`` is created and locked (a second collect on it is refused); temporary files
   a kill left behind (``.NAME.*.tmp`` in the parts, ``.OUT.tmp-*`` and ``.OUT.parts.trash-*``
   beside OUT) are removed.
3. Utterances are collected; an utterance counts as done only when both of its files are
   in place and name this collection.
4. The trace is staged in a temporary sibling, fsynced and validated; then ``done.json`` in
   the parts marks the run finished; then the trace is renamed into place; then the parts
   folder is renamed to a trash name (atomic) and deleted.

So on restart: OUT present and made by this command → leftover parts/trash are removed
("already complete"); OUT absent → the parts (always whole, never half-deleted) resume. A
parts folder of a *different* command with no finished utterance (a failed start) is
replaced, with a note; with finished utterances it is refused with the command to clear it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from ..errors import UserError
from ..explore.recorder import BudgetRecorder, explore, seed_recorder
from ..fsio import atomic_path, fsync_dir
from ..models.dataset import Utterance, read_manifest, shard_of
from ..trace import load_trace, rebase_paths, trace_relative, write_trace
from ..trace import schema as S
from ..trace.io import publish_trace, stage_trace, staging_dirs
from ..trace.schema import TIMINGS
from ..version import __version__


@dataclass
class CollectConfig:
    manifest: Path
    drafter: str
    verifier: str
    out: Path
    policies: list  # Policy objects (the exploration)
    modes: tuple[str, ...] = ("audio", "blind")
    backend: str = "causal-lm"
    drafter_runtime: str = "transformers"  # or "llama-cpp": the drafter is a GGUF run by llama.cpp (models/llamacpp.py)
    prompt: str | None = None
    few_shot: int = 0  # reference captions of other clips shown before the prompt (models.backends.few_shot_examples)
    few_shot_from: Path | None = None  # the manifest they come from (default: the collection's own)
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
    signals: object = None  # models.signals.SignalSpec: optional drafter-side x_* signals (--signals)


CONFIG = "config.json"
DONE = "done.json"  # written once the final trace is staged: the parts' work is finished
LOCK = ".lock"


def _replace(tmp: Path, path: Path):
    """The rename that publishes a finished file: the one step a kill cannot split."""
    os.replace(tmp, path)


def _write_file(path: Path, write):
    """``write(tmp)`` to a temporary sibling, fsync it, rename it over ``path`` (:func:`_replace`), fsync the folder."""
    with atomic_path(path, durable=True, rename=lambda tmp, dest: _replace(tmp, dest)) as tmp:
        write(tmp)


def _atomic_write_bytes(path: Path, data: bytes):
    _write_file(path, lambda tmp: tmp.write_bytes(data))


def _atomic_parquet(df: pl.DataFrame, path: Path):
    _write_file(path, lambda tmp: df.write_parquet(tmp, compression="zstd"))


def _remove_tree(path: Path):
    shutil.rmtree(path, ignore_errors=True)


def _trash_dirs(out: Path) -> list[Path]:
    """Parts folders renamed for deletion (step 4) whose deletion a kill interrupted."""
    pat = re.compile(r"\." + re.escape(out.name) + r"\.parts\.trash-\d+")
    try:
        return sorted(p for p in out.parent.iterdir() if pat.fullmatch(p.name))
    except OSError:
        return []


def _discard_parts(parts: Path, out: Path):
    """Rename the parts folder away in one atomic step, then delete it: it is never seen half-deleted."""
    trash = out.parent / f".{out.name}.parts.trash-{os.getpid()}"
    if trash.exists():
        _remove_tree(trash)
    parts.rename(trash)
    fsync_dir(out.parent)
    _remove_tree(trash)


def _clean_leftovers(out: Path, parts: Path | None):
    """Temporary files and folders a killed run left: never part of any result, always safe to delete."""
    if parts is not None and parts.is_dir():
        for p in parts.iterdir():
            if p.name.startswith(".") and p.name != LOCK:
                _remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for d in staging_dirs(out) + _trash_dirs(out):
        _remove_tree(d)


@contextmanager
def _locked(parts: Path):
    """Hold ``parts/.lock`` (flock) so a second collect on the same parts is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    fd = os.open(parts / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `sectrace collect` is writing {parts} right now; wait for it to finish "
                            "or stop it first") from None
        yield
    finally:
        os.close(fd)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _id_in(path: Path) -> str | None:
    """The collection id a parts JSON names, if it exists and names one."""
    d = _read_json(path) if path.exists() else None
    return d.get("id") if isinstance(d, dict) else None


def _utt_stem(parts: Path, utt_id: str) -> Path:
    return parts / f"utt-{_safe(utt_id)}"


def _utt_files(stem: Path) -> tuple[Path, Path]:
    """(nodes parquet, done json): names built whole, since utterance ids may contain dots."""
    return stem.parent / f"{stem.name}.nodes.parquet", stem.parent / f"{stem.name}.json"


def _finished(parts: Path, coll_id: str, legacy_ok: bool) -> set[str]:
    """Stems of utterances whose both files are in place and belong to this collection.

    A stats JSON whose nodes file is missing (a half-deleted folder of an older sectrace) or
    that names another collection is not finished: that utterance is collected again.
    JSONs without a collection id (older sectrace) count only when ``legacy_ok`` (the
    folder's config named this collection).
    """
    out = set()
    for j in parts.glob("utt-*.json"):
        stem = j.parent / j.name[: -len(".json")]
        nodes_path, _ = _utt_files(stem)
        st = _read_json(j)
        if not nodes_path.exists() or not isinstance(st, dict):
            continue
        if st.get("collection", coll_id if legacy_ok else None) == coll_id:
            out.add(stem.name)
    return out


def _adopt_parts(parts: Path, mine: dict, echo) -> bool:
    """Make ``parts`` this run's folder; returns whether it already was (its config named this run).

    A folder of another command with no finished utterance is a failed start (bad input,
    a crash while loading): it is replaced, with a note. One with finished utterances is
    real work and is refused, naming the command that clears it.
    """
    cpath = parts / CONFIG
    old = _read_json(cpath) if cpath.exists() else None
    if isinstance(old, dict) and (old.get("id"), old.get("shard")) != (mine["id"], mine["shard"]):
        n_done = sum(1 for _ in parts.glob("utt-*.json"))
        if n_done:
            raise UserError(f"{parts} holds {n_done} finished utterance(s) of a different command (models, prompt, "
                            "policies, manifest or shard differ); rerun that command to finish it, or delete the "
                            f"folder (rm -r '{parts}') to start this one")
        echo(f"replacing {parts}: it holds a failed start of a different command with no finished utterances")
        for p in sorted(parts.iterdir(), key=lambda p: p.name == CONFIG):  # config last: a kill here repeats this
            if p.name != LOCK:
                _remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)
        old = None
    matched = isinstance(old, dict)
    if not matched:
        _atomic_write_bytes(cpath, json.dumps(mine, indent=2).encode())
    (parts / DONE).unlink(missing_ok=True)  # OUT is absent, so the run is not finished: resume it
    return matched


def _check_extend_signals(cfg: CollectConfig, base) -> None:
    """An extension computes the base's signals, with its parameters, so no node of the result lacks them."""
    from ..models.signals import spec_from_record

    have = spec_from_record((base.manifest.get("signals") or {}).get("requested"))
    want = cfg.signals
    if (have.record() if have else None) != (want.record() if want else None):
        raise UserError(f"{cfg.extend} was collected with --signals {have.label() if have else 'none'}, but this "
                        f"command asks for {want.label() if want else 'none'}; extend with "
                        f"--signals {have.label() if have else 'none'}, so every node carries the same signals")


def _check_options(cfg: CollectConfig):
    """The numeric options, checked before anything is loaded or written."""
    for name, value, lo in (("--max-new-tokens", cfg.max_new_tokens, 1), ("--limit", cfg.limit, 1),
                            ("--max-nodes", cfg.max_nodes, 1), ("--timing-repeats", cfg.timing_repeats, 1),
                            ("--edge-threads", cfg.edge_threads, 1)):
        if value is not None and (type(value) is not int or value < lo):
            raise UserError(f"{name} must be a whole number of at least {lo}, got {value!r}")


def check_rows(utts: list[Utterance], backend: str) -> None:
    """Refuse a manifest row the backend cannot read, before anything is written (audio headers only).

    The backends raise the same errors when they prepare an utterance, but by then the
    parts folder exists; checking here first means bad input leaves nothing behind.
    """
    import soundfile as sf

    from ..models.dataset import load_audio

    for u in utts:
        if backend == "causal-lm" and not u.text:
            raise UserError(f"utterance {u.utt_id} has no transcript; the causal-lm backend needs a 'text' column "
                            "in the manifest (use an audio backend to caption from audio)")
        if backend != "causal-lm" and u.audio is None:
            raise UserError(f"utterance {u.utt_id} has no audio path; the {backend} backend captions audio")
        if u.audio is None:
            continue
        try:
            info = sf.info(str(u.audio))
        except Exception:
            load_audio(u.audio)  # raises the clear error naming the file
            raise UserError(f"cannot read the audio header of {u.audio}; convert it to WAV/FLAC") from None
        if backend != "causal-lm" and info.duration > 30:
            raise UserError(f"{u.audio} lasts {info.duration:.1f} s; the Whisper-style encoder takes at most 30 s: "
                            "cut the file or drop it from the manifest")


def _safe(utt_id: str) -> str:
    h = hashlib.blake2b(utt_id.encode(), digest_size=4).hexdigest()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", utt_id)[:60] + "-" + h


def _file_sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:24]


def collection_identity(cfg: CollectConfig, tok_fp: str, base_id: str | None, runtime: dict | None = None) -> dict:
    """Everything that changes the trace's content; shards of one collection share it.

    ``runtime``: the llama.cpp drafter's release and GGUF hash (absent for transformers, so the ids of
    transformers collections stay what they were)."""
    return {
        "drafter": cfg.drafter, "verifier": cfg.verifier, "tokenizer_fingerprint": tok_fp, "backend": cfg.backend,
        "prompt": cfg.prompt, "modes": list(cfg.modes), "max_new_tokens": cfg.max_new_tokens,
        "max_nodes": cfg.max_nodes, "policies": [p.label for p in cfg.policies], "dtype": cfg.dtype,
        "edge_dtype": cfg.edge_dtype,
        "manifest_sha": _file_sha(cfg.manifest), "limit": cfg.limit, "extends": base_id,
        **({"signals": cfg.signals.record()} if cfg.signals is not None else {}),
        **({"drafter_runtime": runtime} if runtime is not None else {}),
    }


def _id_of(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def model_card(path: str, model, tok_fp: str) -> dict:
    if hasattr(model, "runtime_record"):  # the llama.cpp drafter (models/llamacpp.py) describes itself
        return model.card(path, tok_fp)
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
    from ..models.backends import DEFAULT_TEXT_PROMPT, FEW_SHOT_HEADER, few_shot_examples, with_examples
    from ..models.pair import tokenizer_fingerprint

    log = log or (lambda line: None)

    if not cfg.policies:
        raise UserError("no exploration policies to run; give at least one --policy")
    _check_options(cfg)
    from ..models.signals import check_policies

    check_policies(cfg.policies, cfg.signals)
    _check_runtime(cfg)
    cfg.manifest = Path(cfg.manifest)
    utts_all = utts_all_rows = read_manifest(cfg.manifest)
    if cfg.limit is not None:
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
        _check_extend_signals(cfg, base)
    if not utts:
        raise UserError(f"shard {i}/{n} has no utterances to collect (the manifest lists {len(utts_all)})")
    check_rows(utts, cfg.backend)

    out = Path(cfg.out)
    parts = out.with_name(out.name + ".parts")
    if cfg.prompt is None:
        cfg.prompt = DEFAULT_TEXT_PROMPT if cfg.backend == "causal-lm" else DEFAULT_INSTRUCTION
    if cfg.few_shot and not cfg.prompt.startswith(FEW_SHOT_HEADER):  # a resumed config already carries them
        pool = read_manifest(cfg.few_shot_from) if cfg.few_shot_from is not None else utts_all_rows
        cfg.prompt = with_examples(cfg.prompt, few_shot_examples(pool, utts_all, cfg.few_shot))
    # Cheap checks before the heavy load: tokenizers first.
    pair = _load(cfg, log)
    tok_fp = tokenizer_fingerprint(pair.tokenizer)
    # The backend (prompt template, feature extractor) before any file is written, too.
    backend = _backend(cfg, pair)
    prepared_first = backend.prepare(utts[0], cfg.modes, cfg.edge_device, cfg.cloud_device)
    ident = collection_identity(cfg, tok_fp, base_id, _runtime_identity(pair))
    coll_id = _id_of(ident)
    mine = {"id": coll_id, "shard": [i, n], "identity": ident}
    if out.exists():
        m = _read_json(out / "manifest.json")
        coll = m.get("collection") if isinstance(m, dict) else None
        if isinstance(coll, dict) and coll.get("id") == coll_id and coll.get("shard") == [i, n]:
            _finish_cleanup(out, parts, coll_id, echo)
            echo(f"{out} is already complete for this command; nothing to do")
            return {"complete": True, "skipped": True, "out": str(out)}
        raise UserError(f"{out} already exists and was made by another command; choose another --out or remove it")
    parts.mkdir(parents=True, exist_ok=True)
    with _locked(parts):
        _clean_leftovers(out, parts)
        legacy_ok = _adopt_parts(parts, mine, echo)
        return _run(cfg, pair, backend, prepared_first, utts, parts, out, mine, ident, tok_fp, base, legacy_ok,
                    progress_factory, log)


def _finish_cleanup(out: Path, parts: Path, coll_id: str, echo):
    """OUT is complete for this command: remove what a kill during step 4 left (parts, trash, staging)."""
    if parts.is_dir():
        cfg_id, done_id = (_id_in(parts / name) for name in (CONFIG, DONE))
        if coll_id in (cfg_id, done_id) or cfg_id is None:  # ours, or nothing says whose: the trace is done
            with _locked(parts):
                _discard_parts(parts, out)
            echo(f"removed {parts}, left over from the run that wrote {out}")
    _clean_leftovers(out, None)


def _run(cfg, pair, backend, prepared_first, utts, parts, out, mine, ident, tok_fp, base, legacy_ok,
         progress_factory, log) -> dict:
    from .probes import GpuSampler, hardware, peaks

    hw_path = parts / "hardware.json"
    tpath = parts / "timings.parquet"
    if cfg.probes and not tpath.exists():
        timings, load = run_probes(cfg, pair, prepared_first, log)
        _atomic_write_bytes(parts / "probe_load.json", json.dumps(load).encode())
        _atomic_parquet(timings, tpath)
    if not hw_path.exists():
        _atomic_write_bytes(hw_path, json.dumps({"edge": _edge_hardware(cfg, pair),
                                                 "cloud": hardware(cfg.cloud_device, None)}).encode())

    done = _finished(parts, mine["id"], legacy_ok)
    todo = [u for u in utts if _utt_stem(parts, u.utt_id).name not in done]
    bar = progress_factory(total=len(utts), initial=len(utts) - len(todo)) if progress_factory else None
    plain = bar is None or getattr(bar, "disable", False)  # tqdm hides itself off a terminal: say it in lines
    if plain and todo:
        log(f"exploring {len(todo)} utterance(s) with {len(cfg.policies)} policies"
            + (f" ({len(utts) - len(todo)} already done)" if len(todo) < len(utts) else "") + "…")
    t_start = time.perf_counter()
    nodes_made = 0
    with GpuSampler(cfg.cloud_device) as gpu:
        for count, u in enumerate(todo):
            if cfg.stop_after is not None and count >= cfg.stop_after:
                if bar:
                    bar.close()
                return {"complete": False, "out": str(out), "parts": str(parts)}
            stats = _collect_one(cfg, pair, backend, u, base)
            stats["collection"] = mine["id"]
            nodes_path, json_path = _utt_files(_utt_stem(parts, u.utt_id))
            _atomic_parquet(stats.pop("nodes"), nodes_path)  # the nodes first: the JSON marks the pair done
            _atomic_write_bytes(json_path, json.dumps(stats).encode())
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


def _check_runtime(cfg: CollectConfig) -> None:
    """The drafter runtime and what it can run, before anything loads."""
    from ..models.llamacpp import RUNTIMES, check_signals

    if cfg.drafter_runtime not in RUNTIMES:
        raise UserError(f"unknown drafter runtime {cfg.drafter_runtime!r}; use {' or '.join(RUNTIMES)}")
    if cfg.drafter_runtime == "transformers":
        if str(cfg.drafter).endswith(".gguf"):
            raise UserError(f"--drafter {cfg.drafter} is a GGUF file; add --drafter-runtime llama-cpp to run it in "
                            "llama.cpp, or give a transformers checkpoint folder")
        return
    if cfg.backend != "causal-lm":
        raise UserError(f"the llama.cpp drafter runs text models only; use --backend causal-lm (a cascaded prompt), "
                        f"not {cfg.backend}, or --drafter-runtime transformers")
    if cfg.edge_device != "cpu" or cfg.edge_dtype is not None:
        raise UserError("--edge-device and --edge-dtype are transformers settings; the llama.cpp drafter runs on the "
                        "CPU in the GGUF's own quantisation")
    check_signals(cfg.signals)


def _runtime_identity(pair) -> dict | None:
    """What of the llama.cpp drafter changes the trace's content: its release and the GGUF's bytes."""
    d = pair.drafter
    if not hasattr(d, "runtime_record"):
        return None
    rec = d.runtime_record()
    return {k: rec[k] for k in ("name", "version", "gguf_sha256")}


def _load(cfg, log):
    """Both models, with a line before and after: loading takes minutes for real models."""
    from ..models.pair import load_pair

    where = "llama.cpp" if cfg.drafter_runtime == "llama-cpp" else cfg.edge_device
    log(f"loading the drafter ({cfg.drafter}, {where}) and the verifier ({cfg.verifier}, {cfg.cloud_device})…")
    t0 = time.perf_counter()
    if cfg.drafter_runtime == "llama-cpp":
        from ..models.llamacpp import load_pair_llamacpp

        pair = load_pair_llamacpp(cfg.drafter, cfg.verifier, cfg.cloud_device, cfg.dtype, cfg.edge_threads)
    else:
        pair = load_pair(cfg.drafter, cfg.verifier, cfg.edge_device, cfg.cloud_device, cfg.dtype, cfg.edge_threads,
                         cfg.backend, cfg.edge_dtype)
    log(f"models loaded in {time.perf_counter() - t0:.1f}s")
    return pair


def _edge_hardware(cfg, pair) -> dict:
    """The edge's hardware; with the llama.cpp drafter, its thread count and runtime are llama.cpp's."""
    from .probes import hardware

    hw = hardware(cfg.edge_device, cfg.edge_threads)
    if hasattr(pair.drafter, "runtime_record"):
        rec = pair.drafter.runtime_record()
        hw.update(threads=rec["n_threads"], runtime=f"{rec['name']} ({rec['package']} {rec['version']})")
    return hw


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
    from .probes import CAPTION_CTX, LoadMonitor, load_warning, probe, verify_sizes

    log = log or (lambda line: None)
    rows = []
    cmode = "audio" if "audio" in cfg.modes else cfg.modes[0]
    sides = [("edge", pair.drafter, prepared.edge_prompt, cfg.edge_device, cfg.edge_threads, prepared.edge_kwargs,
              False),
             ("cloud", pair.verifier, prepared.cloud_prompts[cmode], cfg.cloud_device, None,
              prepared.cloud_kwargs.get(cmode), True)]
    with LoadMonitor() as mon:
        for side, model, prompt, device, threads, kwargs, verify in sides:
            what = "prefill, decode" + (", verify of every block size" if verify else "")
            log(f"timing probes, {side} ({what}; {cfg.timing_repeats} repeats at {len(CAPTION_CTX)} contexts)…")
            t0 = time.perf_counter()
            done = [0]

            def step(side=side, t0=t0, done=done):
                done[0] += 1
                log(f"timing probes, {side}: context {done[0]}/{len(CAPTION_CTX)} done "
                    f"({time.perf_counter() - t0:.1f}s)")

            rows += probe(model, pair.shared_vocab, prompt, side, device, threads, cfg.timing_repeats, kwargs,
                          verify=verify, progress=step,
                          **({"ns": verify_sizes(p.k for p in cfg.policies)} if verify else {}))
    load = mon.result
    warning = load_warning(load)
    if warning:
        log(f"warning: {warning}")
    return pl.DataFrame(rows, schema=TIMINGS, orient="row"), load


def _collect_one(cfg, pair, backend, u: Utterance, base) -> dict:
    from ..models.lm import CachedLM, open_lm  # torch: only when models run, so `trace merge` stays light

    prep = backend.prepare(u, cfg.modes, cfg.edge_device, cfg.cloud_device)
    spare = cfg.signals.get("stability", "k") if cfg.signals is not None and "stability" in cfg.signals.names else 0
    d = open_lm(pair.drafter, pair.shared_vocab, prep.edge_kwargs, extra_seqs=spare)
    vs = {m: CachedLM(pair.verifier, pair.shared_vocab, prep.cloud_kwargs.get(m)) for m in cfg.modes}
    from ..models.pair import PairSource

    src = PairSource(d, prep.edge_prompt, vs, {m: prep.cloud_prompts[m] for m in cfg.modes}, pair.eos)
    sig = None
    if cfg.signals is not None:  # drafts carry the x_* signals; the trie itself is unchanged
        from ..models.signals import with_signals

        no_audio = open_lm(pair.drafter, pair.shared_vocab) if "audio-shift" in cfg.signals.names else None
        src = sig = with_signals(src, cfg.signals, no_audio, prep.cloud_prompts.get("blind"))
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
            "verifier_calls": {m: c.calls for m, c in vc.items()},
            **({"signals": sig.signals.summary()} if sig is not None else {})}


def _assemble(cfg, pair, utts, parts, out, mine, ident, tok_fp, base, peak) -> dict:
    rows, frames, stats = [], [], []
    for u in utts:
        nodes_path, json_path = _utt_files(_utt_stem(parts, u.utt_id))
        st = json.loads(json_path.read_text())
        rows.append(st["row"])
        frames.append(pl.read_parquet(nodes_path))
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
    if cfg.signals is not None:
        from ..models.signals import manifest_record

        manifest["signals"] = manifest_record(cfg.signals, [s["signals"] for s in stats if "signals" in s])
    if base is not None:
        # Utterances the extension did not touch (other shards) keep their recorded rows.
        keep = base.utterances.filter(~pl.col("utt_id").is_in([r["utt_id"] for r in rows]))
        if keep.height:
            rows += keep.to_dicts()
            nodes = pl.concat([nodes, base.nodes.filter(pl.col("utt_id").is_in(keep["utt_id"]))],
                              how="diagonal_relaxed")
    # Step 4 (module docstring): stage, mark done, publish, discard. A kill between any two
    # leaves either whole parts and no OUT (resume) or OUT complete (cleaned on the next run).
    manifest["dataset"] = _dataset_record(cfg, out, ident, utts, rows)
    staged = stage_trace(out, manifest, rows, nodes, timings, vocab)
    _atomic_write_bytes(parts / DONE, json.dumps({"id": mine["id"], "trace": out.name}).encode())
    publish_trace(staged, out)
    _discard_parts(parts, out)
    return {"complete": True, "out": str(out), "utterances": len(rows), "nodes": nodes.height,
            "compute": manifest["compute"], "truncated": len(manifest["exploration"]["truncated_utterances"]),
            **({"signals": manifest["signals"]["compute"]} if "signals" in manifest else {})}


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
    if (m.get("drafter") or {}).get("runtime", {}).get("name") == "llama.cpp":
        cfg.drafter_runtime = "llama-cpp"  # the probes must time the runtime the trace's drafter ran in
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
    hw.update(edge=_edge_hardware(cfg, pair), cloud=hardware(cfg.cloud_device, None), probe_load=load)
    hw["reprobed"] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "timing_repeats": cfg.timing_repeats, "dtype": cfg.dtype, "edge_dtype": cfg.edge_dtype,
                      "utterance": first.utt_id, "previous_probe_load": previous,
                      "previous_timings": tr.timings.height}
    write_trace(dest, manifest, tr.utterances, tr.nodes, timings, tr.vocab, overwrite=out is None)
    return {"out": str(dest), "timings": timings.height, "load": load, "previous_timings": tr.timings.height}
