"""`sectrace validate`: run the live system and measure the simulator's error against it.

One run: the verifier service in its own process (pinned to its own cores), the drafter in
this one (pinned to the others), a shaped path between them per condition. Costs are fitted
to timings taken through the very code paths of a live run with that pinning (edge draft
steps here, calls to the service on the unshaped path), then the simulator prices the trace's replay of
each policy with them. Calibration rounds are spread before, between and after the live runs, the
conditions of one caption run back to back and its repeats are spread out, because a shared machine
drifts by several per cent over a run: measured in one block, drift would show up as simulator error. Per cell
(utterance × policy × RTT) we compare the median of its repeats' measured latency and time to first
token with the prediction (validate.stats), and the live caption against the replay's, token for token:
a mismatch means the trace does not describe what the live models do, and that run's timing is not
compared (it is counted and reported instead). Every aligned run is also compared event by event
(validate.events), which says which kind of event carries the error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import UserError
from ..fsio import write_json, write_table
from ..protocol import Policy
from ..simulate import Network, Replayer, cost_vector, fit_costs, latency
from ..trace import load_trace
from ..trace.schema import TIMINGS
from . import events as ev_table
from . import stats

TARGET_MEDIAN_APE = stats.TARGETS["median_ape_latency"]


@dataclass
class ValidateConfig:
    trace: Path
    drafter: str
    verifier: str
    policies: list[Policy]
    rtts: list[float]
    out: Path
    up_Bps: float = 20e6 / 8
    down_Bps: float = 50e6 / 8
    jitter: str | None = None
    loss: float = 0.0
    rto_s: float = 0.2
    manifest: Path | None = None
    limit: int | None = None
    edge_threads: int = 1
    cloud_threads: int = 1
    edge_cpus: list[int] | None = None
    cloud_cpus: list[int] | None = None
    dtype: str = "auto"
    calibrations: int = 3  # calibration rounds, before, between and after the live runs
    timeout_s: float = 60.0
    force: bool = False
    extra: dict = field(default_factory=dict)
    data: Path | None = None  # a folder holding the trace's dataset manifest (by its recorded file name)
    repeats: int = 1  # live runs of every cell (utterance × policy × RTT)


def events_path(out: Path) -> Path:
    """The per-event residual table beside ``--out`` (val.parquet → val.events.parquet)."""
    return out.with_suffix(".events.parquet")


def default_cpus() -> tuple[list[int], list[int]]:
    """Edge on the first half of this process's cores, the service on the rest (one each on 2 cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def _utterances(cfg: ValidateConfig, tr):
    """(the utterances to run, every trace utterance, the manifest found): the dataset found as the trace
    records it, under ``cfg.data`` or at ``cfg.manifest``, with the same content and the audio present."""
    from ..models.dataset import locate_dataset

    ids = tr.utterances["utt_id"].to_list()
    look = locate_dataset(tr.manifest.get("dataset", {}), tr.path, ids, manifest=cfg.manifest, data=cfg.data)
    if not look.ok:
        raise UserError(look.problem())
    if look.audio_missing:
        raise UserError(f"{look.found} names audio that is not there (utterance {look.audio_missing[0]!r}, "
                        f"{len(look.audio_missing)} in all); the audio must lie where the manifest says")
    return (look.utterances[: cfg.limit] if cfg.limit else look.utterances), look.utterances, look.found


#: How many distinct prompt lengths a prefill fit needs: two fix a line (fixed cost + per token), a third checks it.
PREFILL_LENGTHS = 3


def calibration_choice(tr, candidates: list, n: int = PREFILL_LENGTHS) -> list:
    """The utterances whose prompts calibrate the prefill costs: the shortest, the longest and ones between (by
    the edge prompt lengths the trace recorded), so the fitted line spans every prompt the replay prices
    instead of resting on whichever prompts come first (two neighbours 117 and 116 tokens long gave
    intercepts from -26.8 to +7.0 s). The first is the one the draft-step calibration also uses."""
    lengths = dict(zip(tr.utterances["utt_id"].to_list(), tr.utterances["edge_prompt_tokens"].to_list()))
    order = sorted(candidates, key=lambda u: (lengths[u.utt_id], u.utt_id))
    if len(order) <= n:
        return order
    picks = [order[round(i * (len(order) - 1) / (n - 1))] for i in range(n)]
    seen, out = set(), []
    for u in picks:  # prefer distinct lengths: replace a repeat by the nearest unused utterance of another length
        if lengths[u.utt_id] in seen:
            alt = [v for v in order if lengths[v.utt_id] not in seen and v not in out]
            u = min(alt, key=lambda v: abs(lengths[v.utt_id] - lengths[u.utt_id])) if alt else u
        seen.add(lengths[u.utt_id])
        if u not in out:
            out.append(u)
    return out


def calibration_checks(tr, cal: list, modes: list[str], rtts: list[float], policies: list[Policy],
                       utts: list | None = None) -> dict:
    """What this validation's calibration and schedule can and cannot identify, before anything runs.

    Returns {"warnings": [sentences], "noise_note": sentence or None}. A prefill cost fitted from fewer than
    :data:`PREFILL_LENGTHS` distinct prompt lengths has no identified per-token slope, so its fixed part is
    noise (unless every prompt, calibrated or validated (``utts``), has one length: then there is nothing to
    identify, as for the blind verifier's instruction-only prompts); the noise figure needs an edge-only policy
    run at two or more RTTs (identical work to compare)."""
    u = {r["utt_id"]: r for r in tr.utterances.iter_rows(named=True)}
    col = {"audio": "cloud_prompt_tokens", "blind": "blind_prompt_tokens"}

    def lengths(side, group):
        if side == "edge":
            return {u[x.utt_id]["edge_prompt_tokens"] for x in group}
        return {u[x.utt_id][col[m]] for x in group for m in modes}

    span = (min(tr.utterances["edge_prompt_tokens"]), max(tr.utterances["edge_prompt_tokens"]))
    warnings = []
    for side in ("edge", "cloud"):
        cal_lengths = sorted(lengths(side, cal))
        if len(set(cal_lengths) | lengths(side, utts or cal)) == 1:
            continue
        if len(cal_lengths) < PREFILL_LENGTHS:
            n = len(cal_lengths)
            warnings.append(
                f"the {side} prefill cost is fitted from {n} distinct prompt length"
                f"{'s' if n != 1 else ''} ({', '.join(map(str, cal_lengths))} tokens); its per-token slope "
                f"needs at least {PREFILL_LENGTHS} (two fix the line, a third checks it), so the fitted fixed and "
                "per-token parts are not identified and prompts of other lengths are mispriced: validate a trace "
                f"with more utterances whose prompts differ in length (this trace's run from {span[0]} to "
                f"{span[1]} tokens)")
    note = None
    if not any(p.gate_spec == "never" for p in policies):
        note = ("no noise figure: it compares identical edge-only runs, and this run has no edge-only policy "
                "(add --policy edge-only)")
    elif len(rtts) < 2:
        note = ("no noise figure: it compares identical edge-only runs at different RTTs, and this run has one RTT "
                "(give two or more, e.g. --rtt 20ms,50ms)")
    return {"warnings": warnings, "noise_note": note}


def plan(cfg: ValidateConfig) -> dict:
    """Everything `validate` decides before loading a model: the trace, its dataset, the utterances, the
    calibration prompts and what they can identify. `validate --dry-run` prints it; a test runs it on the
    bundled trace so the documented command cannot rot."""

    tr = load_trace(cfg.trace)
    modes = set(tr.modes)
    for p in cfg.policies:
        if p.verifier_mode not in modes:
            raise UserError(f"policy {p.label!r} needs the {p.verifier_mode} verifier, which the trace did not "
                            f"record (it has {', '.join(sorted(modes))})")
    utts, every, path = _utterances(cfg, tr)
    used = sorted({p.verifier_mode for p in cfg.policies}) or sorted(modes)
    cal = calibration_choice(tr, every)
    checks = calibration_checks(tr, cal, used, cfg.rtts, cfg.policies, utts)
    return {"trace": tr, "manifest": path, "utterances": utts, "calibration": cal, "modes": used, **checks}


def _cloud_inputs(prep, policy: Policy, utt):
    from ..live.client import CloudInputs
    from ..live.wire import tensor_to_wire

    if policy.privacy == "token-only":
        return CloudInputs(prep.cloud_prompts["blind"])
    feats = prep.cloud_kwargs.get("audio") or {}
    if policy.privacy == "features":
        return CloudInputs(prep.cloud_prompts["audio"], {k: tensor_to_wire(v) for k, v in feats.items()} or None)
    audio = b""
    if utt.audio is not None:
        from ..models.dataset import load_audio

        wav = load_audio(utt.audio)
        audio = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
    return CloudInputs(prep.cloud_prompts["audio"], None, audio)


def validate(cfg: ValidateConfig, echo=print, progress_factory=None):
    """Run everything; returns (per-run rows, per-condition summary, run facts, per-event residuals or None).

    This process is pinned to the edge cores and torch set to the edge's threads while it runs;
    both are restored afterwards."""
    import torch

    from ..live.process import pin

    cores, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
    try:
        return _validate(cfg, echo, progress_factory)
    finally:
        pin(cores)
        torch.set_num_threads(threads)


def _validate(cfg: ValidateConfig, echo, progress_factory):
    import torch

    from ..collect.probes import hardware, verify_sizes
    from ..live.client import CloudClient, LiveSession, decode_live
    from ..live.process import ServeProcess
    from ..live.proxy import ShapingProxy
    from ..models.backends import CausalLMBackend
    from ..models.lm import CachedLM
    from ..models.pair import eos_ids, load_model, load_tokenizer, tokenizer_fingerprint

    for path in (cfg.out, events_path(cfg.out)):
        if path.exists() and not cfg.force:
            raise UserError(f"{path} exists; choose another --out or pass --force to replace it")
    if cfg.repeats < 1 or cfg.calibrations < 1:
        raise UserError(f"--repeats ({cfg.repeats}) and --calibrations ({cfg.calibrations}) must be at least 1")
    planned = plan(cfg)
    tr, utts, cal_utts = planned["trace"], planned["utterances"], planned["calibration"]
    for w in planned["warnings"]:
        echo(f"warning: {w}")
    if planned["noise_note"]:
        echo(planned["noise_note"])
    m = tr.manifest
    backend = m.get("backend", "causal-lm")
    modes = set(tr.modes)
    if cfg.edge_cpus:
        from ..live.process import pin

        pin(cfg.edge_cpus)  # every thread, torch's pools included
    torch.set_num_threads(cfg.edge_threads)
    echo(f"loading the drafter {cfg.drafter}…")
    tok = load_tokenizer(cfg.drafter, "drafter")
    fp = tokenizer_fingerprint(tok)
    if fp != m["drafter"]["tokenizer_fingerprint"]:
        raise UserError(f"the drafter's tokenizer ({fp}) is not the trace's ({m['drafter']['tokenizer_fingerprint']});"
                        " validate with the models the trace was collected with")
    drafter = load_model(backend, cfg.drafter, "drafter", "cpu", cfg.dtype)
    eos = eos_ids(tok, drafter) | frozenset(m["eos_token_ids"])
    vocab = min(len(tok), int(drafter.get_output_embeddings().weight.shape[0]))
    if backend == "causal-lm":
        be = CausalLMBackend(tok, *([m["prompt_template"]] if m.get("prompt_template") else []))
    else:
        from ..models.audio import AudioChatBackend, load_feature_extractor

        be = AudioChatBackend(backend, tok, drafter, load_feature_extractor(cfg.drafter), m.get("prompt_template"))
    urow = {r["utt_id"]: r for r in tr.utterances.iter_rows(named=True)}
    preps = {}
    for u in [*utts, *(c for c in cal_utts if c not in utts)]:
        prep = be.prepare(u, tuple(sorted(modes)))
        want = urow[u.utt_id]
        if len(prep.edge_prompt) != want["edge_prompt_tokens"]:
            raise UserError(f"utterance {u.utt_id}: the edge prompt has {len(prep.edge_prompt)} tokens here but "
                            f"{want['edge_prompt_tokens']} in the trace; the manifest or prompt differ from the "
                            "collection's")
        preps[u.utt_id] = prep
    key = secrets.token_urlsafe(24)
    rp = Replayer(tr)
    reps = {p.label: rp.replay(p) for p in cfg.policies}
    used = sorted({p.verifier_mode for p in cfg.policies}) or sorted(modes)
    cal_preps = [preps[u.utt_id] for u in cal_utts]
    sizes = verify_sizes(p.k for p in cfg.policies)  # every block size the policies can send, not only k
    rounds = max(cfg.calibrations, 1)
    # Calibration rounds sit before, between and after the live runs, and each caption runs every RTT
    # back to back (the order rotating), so slow drift of a shared machine falls alike on the costs
    # and on every condition instead of biasing whichever ran first. Repeats go round the utterances
    # between two calibration rounds N times (each pass every policy and RTT once, the policy order
    # rotating too), not back to back: slow drift moves runs close in time together, and a median of
    # runs that share it would keep it.
    chunks = [c for c in np.array_split(np.arange(len(utts)), max(rounds - 1, 1)) if len(c)]
    with tempfile.TemporaryDirectory(prefix="sectrace-validate-") as tmp, contextlib.ExitStack() as stack:
        echo(f"starting the verifier service (cores {cfg.cloud_cpus or 'any'}, {cfg.cloud_threads} threads)…")
        service = stack.enter_context(ServeProcess(
            cfg.verifier, {"validate": key}, Path(tmp),
            ["--backend", backend, "--threads", str(cfg.cloud_threads), "--dtype", cfg.dtype, "--max-context", "16384"],
            cfg.cloud_cpus))
        direct = CloudClient(service.url, key, cfg.timeout_s)
        stack.callback(direct.close)
        info = direct.info()
        if set(info["eos"]) - eos:
            raise UserError(f"the service ends captions on ids {sorted(info['eos'])}, the trace on "
                            f"{sorted(eos)}; serve the trace's verifier")
        paths = {}
        for rtt in cfg.rtts:
            spec = Network(rtt_s=rtt, up_Bps=cfg.up_Bps, down_Bps=cfg.down_Bps, jitter=cfg.jitter, loss=cfg.loss,
                           rto_s=cfg.rto_s)
            proxy = stack.enter_context(ShapingProxy("127.0.0.1", service.port, spec))
            client = CloudClient(f"http://127.0.0.1:{proxy.port}", key, cfg.timeout_s)
            stack.callback(client.close)
            client.info()  # the connection is set up once, before any caption's clock starts
            paths[rtt] = (proxy, client, proxy.counters.up_bytes, proxy.counters.down_bytes,
                          client.traffic.bytes_up, client.traffic.bytes_down, client.traffic.calls)
        total = len(cfg.rtts) * len(cfg.policies) * len(utts) * cfg.repeats
        bar = progress_factory(total=total) if progress_factory else None
        live_bar = bar is not None and not getattr(bar, "disable", False)  # tqdm hides itself off a terminal
        cal_rows, out_rows, lives = [], [], []

        def cal(r: int, keep: bool):
            what = "warming up" if not keep else f"calibration round {r} of {rounds}"
            if live_bar:
                bar.set_description(what)
            else:
                echo(f"{what}: timing the edge's draft steps and the service's calls (same cores, same code)…")
            rows = calibrate_round(drafter, vocab, eos, cal_preps, direct, r, used, cfg.edge_threads, sizes)
            if keep:
                cal_rows.extend((*row, r) for row in rows)
            if live_bar:
                bar.set_description("live runs")
            elif keep and len(out_rows) < total:
                echo(f"live runs: {len(out_rows)} of {total} done")

        t_start = time.perf_counter()
        cal(0, keep=False)
        cal(1, keep=True)
        for j, chunk in enumerate(chunks):
            for ui, r_i in ((ui, r_i) for r_i in range(cfg.repeats) for ui in chunk):
                u = utts[ui]
                prep = preps[u.utt_id]
                n_pol = len(cfg.policies)
                for pol in [cfg.policies[(r_i + p) % n_pol] for p in range(n_pol)]:
                    rep = reps[pol.label]
                    i = rep.utt_ids.index(u.utt_id)
                    replay = rep.runs[i]
                    for rtt in np.roll(cfg.rtts, -int(ui + r_i)).tolist():
                        client = paths[rtt][1]
                        d = CachedLM(drafter, vocab, prep.edge_kwargs, slots=1)
                        sess = LiveSession(d, prep.edge_prompt, eos, client, pol, _cloud_inputs(prep, pol, u))
                        started = time.perf_counter() - t_start
                        lr = decode_live(sess, pol, keep_marks=True)
                        lives.append(lr)
                        out_rows.append({
                            "rtt_s": rtt, "policy": pol.label, "utt_id": u.utt_id, "repeat": r_i,
                            "seq": len(out_rows), "started_s": started, "latency_s": lr.latency_s, "ttft_s": lr.ttft_s,
                            "tokens": len(lr.run.tokens), "calls": lr.calls, "escalations": lr.run.escalations,
                            "fallbacks": lr.fallbacks, "bytes_up": lr.bytes_up, "bytes_down": lr.bytes_down,
                            "covered": replay is not None,
                            "caption_match": replay is not None and replay.tokens == lr.run.tokens,
                            "replay_tokens": len(replay.tokens) if replay is not None else None, "_i": i})
                        if bar:
                            bar.update(1)
            if rounds > 1:
                cal(j + 2, keep=True)
        if bar:
            bar.close()
        framing = {}
        for rtt, (proxy, client, b_up0, b_dn0, t_up0, t_dn0, c0) in paths.items():
            calls = client.traffic.calls - c0
            framing[rtt] = round(((proxy.counters.up_bytes - b_up0 - (client.traffic.bytes_up - t_up0)) +
                                  (proxy.counters.down_bytes - b_dn0 - (client.traffic.bytes_down - t_dn0))) /
                                 max(2 * calls, 1))
    timings = pl.DataFrame([r[:-1] for r in cal_rows], schema=TIMINGS, orient="row")
    cost = fit_costs(timings)
    thetas = {rtt: cost_vector(cost, Network(rtt_s=rtt, up_Bps=cfg.up_Bps, down_Bps=cfg.down_Bps,
                                             overhead_bytes=framing[rtt], jitter=cfg.jitter, loss=cfg.loss,
                                             rto_s=cfg.rto_s))
              for rtt in cfg.rtts}
    pols = {p.label: p for p in cfg.policies}
    event_rows = []
    for row, lr in zip(out_rows, lives):
        rep, i, ok = reps[row["policy"]], row.pop("_i"), row["covered"]
        theta = thetas[row["rtt_s"]]
        row["predicted_latency_s"] = float(latency(rep.total[i:i + 1], theta)[0]) if ok else None
        row["predicted_ttft_s"] = float(latency(rep.first[i:i + 1], theta)[0]) if ok else None
        row["framing_bytes"] = framing[row["rtt_s"]]
        table = ev_table.run_table(lr, rep.runs[i], pols[row["policy"]], urow[row["utt_id"]], theta) \
            if row["caption_match"] else None
        row["events_aligned"] = table is not None
        if table is not None:
            keys = {k: row[k] for k in ("rtt_s", "policy", "utt_id", "repeat", "seq")}
            event_rows.append(table.select(*(pl.lit(v).alias(k) for k, v in keys.items()), pl.all()))
    df = pl.DataFrame(out_rows)
    events = ev_table.finish(pl.concat(event_rows)) if event_rows else None
    df = df.with_columns(
        ape_latency=pl.when(pl.col("caption_match")).then(
            (pl.col("predicted_latency_s") - pl.col("latency_s")).abs() / pl.col("latency_s")),
        ape_ttft=pl.when(pl.col("caption_match")).then(
            (pl.col("predicted_ttft_s") - pl.col("ttft_s")).abs() / pl.col("ttft_s")))
    cell = stats.cells(df)
    cond = stats.conditions(cell)
    summary = summarise(df).select("rtt_s", "policy", "runs", "captions_match", "fallbacks")
    if cond.height:  # a condition without one timed run keeps its counts, with nulls for the errors
        summary = summary.join(cond, on=stats.CONDITION, how="left", maintain_order="left")
    facts = {"trace": str(cfg.trace), "drafter": cfg.drafter, "verifier": cfg.verifier, "backend": backend,
             "edge_cpus": cfg.edge_cpus, "cloud_cpus": cfg.cloud_cpus, "edge_threads": cfg.edge_threads,
             "cloud_threads": cfg.cloud_threads, "uplink_Bps": cfg.up_Bps, "downlink_Bps": cfg.down_Bps,
             "jitter": cfg.jitter, "loss": cfg.loss, "shaper": "tcp-proxy", "cost_model": _cost_dict(cost),
             "hardware": hardware("cpu", cfg.edge_threads), "service": info,
             "median_ape_latency": _median(cell["error_latency"].abs()),
             "median_ape_ttft": _median(cell["error_ttft"].abs()),
             **noise_floor(df), **stats.noise(cell), "noise_note": planned["noise_note"],
             "calibration_warnings": planned["warnings"], "calibration_utterances": [u.utt_id for u in cal_utts],
             "target_median_ape_latency": TARGET_MEDIAN_APE, "targets": stats.targets(cell, cond),
             "conditions": cond.to_dicts(), "repeats": cfg.repeats, "calibrations": rounds,
             "captions_match": int(df["caption_match"].sum()), "runs": df.height,
             "events_aligned": int(df["events_aligned"].sum()),
             "event_carriers": [] if events is None else ev_table.carriers(events).to_dicts(),
             "schedule": f"{rounds} calibration round(s) (after a warm-up) before, between and after the live "
                         f"runs; each caption runs {cfg.repeats} repeat(s), each repeat every policy and RTT "
                         "back to back, the orders rotating",
             "calibration": [dict(zip([*TIMINGS, "round"], r)) for r in cal_rows],
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return df, summary, facts, events


def calibrate_round(drafter, vocab: int, eos: frozenset, preps: list, client, salt: int, modes: list[str],
                    edge_threads: int, sizes=tuple(range(1, 17))) -> list[tuple]:
    """One round of timing rows (the trace's timings schema) measured through the code paths a live run takes.

    Edge: the drafter's prefill (the first draft of a caption) for a few utterances' prompts (their
    lengths differ, so the per-token prefill cost is identified) and single draft steps at growing
    context, each including the signal read-out a gate needs. Cloud: round trips on the unshaped
    loopback path to the service, so serving costs (HTTP, encoding, judgements) are in them: session
    opens (prefill + a 1-token block) for each prompt and verifier view, verify calls of every block size in
    ``sizes`` (1 … 16 and up to k+1 for the largest k: what the policies can send, blocks cut short included)
    with fresh tokens at three contexts, and the gaps between streamed tokens (cloud decoding) for each prompt.
    The cost fit then chooses between a linear verify cost and the per-size table by cross-validation.
    Every verified block differs from the one before at its first token, so no logits are reused:
    each call runs all its tokens, as in a live run.
    """
    from ..live.wire import TOKEN_RECORD, pack_ids
    from ..models.lm import CachedLM, draft_token

    rows = []
    for k, prep in enumerate(preps):
        prompt = list(prep.edge_prompt)
        lm = CachedLM(drafter, vocab, prep.edge_kwargs, slots=1)
        t0 = time.perf_counter()
        draft_token(lm.logits_for(prompt, 1)[0], eos)
        rows.append(("edge", "prefill", len(prompt), 0, time.perf_counter() - t0, "cpu", edge_threads))
        if k:
            continue
        filler = [prompt[i % len(prompt)] for i in range(80)]
        for c in range(1, 65):
            t0 = time.perf_counter()
            draft_token(lm.logits_for(prompt + filler[:c], 1)[0], eos)
            rows.append(("edge", "decode", 1, len(prompt) + c - 1, time.perf_counter() - t0, "cpu", edge_threads))

    def fresh(n: int, salt: int) -> list[int]:
        return [(97 + 31 * salt + 7 * i) % vocab for i in range(n)]

    for k, prep in enumerate(preps):
        for mode in modes:
            cprompt = list(prep.cloud_prompts[mode])
            session = {"mode": mode, "prompt": pack_ids(cprompt)}
            feats = prep.cloud_kwargs.get(mode) or {}
            if feats:
                from ..live.wire import tensor_to_wire

                session["features"] = {n: tensor_to_wire(v) for n, v in feats.items()}
            t0 = time.perf_counter()
            out = client.post("/v1/sessions", {**session, "draft": pack_ids(fresh(1, salt)), "accept": "top1",
                                               "bonus": False})
            rows.append(("cloud", "prefill", len(cprompt), 0, time.perf_counter() - t0, "cpu", None))
            sid = out["session"]
            if k == 0 and mode == modes[0]:
                s = 1
                for c in (0, 32, 64):
                    ctx = fresh(c, 0)
                    client.post(f"/v1/sessions/{sid}/verify", {"base": 0, "new": pack_ids(ctx),
                                                               "draft": pack_ids(fresh(1, 99)), "accept": "top1",
                                                               "bonus": False})
                    for n in sizes:
                        s += 1
                        t0 = time.perf_counter()
                        client.post(f"/v1/sessions/{sid}/verify", {"base": c, "new": pack_ids([]),
                                                                   "draft": pack_ids(fresh(n, s)),
                                                                   "accept": "top1", "bonus": False})
                        rows.append(("cloud", "verify", n, len(cprompt) + c, time.perf_counter() - t0, "cpu", None))
            if mode == modes[0]:  # a caption's stream ends at EOS after a dozen gaps: stream every prompt
                _stream_rows(client, session, len(cprompt), rows, TOKEN_RECORD)
            client.delete(f"/v1/sessions/{sid}")
    return rows


def _stream_rows(client, session: dict, prompt_len: int, rows: list, record) -> None:
    """Cloud-only decoding timed from the edge: first token (prefill + request), then the gaps (decode steps)."""
    import msgpack

    body = msgpack.packb({**session, "max_new_tokens": 48}, use_bin_type=True)
    t0 = time.perf_counter()
    with client.http.stream("POST", "/v1/generate", content=body) as resp:
        buf, last, i = b"", None, 0
        for chunk in resp.iter_raw():
            buf += chunk
            while len(buf) >= record.size:
                now = time.perf_counter()
                buf = buf[record.size:]
                if last is None:
                    rows.append(("cloud", "prefill", prompt_len, 0, now - t0, "cpu", None))
                else:
                    rows.append(("cloud", "decode", 1, prompt_len + i - 1, now - last, "cpu", None))
                last, i = now, i + 1


def noise_floor(df: pl.DataFrame) -> dict:
    """How much identical work varies on this machine: runs that never called the cloud (edge-only) do
    the same work at every RTT, so their spread around the utterance's mean is the machine's own noise,
    the error no simulator could remove. Back-to-back runs only: slower drift is not in it."""
    same = df.filter((pl.col("calls") == 0) & (pl.col("fallbacks") == 0))
    same = same.filter(pl.len().over(["policy", "utt_id"]) > 1)
    if same.is_empty():
        return {"noise_median_ad": None, "noise_max_ad": None}
    dev = (pl.col("latency_s") / pl.col("latency_s").mean().over(["policy", "utt_id"]) - 1).abs()
    d = same.select(dev)["latency_s"]
    return {"noise_median_ad": float(d.median()), "noise_max_ad": float(d.max())}


def _median(s: pl.Series):
    s = s.drop_nulls()
    return float(s.median()) if len(s) else None


def _cost_dict(cost) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cost).items()}


def summarise(df: pl.DataFrame) -> pl.DataFrame:
    """Per condition (RTT, policy): the simulator's error on latency and TTFT, and the caption check."""
    return (df.sort("rtt_s", maintain_order=True).group_by(["rtt_s", "policy"], maintain_order=True)
            .agg(runs=pl.len(), captions_match=pl.col("caption_match").sum(), covered=pl.col("covered").sum(),
                 fallbacks=pl.col("fallbacks").sum(), latency_s=pl.col("latency_s").mean(),
                 predicted_latency_s=pl.col("predicted_latency_s").mean(),
                 mape_latency=pl.col("ape_latency").mean(), median_ape_latency=pl.col("ape_latency").median(),
                 bias_latency=pl.when(pl.col("caption_match")).then(
                     pl.col("predicted_latency_s") / pl.col("latency_s") - 1).mean(),
                 ttft_s=pl.col("ttft_s").mean(), predicted_ttft_s=pl.col("predicted_ttft_s").mean(),
                 mape_ttft=pl.col("ape_ttft").mean(), median_ape_ttft=pl.col("ape_ttft").median()))


def write(df: pl.DataFrame, facts: dict, out: Path, events: pl.DataFrame | None = None) -> None:
    """Per-run rows as Parquet, the run's facts beside them as JSON, the per-event residuals (if any run
    aligned) as ``*.events.parquet``; each atomic."""

    write_table(df, out)
    if events is not None:
        write_table(events, events_path(out))
    write_json(facts, out.with_suffix(".json"), indent=2)
