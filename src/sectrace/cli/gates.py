"""`sectrace gates ...`: list the gates, train learned ones, measure signals (RQ1) and gate frontiers."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..errors import UserError
from ..fsio import check_output, write_table
from ._common import FORCE_OPTION, load_trace_or_sample, require_extra, to_json


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
def gates_list():
    """The gates `--gate` understands.

    \b
    Examples:
      sectrace gates list
    """
    from ..gates.spec import gate_help

    for part in gate_help().split("; "):
        click.echo(part)


@gates.command("train")
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the gate (JSON).")
@click.option("--model", type=click.Choice(["logreg", "gbt"]), default="gbt", show_default=True,
              help="Logistic regression or gradient-boosted trees.")
@click.option("--label", type=click.Choice(["reject", "impact"]), default="reject", show_default=True,
              help="reject: the verifier ranks the token worse than R; impact: rejected and the token or its "
                   "correction is an emotion word.")
@click.option("--rank", default=1, show_default=True, help="R: a token is rejected when its verifier rank > R.")
@click.option("--mode", default="audio", show_default=True, help="Which verifier judges: audio or blind.")
@click.option("--features", default=None, help="Comma-separated feature subset (default: all the trace has).")
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds, grouped by utterance.")
@click.option("--seed", default=0, show_default=True)
@FORCE_OPTION
def gates_train(trace_path, out, model, label, rank, mode, features, folds, seed, force):
    """Train a learned gate on TRACE's trie nodes (drafter-side features, verifier labels).

    Reports cross-validated ROC-AUC and PR-AUC (folds grouped by utterance) and writes a
    JSON gate (numbers only: loading it runs no code) that records its features, label,
    calibration and the trace it was trained on. Use it as --gate learned:OUT:0.5.

    \b
    Examples:
      sectrace gates train --out gate.json
      sectrace gates train my-trace --model logreg --label impact --out impact.json
      sectrace simulate --gate learned:gate.json:0.5
    """
    require_extra("gates train", "gates")
    from tqdm import tqdm

    from ..gates.learned import save_gate, train_gate

    check_output(out, force, suffixes=(".json",))
    tr = load_trace_or_sample(trace_path)
    feats = [f.strip() for f in features.split(",") if f.strip()] if features else None
    if feats:
        from ..gates.features import available_features

        bad = [f for f in feats if f not in available_features(tr)]
        if bad:
            raise UserError(f"unknown feature {bad[0]!r} for this trace; available: "
                            f"{', '.join(available_features(tr))}")
    if folds < 2:
        raise UserError("--folds must be at least 2")
    with tqdm(total=folds + 1, desc=f"training {model}", unit="fit", disable=None, leave=False) as bar:
        doc = train_gate(tr, model, label, mode, rank, feats, folds, seed, progress=bar.update)
    save_gate(doc, out)
    cv = doc["cv"]
    click.echo(f"trained {model} gate on {doc['trained_on']['tokens']} drafted tokens of "
               f"{doc['trained_on']['utterances']} utterances ({tr.name}{', SYNTHETIC' if tr.synthetic else ''})")
    click.echo(f"label {label} (rank > {rank}, {mode} verifier): base rate {cv['base_rate']:.3f}")
    click.echo(f"cross-validated ({cv['folds']} folds by utterance): ROC-AUC {cv['roc_auc']:.3f}, "
               f"PR-AUC {cv['pr_auc']:.3f}, Brier {cv['brier']:.3f}")
    click.echo(f"features: {', '.join(doc['features'])}")
    from ..analysis.evaluate import rq1_note

    click.echo(rq1_note(tr))
    click.echo(f"wrote {out}; use it as --gate learned:{out}:0.5")


@gates.command("eval")
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@click.option("--gate", "learned", multiple=True, help="A learned gate file to score alongside the signals.")
@click.option("--rank", default=1, show_default=True, help="A token is rejected when its verifier rank > R.")
@click.option("--mode", default="audio", show_default=True, help="Which verifier judges: audio or blind.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the table (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
@FORCE_OPTION
def gates_eval(trace_path, learned, rank, mode, out, as_json, force):
    """RQ1: how well each drafter-side signal predicts the verifier's rejection (ROC-AUC, PR-AUC).

    One row per signal and label (reject; impact = rejected and an emotion word involved),
    over TRACE's drafted, judged trie nodes, each with a 95 % bootstrap interval that
    resamples utterances (a caption's tokens are not independent draws). A learned gate
    scored on the trace it was trained on is in-sample: its honest figure is the
    cross-validated one `gates train` prints.

    \b
    Examples:
      sectrace gates eval
      sectrace gates eval my-trace --gate gate.json --rank 20 --out signals.csv
    """
    require_extra("gates eval", "gates")
    from ..analysis.evaluate import rq1_note, signal_table
    from ..gates.learned import load_learned

    if out:
        check_output(out, force)
    tr = load_trace_or_sample(trace_path)
    gates_ = []
    for path in learned:
        path = path.split(":", 1)[1] if path.startswith("learned:") else path
        path = path.rsplit(":", 1)[0] if path.rsplit(":", 1)[-1].replace(".", "").isdigit() else path
        g = load_learned(path, 0.5, tr)
        same = g.doc["trained_on"].get("trace") == str(tr.path)
        gates_.append((f"learned:{Path(path).name}" + (" (in-sample)" if same else ""), g))
    df = signal_table(tr, mode, rank, gates_)
    if out:
        write_table(df, out)
    if as_json:
        from ..simulate.metrics import BOOTSTRAP

        click.echo(to_json({"trace": str(tr.path), "synthetic": tr.synthetic, "mode": mode, "rank": rank,
                            "bootstrap": {**BOOTSTRAP, "method": "percentile bootstrap over utterances (clips): "
                                          "each resample draws whole captions with all their tokens"},
                            "learned_cv": {name: g.doc["cv"] for name, g in gates_},
                            "signals": df.to_dicts(), "out": str(out) if out else None}))
        return
    click.echo(f"trace: {tr.path} ({'SYNTHETIC' if tr.synthetic else 'measured'}); rejected = {mode} verifier "
               f"rank > {rank}")
    shown = df.with_columns(_interval(df, "roc_auc").alias("roc 95% CI"), _interval(df, "pr_auc").alias("pr 95% CI"))
    click.echo(_table(shown, [("signal", ""), ("label", ""), ("roc_auc", ".3f"), ("roc 95% CI", ""),
                              ("pr_auc", ".3f"), ("pr 95% CI", ""), ("base_rate", ".3f"), ("tokens", ""),
                              ("utterances", "")]))
    click.echo("95% CI: bootstrap over utterances (2,000 resamples of whole captions, not of tokens)")
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
@click.argument("trace_path", metavar="[TRACE]", required=False, type=click.Path(path_type=Path))
@click.option("--gate", "families", multiple=True,
              default=["entropy", "logprob", "margin", "stability", "audio", "mc-dropout", "random"],
              show_default=True,
              help="Gate families swept over their threshold range (quantiles of the signal), or full specs "
                   "(content:emotion, oracle, any(...)); learned:FILE sweeps the block probability.")
@click.option("--k", default=3, show_default=True, help="Block size.")
@click.option("--accept", default="top1", show_default=True, help="Acceptance rule: top1, rank:R or prob:P.")
@click.option("--privacy", type=click.Choice(["token-only", "features", "raw"]), default="features",
              show_default=True)
@click.option("--adaptive", default=None, type=float, help="Adaptive k threshold (off by default).")
@click.option("--extend/--no-extend", default=None,
              help="Generate states the trie lacks from a synthetic trace's own model (default: on for "
                   "synthetic traces); off: such utterances are coverage misses.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the frontier (.parquet or .csv).")
@FORCE_OPTION
def gates_frontier(trace_path, families, k, accept, privacy, adaptive, extend, out, force):
    """RQ1 end to end: every gate over its threshold range, cloud calls and tokens vs agreement with cloud-only.

    Always includes always, never and the oracle (the upper bound). `dominance` lines say
    whether each family reaches, at every cost an entropy point pays, at least its agreement.

    \b
    Examples:
      sectrace gates frontier
      sectrace gates frontier my-trace --gate entropy --gate margin --k 5 --out frontier.parquet
    """
    from tqdm import tqdm

    from ..analysis.evaluate import SIGNALS, default_thresholds, dominates, frontier
    from ..gates.features import available_features

    if out:
        check_output(out, force)
    tr = load_trace_or_sample(trace_path)
    if extend is None:
        extend = tr.synthetic and bool(tr.manifest.get("synthetic_model"))
    specs = []
    for fam in families:
        fam = fam.strip()
        if fam.startswith("learned:"):
            path = fam.split(":", 1)[1]
            specs += [f"learned:{path}:{t}" for t in default_thresholds(tr, "learned")]
        elif fam in SIGNALS and ":" not in fam and fam != "content:emotion":
            if SIGNALS[fam][0] not in available_features(tr):
                click.echo(f"note: skipping {fam}: the trace has no {SIGNALS[fam][0]} signal", err=True)
                continue
            specs += [f"{fam}:{t}" for t in default_thresholds(tr, fam)]
        elif fam == "random":
            specs += [f"random:{t}" for t in default_thresholds(tr, "random")]
        else:
            specs.append(fam)
    specs += ["always", "never", "oracle"]
    with tqdm(total=len(specs), desc="frontier", unit="gate", disable=None, leave=False) as bar:
        df = frontier(tr, specs, k=k, accept=accept, privacy=privacy, extend=extend, progress=bar.update,
                      adaptive=adaptive)
    click.echo(f"trace: {tr.path} ({'SYNTHETIC' if tr.synthetic else 'measured'}); k={k}, accept {accept}, "
               f"{privacy}{', adaptive ' + str(adaptive) if adaptive else ''}; "
               f"{'states outside the trie generated from the synthetic model' if extend else 'replay only'}")
    click.echo(_table(df, [("spec", ""), ("covered", ""), ("cloud_calls", ".2f"), ("cloud_tokens", ".1f"),
                           ("escalated_share", ".2f"), ("exact_match_cloud", ".2f"), ("similarity_cloud", ".3f")]))
    click.echo("cloud_calls / cloud_tokens: per caption (tokens sent for verification); exact_match / similarity: "
               "agreement with the cloud-only caption")
    for fam in sorted(set(df["gate"].to_list()) - {"entropy", "always", "never", "oracle"}):
        d = dominates(df, fam, "entropy")
        if d["dominates"] is None:
            continue
        click.echo(f"dominance: {fam} {'dominates' if d['dominates'] else 'does NOT dominate'} entropy "
                   f"(similarity at entropy's costs: mean {d['mean_gain']:+.3f}, best {d['max_gain']:+.3f}"
                   + (f"; {len(d['not_matched'])} entropy points beaten by more than 0.005" if d["not_matched"] else "")
                   + ")")
    if out:
        write_table(df, out)
        click.echo(f"wrote {out}")
