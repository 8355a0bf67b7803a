"""`sectrace gates ...`: list the gates, train learned ones, measure signals (RQ1) and gate frontiers."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output, write_table
from ._common import (
    FORCE_OPTION,
    PRIVACY_CHOICES,
    PRIVACY_HELP,
    adaptive_threshold,
    block_size,
    info,
    load_trace_or_sample,
    progress_bar,
    require_extra,
    split_list,
    step,
    to_json,
    trace_option,
    verbosity_options,
)


def _table(df, cols):
    """A plain aligned text table of ``cols`` (name, format) from a polars frame."""
    def fmt(v, f):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return format(v, f) if f else str(v)

    rows = [[fmt(r[c], f) for c, f in cols] for r in df.iter_rows(named=True)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, (c, _) in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, ((c, _), w) in enumerate(zip(cols, widths)))]
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


@click.group("gates")
def gates():
    """Gates: which drafted blocks go to the cloud. List, train, evaluate (RQ1) and trace frontiers."""


@gates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the gates as JSON: name, default threshold, meaning.")
@verbosity_options
def gates_list(as_json):
    """The gates `--gate` understands.

    \b
    Examples:
      sectrace gates list
      sectrace gates list --json
    """
    from ..gates.spec import GATES, SPECIAL, gate_help

    if as_json:
        click.echo(to_json([{"name": name, "default": default, "help": text}
                            for name, (_, default, text) in GATES.items()]
                           + [{"name": name, "default": None, "help": text} for name, text in SPECIAL.items()]))
        return
    for part in gate_help().split("; "):
        click.echo(part)


@gates.command("train")
@trace_option("The trace to train on (default: the bundled sample trace).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the gate (JSON).")
@click.option("--model", type=click.Choice(["logreg", "gbt"]), default="gbt", show_default=True,
              help="Logistic regression or gradient-boosted trees.")
@click.option("--label", type=click.Choice(["reject", "impact"]), default="reject", show_default=True,
              help="reject: the verifier ranks the token worse than R; impact: rejected and the token or its "
                   "correction is an emotion word.")
@click.option("--rank", default=1, show_default=True, help="R: a token is rejected when its verifier rank > R.")
@click.option("--mode", default="audio", show_default=True, help="Which verifier judges: audio or blind.")
@click.option("--features", multiple=True,
              help="Feature subset, comma-separated or repeated (default: all the trace has).")
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds, grouped by utterance.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the cross-validation and what was written as JSON.")
@FORCE_OPTION
@verbosity_options
def gates_train(trace_path, out, model, label, rank, mode, features, folds, seed, as_json, force):
    """Train a learned gate on a trace's trie nodes (drafter-side features, verifier labels).

    Reports cross-validated ROC-AUC and PR-AUC (folds grouped by utterance) and writes a
    JSON gate (numbers only: loading it runs no code) that records its features, label,
    calibration and the trace it was trained on. Use it as --gate learned:OUT:0.5.

    \b
    Examples:
      sectrace gates train --out gate.json
      sectrace gates train --trace my-trace --model logreg --label impact --out impact.json
      sectrace simulate --gate learned:gate.json:0.5
    """
    require_extra("gates train", "gates")
    from ..gates.learned import save_gate, train_gate

    check_output(out, force, suffixes=(".json",))
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    feats = split_list(features, "feature", str) if features else None
    if feats:
        from ..gates.features import available_features

        bad = [f for f in feats if f not in available_features(tr)]
        if bad:
            raise UserError(f"unknown feature {bad[0]!r} for this trace; available: "
                            f"{', '.join(available_features(tr))}")
    if folds < 2:
        raise UserError("--folds must be at least 2")
    with progress_bar(total=folds + 1, desc=f"training {model}", unit="fit", leave=False) as bar, \
            step(f"training and cross-validating ({folds} folds)"):
        doc = train_gate(tr, model, label, mode, rank, feats, folds, seed, progress=bar.update)
    save_gate(doc, out)
    cv = doc["cv"]
    from ..analysis.evaluate import rq1_note

    if as_json:
        click.echo(to_json({"out": str(out), "trace": str(tr.path), "synthetic": tr.synthetic, "model": model,
                            "label": label, "rank": rank, "mode": mode, "features": doc["features"],
                            "trained_on": doc["trained_on"], "cv": cv, "note": rq1_note(tr)}))
        return
    click.echo(f"trained {model} gate on {doc['trained_on']['tokens']} drafted tokens of "
               f"{doc['trained_on']['utterances']} utterances ({tr.name}{', SYNTHETIC' if tr.synthetic else ''})")
    click.echo(f"label {label} (rank > {rank}, {mode} verifier): base rate {cv['base_rate']:.3f}")
    click.echo(f"cross-validated ({cv['folds']} folds by utterance): ROC-AUC {cv['roc_auc']:.3f}, "
               f"PR-AUC {cv['pr_auc']:.3f}, Brier {cv['brier']:.3f}")
    click.echo(f"features: {', '.join(doc['features'])}")
    click.echo(rq1_note(tr))
    click.echo(f"wrote {out}; use it as --gate learned:{out}:0.5")


@gates.command("eval")
@trace_option("The trace whose drafted, judged nodes are scored (default: the bundled sample trace).")
@click.option("--gate", "learned", multiple=True, help="A learned gate file to score alongside the signals.")
@click.option("--rank", default=1, show_default=True, help="A token is rejected when its verifier rank > R.")
@click.option("--mode", default="audio", show_default=True, help="Which verifier judges: audio or blind.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the table (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
@FORCE_OPTION
@verbosity_options
def gates_eval(trace_path, learned, rank, mode, out, as_json, force):
    """RQ1: how well each drafter-side signal predicts the verifier's rejection (ROC-AUC, PR-AUC).

    One row per signal and label (reject; impact = rejected and an emotion word involved),
    over the trace's drafted, judged trie nodes, each with a 95 % bootstrap interval that
    resamples utterances (a caption's tokens are not independent draws). A learned gate
    scored on the trace it was trained on is in-sample: its honest figure is the
    cross-validated one `gates train` prints.

    \b
    Examples:
      sectrace gates eval
      sectrace gates eval --trace my-trace --gate gate.json --rank 20 --out signals.csv
    """
    require_extra("gates eval", "gates")
    from ..analysis.evaluate import best_note, best_signals, rq1_note, signal_table
    from ..gates.learned import load_learned

    if out:
        check_output(out, force)
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    gates_ = []
    for path in (split_list(learned, "gate file", str) if learned else []):
        path = path.split(":", 1)[1] if path.startswith("learned:") else path
        path = path.rsplit(":", 1)[0] if path.rsplit(":", 1)[-1].replace(".", "").isdigit() else path
        g = load_learned(path, 0.5, tr)
        same = g.doc["trained_on"].get("trace") == str(tr.path)
        gates_.append((f"learned:{Path(path).name}" + (" (in-sample)" if same else ""), g))
    with step("scoring the signals (bootstrap intervals)"):
        df = signal_table(tr, mode, rank, gates_)
    with step("comparing each signal with the best (paired bootstrap)"):
        best = best_signals(tr, mode, rank, df)
    if out:
        write_table(df, out)
    if as_json:
        from ..simulate.metrics import BOOTSTRAP

        click.echo(to_json({"trace": str(tr.path), "synthetic": tr.synthetic, "mode": mode, "rank": rank,
                            "bootstrap": {**BOOTSTRAP, "method": "percentile bootstrap over utterances (clips): "
                                          "each resample draws whole captions with all their tokens"},
                            "learned_cv": {name: g.doc["cv"] for name, g in gates_},
                            "signals": df.to_dicts(), "best": best, "out": str(out) if out else None}))
        return
    click.echo(f"trace: {tr.path} ({'SYNTHETIC' if tr.synthetic else 'measured'}); rejected = {mode} verifier "
               f"rank > {rank}")
    shown = df.with_columns(_interval(df, "roc_auc").alias("roc 95% CI"), _interval(df, "pr_auc").alias("pr 95% CI"))
    click.echo(_table(shown, [("signal", ""), ("label", ""), ("roc_auc", ".3f"), ("roc 95% CI", ""),
                              ("pr_auc", ".3f"), ("pr 95% CI", ""), ("base_rate", ".3f"), ("tokens", ""),
                              ("utterances", "")]))
    click.echo("95% CI: bootstrap over utterances (2,000 resamples of whole captions, not of tokens)")
    for line in best_note(best):
        click.echo(line)
    click.echo(rq1_note(tr))
    for name, g in gates_:
        cv = g.doc["cv"]
        click.echo(f"{name}: cross-validated when trained: ROC-AUC {cv['roc_auc']:.3f}, PR-AUC {cv['pr_auc']:.3f}")
    if out:
        click.echo(f"wrote {out}")


def _interval(df, col):
    """``[0.74, 0.83]`` per row from a table's ``col_lo``/``col_hi`` columns (– where undefined)."""
    import polars as pl

    def one(lo, hi):
        ok = lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi))
        return f"[{lo:.2f}, {hi:.2f}]" if ok else "–"

    return pl.Series([one(lo, hi) for lo, hi in zip(df[f"{col}_lo"].to_list(), df[f"{col}_hi"].to_list())])


@gates.command("frontier")
@trace_option()
@click.option("--gate", "families", multiple=True,
              default=["entropy", "logprob", "margin", "stability", "audio", "mc-dropout", "random"],
              show_default=True,
              help="Gate families swept over their threshold range (quantiles of the signal), or full specs "
                   "(content:emotion, oracle, any(...)); learned:FILE sweeps the block probability. Several: "
                   "repeat or separate with commas.")
@click.option("--k", "ks", multiple=True, default=["3"], show_default=True,
              help="Block size; several trace one frontier each: --k 3,5.")
@click.option("--accept", default="top1", show_default=True, help="Acceptance rule: top1, rank:R or prob:P.")
@click.option("--privacy", type=click.Choice(PRIVACY_CHOICES), default="features", show_default=True,
              help=PRIVACY_HELP)
@click.option("--adaptive", "adaptives", multiple=True, default=["off"], show_default=True,
              help="Adaptive k: stop a block after a token the drafter gives less than this probability; several "
                   "trace one frontier each: --adaptive off,0.3.")
@click.option("--extend/--no-extend", default=None,
              help="Generate states the trie lacks from a synthetic trace's own model (default: on for "
                   "synthetic traces); off: such utterances are coverage misses.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the frontier (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the frontier and the dominance checks as JSON instead.")
@FORCE_OPTION
@verbosity_options
def gates_frontier(trace_path, families, ks, accept, privacy, adaptives, extend, out, as_json, force):
    """RQ1 end to end: every gate over its threshold range, cloud calls and tokens vs agreement with cloud-only.

    Always includes always, never and the oracle (the upper bound). `dominance` lines say
    whether each family reaches, at every cost an entropy point pays, at least its agreement.
    Several --k (or --adaptive) values trace one frontier each; every row carries its k and adaptive.

    \b
    Examples:
      sectrace gates frontier
      sectrace gates frontier --trace my-trace --gate entropy,margin --k 3,5 --out frontier.parquet
    """
    import polars as pl

    from ..analysis.evaluate import SIGNALS, default_thresholds, dominates, frontier
    from ..gates.features import available_features
    from ..gates.spec import split_top

    if out:
        check_output(out, force)
    runs = [(k, a) for k in split_list(ks, "block size", block_size)
            for a in split_list(adaptives, "adaptive threshold", adaptive_threshold)]
    with step("loading the trace"):
        tr = load_trace_or_sample(trace_path)
    if extend is None:
        extend = tr.synthetic and bool(tr.manifest.get("synthetic_model"))
    specs = []
    for fam in (f for text in families for f in split_top(text)):
        if fam.startswith("learned:"):
            path = fam.split(":", 1)[1]
            specs += [f"learned:{path}:{t}" for t in default_thresholds(tr, "learned")]
        elif fam in SIGNALS and ":" not in fam and fam != "content:emotion":
            if SIGNALS[fam][0] not in available_features(tr):
                info(f"note: skipping {fam}: the trace has no {SIGNALS[fam][0]} signal")
                continue
            specs += [f"{fam}:{t}" for t in default_thresholds(tr, fam)]
        elif fam == "random":
            specs += [f"random:{t}" for t in default_thresholds(tr, "random")]
        else:
            specs.append(fam)
    specs += ["always", "never", "oracle"]
    fronts = []
    with progress_bar(total=len(specs) * len(runs), desc="frontier", unit="gate", leave=False) as bar:
        for k, adaptive in runs:
            with step(f"frontier at k={k}{f', adaptive {adaptive}' if adaptive else ''} ({len(specs)} gates)"):
                df = frontier(tr, specs, k=k, accept=accept, privacy=privacy, extend=extend, progress=bar.update,
                              adaptive=adaptive)
            fronts.append(df.with_columns(pl.lit(k).alias("k"), pl.lit(adaptive, dtype=pl.Float64).alias("adaptive"))
                          .select("k", "adaptive", pl.exclude("k", "adaptive")))
    doms = []
    for (k, adaptive), df in zip(runs, fronts):
        for fam in sorted(set(df["gate"].to_list()) - {"entropy", "always", "never", "oracle"}):
            d = dominates(df, fam, "entropy")
            if d["dominates"] is not None:
                doms.append({"k": k, "adaptive": adaptive, "gate": fam, "over": "entropy", **d})
    df = pl.concat(fronts)
    if out:
        write_table(df, out)
    what = "states outside the trie generated from the synthetic model" if extend else "replay only"
    if as_json:
        click.echo(to_json({"trace": str(tr.path), "synthetic": tr.synthetic, "runs": [list(r) for r in runs],
                            "accept": accept, "privacy": privacy, "extend": bool(extend), "coverage": what,
                            "frontier": df.to_dicts(), "dominance": doms, "out": str(out) if out else None}))
        return
    for n, ((k, adaptive), one) in enumerate(zip(runs, fronts)):
        if n:
            click.echo("")
        click.echo(f"trace: {tr.path} ({'SYNTHETIC' if tr.synthetic else 'measured'}); k={k}, accept {accept}, "
                   f"{privacy}{', adaptive ' + str(adaptive) if adaptive else ''}; {what}")
        click.echo(_table(one, [("spec", ""), ("covered", ""), ("cloud_calls", ".2f"), ("cloud_tokens", ".1f"),
                                ("escalated_share", ".2f"), ("exact_match_cloud", ".2f"), ("similarity_cloud", ".3f")]))
        click.echo("cloud_calls / cloud_tokens: per caption (tokens sent for verification); exact_match / "
                   "similarity: agreement with the cloud-only caption")
        for d in (d for d in doms if (d["k"], d["adaptive"]) == (k, adaptive)):
            click.echo(f"dominance: {d['gate']} {'dominates' if d['dominates'] else 'does NOT dominate'} entropy "
                       f"(similarity at entropy's costs: mean {d['mean_gain']:+.3f}, best {d['max_gain']:+.3f}"
                       + (f"; {len(d['not_matched'])} entropy points beaten by more than 0.005"
                          if d["not_matched"] else "")
                       + ")")
    if out:
        click.echo(f"wrote {out}")
