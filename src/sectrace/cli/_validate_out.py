"""What `sectrace validate` prints: the per-condition table, the targets with their intervals, the noise
floor, and which event type carries each policy's error."""

from __future__ import annotations

import click


def _pct(x, sign=False) -> str:
    if x is None or x != x:
        return "-"
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%"


def _ci(ci, sign=False) -> str:
    if not ci or ci[0] is None:
        return "[no CI]"
    return f"[{_pct(ci[0], sign)}, {_pct(ci[1], sign)}]"


def _s(x) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def print_summary(summary, facts) -> None:
    """One line per condition (RTT × policy), then the targets, the noise floor and calibration warnings."""
    click.echo(f"{'rtt':>6}  {'policy':<36} {'match':>7} {'live s':>7} {'sim s':>7} {'|err|':>6} "
               f"{'bias [95% CI]':>22} {'TTFT live':>9} {'TTFT sim':>8} {'|err|':>6} {'noise':>6}")
    for r in summary.iter_rows(named=True):
        click.echo(f"{1e3 * r['rtt_s']:>4.0f}ms  {r['policy'][:36]:<36} {r['captions_match']:>3}/{r['runs']:<3} "
                   f"{_s(r.get('latency_s')):>7} {_s(r.get('predicted_latency_s')):>7} "
                   f"{_pct(r.get('median_ape_latency')):>6} "
                   f"{_pct(r.get('bias_latency'), True) + ' ' + _ci(r.get('bias_latency_ci'), True):>22} "
                   f"{_s(r.get('ttft_s')):>9} {_s(r.get('predicted_ttft_s')):>8} {_pct(r.get('median_ape_ttft')):>6} "
                   f"{_pct(r.get('noise')):>6}")
    click.echo(f"live runs {facts['runs']} ({facts['repeats']} per utterance × policy × RTT; the errors are of their "
               f"median); captions equal to the replay: {facts['captions_match']}/{facts['runs']}")
    t = facts["targets"]
    for name, what in (("median_ape_latency", "median |error| on total latency"),
                       ("median_ape_ttft", "median |error| on TTFT")):
        x = t[name]
        # two decimals: 2.04 % must not read as 2.0 %
        shown = "-" if x["value"] is None else f"{100 * x['value']:.2f}%"
        click.echo(f"target {what} <= {_pct(x['target'])}: {shown} 95% CI {_ci(x['ci'])} "
                   f"({_verdict(x)}; bootstrap over cells)")
    b = t["abs_bias_latency"]
    worst = b["worst"]
    where = "" if worst is None else (f"; worst {_pct(worst['bias'], True)} {_ci(worst['ci'], True)} at "
                                      f"{1e3 * worst['rtt_s']:g}ms {worst['policy']}")
    click.echo(f"target every condition's |bias| <= {_pct(b['target'])}: {_verdict(b)}{where} (bias CI: bootstrap "
               "over utterances)")
    if facts.get("noise_repeats") is not None:
        click.echo(f"noise floor: a cell's repeats differ from their median by {_pct(facts['noise_repeats'])} "
                   f"(median over cells, 95% CI {_ci(facts['noise_repeats_ci'])}; at most "
                   f"{_pct(facts['noise_repeats_max'])})")
    else:
        click.echo("noise floor: not measured from repeats (--repeats 1)")
    if facts.get("noise_median_ad") is not None:
        click.echo(f"noise: identical edge-only runs differ from their mean by {_pct(facts['noise_median_ad'])} "
                   f"(median; at most {_pct(facts['noise_max_ad'])}); bias is the mean signed error per condition")
    else:  # said, never dropped: a missing line read as "no noise"
        click.echo("noise: not measured; " + (facts.get("noise_note") or "no edge-only run was repeated without "
                                                                          "a fallback"))
    for w in facts.get("calibration_warnings") or []:
        click.echo(f"warning: {w}")


def _verdict(x: dict) -> str:
    if x["value"] is None:
        return "not measured"
    if x["met"]:
        return "met, the whole CI too" if x["ci_within"] else "met, but the CI crosses it"
    return "not met"


def print_carriers(facts, path, top: int = 3) -> None:
    """Per policy: its whole error (simulated − live, over every aligned run) and the event types carrying most."""
    rows = facts.get("event_carriers") or []
    if not rows:
        click.echo("per event: no run's events aligned with the replay's (a fallback or a mismatched caption)")
        return
    click.echo(f"which event type carries the error (simulated - live, summed over runs; {path}; "
               f"{facts['events_aligned']}/{facts['runs']} runs aligned):")
    by: dict = {}
    for r in rows:
        by.setdefault(r["policy"], []).append(r)
    for policy, rs in by.items():
        err, lat, runs = rs[0]["error_s"], rs[0]["latency_s"], max(r["runs"] for r in rs)
        parts = ", ".join(f"{r['event']} {r['residual_s'] / runs:+.3f} s ({_pct(r['share_of_error'])})"
                          for r in rs[:top] if r["residual_s"])
        click.echo(f"  {policy[:48]}: {err / runs:+.3f} s per run ({_pct(err / lat, True)} of live); "
                   f"{parts or 'no residual'}")
