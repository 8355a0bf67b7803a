"""Per-policy tables built from results, including tables shaped like the study's Tables 1 and 2."""

from __future__ import annotations

import polars as pl

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
    """Like the study's Table 1: BLEU-1, BLEU-4, METEOR, ROUGE-L (×100), plus CIDEr-D and emotion consistency."""
    rows = []
    if quality is not None and quality.height:
        for r in quality.iter_rows(named=True):
            rows.append({"system": r["policy"], "source": "this run", "n": r["n_scored"],
                         "BLEU-1": 100 * r["bleu1"], "BLEU-4": 100 * r["bleu4"], "METEOR": 100 * r["meteor"],
                         "ROUGE-L": 100 * r["rouge_l"], "CIDEr-D": 100 * r["cider_d"],
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
    rows = [{"system": r["policy"], "source": f"simulated, RTT {1000 * r['rtt_s']:g} ms",
             "TTFT (s)": r["ttft_s"], "OTPS (tok/s)": r["otps"], "OET (s)": r["oet_s"], "total (s)": r["latency_s"],
             "p90 total (s)": r["latency_p90_s"], "covered": f"{r['covered']}/{r['utterances']}"}
            for r in pts.iter_rows(named=True)]
    if with_study:
        for key, v in STUDY.items():
            rows.append({"system": STUDY_LABEL[key], "source": "reported by the study", "TTFT (s)": v["ttft_s"],
                         "OTPS (tok/s)": v["otps"], "OET (s)": v["oet_s"], "total (s)": v["total_s"],
                         "p90 total (s)": None, "covered": "332"})
    return pl.DataFrame(rows, strict=False)
