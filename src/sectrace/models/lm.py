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

KEEP_ROWS = 24  # logit rows kept per cache slot (a verify block is at most ~17)


@dataclass
class Counters:
    calls: int = 0  # forward passes
    tokens: int = 0  # positions computed (prompt included)
    prefill_tokens: int = 0  # positions computed by passes that started from an empty cache
    recomputed: int = 0  # positions that were cached but run again because their logits were needed
    seconds: float = 0.0
    reused: int = 0  # logit rows served from an earlier pass
    extra: dict = field(default_factory=dict)


class CachedLM:
    """One model's KV caches over token sequences; ``logits_for(seq, n)`` gives the last ``n`` logit rows.

    Several cache *slots* are kept (``slots``, default 4): exploring a new branch of the
    trie copies the cache of the nearest branch and crops the copy, so coming back to the
    old branch later costs nothing. The slot with the longest common prefix serves each
    request; when all slots are taken the least recently used one is replaced.
    ``first_kwargs`` are passed only on a pass that starts from an empty cache (the audio
    features of a multimodal prompt): they must never be passed again on cached steps.
    Cached steps get explicit positions, so a crop never confuses the model's position count.
    """

    def __init__(self, model, vocab: int, first_kwargs: dict | None = None, reset_hook=None, slots: int = 4):
        self.model = model
        self.vocab = vocab  # logits are cut to the shared vocabulary: padding rows never win
        self.first_kwargs = first_kwargs or {}
        self.reset_hook = reset_hook
        self.max_slots = max(1, slots)
        self.device = next(model.parameters()).device
        # Multimodal rope (Qwen2.5-Omni thinker): positions are 3-D and offset by rope_deltas, which the
        # model computes on a first pass and keeps as state that goes stale between requests.
        self.mrope = hasattr(getattr(model, "model", None), "rope_deltas")
        self.cache_arg = cache_argument(model)
        self.counters = Counters()
        self.reset()

    def reset(self):
        self.slots: list[list] = []  # [cache, seq, last_used, rope_deltas]
        self._clock = 0
        if self.reset_hook is not None:
            self.reset_hook(self.model)

    def forget_logits(self):
        """Drop stored logit rows (KV caches stay), so the next request really runs its last positions.

        Timing probes need this: without it a repeated request is answered from the stored rows
        and times a lookup instead of a forward pass."""
        for slot in self.slots:
            slot[4] = None

    @property
    def seq(self) -> list[int]:
        return max(self.slots, key=lambda s: s[2])[1] if self.slots else []

    @staticmethod
    def _common(a, b) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config()) if _cache_takes_config() else DynamicCache()

    def _best(self, seq):
        best, common = None, 0
        for slot in self.slots:
            c = self._common(slot[1], seq)
            if best is None or c > common:
                best, common = slot, c
        return best, common

    def _prepare(self, best, keep):
        """The slot to extend, keeping ``keep`` positions of ``best`` (a copy when a crop would lose a branch)."""
        import copy

        self._clock += 1
        if best is None or keep == 0:
            if len(self.slots) >= self.max_slots:
                self.slots.remove(min(self.slots, key=lambda s: s[2]))
            slot = [self._new_cache(), [], self._clock, None, None, 0]
            self.slots.append(slot)
            return slot
        if keep < len(best[1]) and self.max_slots > 1:
            if len(self.slots) >= self.max_slots:
                victim = min((s for s in self.slots if s is not best), key=lambda s: s[2])
                self.slots.remove(victim)
            best = [copy.deepcopy(best[0]), list(best[1]), self._clock, best[3], best[4], best[5]]
            self.slots.append(best)
        best[2] = self._clock
        if keep < len(best[1]):
            best[0].crop(-(len(best[1]) - keep))
            best[1] = best[1][:keep]
            if best[4] is not None:
                best[4] = best[4][: max(0, keep - best[5])]
        return best

    @staticmethod
    def _rows(slot, lo, hi):
        """Stored logit rows for positions [lo, hi) of the slot's sequence, or None."""
        if slot is None or slot[4] is None or lo < slot[5] or hi > slot[5] + slot[4].shape[0]:
            return None
        return slot[4][lo - slot[5]: hi - slot[5]]

    @torch.inference_mode()
    def logits_for(self, seq: list[int], n: int) -> torch.Tensor:
        """Logits (float64, shared vocabulary) at the last ``n`` positions of ``seq``; rows predict the next token.

        Rows the last passes already produced for the same tokens are reused, so a verify
        that starts at the last committed token does not run that token again.
        """
        import time

        if n < 1 or n > len(seq):
            raise ValueError("need 1 <= n <= len(seq)")
        first = len(seq) - n
        best, common = self._best(seq)
        have = self._rows(best, first, common) if common > first else None
        if have is not None and common == len(seq):
            self.counters.reused += n
            return have.clone()
        keep = common if have is not None else min(common, first)
        slot = self._prepare(best, keep)
        new = seq[keep:]
        t0 = time.perf_counter()
        ids = torch.tensor([new], dtype=torch.long, device=self.device)
        kwargs = {"input_ids": ids, self.cache_arg: slot[0], "use_cache": True}
        if keep == 0:
            if self.reset_hook is not None:
                self.reset_hook(self.model)
            kwargs.update(self.first_kwargs)  # audio features go in on the first pass only
            if self.mrope:
                self.model.model.rope_deltas = None  # never reuse another request's deltas
                kwargs["attention_mask"] = torch.ones_like(ids)  # lets the model build 3-D positions
        else:
            pos = torch.arange(keep, len(seq), dtype=torch.long, device=self.device).unsqueeze(0)
            if self.mrope:
                pos = pos.view(1, 1, -1).expand(3, 1, -1) + slot[3].to(self.device)
            kwargs["position_ids"] = pos
        out = self.model(**kwargs)
        if keep == 0 and self.mrope:
            deltas = self.model.model.rope_deltas
            slot[3] = deltas.clone() if deltas is not None else torch.zeros(1, 1, dtype=torch.long)
        slot[0] = out[self.cache_arg]
        fresh = out.logits[0, -min(len(new), KEEP_ROWS):, : self.vocab].double().cpu()
        fresh_p0 = len(seq) - fresh.shape[0]
        # Keep the last KEEP_ROWS rows of this slot's sequence for later requests.
        old = self._rows(slot, max(slot[5], fresh_p0 - KEEP_ROWS), keep) if slot[4] is not None else None
        if old is not None and old.shape[0] and slot[5] + (slot[4].shape[0]) == keep and fresh_p0 == keep:
            rows = torch.cat([old, fresh])[-KEEP_ROWS:]
        else:
            rows = fresh
        slot[4], slot[5] = rows, len(seq) - rows.shape[0]
        logits = torch.cat([have, fresh[-(len(seq) - keep):]]) if have is not None and keep > first else \
            fresh[-n:]
        c = self.counters
        c.seconds += time.perf_counter() - t0
        c.calls += 1
        c.tokens += len(new)
        if have is not None:
            c.reused += keep - first
        if keep == 0:
            c.prefill_tokens += len(new)
        c.recomputed += max(0, common - keep)  # cached positions run again only to get their logits
        slot[1] = list(seq)
        return logits


def open_lm(model, vocab: int, first_kwargs: dict | None = None, slots: int = 4, extra_seqs: int = 0):
    """A cached LM over ``model`` in its own runtime: :class:`CachedLM` for a transformers model, the llama.cpp
    context (:class:`~sectrace.models.llamacpp.LlamaCppLM`) for a GGUF drafter; both answer ``logits_for``.

    ``extra_seqs``: spare llama.cpp sequences for batched continuations (``--signals stability``)."""
    from .llamacpp import LlamaCppModel

    if isinstance(model, LlamaCppModel):
        if first_kwargs:
            raise ValueError("the llama.cpp drafter takes token ids only")
        return model.open(vocab, slots=slots, extra_seqs=extra_seqs)
    return CachedLM(model, vocab, first_kwargs, slots=slots)


def cache_argument(model) -> str:
    """The name ``model.forward`` takes its KV cache under: ``cache`` from transformers 5.24, before that
    ``past_key_values``.

    5.24 renamed the argument and the output field (the old names still work until 5.40, with a
    FutureWarning on every collect and validate run); asking the model's own signature keeps both the
    releases in the supported range quiet and correct, without comparing version strings. The output
    field has the same name as the argument in both. The class's forward is asked, not the instance's:
    hooks (accelerate's, a test's counter) replace the instance's with a ``*args, **kwargs`` wrapper.
    """
    import inspect

    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


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


# --- batched one-token passes from a cached prefix (the drafter-side signals, models/signals.py) ---------------
def _kv_layers(cache) -> list:
    """(keys, values) per layer of a DynamicCache, for the cache layouts transformers 4.5x and 5 use."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def prefix_cache(lm: CachedLM, seq: list[int], length: int, batch: int):
    """A fresh cache of the first ``length`` positions of ``seq``, repeated ``batch`` times, and its rope deltas.

    Copied out of the slot of ``lm`` that already holds them (after a draft at ``seq`` one
    always does), so no position is computed again and ``lm``'s own caches are never
    changed: a signal pass extends the copy, not the drafter's cache.
    """
    best, common = lm._best(seq)
    if best is None or common < length:
        lm.logits_for(seq[:length], 1)  # only when no slot holds the prefix; counted in lm.counters
        best, common = lm._best(seq)
    cache = lm._new_cache()
    for i, (k, v) in enumerate(_kv_layers(best[0])):
        cache.update(k[:, :, :length].repeat(batch, 1, 1, 1), v[:, :, :length].repeat(batch, 1, 1, 1), i)
    return cache, best[3]


@torch.inference_mode()
def one_token_rows(lm: CachedLM, cache, tokens: list[int], position: int, rope_deltas=None) -> torch.Tensor:
    """Logit rows (float64, shared vocabulary) after feeding ``tokens[b]`` at ``position`` on row b of ``cache``.

    One forward pass of ``len(tokens)`` rows of one token each: the batched continuation of
    one cached prefix by several candidate tokens (or the same token several times, for
    stochastic passes)."""
    n = len(tokens)
    ids = torch.tensor([[int(t)] for t in tokens], dtype=torch.long, device=lm.device)
    pos = torch.full((n, 1), position, dtype=torch.long, device=lm.device)
    if lm.mrope:
        pos = pos.view(1, n, 1).expand(3, n, 1) + (rope_deltas.to(lm.device) if rope_deltas is not None else 0)
    # The cache argument's name follows CachedLM's (``cache`` from transformers 5.24, where it sets cache_arg).
    kwargs = {"input_ids": ids, getattr(lm, "cache_arg", "past_key_values"): cache, "use_cache": True,
              "position_ids": pos}
    return lm.model(**kwargs).logits[:, -1, : lm.vocab].double().cpu()
