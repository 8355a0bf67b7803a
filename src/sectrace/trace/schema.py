"""Trace format v1: the columns and their types, in one place (docs/trace-format.md explains them)."""

from __future__ import annotations

from dataclasses import dataclass

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

INT32_MAX = 2**31 - 1
INT_LIMITS = {pl.Int32: (-(2**31), INT32_MAX), pl.Int64: (-(2**63), 2**63 - 1)}

# --- value rules beyond the column types ----------------------------------------------
# (lowest, highest) per column, None = open; float columns named here must also be finite.
# A column outside its range is refused on load: a negative prompt-token count would price
# a negative prefill (a TTFT of "-4426 ms"), a NaN timing would poison every fitted cost.
UTTERANCES_RANGE = {
    "audio_seconds": (0, None),
    "edge_prompt_tokens": (0, None),
    "cloud_prompt_tokens": (0, None),
    "blind_prompt_tokens": (0, None),
    "feature_bytes": (0, None),
    "raw_audio_bytes": (0, None),
}
NODES_RANGE = {"depth": (0, None)}
TIMINGS_RANGE = {"new_tokens": (0, None), "context_tokens": (0, None), "threads": (1, None)}

# --- manifest.json ----------------------------------------------------------------------
#: Bigger manifests are refused before parsing (sectrace writes a few kB).
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
#: Deeper JSON nesting is refused (sectrace writes 4 levels).
MANIFEST_MAX_DEPTH = 32


@dataclass(frozen=True)
class Field:
    """One manifest field: its JSON type and the values it may take.

    Declared once here so the loader can refuse a wrong type with a sentence naming the
    field, instead of a consumer (``trace info``, ``simulate``) crashing on it later.
    Members of an object not declared in ``fields`` are allowed and not checked.
    """

    kind: str  # "int", "number", "str", "bool", "object", "list" or "any"
    required: bool = True
    nullable: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    items: Field | None = None  # a list's elements
    fields: dict | None = None  # an object's declared members
    min_items: int = 0
    unique: bool = False
    fix: str = ""  # how to correct it, when more specific than "correct it in manifest.json"


def _opt(kind: str, **kw) -> Field:
    return Field(kind, required=False, **kw)


MODEL_FIELDS = {
    "name": Field("str"),
    "revision": Field("str"),
    "vocab_size": Field("int", lo=1, hi=INT32_MAX, fix="give the rows of the model's output layer"),
    "tokenizer_fingerprint": Field("str"),
}
_TOKEN_ID = Field("int", lo=0, hi=INT32_MAX)
MANIFEST = {
    "format": _opt("str", choices=(FORMAT_NAME,)),
    "schema_version": Field("int"),
    "tool_version": Field("str"),
    "created": Field("str", fix="write the ISO 8601 creation time, e.g. \"2025-01-31T12:00:00+00:00\""),
    "synthetic": Field("bool", fix="write true if no real models produced the trace, else false"),
    "drafter": Field("object", fields=MODEL_FIELDS),
    "verifier": Field("object", fields=MODEL_FIELDS),
    "shared_vocab_size": _opt("int", lo=1, hi=INT32_MAX),
    "eos_token_ids": Field("list", items=_TOKEN_ID, fix="list the token ids that end a caption, e.g. [151645]"),
    "verifier_modes": Field("list", items=Field("str", choices=VERIFIER_MODES), min_items=1, unique=True,
                            fix='list the recorded modes, e.g. ["audio", "blind"]'),
    "prompt_template": Field("str"),
    "backend": _opt("str"),
    "decoding": Field("object", fields={
        "greedy": _opt("bool", choices=(True,), fix="sectrace replays greedy decoding only"),
        "max_new_tokens": _opt("int", lo=1, hi=1_000_000, fix="give the caption length cap used while "
                                                              "exploring, e.g. 64"),
        "topk_logged": _opt("int", lo=1, hi=INT32_MAX),
    }),
    "hardware": Field("object", fields={"edge": _opt("object"), "cloud": _opt("object")}),
    "dataset": Field("object", fields={
        "name": _opt("str", nullable=True),
        "description": _opt("str", nullable=True),
        "n_utterances": _opt("int", lo=0, hi=INT32_MAX),
        "manifest": _opt("str", nullable=True),
    }),
    "synthetic_model": _opt("object", fields={
        "kind": Field("str"),
        "alpha": Field("number"), "alpha_blind": Field("number"), "coupling": Field("number"),
        "mean_length": Field("number"), "seed": Field("int"),  # any integer: it is hashed as text
    }),
    "exploration": _opt("object", fields={
        "policies": _opt("list", items=Field("str")),
        "nodes": _opt("int", lo=0, hi=2**63 - 1),
        "max_nodes_per_utterance": _opt("int", nullable=True, lo=1, hi=2**63 - 1),
        "truncated_utterances": _opt("list", items=Field("str")),
        "extended_from": _opt("str", nullable=True),
    }),
    "collection": _opt("object", fields={"id": Field("str"), "shard": Field("any")}),
}
MANIFEST_REQUIRED = tuple(k for k, f in MANIFEST.items() if f.required)
MODEL_REQUIRED = tuple(MODEL_FIELDS)
