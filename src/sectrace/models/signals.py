"""Optional drafter-side signals for RQ1, recorded per drafted trie node as ``x_*`` columns.

Why these three: the drafter's logits give log-prob, entropy and margin for free; RQ1 also
asks about block-level stability, MC-dropout and how much the audio moves the drafter. Each
costs extra drafter passes, so each is opt-in (``sectrace collect --signals``), and each
reuses the KV cache of the prefix the drafter just ran (copied, never changed), so a node
costs one short batched pass per signal, not a new prefill. Exact definitions, with the
reasons for each choice: docs/trace-format.md, "Collected signals".

* ``mc-dropout`` (``x_mc_agree``, ``x_mc_prob_var``, ``x_mc_entropy``): N stochastic passes
  of the drafter's last input position with inverted dropout (rate p) on the output of
  every decoder layer's MLP, the prefix's keys/values deterministic.
* ``stability`` (``x_stability``): 1 − total variation between the drafter's distribution
  over its top-K candidates for this position and the same position re-scored once the
  block's following token is known (Bayes, lag-1 smoothing).
* ``audio-shift`` (``x_audio_shift``): KL(p_audio ‖ p_no-audio) in nats between the
  drafter's next-token distribution with the utterance's audio/transcript input and
  without it (the backend's blind prompt), one extra token per node on a second cache.

Parsing (:func:`parse_signals`) is light; everything that runs a model imports torch inside.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import UserError
from ..gates.builtin import columns_needed

SIGNALS = ("mc-dropout", "stability", "audio-shift")
#: Trace columns each signal writes.
COLUMNS = {"mc-dropout": ("x_mc_agree", "x_mc_prob_var", "x_mc_entropy"), "stability": ("x_stability",),
           "audio-shift": ("x_audio_shift",)}
#: Parameters per signal: name -> (key, type, default, lo, hi, meaning).
PARAMS = {
    "mc-dropout": (("n", int, 8, 2, 256, "stochastic passes"), ("p", float, 0.1, 0.0, 0.9, "dropout rate"),
                   ("seed", int, 0, 0, 2**63 - 1, "seed of the dropout masks")),
    "stability": (("k", int, 8, 2, 64, "candidate tokens re-scored"),),
    "audio-shift": (),
}


@dataclass(frozen=True)
class SignalSpec:
    """Which signals to compute and their parameters; ``record()`` is what the manifest stores."""

    params: dict = field(default_factory=dict)  # signal name -> {key: value}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s for s in SIGNALS if s in self.params)

    def columns(self) -> list[str]:
        return [c for s in self.names for c in COLUMNS[s]]

    def get(self, name: str, key: str):
        return self.params[name][key]

    def record(self) -> dict:
        return {s: dict(self.params[s]) for s in self.names}

    def label(self) -> str:
        return ",".join(s + "".join(f":{k}={v}" for k, v in self.params[s].items()) for s in self.names)


def parse_signals(text: str | None) -> SignalSpec | None:
    """``mc-dropout:n=8:p=0.1:seed=0,stability:k=8,audio-shift`` → a :class:`SignalSpec` (None for none)."""
    if text is None or not text.strip() or text.strip() == "none":
        return None
    params: dict = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, *kvs = part.split(":")
        name = name.strip()
        if name not in PARAMS:
            raise UserError(f"--signals: unknown signal {name!r}; choose from {', '.join(SIGNALS)} "
                            "(e.g. --signals mc-dropout:n=8:p=0.1,stability,audio-shift)")
        if name in params:
            raise UserError(f"--signals names {name} twice; give each signal once")
        spec = {key: default for key, _, default, _, _, _ in PARAMS[name]}
        known = {key: (typ, lo, hi, what) for key, typ, _, lo, hi, what in PARAMS[name]}
        for kv in kvs:
            key, eq, value = kv.partition("=")
            key = key.strip()
            if not eq or key not in known:
                keys = ", ".join(f"{k}= ({v[3]})" for k, v in known.items()) or "none"
                raise UserError(f"--signals {name}: cannot read {kv!r}; its parameters are {keys}")
            typ, lo, hi, what = known[key]
            try:
                v = typ(value.strip())
            except ValueError:
                v = None
            if v is None or (typ is float and not math.isfinite(v)) or not lo <= v <= hi or \
                    (key == "p" and v <= 0):
                kind = "a whole number" if typ is int else "a number"
                raise UserError(f"--signals {name}:{key}={value.strip()}: the {what} must be {kind} in "
                                f"{'(' if key == 'p' else '['}{lo}, {hi}]")
            spec[key] = v
        params[name] = spec
    if not params:
        return None
    return SignalSpec(params)


def spec_from_record(record: dict | None) -> SignalSpec | None:
    """The spec a trace's manifest ``signals.requested`` recorded (None when it recorded none)."""
    if not record:
        return None
    return SignalSpec({s: dict(record[s]) for s in SIGNALS if s in record})


def check_policies(policies, spec: SignalSpec | None) -> None:
    """Refuse, before anything runs, an exploration policy whose gate reads a signal this collection lacks."""
    have = set(spec.columns()) if spec is not None else set()
    for pol in policies:
        need = columns_needed(pol.gate) - have
        if need:
            by = {c: s for s, cols in COLUMNS.items() for c in cols}
            add = sorted({by[c] for c in need if c in by})
            raise UserError(f"policy {pol.label!r} gates on {', '.join(sorted(need))}, which this collection does "
                            "not compute" + (f"; add --signals {','.join(add)}" if add else
                                             "; no collect --signals writes it"))


# --- the computations ------------------------------------------------------------------------------
def node_seed(seed: int, prefix) -> int:
    """The dropout-mask seed of one trie node: BLAKE2b-64 of ``"SEED/"`` + the caption ids joined by commas.

    A function of the node alone, so a resumed or sharded collection draws the same masks."""
    h = hashlib.blake2b(f"{seed}/{','.join(str(int(t)) for t in prefix)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def decoder_mlps(model) -> list:
    """The MLP of every decoder layer of the language model (not of an audio or vision tower)."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(dec, "layers", None)
    if layers is None or not all(hasattr(layer, "mlp") for layer in layers):
        raise UserError(f"mc-dropout: cannot find the decoder layers' MLPs of {type(model).__name__}; "
                        "this model is not supported for --signals mc-dropout")
    return [layer.mlp for layer in layers]


@contextmanager
def mlp_dropout(model, rate: float, generator):
    """Inverted dropout (keep with probability 1 − rate, scale kept values by 1/(1 − rate)) on each decoder
    MLP's output, masks drawn from ``generator`` in layer order (``torch.rand`` float32, kept where ≥ rate).

    Qwen2-family configs ship ``attention_dropout`` 0 and no hidden dropout, so no module of
    the model drops anything at inference; hooks add it without touching config or weights
    and are always removed, so the drafter's own passes are never perturbed.
    """
    import torch

    def hook(_mod, _inp, out):
        keep = torch.rand(out.shape, generator=generator, device=generator.device) >= rate
        return out * keep.to(out.device, out.dtype) / (1.0 - rate)

    handles = [m.register_forward_hook(hook) for m in decoder_mlps(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def mc_rows(lm, seq: list[int], prefix, n: int, rate: float, seed: int):
    """n stochastic logit rows for the position after ``seq``: its last token run again under dropout.

    The keys/values of ``seq[:-1]`` are the deterministic ones (shared with the drafter);
    only the computation at the last input position is perturbed, n rows in one batch.
    """
    import torch

    from .lm import one_token_rows, prefix_cache

    cache, deltas = prefix_cache(lm, seq, len(seq) - 1, n)
    gen = torch.Generator(device=lm.device if lm.device.type != "mps" else "cpu")
    gen.manual_seed(node_seed(seed, prefix))
    with mlp_dropout(lm.model, rate, gen):
        return one_token_rows(lm, cache, [seq[-1]] * n, len(seq) - 1, deltas)


def mc_stats(rows, token: int) -> dict:
    """Share of passes whose top-1 is the drafted token, variance (1/N) of its probability, mean entropy (nats)."""
    import torch

    logp = torch.log_softmax(rows, dim=-1)
    p_tok = logp[:, token].exp()
    ent = -(logp.exp() * logp).nan_to_num().sum(dim=-1)
    return {"mc_agree": float((torch.argmax(rows, dim=-1) == token).double().mean()),
            "mc_prob_var": float(p_tok.var(unbiased=False)), "mc_entropy": max(float(ent.mean()), 0.0)}


def candidates(logits, token: int, k: int) -> list[int]:
    """The drafted token first, then the drafter's next most likely tokens: k in all."""
    import torch

    top = [int(i) for i in torch.topk(logits, min(k + 1, logits.shape[-1])).indices]
    return ([token] + [t for t in top if t != token])[:k]


def stability_rows(lm, seq: list[int], cands: list[int]):
    """Logit rows after appending each candidate to ``seq`` (one batched pass on ``seq``'s cache)."""
    from .lm import one_token_rows, prefix_cache

    if hasattr(lm, "continuation_rows"):  # the llama.cpp drafter: the same pass on copied sequences
        return lm.continuation_rows(seq, cands)

    cache, deltas = prefix_cache(lm, seq, len(seq), len(cands))
    return one_token_rows(lm, cache, cands, len(seq), deltas)


def stability_value(logits, cands: list[int], rows) -> float:
    """1 − TV(prior, posterior) over the candidates; ``cands[0]`` is the drafted token.

    prior(y) ∝ p(y | prefix) over the candidates; the following token t' is the drafter's
    greedy choice after the drafted token (argmax of ``rows[0]``); posterior(y) ∝
    p(y | prefix) · p(t' | prefix, y): the position re-scored once the next token is known.
    """
    import torch

    lp = torch.log_softmax(logits, dim=-1)[cands]
    nxt = int(torch.argmax(rows[0]))
    lq = torch.log_softmax(rows, dim=-1)[:, nxt]
    prior = torch.softmax(lp, dim=0)
    post = torch.softmax(lp + lq, dim=0)
    return min(max(1.0 - 0.5 * float((prior - post).abs().sum()), 0.0), 1.0)


def kl(logits_p, logits_q) -> float:
    """KL(p ‖ q) in nats between the softmaxes of two logit rows (0 where p is 0)."""
    import torch

    lp = torch.log_softmax(logits_p, dim=-1)
    lq = torch.log_softmax(logits_q, dim=-1)
    return max(float((lp.exp() * (lp - lq)).nan_to_num().sum()), 0.0)


@dataclass
class SignalCost:
    """Extra drafter work per signal: forward passes, positions computed (batch rows), seconds."""

    passes: int = 0
    positions: int = 0
    seconds: float = 0.0

    def add(self, positions: int, seconds: float):
        self.passes += 1
        self.positions += positions
        self.seconds += seconds


class Signals:
    """Computes the requested signals at one drafted node of one utterance.

    ``no_audio`` is a second :class:`~sectrace.models.lm.CachedLM` on the drafter whose
    prompt (``no_audio_prompt``) lacks the audio/transcript; it walks the same trie, so
    each node costs it one token (its prompt is prefilled once per utterance).
    """

    def __init__(self, spec: SignalSpec, drafter, no_audio=None, no_audio_prompt=None):
        self.spec = spec
        self.drafter = drafter
        self.no_audio = no_audio
        self.no_audio_prompt = list(no_audio_prompt or [])
        if "audio-shift" in spec.names and no_audio is None:
            raise ValueError("audio-shift needs the drafter without audio")
        self.cost = {s: SignalCost() for s in spec.names}
        self.nodes = 0

    def at(self, seq: list[int], prefix, logits, token: int) -> dict:
        """The signal values (without the ``x_`` prefix) at the node whose drafter input is ``seq``."""
        out = {}
        self.nodes += 1
        sp = self.spec
        if "mc-dropout" in sp.names:
            t0 = time.perf_counter()
            rows = mc_rows(self.drafter, seq, prefix, sp.get("mc-dropout", "n"), sp.get("mc-dropout", "p"),
                           sp.get("mc-dropout", "seed"))
            self.cost["mc-dropout"].add(rows.shape[0], time.perf_counter() - t0)
            out.update(mc_stats(rows, token))
        if "stability" in sp.names:
            t0 = time.perf_counter()
            cands = candidates(logits, token, sp.get("stability", "k"))
            rows = stability_rows(self.drafter, seq, cands)
            self.cost["stability"].add(len(cands), time.perf_counter() - t0)
            out["stability"] = stability_value(logits, cands, rows)
        if "audio-shift" in sp.names:
            t0 = time.perf_counter()
            before = self.no_audio.counters.tokens
            q = self.no_audio.logits_for(self.no_audio_prompt + list(prefix), 1)[0]
            c = self.cost["audio-shift"]
            c.passes += 1
            c.positions += self.no_audio.counters.tokens - before
            c.seconds += time.perf_counter() - t0
            out["audio_shift"] = kl(logits, q)
        return out

    def summary(self) -> dict:
        return {"nodes": self.nodes, "drafter_seconds": round(self.drafter.counters.seconds, 6), **{s: {"passes": c.passes, "positions": c.positions,
                                            "seconds": round(c.seconds, 6)} for s, c in self.cost.items()}}


class SignalPairSource:
    """A :class:`~sectrace.models.pair.PairSource` whose drafts carry the signals in ``DraftToken.extra``.

    The draft itself is computed exactly as PairSource computes it (same logit row, same
    token), so a collection with signals records the same trie as one without."""

    def __init__(self, source, signals: Signals):
        self.source = source
        self.signals = signals

    def __getattr__(self, name):
        return getattr(self.source, name)

    def draft(self, prefix):
        from .lm import draft_token

        src = self.source
        seq = src.edge_prompt + list(prefix)
        logits = src.drafter.logits_for(seq, 1)[0]
        d = draft_token(logits, src.eos)
        return d._replace(extra=self.signals.at(seq, tuple(prefix), logits, d.token))

    def advance(self, prefix, token):
        return self.source.advance(prefix, token)

    def judge(self, prefix, tokens, mode):
        return self.source.judge(prefix, tokens, mode)


def with_signals(source, spec: SignalSpec, no_audio=None, no_audio_prompt=None) -> SignalPairSource:
    """Wrap a :class:`~sectrace.models.pair.PairSource` so every draft carries the signals in ``extra``."""
    return SignalPairSource(source, Signals(spec, source.drafter, no_audio, no_audio_prompt))


# --- what the manifest records -----------------------------------------------------------------------
DEFINITIONS = {
    "x_mc_agree": "share of the N dropout passes whose top-1 token is the drafted token (in [0, 1])",
    "x_mc_prob_var": "variance (1/N) over the N dropout passes of the drafted token's probability (in [0, 0.25])",
    "x_mc_entropy": "mean over the N dropout passes of the next-token entropy, nats (>= 0)",
    "x_stability": "1 - total variation between the drafter's distribution over its top-k candidates for this "
                   "position and the same position re-scored once the following drafted token is known "
                   "(posterior proportional to p(y|prefix) p(next|prefix,y)); in [0, 1], 1 = stable",
    "x_audio_shift": "KL(p_audio || p_no_audio), nats, between the drafter's next-token distributions with and "
                     "without the audio input (causal-lm: the transcript) at this prefix (>= 0)",
}
MODULES = {
    "mc-dropout": "inverted dropout on the output of every decoder layer's MLP at the last input position "
                  "(forward hooks; weights and config untouched); the prefix's keys/values deterministic; masks "
                  "from torch.Generator seeded per node with blake2b-64('SEED/' + caption ids)",
    "audio-shift": "the drafter on the backend's blind prompt (causal-lm: the template with an empty transcript; "
                   "audio backends: the instruction without the audio), its own KV cache along the trie",
    "stability": "one batched pass of the k candidates on the prefix's KV cache; the following token is the "
                 "drafter's greedy choice after the drafted token",
}


def manifest_record(spec: SignalSpec, summaries: list[dict]) -> dict:
    """The manifest's ``signals`` object: parameters, columns, definitions and the measured extra cost."""
    nodes = sum(s["nodes"] for s in summaries)
    base_s = sum(s.get("drafter_seconds", 0.0) for s in summaries)
    compute = {"drafted_nodes": nodes,
               "drafter_seconds_per_drafted_node": round(base_s / max(nodes, 1), 6)}
    for name in spec.names:
        tot = {k: sum(s[name][k] for s in summaries) for k in ("passes", "positions", "seconds")}
        compute[name] = {"passes_per_drafted_node": round(tot["passes"] / max(nodes, 1), 4),
                         "positions_per_drafted_node": round(tot["positions"] / max(nodes, 1), 4),
                         "seconds_per_drafted_node": round(tot["seconds"] / max(nodes, 1), 6)}
    return {"requested": spec.record(), "columns": spec.columns(),
            "definitions": {c: DEFINITIONS[c] for c in spec.columns()},
            "how": {s: MODULES[s] for s in spec.names}, "compute": compute,
            "doc": "docs/trace-format.md, Collected signals"}
