"""The fleet section of a report: throughput against latency, the curve serving papers show.

`sectrace fleet --arrival-rate 0.05,0.1,0.2 --out fleet.parquet` writes one row per played caption with its
policy, network and arrival rate; a report reads those rows (``report --fleet FILE``) and summarises each
(policy, RTT, arrival rate) run with the fleet engine's own :func:`~sectrace.simulate.fleet.fleet_summary`, so
the report's numbers are the ones `fleet` printed, by the same definitions.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from ..errors import UserError
from ..simulate.fleet import FLEET_DEFINITIONS, fleet_summary
from .style import assign

#: The columns that tell one fleet run from another in `fleet --out` rows.
RUN_KEYS = ("policy", "rtt_s", "arrival_rate")
#: What a fleet row must have for the section (the rest of `fleet --out` is provenance and configuration).
NEEDED = ("policy", "rtt_s", "arrival_rate", "latency_s", "response_s", "queue_s", "finish_s", "arrival_s", "device")
#: The summary columns the section shows, in order.
SHOWN = ("arrival_rate", "captions_per_s", "cloud_tokens_per_s", "response_p50_s", "response_p95_s",
         "response_p99_s", "queue_mean_s", "latency_mean_s", "mean_acceptance_length")


def read_fleet(path) -> pl.DataFrame:
    """`fleet --out` rows (Parquet or CSV), checked for the columns the section reads."""
    from .inputs import read_results

    rows = read_results(path)
    missing = [c for c in NEEDED if c not in rows.columns]
    if missing:
        raise UserError(f"{path} is not `sectrace fleet --out` output (no {', '.join(missing)} column); write it "
                        "with `sectrace fleet --arrival-rate 0.05,0.1,0.2 --out FILE`")
    return rows


def fleet_curves(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (policy, RTT, arrival rate) run: its fleet summary. Back-to-back runs (no arrival rate) last."""
    out = []
    for key, g in rows.group_by(list(RUN_KEYS), maintain_order=True):
        out.append({**dict(zip(RUN_KEYS, key)), **fleet_summary(g)})
    curves = pl.DataFrame(out)
    return curves.sort(["policy", "rtt_s", pl.col("arrival_rate").is_null(), "arrival_rate"], maintain_order=True)


def figure(curves: pl.DataFrame, title: str):
    """Response time p50/p95/p99 against throughput, one colour per (policy, RTT), one panel."""
    poisson = curves.filter(pl.col("arrival_rate").is_not_null())
    runs = poisson.select("policy", "rtt_s").unique(maintain_order=True)
    styles = assign([f"{p} · RTT {1000 * r:g} ms" for p, r in runs.iter_rows()])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (pol, rtt), g in poisson.group_by(["policy", "rtt_s"], maintain_order=True):
        name = f"{pol} · RTT {1000 * rtt:g} ms"
        st = styles[name]
        for q, dash in (("50", "-"), ("95", "--"), ("99", ":")):
            ax.plot(g["captions_per_s"], g[f"response_p{q}_s"], dash, color=st.colour, marker="o", ms=3,
                    label=f"{st.number}: {name[:60]}" if q == "50" else None)
    ax.set_xlabel("throughput (captions/s, finished within the window)")
    ax.set_ylabel("response time (s): p50 solid, p95 dashed, p99 dotted")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def caption(curves: pl.DataFrame) -> str:
    n = curves.filter(pl.col("arrival_rate").is_not_null()).height
    return (f"Each point is one fleet run at a Poisson arrival rate ({n} runs): its throughput and the 50th, 95th "
            f"and 99th percentiles of response time ({FLEET_DEFINITIONS['response_p50_s']}). Where a curve bends "
            "up, the cloud servers' queue grows faster than the offered load. Back-to-back runs (no arrival rate) "
            "are in the table only.")


__all__ = ["SHOWN", "caption", "figure", "fleet_curves", "read_fleet"]
