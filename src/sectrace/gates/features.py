"""Drafter-side features of trie nodes (what a device can know) and verifier labels (what it wants to predict).

One row per drafted token: the features describe the drafter's state when it proposed the
token; the labels say what the verifier made of it. The same feature functions serve a
trace's nodes (training, evaluation) and a live block (the learned gate), so a model sees
the same numbers in both places.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from ..errors import UserError
from ..protocol import Block
from .content import token_flags

BASE_FEATURES = ("logprob", "entropy", "margin", "p2", "depth")


def available_features(trace) -> list[str]:
    """Every feature this trace supports: the base drafter signals, its x_* columns, emotion words if it has text."""
    feats = list(BASE_FEATURES) + sorted(c for c in trace.nodes.columns if c.startswith("x_"))
    if trace.vocab is not None:
        feats.append("emotion_word")
    return feats


def emotion_ids(trace) -> frozenset[int]:
    if trace.vocab is None:
        return frozenset()
    return token_flags(dict(zip(trace.vocab["id"].to_list(), trace.vocab["piece"].to_list())), ("emotion",))


def node_table(trace, features, mode: str = "audio", rank: int = 1) -> pl.DataFrame:
    """Drafted nodes judged by the ``mode`` verifier, with features, ``reject`` (rank > R) and ``impact`` labels.

    ``impact``: rejected, and the drafted token or the verifier's replacement is an emotion word (the
    correction changes what the caption says about the emotion).
    """
    if mode not in trace.modes:
        raise UserError(f"the trace has no {mode} verifier judgements; use --mode {' or '.join(trace.modes)}")
    missing = [f for f in features if f.startswith("x_") and f not in trace.nodes.columns]
    if missing:
        raise UserError(f"the trace lacks the features {', '.join(missing)} this gate was trained on; "
                        "use a trace that records them, or train a gate on this trace's own features")
    if "emotion_word" in features and trace.vocab is None:
        raise UserError("the feature emotion_word needs token text: use a trace with vocab.parquet")
    emo = emotion_ids(trace)
    df = trace.nodes.filter(pl.col("d_token").is_not_null() & pl.col(f"v_{mode}_rank").is_not_null())
    lp = pl.col("d_logprob").cast(pl.Float64)
    cols = {
        "logprob": lp, "entropy": pl.col("d_entropy").cast(pl.Float64), "margin": pl.col("d_margin").cast(pl.Float64),
        "p2": lp.exp() - pl.col("d_margin").cast(pl.Float64), "depth": pl.col("depth").cast(pl.Float64),
        "emotion_word": pl.col("d_token").is_in(list(emo)).cast(pl.Float64),
    }
    exprs = [(cols[f] if f in cols else pl.col(f).cast(pl.Float64)).alias(f) for f in features]
    reject = pl.col(f"v_{mode}_rank") > rank
    out = df.select(
        "utt_id", "node_id", "d_token",
        *exprs,
        reject.alias("reject"),
        (reject & (pl.col("d_token").is_in(list(emo)) | pl.col(f"v_{mode}_top1").is_in(list(emo)))).alias("impact"),
    )
    return out.drop_nulls(list(features))


def block_matrix(block: Block, features, emotion: frozenset[int] = frozenset()) -> np.ndarray:
    """The same features for each token of a live block (rows = tokens)."""
    n = len(block.tokens)
    X = np.empty((n, len(features)))
    for i in range(n):
        lp = block.logprobs[i]
        ex = block.extras[i] if i < len(block.extras) else {}
        for j, f in enumerate(features):
            if f == "logprob":
                v = lp
            elif f == "entropy":
                v = block.entropies[i]
            elif f == "margin":
                v = block.margins[i]
            elif f == "p2":
                v = math.exp(lp) - block.margins[i]
            elif f == "depth":
                v = block.start + i
            elif f == "emotion_word":
                v = float(block.tokens[i] in emotion)
            else:
                try:
                    v = ex[f[2:]]
                except (KeyError, TypeError):
                    raise UserError(f"this learned gate needs the feature {f}, which the trace lacks; use a "
                                    "trace that records it or retrain on this trace") from None
            X[i, j] = v
    return X
