"""Re-price a committed `sectrace validate` run with the simulator as it is now, without running the models.

Why: a change to how the simulator prices a schedule should be checked against live runs already measured.
This reads the run's rows (`val.parquet`) and facts (`val.json`: the costs fitted to that run's calibration,
the network), replays each live run's policy on the bundled trace, prices it with those same costs and the
framing bytes the run measured, and prints per policy the mean signed error and median |error| of the
recorded predictions and of today's, for total latency and for TTFT. With the simulator unchanged the two columns are equal (a check of this
script); after a change they show what it does to the measured error.

    python scripts/reprice_validation.py docs/validation/2026-12-04
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from sectrace.gates import parse_policy
from sectrace.network import Network
from sectrace.protocol import cloud_only, drafter_only
from sectrace.simulate import CostModel, Replayer
from sectrace.simulate.timing import cost_vector, latency
from sectrace.trace import load_trace, sample_trace_path


def reprice(folder: Path, trace=None) -> pl.DataFrame:
    facts = json.loads((folder / "val.json").read_text())
    rows = pl.read_parquet(folder / "val.parquet").filter(pl.col("caption_match"))
    fields = {k: v for k, v in facts["cost_model"].items() if k in CostModel.__dataclass_fields__}
    if fields.get("verify_table"):
        fields["verify_table"] = tuple(fields["verify_table"])
    cost = CostModel(**fields)
    tr = load_trace(trace or sample_trace_path())
    rp, max_new = Replayer(tr), int(tr.manifest["decoding"]["max_new_tokens"])
    reps = {}
    for label in rows["policy"].unique(maintain_order=True).to_list():
        pol = {"edge-only": drafter_only(max_new), "cloud-only": cloud_only(max_new)}.get(label) \
            or parse_policy(label, max_new)
        reps[label] = rp.replay(pol)
    now, now_ttft = [], []
    for r in rows.iter_rows(named=True):
        rep = reps[r["policy"]]
        i = rep.utt_ids.index(r["utt_id"])
        theta = cost_vector(cost, Network(rtt_s=r["rtt_s"], up_Bps=facts["uplink_Bps"], down_Bps=facts["downlink_Bps"],
                                          overhead_bytes=r["framing_bytes"]))
        now.append(float(latency(rep.total[i:i + 1], theta)[0]))
        now_ttft.append(float(latency(rep.first[i:i + 1], theta)[0]))
    err = {"recorded": pl.col("predicted_latency_s") / pl.col("latency_s") - 1,
           "now": pl.col("now") / pl.col("latency_s") - 1,
           "ttft_recorded": pl.col("predicted_ttft_s") / pl.col("ttft_s") - 1,
           "ttft_now": pl.col("now_ttft") / pl.col("ttft_s") - 1}
    return (rows.with_columns(pl.Series("now", now), pl.Series("now_ttft", now_ttft))
            .group_by("policy", maintain_order=True)
            .agg(pl.len().alias("runs"), *(e.mean().alias(f"bias_{n}") for n, e in err.items()),
                 *(e.abs().median().alias(f"median_ape_{n}") for n, e in err.items())))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with pl.Config(tbl_rows=50, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=240):
        print(reprice(Path(sys.argv[1])))
