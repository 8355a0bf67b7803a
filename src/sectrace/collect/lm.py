"""A causal LM with a reusable KV cache, and the drafter/verifier signals read off its logits.

Why a cache that crops back: the protocol walks a prefix trie, so consecutive requests
share a long prefix (prompt + committed caption) and differ only in the last few tokens.
:class:`CachedLM` keeps one ``DynamicCache`` and the token sequence it holds; a request for
another sequence crops the cache back to the longest common prefix (transformers 5:
``DynamicCache.crop(-n)`` removes the last ``n`` positions) and runs only the new tokens,
all of them in one forward pass. Counters record how many tokens each model computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..protocol import DraftToken, Judgement
from ..trace.schema import TOPK


@dataclass
class Counters:
    calls: int = 0  # forward passes
    tokens: int = 0  # positions computed (prompt included)
    prefill_tokens: int = 0  # positions computed by passes that started from an empty cache
    recomputed: int = 0  # positions that were cached but run again because their logits were needed
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class CachedLM:
    """One model's KV cache over one token sequence; ``logits_for(seq, n)`` gives the last ``n`` logit rows.

    ``first_kwargs`` are passed only on a pass that starts from an empty cache (the audio
    features of a multimodal prompt): they must never be passed again on cached steps.
    Positions are always passed explicitly, so a crop never confuses the model's position count.
    """

    def __init__(self, model, vocab: int, first_kwargs: dict | None = None, reset_hook=None):
        self.model = model
        self.vocab = vocab  # logits are cut to the shared vocabulary: padding rows never win
        self.first_kwargs = first_kwargs or {}
        self.reset_hook = reset_hook
        self.device = next(model.parameters()).device
        self.counters = Counters()
        self.reset()

    def reset(self):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config.get_text_config()) if _cache_takes_config() else DynamicCache()
        self.seq: list[int] = []
        if self.reset_hook is not None:
            self.reset_hook(self.model)

    def _common(self, seq) -> int:
        n = 0
        for a, b in zip(self.seq, seq):
            if a != b:
                break
            n += 1
        return n

    @torch.inference_mode()
    def logits_for(self, seq: list[int], n: int) -> torch.Tensor:
        """Logits (float64, shared vocabulary) at the last ``n`` positions of ``seq``; rows predict the next token."""
        import time

        if n < 1 or n > len(seq):
            raise ValueError("need 1 <= n <= len(seq)")
        common = self._common(seq)
        keep = min(common, len(seq) - n)
        if keep == 0 and self.seq:
            self.reset()
        elif keep < len(self.seq):
            self.cache.crop(-(len(self.seq) - keep))
        self.seq = self.seq[:keep]
        new = seq[keep:]
        t0 = time.perf_counter()
        ids = torch.tensor([new], dtype=torch.long, device=self.device)
        pos = torch.arange(keep, len(seq), dtype=torch.long, device=self.device).unsqueeze(0)
        kwargs = dict(input_ids=ids, past_key_values=self.cache, use_cache=True, position_ids=pos)
        if keep == 0:
            kwargs.update(self.first_kwargs)
            kwargs.pop("position_ids")  # the first pass computes its own (multimodal rope needs that)
        out = self.model(**kwargs)
        self.cache = out.past_key_values
        logits = out.logits[0, -n:, : self.vocab].double().cpu()
        c = self.counters
        c.seconds += time.perf_counter() - t0
        c.calls += 1
        c.tokens += len(new)
        if keep == 0:
            c.prefill_tokens += len(new)
        c.recomputed += max(0, common - keep)  # cached positions run again only to get their logits
        self.seq = list(seq)
        return logits


def _cache_takes_config() -> bool:
    import inspect

    from transformers import DynamicCache

    return "config" in inspect.signature(DynamicCache.__init__).parameters


def draft_token(logits: torch.Tensor, eos: frozenset[int]) -> DraftToken:
    """The drafter's greedy token and its signals from one logit row (nats)."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    top = torch.topk(logp, TOPK)
    ids = [int(i) for i in top.indices]
    probs = [float(math.exp(v)) for v in top.values]
    tok = ids[0]
    entropy = float(-(p * logp).nan_to_num().sum())
    margin = probs[0] - probs[1] if len(probs) > 1 else probs[0]
    return DraftToken(tok, float(logp[tok]), max(entropy, 0.0), margin, tok in eos, None, tuple(ids), tuple(probs))


def judgements(logits: torch.Tensor, tokens, eos: frozenset[int]) -> list[Judgement]:
    """Verifier judgements at positions 0..len(tokens): rank/prob of each drafted token, the verifier's top-1.

    Rank 1 means the token is the verifier's argmax (ties broken toward the lower id, as
    ``torch.argmax`` does, so top-1 acceptance is exactly greedy decoding).
    """
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for j in range(logits.shape[0]):
        row = logits[j]
        lp = logp[j]
        top1 = int(torch.argmax(row))
        top1_prob = float(lp[top1].exp())
        entropy = max(float(-(lp.exp() * lp).nan_to_num().sum()), 0.0)
        if j < len(tokens):
            t = int(tokens[j])
            if t == top1:
                rank = 1
            else:
                v = row[t]
                rank = 1 + int((row > v).sum()) + int((row[:t] == v).sum())
            prob = float(lp[t].exp())
        else:
            rank, prob = 0, math.nan
        out.append(Judgement(rank, prob, top1, top1_prob, top1 in eos, entropy))
    return out
