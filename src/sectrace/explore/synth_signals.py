"""The synthetic model's MC-dropout: N perturbed copies of a state's drafter distribution, read as the collector
reads N dropout passes, so ``x_mc_*`` on a synthetic trace has the collector's definitions, units and ranges.

Why perturb log-probabilities: the synthetic drafter has no network to drop units from, but
dropout on a network's activations reaches its logits as a sum of many small independent
changes, i.e. roughly Gaussian noise on each logit. So a pass is
``softmax(log p + sigma * eps)`` with ``eps`` standard normal, one draw per top-K token and one
shared by the tail block (its tokens move together, which keeps a pass K + 1 numbers wide);
``sigma`` grows with the dropout rate as ``sqrt(rate / (1 - rate))`` (the spread inverted dropout
puts on a unit's output) and with a noisy view of the state's latent difficulty, so MC-dropout
is not a mere function of the drafter's probabilities (RQ1 asks whether it adds to them).
Then ``x_mc_agree``, ``x_mc_prob_var`` and ``x_mc_entropy`` are computed from the N passes
exactly as :func:`sectrace.models.signals.mc_stats` computes them from real ones.

The normal draws come from SplitMix64 on a per-node 64-bit seed (so a node's values are a
function of the node alone, as the collector's masks are) and are computed with numpy for a
whole batch of nodes at once: a deferred batch per utterance keeps ``trace synth`` fast.
"""

from __future__ import annotations

import math

import numpy as np

#: The spread of one pass's logit noise at dropout rate p and latent difficulty v in [0, 1]:
#: MC_SCALE * sqrt(p / (1 - p)) * (MC_FLOOR + v). At the default p = 0.1: sigma from 0.1 to 1.1.
MC_SCALE = 2.0
MC_FLOOR = 0.15

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mc_sigma(rate: float, difficulty: float) -> float:
    """Logit noise of one pass: grows with the dropout rate and the state's (noisily seen) difficulty."""
    return MC_SCALE * math.sqrt(rate / (1.0 - rate)) * (MC_FLOOR + difficulty)


def mix_seed(seed: int) -> int:
    """SplitMix64's finaliser of a whole number: the mc-dropout ``seed`` parameter as 64 well-mixed bits."""
    return int(_splitmix(np.array([seed % 2**64], dtype=np.uint64))[0])


def _splitmix(x: np.ndarray) -> np.ndarray:
    z = (x ^ (x >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def normals(seeds, count: int) -> np.ndarray:
    """(len(seeds), count) standard normal draws: SplitMix64 counters 1..count on each seed, then Box–Muller
    (the upper and lower 32 bits of each draw are its two uniforms)."""
    s = np.asarray(seeds, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        z = _splitmix(s + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GAMMA)
    u1 = ((z >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((z & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def mc_stats_batch(probs, tails, sigmas, seeds, n: int, tail_support: int) -> list[dict]:
    """The three MC-dropout statistics of each node: ``probs`` (M, K) its top-K probabilities (the drafted
    token first), ``tails`` (M,) the mass left to the ``tail_support`` other tokens, spread evenly.

    Per pass s: the drafted token is its top-1 when its logit is at least every other top-K logit
    and the tail's per-token logit; p_s(t) its probability; H_s the entropy over all K +
    ``tail_support`` tokens. Returned per node: share of passes with top-1 = t, (1/N) variance of
    p_s(t), mean H_s in nats (the collector's ``mc_stats``)."""
    probs = np.asarray(probs, dtype=np.float64)
    m, k = probs.shape
    if m == 0:
        return []
    log_tail_support = math.log(tail_support)
    base = np.concatenate([np.log(probs), np.log(np.asarray(tails, dtype=np.float64))[:, None]], axis=1)
    eps = normals(seeds, n * (k + 1)).reshape(m, n, k + 1)
    logw = base[:, None, :] + np.asarray(sigmas, dtype=np.float64)[:, None, None] * eps  # group log-weights
    per_token = logw.copy()
    per_token[..., k] -= log_tail_support  # each tail token's own log-weight
    top = logw.max(axis=-1, keepdims=True)
    w = np.exp(logw - top)
    z = w.sum(axis=-1)
    p_tok = w[..., 0] / z
    entropy = np.log(z) + top[..., 0] - (w * per_token).sum(axis=-1) / z
    agree = per_token[..., 0] >= per_token[..., 1:].max(axis=-1)
    var = p_tok.var(axis=1)
    return [{"mc_agree": float(a), "mc_prob_var": float(v), "mc_entropy": max(float(h), 0.0)}
            for a, v, h in zip(agree.mean(axis=1), var, entropy.mean(axis=1))]


# --- what the manifest records: the collector's `signals` object, with the synthetic definitions -------------
DEFINITIONS = {
    "x_mc_agree": "share of the N perturbed passes of the state's drafter distribution whose top-1 token is the "
                  "drafted token (in [0, 1]; the collector's definition, on synthetic passes)",
    "x_mc_prob_var": "variance (1/N) over the N passes of the drafted token's probability (in [0, 0.25])",
    "x_mc_entropy": "mean over the N passes of the next-token entropy over the declared vocabulary, nats "
                    "(>= 0, <= log vocab_size)",
    "x_stability": "coupling*(1 - u) + (1 - coupling)*U: a second, independently noisy view of the state's latent "
                   "difficulty u (U uniform); in [0, 1], 1 = stable, as the collector's 1 - total variation",
    "x_audio_shift": "(1.5*coupling if alpha_blind <= u < alpha else 0)*sqrt(U1) + 0.4*U2: large where only the "
                     "audio-hearing verifier agrees; >= 0, on the scale of the collector's KL in nats",
}
HOW = {
    "mc-dropout": "N passes softmax(log p + sigma*eps) over the state's top-K probabilities and its tail block (one "
                  "normal draw each; the tail's tokens move together), sigma = 2*sqrt(p/(1-p))*(0.15 + v), v = "
                  "coupling*u + (1 - coupling)*U; eps from SplitMix64 + Box-Muller on a per-node seed (the node's "
                  "own random stream, xor the mixed seed parameter); no model runs",
    "stability": "drawn from the state's own random stream (salt 'x'); no candidates are re-scored",
    "audio-shift": "drawn from the state's own random stream (salt 'x'); no second drafter runs",
}


def signals_record(n: int, rate: float, seed: int, drafted_nodes: int) -> dict:
    """The manifest's ``signals`` object, shaped as ``sectrace collect --signals`` writes it (``requested`` holds
    N, the rate and the seed where the collector keeps them), with the synthetic definitions."""
    columns = ["x_mc_agree", "x_mc_prob_var", "x_mc_entropy", "x_stability", "x_audio_shift"]
    return {"requested": {"mc-dropout": {"n": n, "p": rate, "seed": seed}, "stability": {}, "audio-shift": {}},
            "columns": columns, "definitions": {c: DEFINITIONS[c] for c in columns}, "how": dict(HOW),
            "compute": {"drafted_nodes": drafted_nodes, "synthetic": "no model passes: drawn from the stated model"},
            "doc": "docs/trace-format.md, Synthetic vs real"}
