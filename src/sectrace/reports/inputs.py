"""Reading results files for reports and timelines: what a results file must hold, and its configurations.

Kept apart from the report builder so that commands which only read results (``timeline``) do not
import matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..errors import UserError

REQUIRED = ("policy", "utt_id", "covered", "latency_s", "ttft_s", "n_tokens", "escalations", "cloud_tokens",
            "bytes_up", "audio_bytes_up", "privacy")


def recorded_trace(res) -> Path | None:
    """The trace `simulate` recorded in its results (column trace_path), when there is exactly one and it exists."""
    if "trace_path" not in res.columns:
        return None
    paths = res["trace_path"].drop_nulls().unique().to_list()
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0])
    return None


def read_results(path: Path) -> pl.DataFrame:
    """`simulate --out` or `sweep --out` output, Parquet or CSV (by extension, as fsio writes them)."""
    if not path.exists():
        raise UserError(f"no results at {path}; write them with `sectrace simulate --out {path}` "
                        "or `sectrace sweep GRID --out {path}`")
    try:
        return pl.read_csv(path) if path.suffix.lower() == ".csv" else pl.read_parquet(path)
    except Exception:  # noqa: BLE001 - polars/pyarrow raise many kinds for a bad file
        kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
        raise UserError(f"{path} is not a readable {kind} file; give results written by `sectrace simulate --out` "
                        "or `sectrace sweep --out`") from None


#: What a `sweep` summary (one row per policy × configuration, no utterances) must hold to be reported.
SWEEP_REQUIRED = ("policy", "config", "rtt_s", "utterances", "covered", "latency_s", "ttft_s", "n_tokens",
                  "cloud_calls", "cloud_tokens", "bytes_up", "privacy")


def results_kind(df: pl.DataFrame) -> str:
    """``"simulate"`` for per-utterance rows (they have ``utt_id``), ``"sweep"`` for per-configuration summaries."""
    return "simulate" if "utt_id" in df.columns else "sweep"


def check_results(df: pl.DataFrame, path: str) -> str:
    """Refuse results a report cannot read, naming the first missing column; return their kind (results_kind)."""
    kind = results_kind(df)
    need = REQUIRED if kind == "simulate" else SWEEP_REQUIRED
    missing = [c for c in need if c not in df.columns]
    if missing:
        if kind == "sweep" and not any(c in df.columns for c in ("utterances", "config")):
            raise UserError(f"{path} lacks the column 'utt_id'; give per-utterance results written by "
                            "`sectrace simulate --out results.parquet` or a summary written by `sectrace sweep --out`")
        raise UserError(f"{path} lacks the column {missing[0]!r}; give per-utterance results written by "
                        "`sectrace simulate --out results.parquet`" if kind == "simulate" else
                        f"{path} looks like a sweep summary but lacks the column {missing[0]!r}; give a summary "
                        "written by `sectrace sweep GRID --out`")
    if df.height == 0:
        raise UserError(f"{path} has no rows; simulate at least one policy")
    if kind == "sweep" and df.select("policy", "config").is_duplicated().any():
        raise UserError(f"{path} holds the same (policy, config) twice (concatenated sweeps?); report one sweep "
                        "at a time")
    return kind


CONFIG_KEYS = ("rtt_s", "up_Bps", "down_Bps", "cost_source")


def normalise_configs(df: pl.DataFrame) -> pl.DataFrame:
    """Renumber ``config`` by what a configuration is (network and cost profile), in order of appearance.

    Results concatenated from several `simulate` runs each count configurations from 0, so the
    index alone would mix different networks.
    """
    keys = [k for k in CONFIG_KEYS if k in df.columns]
    if not keys or results_kind(df) == "sweep":  # a sweep numbers its own grid: one row per (policy, config)
        return df
    uniq = df.select(keys).unique(maintain_order=True).with_row_index("config")
    return df.drop("config", strict=False).join(uniq.with_columns(pl.col("config").cast(pl.Int64)), on=keys,
                                                how="left", nulls_equal=True, maintain_order="left")
