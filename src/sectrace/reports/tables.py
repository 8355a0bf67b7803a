"""Per-policy tables built from results, including tables shaped like the study's Tables 1 and 2.

How a report shows a column (its header and number format) is declared once, in :data:`COLUMNS`;
a column new to the results is shown with its own name and a format guessed from its name
(``*_s`` seconds, ``*bytes*`` bytes, ``*share*``/``*rate*`` percent), so new result columns
(confidence bounds, provenance) need one line here at most.

Caption scores are on one scale everywhere in a report: ×100, as captioning papers print them
(pycocoevalcap returns BLEU, METEOR, ROUGE-L in 0–1 and CIDEr-D in 0–10; ×100 makes CIDEr-D 0–1000).
Columns so scaled end in ``_x100``; ``quality_per_policy.csv`` keeps pycocoevalcap's raw values.
"""

from __future__ import annotations

import math

import polars as pl

#: The COCO caption metrics of reports.quality, raw from pycocoevalcap.
COCO_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d")

#: column → (header, format). Formats: text, int, s (seconds), ms (from seconds), bytes, pct (a 0–1 share),
#: score (×100 caption scores), num (3 significant digits), bool.
COLUMNS = {
    "number": ("#", "int"), "policy": ("policy", "text"), "config": ("config", "int"), "rtt_s": ("RTT", "ms"),
    "network": ("network", "text"), "edge_speedup": ("edge ×", "num"), "cloud_speedup": ("cloud ×", "num"),
    "quality": ("quality", "num"), "latency_s": ("mean latency (s)", "s"), "latency_p50_s": ("p50 (s)", "s"),
    "latency_p90_s": ("p90 (s)", "s"), "latency_p95_s": ("p95 (s)", "s"), "ttft_s": ("TTFT (s)", "s"),
    "cloud_tokens": ("cloud tokens", "num"), "cloud_calls": ("cloud calls", "num"), "bytes_up": ("bytes up", "bytes"),
    "audio_bytes_up": ("audio bytes up", "bytes"), "covered": ("covered", "int"), "utterances": ("utterances", "int"),
    "on_front": ("on front", "bool"), "privacy": ("privacy", "text"), "oet_s": ("OET (s)", "s"),
    "otps": ("OTPS (tok/s)", "num"), "n_tokens": ("tokens per caption", "num"),
    "acceptance_rate": ("acceptance rate", "pct"), "mean_accepted_length": ("mean accepted length", "num"),
    "system_efficiency": ("system efficiency", "pct"),
    "agree_cloud_similarity": ("similar to cloud-only", "pct"), "agree_cloud_exact": ("= cloud-only", "pct"),
    "cider_d_x100": ("CIDEr-D ×100", "score"), "contact_share": ("contacts cloud", "pct"),
    "cloud_seen_tokens": ("tokens cloud sees", "num"), "caption_share_seen": ("caption seen", "pct"),
    "emotion_words_exposed": ("emotion words seen", "pct"), "emotion consistency": ("emotion consistency", "pct"),
    "emotion_consistency": ("emotion consistency", "pct"), "embedding similarity": ("embedding similarity", "pct"),
    **{m: (m, "score") for m in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")},
}


def column_format(col: str, dtype=None) -> tuple[str, str]:
    """(header, format) of a column: declared in COLUMNS, else guessed from its name (and polars ``dtype``)."""
    if col in COLUMNS:
        return COLUMNS[col]
    base = col.split("|")[0]
    if base in COLUMNS:
        return COLUMNS[base][0], COLUMNS[base][1]
    if dtype is not None and (dtype == pl.Utf8 or dtype == pl.Categorical):
        return col, "text"
    if dtype == pl.Boolean:
        return col, "bool"
    col = col.replace("_", " ") if dtype is not None else col
    if "bytes" in col:
        return col, "bytes"
    if "share" in col or col.endswith("_rate") or "exposed" in col:
        return col, "pct"
    if col.endswith("_x100"):
        return col, "score"
    if col.endswith("_s"):
        return col, "s"
    return col, "num"


def fmt(v, kind: str = "num") -> str:
    """One cell as text (not escaped: the templates escape)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool) or kind == "bool":
        return "yes" if v else "no"
    if kind == "text" or isinstance(v, str):
        return str(v)
    if kind == "int":
        return f"{int(v)}" if float(v).is_integer() else f"{v:.3g}"
    if kind == "bytes":
        for unit, size in (("MB", 1e6), ("kB", 1e3)):
            if abs(v) >= size:
                return f"{v / size:.1f} {unit}"
        return f"{v:.0f} B"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    if kind == "score":
        return f"{v:.2f}"
    if kind == "ms":
        return f"{1000 * v:g} ms"
    if kind == "s":
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"


def quality_x100(per_policy: pl.DataFrame) -> pl.DataFrame:
    """Per-policy caption scores on the report's one scale: COCO metrics ×100 as ``<metric>_x100``."""
    have = [m for m in COCO_METRICS if m in per_policy.columns]
    return per_policy.with_columns((100 * pl.col(m)).alias(f"{m}_x100") for m in have).drop(have)


#: The study's published figures (seed report, Tables 1 and 2: MER2024 subset, 332 files), for side-by-side rows.
STUDY = {
    "edge_3b": dict(bleu1=7.72, bleu4=0.41, meteor=7.17, rouge_l=6.94, ttft_s=7.74, otps=2.10, oet_s=34.80,
                    total_s=34.89),
    "cloud_7b": dict(bleu1=15.26, bleu4=0.77, meteor=13.06, rouge_l=12.72, ttft_s=0.39, otps=24.16, oet_s=3.25,
                     total_s=3.38),
    "speculative": dict(bleu1=8.64, bleu4=0.45, meteor=8.06, rouge_l=8.11, ttft_s=7.69, otps=1.83, oet_s=43.79,
                        total_s=43.87),
}
STUDY_LABEL = {"edge_3b": "study: Edge (Qwen-2.5-Omni-3B)", "cloud_7b": "study: Cloud (Qwen-2.5-Omni-7B)",
               "speculative": "study: Speculative decoding"}


def policy_points(results: pl.DataFrame) -> pl.DataFrame:
    """Per (trace, policy, configuration): coverage, latency statistics, cloud cost, bytes; covered rows only."""
    keys = [k for k in ("trace", "policy", "config", "rtt_s", "k", "gate", "accept", "privacy", "cloud_cache")
            if k in results.columns]
    cov = pl.col("covered")
    oet = (pl.col("latency_s") - pl.col("ttft_s"))
    return results.group_by(keys, maintain_order=True).agg(
        pl.len().alias("utterances"),
        cov.sum().alias("covered"),
        pl.col("latency_s").filter(cov).mean().alias("latency_s"),
        pl.col("latency_s").filter(cov).median().alias("latency_p50_s"),
        pl.col("latency_s").filter(cov).quantile(0.9, "linear").alias("latency_p90_s"),
        pl.col("ttft_s").filter(cov).mean().alias("ttft_s"),
        oet.filter(cov).mean().alias("oet_s"),
        ((pl.col("n_tokens") - 1).filter(cov).sum() / oet.filter(cov).sum()).alias("otps"),
        pl.col("n_tokens").filter(cov).mean().alias("n_tokens"),
        pl.col("escalations").filter(cov).mean().alias("cloud_calls"),
        pl.col("cloud_tokens").filter(cov).mean().alias("cloud_tokens"),
        pl.col("bytes_up").filter(cov).mean().alias("bytes_up"),
        pl.col("audio_bytes_up").filter(cov).mean().alias("audio_bytes_up"),
        pl.col("similarity_cloud").filter(cov).mean().alias("agree_cloud_similarity"),
        pl.col("exact_match_cloud").filter(cov).mean().alias("agree_cloud_exact"),
    )


def table1(quality: pl.DataFrame | None, with_study: bool = True) -> pl.DataFrame:
    """Like the study's Table 1: BLEU-1, BLEU-4, METEOR, ROUGE-L, CIDEr-D (all ×100), emotion consistency.

    ``quality`` is reports.quality's per-policy table, raw pycocoevalcap scores."""
    rows = []
    if quality is not None and quality.height:
        for r in quality.iter_rows(named=True):
            rows.append({"system": r["policy"], "source": "this run", "n": r["n_scored"],
                         "BLEU-1": 100 * r["bleu1"], "BLEU-4": 100 * r["bleu4"], "METEOR": 100 * r["meteor"],
                         "ROUGE-L": 100 * r["rouge_l"], "CIDEr-D": 100 * r["cider_d"],  # ×100: see module doc
                         "emotion consistency": r.get("emotion_consistency"),
                         **({"embedding similarity": r["embedding_similarity"]} if "embedding_similarity" in r else {})})
    if with_study:
        for key, v in STUDY.items():
            rows.append({"system": STUDY_LABEL[key], "source": "reported by the study (MER2024, 332 files)",
                         "n": 332, "BLEU-1": v["bleu1"], "BLEU-4": v["bleu4"], "METEOR": v["meteor"],
                         "ROUGE-L": v["rouge_l"], "CIDEr-D": None, "emotion consistency": None})
    return pl.DataFrame(rows, strict=False)


def table2(points: pl.DataFrame, config: int | None = None, with_study: bool = True) -> pl.DataFrame:
    """Like the study's Table 2 (latency part): TTFT, OTPS, OET, total, at one configuration.

    Resource columns (CPU, RAM, GPU) are measurements the simulator does not model; they are left out.
    """
    pts = points if config is None else points.filter(pl.col("config") == config)
    q = "p90" if "latency_p90_s" in pts.columns else "p95"  # a sweep summary keeps p50 and p95
    rows = [{"system": r["policy"], "source": f"simulated, RTT {1000 * r['rtt_s']:g} ms",
             "TTFT (s)": r["ttft_s"], "OTPS (tok/s)": r["otps"], "OET (s)": r["oet_s"], "total (s)": r["latency_s"],
             f"{q} total (s)": r[f"latency_{q}_s"], "covered": f"{r['covered']}/{r['utterances']}"}
            for r in pts.iter_rows(named=True)]
    if with_study:
        for key, v in STUDY.items():
            rows.append({"system": STUDY_LABEL[key], "source": "reported by the study", "TTFT (s)": v["ttft_s"],
                         "OTPS (tok/s)": v["otps"], "OET (s)": v["oet_s"], "total (s)": v["total_s"],
                         f"{q} total (s)": None, "covered": "332"})
    return pl.DataFrame(rows, strict=False)
