"""Trace format v1: the columns and their types, in one place (docs/trace-format.md explains them)."""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = 1
FORMAT_NAME = "sectrace-trace"
VERIFIER_MODES = ("audio", "blind")
TOPK = 8

UTTERANCES = {
    "utt_id": pl.Utf8,
    "references": pl.List(pl.Utf8),
    "audio_seconds": pl.Float64,
    "edge_prompt_tokens": pl.Int32,
    "cloud_prompt_tokens": pl.Int32,
    "blind_prompt_tokens": pl.Int32,
    "feature_bytes": pl.Int64,
    "raw_audio_bytes": pl.Int64,
    "emotion": pl.Utf8,
}
UTTERANCES_NULLABLE = {"emotion"}

NODES_BASE = {
    "utt_id": pl.Utf8,
    "node_id": pl.Int32,
    "parent_id": pl.Int32,
    "token": pl.Int32,
    "depth": pl.Int32,
    "is_eos": pl.Boolean,
    "d_token": pl.Int32,
    "d_logprob": pl.Float32,
    "d_entropy": pl.Float32,
    "d_margin": pl.Float32,
    "d_topk_ids": pl.List(pl.Int32),
    "d_topk_probs": pl.List(pl.Float32),
    "d_eos": pl.Boolean,
    "keep_child": pl.Int32,
}
#: Nullable in NODES_BASE: everything a leaf (never drafted from) lacks, and the root's parent/token.
NODES_NULLABLE = {"parent_id", "token", "d_token", "d_logprob", "d_entropy", "d_margin", "d_topk_ids",
                  "d_topk_probs", "d_eos", "keep_child"}


def verifier_columns(mode: str) -> dict[str, pl.DataType]:
    return {
        f"v_{mode}_rank": pl.Int32,
        f"v_{mode}_prob": pl.Float32,
        f"v_{mode}_top1": pl.Int32,
        f"v_{mode}_top1_prob": pl.Float32,
        f"v_{mode}_entropy": pl.Float32,
        f"v_{mode}_top1_eos": pl.Boolean,
        f"v_{mode}_child": pl.Int32,
    }


def nodes_schema(modes) -> dict[str, pl.DataType]:
    schema = dict(NODES_BASE)
    for m in modes:
        schema.update(verifier_columns(m))
    return schema


TIMINGS = {
    "side": pl.Utf8,
    "phase": pl.Utf8,
    "new_tokens": pl.Int32,
    "context_tokens": pl.Int32,
    "seconds": pl.Float64,
    "device": pl.Utf8,
    "threads": pl.Int32,
}
TIMINGS_NULLABLE = {"device", "threads"}
TIMING_SIDES = ("edge", "cloud")
TIMING_PHASES = ("prefill", "decode", "verify")

VOCAB = {"id": pl.Int32, "piece": pl.Binary}

MANIFEST_REQUIRED = ("schema_version", "tool_version", "created", "synthetic", "drafter", "verifier",
                     "eos_token_ids", "verifier_modes", "prompt_template", "decoding", "hardware", "dataset")
MODEL_REQUIRED = ("name", "revision", "vocab_size", "tokenizer_fingerprint")
