"""Privacy accounting per policy: what leaves the device, and how much of the caption the cloud learns.

Two promises are priced side by side through the results' ``privacy`` column: the proposal's
``token-only`` (only token ids leave the device, the verifier is blind) and the study's
``features`` (token ids plus audio features, uploaded once per session if the cloud keeps state);
``raw`` is the cloud-only baseline (the audio itself goes up).

Which caption tokens the cloud sees is exact, not estimated: each policy is replayed through the
protocol's own state machine over the trace's trie (core code only: ``protocol.run`` on a
``trace.TrieSession``) and every escalation is read off the schedule: the cloud has then seen the
committed prefix, the drafted block (its rejected tail too) and its own correction or bonus token.
"""

from __future__ import annotations

import polars as pl

from ..errors import UserError
from ..gates.learned import GateFiles
from ..gates.spec import GateFileNotGiven, parse_gate
from ..protocol import CloudStep, Policy, Verify, run
from ..protocol.engine import CoverageMiss
from ..simulate.results import policy_from_row
from ..trace import Trace, TrieSession
from .emotion import emotion_words

POLICY_KEYS = ("k", "gate", "accept", "bonus", "privacy", "cloud_cache", "adaptive", "max_new_tokens")


class ReportGates:
    """Turns the gate specs in results rows back into gates, opening no file because a row names it.

    A results file is data: its ``gate`` column may say ``learned:/some/path:0.5``. Such a gate is
    loaded only from the files the user passed (``gate_files``, e.g. ``sectrace report --gate-file``);
    a policy whose gate names any other file is skipped with a note saying how to include it.
    ``trace`` lets content gates read token text.
    """

    def __init__(self, trace: Trace | None = None, gate_files=()):
        self.trace = trace
        self.files = gate_files if isinstance(gate_files, GateFiles) else GateFiles(gate_files)

    def __call__(self, spec: str):
        return parse_gate(spec, self.trace, gate_files=self.files)


def _report_gates(gates, trace: Trace | None = None) -> ReportGates:
    """``gates`` as a ReportGates: a plain parser (e.g. ``parse_gate``, which the CLI used to pass) is replaced,
    since it would open whatever file a row names; ``trace`` fills in one the ReportGates lacks."""
    if not isinstance(gates, ReportGates):
        return ReportGates(trace)
    if gates.trace is None and trace is not None:
        return ReportGates(trace, gates.files)
    return gates


def _policy_from_row(row: dict, gates: ReportGates | None = None) -> Policy:
    """The policy a results row was simulated with; raises GateFileNotGiven for a learned gate not passed."""
    return policy_from_row(row, _report_gates(gates))


def rebuild_policies(results: pl.DataFrame, gates: ReportGates | None = None) -> tuple[dict[str, Policy], list[str]]:
    """Every policy in the results by label, and notes on those left out (a learned gate file not passed).

    One note per gate file: how many policies it leaves out and the option that includes them.
    """
    gates = _report_gates(gates)
    rows = results.select("policy", *POLICY_KEYS).unique(subset=["policy"], maintain_order=True)
    pols, missing = {}, {}
    for row in rows.iter_rows(named=True):
        try:
            pols[row["policy"]] = _policy_from_row(row, gates)
        except GateFileNotGiven as exc:
            missing.setdefault(exc.path, []).append(row["policy"])
    notes = [f"{len(names)} polic{'y' if len(names) == 1 else 'ies'} with the learned gate {path} "
             f"({names[0]!r}{' …' if len(names) > 1 else ''}) left out: results never choose files to open; "
             f"pass --gate-file {path} to include {'it' if len(names) == 1 else 'them'}"
             for path, names in missing.items()]
    return pols, notes


def exposure(trace: Trace, results: pl.DataFrame, gates: ReportGates | None = None, progress=None,
             notes: list | None = None) -> pl.DataFrame:
    """Per (policy, utterance): caption tokens the cloud saw, the seen prefix, emotion words seen.

    ``gates`` turns the results' gate specs back into gates (:class:`ReportGates`: learned gates
    only from files the user passed). Policies it cannot rebuild are left out; why is appended to
    ``notes`` when given.
    """
    missing = [c for c in ("policy", *POLICY_KEYS, "utt_id", "tokens") if c not in results.columns]
    if missing:
        raise UserError(f"the results lack the column {missing[0]!r}; write them with `sectrace simulate --out`")
    pols, why = rebuild_policies(results, _report_gates(gates, trace))
    if notes is not None:
        notes.extend(why)
    skipped = results["policy"].n_unique() - len(pols)
    if progress and skipped:
        progress(skipped)
    extra = [c for c in trace.nodes.columns if c.startswith("x_")]
    sessions = {key[0]: TrieSession(df, trace.modes, extra)
                for key, df in trace.nodes.partition_by("utt_id", as_dict=True).items()}
    want = {(p, u): t for p, u, t in results.filter(pl.col("covered")).select("policy", "utt_id", "tokens")
            .unique(subset=["policy", "utt_id"]).iter_rows()}
    rows = []
    for name, pol in pols.items():
        for uid in results.filter(pl.col("policy") == name)["utt_id"].unique(maintain_order=True):
            sess = sessions.get(uid)
            if sess is None:
                raise UserError(f"utterance {uid!r} of the results is not in trace {trace.path}; "
                                "give the trace the results were simulated from")
            try:
                r = run(sess, pol)
            except CoverageMiss:
                continue
            expected = want.get((name, uid))
            if expected is not None and list(expected) != r.tokens:
                raise UserError(f"replaying {name!r} on {uid!r} gives another caption than the results "
                                "hold; give the trace the results were simulated from")
            prefix, rejected = 0, 0
            for ev in r.events:
                if type(ev) is Verify:
                    prefix = max(prefix, ev.ctx + ev.accepted + ev.corrected + ev.bonus)
                    rejected += ev.n - ev.accepted
                elif type(ev) is CloudStep:
                    prefix = len(r.tokens)
            prefix = min(prefix, len(r.tokens))
            words_all = emotion_words(trace.decode(r.tokens)) if trace.vocab is not None else []
            words_seen = emotion_words(trace.decode(r.tokens[:prefix])) if trace.vocab is not None else []
            rows.append({"policy": name, "utt_id": uid, "caption_tokens": len(r.tokens),
                         "seen_prefix": prefix, "seen_rejected": rejected, "cloud_seen_tokens": prefix + rejected,
                         "emotion_words": len(words_all), "emotion_words_seen": min(len(words_seen), len(words_all))})
        if progress:
            progress(1)
    return pl.DataFrame(rows, schema={"policy": pl.Utf8, "utt_id": pl.Utf8, "caption_tokens": pl.Int64,
                                      "seen_prefix": pl.Int64, "seen_rejected": pl.Int64,
                                      "cloud_seen_tokens": pl.Int64, "emotion_words": pl.Int64,
                                      "emotion_words_seen": pl.Int64})


def privacy_table(results: pl.DataFrame, exposure_rows: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per (trace, policy): contact share, tokens the cloud sees, bytes up, audio-derived bytes up, emotion words.

    Network/device configurations do not change what is sent, so each utterance counts once.
    """
    keys = [k for k in ("trace", "policy") if k in results.columns]
    base = results.filter(pl.col("covered")).unique(subset=[*keys, "utt_id"], keep="first", maintain_order=True)
    cols = ["privacy", "cloud_cache"] if "cloud_cache" in base.columns else ["privacy"]
    out = base.group_by(keys, maintain_order=True).agg(
        *[pl.col(c).first() for c in cols],
        pl.len().alias("utterances"),
        (pl.col("escalations") > 0).mean().alias("contact_share"),
        pl.col("escalations").mean().alias("cloud_calls"),
        pl.col("bytes_up").mean().alias("bytes_up"),
        pl.col("audio_bytes_up").mean().alias("audio_bytes_up"),
        (pl.col("audio_bytes_up") > 0).mean().alias("audio_share"),
        pl.col("n_tokens").mean().alias("caption_tokens"),
    )
    if exposure_rows is not None and exposure_rows.height:
        e = exposure_rows.group_by("policy").agg(
            pl.col("cloud_seen_tokens").mean().alias("cloud_seen_tokens"),
            (pl.col("seen_prefix").sum() / pl.col("caption_tokens").sum()).alias("caption_share_seen"),
            pl.when(pl.col("emotion_words").sum() > 0)
            .then(pl.col("emotion_words_seen").sum() / pl.col("emotion_words").sum())
            .otherwise(None).alias("emotion_words_exposed"),
        )
        out = out.join(e, on="policy", how="left")
    else:
        out = out.with_columns(pl.lit(None, pl.Float64).alias(c) for c in
                               ("cloud_seen_tokens", "caption_share_seen", "emotion_words_exposed"))
    return out


def modes_side_by_side(table: pl.DataFrame) -> pl.DataFrame:
    """The proposal (token-only) and the study (features) next to each other, per policy shape.

    Rows pair up policies that differ only in their privacy mode (same k, gate, acceptance, ...),
    so the price of sending audio features is read across one row.
    """
    t = table.with_columns(pl.col("policy").str.replace(r" (token-only|features|raw)\b", "").alias("shape"))
    metrics = ["contact_share", "cloud_seen_tokens", "bytes_up", "audio_bytes_up", "emotion_words_exposed"]
    parts = []
    for mode in ("token-only", "features"):
        sub = t.filter(pl.col("privacy") == mode).select("shape", *[pl.col(m).alias(f"{m}|{mode}") for m in metrics])
        parts.append(sub)
    both = parts[0].join(parts[1], on="shape", how="full", coalesce=True)
    return both.sort("shape")


