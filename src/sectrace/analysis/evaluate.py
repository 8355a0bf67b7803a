"""RQ1 measured: which local signals predict the tokens that need the cloud, and what each gate buys end to end.

* :func:`signal_table`: per drafter-side signal, ROC-AUC and PR-AUC for predicting the
  verifier's rejection (and the high-impact label), on the trace's drafted nodes.
* :func:`frontier`: every gate over its threshold range, replayed end to end: cloud calls
  and cloud-verified tokens per caption against agreement with the cloud-only caption.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..errors import UserError
from ..explore.synth import synth_recorders
from ..gates.features import available_features, node_table
from ..gates.learned import calibrated
from ..gates.spec import parse_gate
from ..protocol import Accept, CoverageMiss, Policy, run
from ..simulate import Replayer, similarity
from ..simulate.metrics import bootstrap_weights

#: Gate family -> (feature, sign): sign +1 when larger means riskier. Each is a threshold gate (gates frontier).
SIGNALS = {
    "entropy": ("entropy", 1), "logprob": ("logprob", -1), "margin": ("margin", -1), "p2": ("p2", 1),
    "stability": ("x_stability", -1), "audio": ("x_audio_shift", 1), "mc-dropout": ("x_mc_agree", -1),
    "content:emotion": ("emotion_word", 1), "depth": ("depth", 1),
}
#: Further signals ranked by `gates eval` (no gate of their own): the other MC-dropout statistics.
RANKED = {"mc-var": ("x_mc_prob_var", 1), "mc-entropy": ("x_mc_entropy", 1)}
#: The signals RQ1 asks about: name -> the trace columns that carry them (all needed).
RQ1_SIGNALS = {
    "log-prob": ("d_logprob",), "entropy": ("d_entropy",), "margin": ("d_margin",),
    "stability": ("x_stability",), "MC-dropout": ("x_mc_agree", "x_mc_prob_var", "x_mc_entropy"),
    "audio shift": ("x_audio_shift",),
}
#: The collect --signals name that records each optional RQ1 signal.
COLLECT_SIGNAL = {"stability": "stability", "MC-dropout": "mc-dropout", "audio shift": "audio-shift"}


def rq1_coverage(trace) -> tuple[list[str], list[str]]:
    """(present, missing) RQ1 signals: a signal is present when all its columns hold a value on some drafted node."""
    present, missing = [], []
    drafted = trace.nodes.filter(trace.nodes["d_token"].is_not_null())
    for name, cols in RQ1_SIGNALS.items():
        ok = all(c in drafted.columns and drafted[c].is_not_null().any() for c in cols)
        (present if ok else missing).append(name)
    return present, missing


def rq1_note(trace) -> str:
    """One line naming the RQ1 signals this trace has and lacks, and how to get the missing ones."""
    present, missing = rq1_coverage(trace)
    line = f"RQ1 signals in this trace: {', '.join(present) or 'none'}"
    if not missing:
        return line + "; none missing"
    cols = "; ".join(f"{m} ({', '.join(RQ1_SIGNALS[m])})" for m in missing)
    how = ("regenerate the trace with `sectrace trace synth`, which writes every RQ1 signal" if trace.synthetic else
           "re-collect with `sectrace collect ... --signals "
           + ",".join(COLLECT_SIGNAL[m] for m in missing if m in COLLECT_SIGNAL) + "`")
    return f"{line}; MISSING (not ranked): {cols}; {how}"


def _ranked(feats) -> dict:
    """Signal name -> (feature, sign) for every signal this trace can rank: the known ones, then any other x_*."""
    known = {**SIGNALS, **RANKED}
    out = {name: fs for name, fs in known.items() if fs[0] in feats}
    named = {f for f, _ in known.values()}
    for f in feats:
        if f.startswith("x_") and f not in named:
            out[f] = (f, 1)  # an unknown extension signal: ranked as "larger = riskier" (AUC < 0.5 says otherwise)
    return out


def _grouped(score: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int):
    """Positive and negative token counts per (resampling unit, distinct score), scores ascending:
    sparse (units × distinct scores) matrices, so a resample's weighted counts are one product."""
    from scipy.sparse import csr_matrix

    uniq, inv = np.unique(score, return_inverse=True)
    shape = (n_groups, len(uniq))
    pos = csr_matrix((y.astype(float), (group, inv)), shape=shape)
    neg = csr_matrix((1.0 - y, (group, inv)), shape=shape)
    return pos, neg


def weighted_aucs(pos, neg, w: np.ndarray) -> np.ndarray:
    """ROC-AUC and average precision (scikit-learn's definitions, ties included) for each row of unit weights
    ``w`` (R, units): each token counts as often as its unit is drawn. Returns (R, 2)."""
    P = np.asarray((pos.T @ w.T).T)  # (R, distinct scores), ascending
    N = np.asarray((neg.T @ w.T).T)
    tp, tn = P.sum(axis=1), N.sum(axis=1)
    below = np.cumsum(N, axis=1) - N  # negatives scored strictly lower
    roc = (P * (below + 0.5 * N)).sum(axis=1) / (tp * tn)
    # average precision: thresholds from the highest score down; precision at each, weighted by recall gained
    tp_c = np.cumsum(P[:, ::-1], axis=1)
    all_c = tp_c + np.cumsum(N[:, ::-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(all_c > 0, tp_c / all_c, 0.0)
    ap = (P[:, ::-1] * prec).sum(axis=1) / tp
    return np.stack([roc, ap], axis=1)


def signal_table(trace, mode: str = "audio", rank: int = 1, learned=(), ci: bool = True) -> pl.DataFrame:
    """ROC-AUC / PR-AUC per signal for ``reject`` and ``impact`` labels; ``learned``: (name, LearnedGate) pairs.

    Every signal the trace has is ranked, each on the judged drafted nodes where it has a value
    (``tokens``), so a signal recorded on part of the trie neither hides nor shrinks the others. With ``ci``, each comes with a bootstrap 95 % interval (``roc_auc_lo`` … ``pr_auc_hi``) that resamples
    *utterances* (clips), not tokens: tokens of one caption are not independent draws, so resampling them
    would give intervals too narrow. Point values are scikit-learn's."""
    from sklearn.metrics import average_precision_score, roc_auc_score


    feats = available_features(trace)
    tables = {}
    for name, (f, sign) in _ranked(feats).items():
        tab = node_table(trace, [f], mode, rank)
        tables[name] = (tab["reject"].to_numpy(), tab["impact"].to_numpy(), tab[f].to_numpy() * sign,
                        tab["utt_id"].to_numpy())
    if learned:

        for name, gate in learned:
            tab = node_table(trace, gate.features, mode, rank)
            X = tab.select(gate.features).to_numpy().astype(float)
            tables[name] = (tab["reject"].to_numpy(), tab["impact"].to_numpy(), calibrated(gate.doc, X),
                            tab["utt_id"].to_numpy())
    rows = []
    for li, label in enumerate(("reject", "impact")):
        for name, t in tables.items():
            y = t[li].astype(int)
            if not len(y) or y.min() == y.max():
                continue
            s = np.asarray(t[2], float)
            utt, group = np.unique(t[3], return_inverse=True)
            row = {"signal": name, "label": label, "roc_auc": float(roc_auc_score(y, s)),
                   "pr_auc": float(average_precision_score(y, s))}
            if ci:
                pos, neg = _grouped(s, y, group, len(utt))
                _, lo, hi = bootstrap_weights(len(utt), lambda w, pos=pos, neg=neg: weighted_aucs(pos, neg, w))
                row.update(roc_auc_lo=float(lo[0]), roc_auc_hi=float(hi[0]), pr_auc_lo=float(lo[1]),
                           pr_auc_hi=float(hi[1]))
            rows.append({**row, "base_rate": float(y.mean()), "tokens": int(len(y)), "utterances": len(utt)})
    return pl.DataFrame(rows)


def _pair_counts(score: np.ndarray, y: np.ndarray, group: np.ndarray, n_units: int):
    """Mann–Whitney pair counts between resampling units: ``C[u, v]`` = positives of unit u scored above
    negatives of unit v (ties ½), with each unit's positive and negative counts. A resample's ROC-AUC is then
    ``w C wᵀ / ((w·pos)(w·neg))`` for unit weights ``w``: units × units numbers instead of tokens per resample."""
    pos = y == 1
    C = np.zeros((n_units, n_units))
    ps, pg = score[pos], group[pos]
    for v in range(n_units):
        neg_v = np.sort(score[~pos & (group == v)])
        if len(neg_v):
            below = np.searchsorted(neg_v, ps, side="left")
            ties = np.searchsorted(neg_v, ps, side="right") - below
            C[:, v] = np.bincount(pg, weights=below + 0.5 * ties, minlength=n_units)
    return C, np.bincount(group[pos], minlength=n_units), np.bincount(group[~pos], minlength=n_units)


def _weighted_roc(C, n_pos, n_neg, w: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of unit weights ``w`` (R, units), from :func:`_pair_counts`."""
    return np.einsum("ru,uv,rv->r", w, C, w) / ((w @ n_pos) * (w @ n_neg))


def best_signals(trace, mode: str = "audio", rank: int = 1, table: pl.DataFrame | None = None) -> list[dict]:
    """Per label, the signal with the highest ROC-AUC and how every other signal compares with it, paired.

    Overlapping intervals in :func:`signal_table` do not say two signals tie: both are measured on the same
    captions, so the honest comparison is the bootstrap interval of the *difference* AUC(best) − AUC(other),
    each resample drawing the same utterances for both, on the tokens both signals have. A difference whose
    interval excludes 0 is ``worse``; one whose interval holds 0 is a ``tie`` with the best (this trace cannot
    tell them apart). Learned gates are left out: their honest figure is the cross-validated one."""
    table = signal_table(trace, mode, rank, ci=False) if table is None else table
    ranked = _ranked(available_features(trace))
    out = []
    for label in ("reject", "impact"):
        rows = table.filter((pl.col("label") == label) & pl.col("signal").is_in(list(ranked)))
        if rows.height == 0:
            continue
        best = rows.sort("roc_auc", descending=True, maintain_order=True).row(0, named=True)["signal"]
        fb, sb = ranked[best]
        others = []
        for name in rows["signal"].to_list():
            if name == best:
                continue
            fo, so = ranked[name]
            tab = node_table(trace, list(dict.fromkeys([fb, fo])), mode, rank)
            y = tab[label].to_numpy().astype(int)
            if not len(y) or y.min() == y.max():
                continue
            utt, group = np.unique(tab["utt_id"].to_numpy(), return_inverse=True)
            cb = _pair_counts(tab[fb].to_numpy() * sb, y, group, len(utt))
            co = _pair_counts(tab[fo].to_numpy() * so, y, group, len(utt))

            def diff(w, cb=cb, co=co):
                return (_weighted_roc(*cb, w) - _weighted_roc(*co, w))[:, None]

            point, lo, hi = bootstrap_weights(len(utt), diff)
            verdict = "tie" if not (lo[0] > 0) else "worse"
            others.append({"signal": name, "roc_auc_diff": float(point[0]), "diff_lo": float(lo[0]),
                           "diff_hi": float(hi[0]), "verdict": verdict, "tokens": int(len(y))})
        out.append({"label": label, "best": best,
                    "roc_auc": float(rows.filter(pl.col("signal") == best)["roc_auc"][0]), "others": others})
    return out


def best_note(best: list[dict]) -> list[str]:
    """`gates eval`'s closing lines: the best single signal per label, the ties and the signals it beats."""
    lines = []
    for b in best:
        ties = [o["signal"] for o in b["others"] if o["verdict"] == "tie"]
        worse = [o["signal"] for o in b["others"] if o["verdict"] == "worse"]
        lines.append(f"best single signal for {b['label']}: {b['best']} (ROC-AUC {b['roc_auc']:.3f}); "
                     f"tied with it (paired 95 % CI of the AUC difference holds 0): {', '.join(ties) or 'none'}; "
                     f"beaten: {', '.join(worse) or 'none'}")
    return lines


def default_thresholds(trace, name: str, n: int = 8) -> list[float]:
    """A gate's threshold range: quantiles of its signal over the trace's drafted nodes."""
    if name in ("learned",):
        return [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999]
    if name == "random":
        return [0.1, 0.25, 0.5, 0.75, 0.9]
    feat, _ = SIGNALS[name]
    if feat not in available_features(trace):
        raise UserError(f"the trace has no {feat} signal for the {name} gate")
    vals = node_table(trace, [feat]).get_column(feat).to_numpy()
    qs = np.quantile(vals, np.linspace(0.05, 0.95, n))
    return sorted({round(float(q), 4) for q in qs})


def frontier(trace, gate_specs, k: int = 5, accept: str = "top1", privacy: str = "features",
             max_new_tokens: int | None = None, extend: bool = False, progress=None, adaptive=None) -> pl.DataFrame:
    """One row per gate spec: mean cloud calls, verified tokens, drafted tokens and agreement with cloud-only.

    ``extend``: for synthetic traces, states the trie lacks are generated from the trace's own
    model (exact), so every threshold is covered; otherwise such utterances are coverage misses.
    """

    max_new = max_new_tokens or int(trace.manifest["decoding"].get("max_new_tokens", 64))
    utt_ids = trace.utterances["utt_id"].to_list()
    if extend:

        sessions = synth_recorders(trace.manifest, utt_ids)
    else:

        sessions = Replayer(trace).sessions
    acc = Accept.parse(accept)


    # The reference is what `simulate` calls cloud-only: raw audio up, the audio-hearing verifier decodes.
    cloud_pol = Policy(k=0, gate=parse_gate("always"), gate_spec="always", accept=Accept("top1", 1),
                       privacy="raw", max_new_tokens=max_new)
    ref = {}
    for uid in utt_ids:
        try:
            ref[uid] = run(sessions[uid], cloud_pol).tokens
        except CoverageMiss:
            ref[uid] = None
    rows = []
    for spec in gate_specs:
        gate = parse_gate(spec, trace)
        pol = Policy(k=k, gate=gate, gate_spec=spec, accept=acc, privacy=privacy, max_new_tokens=max_new,
                     adaptive=adaptive)
        vals = {key: [] for key in ("calls", "verified", "drafted", "blocks", "exact", "similar", "tokens")}
        covered = 0
        for uid in utt_ids:
            try:
                r = run(sessions[uid], pol)
            except CoverageMiss:
                continue
            if ref[uid] is None:
                continue
            covered += 1
            vals["calls"].append(r.escalations)
            vals["verified"].append(r.verified)
            vals["drafted"].append(r.drafted)
            vals["blocks"].append(r.blocks)
            vals["tokens"].append(len(r.tokens))
            vals["exact"].append(float(r.tokens == ref[uid]))
            vals["similar"].append(similarity(r.tokens, ref[uid]))
        name = spec.split(":")[0].split("(")[0]
        thr = spec.rsplit(":", 1)[1] if ":" in spec and name not in ("content", "any", "all") else None
        if name == "learned":  # one family per gate file
            from pathlib import Path

            name = f"learned:{Path(spec[len('learned:'):].rsplit(':', 1)[0]).stem}"
        mean = {key: (float(np.mean(v)) if v else float("nan")) for key, v in vals.items()}
        rows.append({"gate": name, "spec": spec, "threshold": float(thr) if thr not in (None, "") else None,
                     "k": k, "accept": str(acc), "privacy": privacy, "utterances": len(utt_ids), "covered": covered,
                     "cloud_calls": mean["calls"], "cloud_tokens": mean["verified"], "drafted": mean["drafted"],
                     "escalated_share": mean["calls"] / mean["blocks"] if mean["blocks"] else float("nan"),
                     "exact_match_cloud": mean["exact"], "similarity_cloud": mean["similar"],
                     "n_tokens": mean["tokens"]})
        if progress:
            progress(1)
    return pl.DataFrame(rows, strict=False)


def pareto(points: np.ndarray) -> np.ndarray:
    """The (cost, quality) points no other point beats on both, sorted by cost."""
    pts = points[np.lexsort((-points[:, 1], points[:, 0]))]
    keep, best = [], -np.inf
    for c, q in pts:
        if q > best:
            keep.append((c, q))
            best = q
    return np.array(keep)


def dominates(front: pl.DataFrame, a: str, b: str, cost: str = "cloud_calls",
              quality: str = "similarity_cloud", tol: float = 0.005) -> dict:
    """Whether gate family ``a`` dominates ``b``: at the cost of every point of b, a's frontier (linearly
    interpolated between its Pareto points, which mixing two thresholds achieves) reaches at least b's
    quality, within ``tol``. Also returns the mean and largest quality gain over b's points."""
    pa = front.filter(pl.col("gate") == a).select(cost, quality).to_numpy().astype(float)
    pb = front.filter(pl.col("gate") == b).select(cost, quality).to_numpy().astype(float)
    pa, pb = pa[~np.isnan(pa).any(axis=1)], pb[~np.isnan(pb).any(axis=1)]
    if not len(pa) or not len(pb):
        return {"dominates": None, "not_matched": [], "mean_gain": float("nan"), "max_gain": float("nan")}
    pf = pareto(pa)
    gains, worse = [], []
    for c, q in pb:
        qa = float(np.interp(c, pf[:, 0], pf[:, 1], left=-np.inf)) if c >= pf[0, 0] else -np.inf
        gains.append(qa - q)
        if qa < q - tol:
            worse.append((float(c), float(q), qa))
    finite = [g for g in gains if np.isfinite(g)]
    return {"dominates": not worse, "not_matched": worse,
            "mean_gain": float(np.mean(finite)) if finite else float("nan"),
            "max_gain": float(np.max(finite)) if finite else float("nan")}
