"""Synthetic traces from a stated statistical model, for tests and for checking the simulator against theory.

The model (:class:`AlphaModel`): at every decoding state the verifier (audio mode) takes
the drafter's greedy token as its own top-1 independently with probability ``alpha``;
the blind verifier, which never sees the audio, agrees with probability ``alpha_blind``
(a subset of the audio agreements). ``coupling`` sets how strongly the drafter's own
confidence tracks agreement: 0 is the pure α-model of Leviathan et al. (no local signal
predicts anything), 1 makes the drafter's top-1 probability a near-perfect predictor.
Every quantity is a deterministic function of (seed, utterance, prefix), so the model is
a proper greedy drafter and deterministic verifier and the trie is well defined.

The drafter's next-token distribution at a state is its top-K probabilities plus a tail
spread evenly over ``TAIL_SUPPORT`` further tokens, so its vocabulary (``vocab_size``) is
K + ``TAIL_SUPPORT`` ids: the words, then tail-only ids that are never drafted or judged.
``d_entropy`` is that distribution's exact entropy, ≤ log vocab_size, and the MC-dropout
signals perturb the same distribution (:mod:`.synth_signals`). docs/trace-format.md,
"Synthetic vs real", compares every signal with the collector's.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import polars as pl

from ..errors import UserError
from ..gates.builtin import columns_needed
from ..protocol import DraftToken, Judgement, Policy, run
from ..trace import schema as S
from ..trace.trie import TrieRecorder
from ..version import __version__
from .synth_signals import mc_sigma, mc_stats_batch, mix_seed, signals_record

WORDS = (
    "she he they the speaker sounds seems speaks voice tone is was with a an and but of in slightly very quite "
    "deeply clearly almost rather tense calm angry happy sad fearful surprised disgusted neutral anxious "
    "excited cheerful gloomy irritated frustrated relaxed nervous joyful upset worried content bored "
    "trembling shaking steady soft loud quiet sharp flat rising falling fast slow hesitant firm warm cold "
    "bright low high pitch pace volume breath laughter sigh sobbing crying shouting whispering tears "
    "close to on edge of full filled hint touch note trace surprise joy anger sorrow fear relief disbelief "
    "contempt pride shame hope despair confidence doubt emotion emotional mood feeling feels expresses "
    "conveys suggests reveals while as though if her his their words sentence statement question "
    "reply answer ends begins rises drops strained restrained controlled excitedly angrily sadly "
    "quietly loudly nervously calmly happily , ."
).split()
EMOTIONS = ("angry", "happy", "sad", "neutral", "fearful", "surprised")
REFERENCE_TEMPLATES = {
    "angry": ("The speaker sounds angry and sharp.", "He is clearly irritated, his voice loud and tense.",
              "An angry, forceful tone with rising volume."),
    "happy": ("She sounds cheerful and bright.", "A happy voice, warm and lively.",
              "The speaker is joyful, almost laughing."),
    "sad": ("The voice is low and sad, close to tears.", "She sounds gloomy and slow.",
            "A sorrowful tone with a soft, falling pitch."),
    "neutral": ("The speaker sounds calm and neutral.", "A flat, steady voice without strong emotion.",
                "He speaks evenly, relaxed and matter-of-fact."),
    "fearful": ("She sounds nervous and afraid.", "A trembling, anxious voice.",
                "The speaker is fearful, speaking fast and hesitantly."),
    "surprised": ("He sounds surprised, his pitch rising.", "A startled voice full of disbelief.",
                  "The speaker is astonished and excited."),
}
EOS_ID = 0
#: Tokens outside the top-K that share the drafter's leftover probability evenly. Why 2,000 and not the ~135
#: words left over: a real drafter spreads its tail over ~150k ids; the smaller support would lower d_entropy
#: by up to 0.57 nats (mean 0.11 at seed 0) and so move the entropy gates' decisions, every trie they explore
#: and every figure the docs measured on synthetic traces. The ids past the words exist for it (vocab_size).
TAIL_SUPPORT = 2000


@dataclass(frozen=True)
class AlphaModel:
    alpha: float = 0.7
    alpha_blind: float = 0.55
    coupling: float = 0.6
    mean_length: float = 24.0
    seed: int = 0
    mc_passes: int = 8  # the collector's mc-dropout defaults: N passes, dropout rate p, mask seed
    mc_rate: float = 0.1
    mc_seed: int = 0

    def __post_init__(self):

        if not 0.0 < self.alpha < 1.0:
            raise UserError(f"alpha={self.alpha} must lie strictly between 0 and 1")
        if not 0.0 < self.alpha_blind <= self.alpha:
            raise UserError(f"alpha_blind={self.alpha_blind} must lie in (0, alpha]: the blind verifier "
                            "agrees on a subset of the states the audio verifier agrees on")
        if not 0.0 <= self.coupling <= 1.0:
            raise UserError(f"coupling={self.coupling} must lie in [0, 1]")
        if self.mean_length < 2:
            raise UserError("mean_length must be at least 2 tokens")
        if isinstance(self.mc_passes, bool) or not isinstance(self.mc_passes, int) or not 2 <= self.mc_passes <= 256:
            raise UserError(f"mc_passes={self.mc_passes} must be a whole number in [2, 256], as collect's mc-dropout:n")
        if not 0.0 < self.mc_rate <= 0.9:
            raise UserError(f"mc_rate={self.mc_rate} must lie in (0, 0.9], as collect's mc-dropout:p")
        if isinstance(self.mc_seed, bool) or not isinstance(self.mc_seed, int) or not 0 <= self.mc_seed < 2**63:
            raise UserError(f"mc_seed={self.mc_seed} must be a whole number in [0, 2^63 - 1]")

    @property
    def n_words(self) -> int:
        """Ids 0 (end of sequence) … len(WORDS): the tokens that are ever drafted, judged or emitted."""
        return len(WORDS) + 1

    @property
    def vocab_size(self) -> int:
        """Every id the drafter's distribution gives mass to: the top-K and the tail's TAIL_SUPPORT tokens."""
        return S.TOPK + TAIL_SUPPORT


class AlphaSource:
    """The synthetic drafter and verifier for one utterance; states are prefixes."""

    root: tuple = ()

    def __init__(self, model: AlphaModel, utt: int, defer_mc: bool = False):
        """``defer_mc``: leave the MC-dropout signals out of the drafts until :meth:`fill_mc` computes them all in
        one batch (only for runs whose gates never read them; ``synth_trace`` decides)."""
        self.m = model
        self.utt = utt
        self._pending: list | None = [] if defer_mc else None
        self._mc_key = mix_seed(model.mc_seed)
        r = self._rng(())
        self.len_draft = max(2, int(r.gauss(model.mean_length, model.mean_length / 4)))
        self.len_cloud = max(2, int(r.gauss(model.mean_length * 1.1, model.mean_length / 4)))
        self._cache: dict = {}

    def _rng(self, prefix, salt=b"") -> random.Random:
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.m.seed}/{self.utt}/".encode())
        h.update(array("i", prefix).tobytes())
        h.update(salt)
        return random.Random(int.from_bytes(h.digest(), "little"))

    def _word(self, r, avoid=()) -> int:
        while True:
            t = r.randrange(1, self.m.n_words)
            if t not in avoid:
                return t

    def _state(self, prefix):
        st = self._cache.get(prefix)
        if st is not None:
            return st
        m = self.m
        r = self._rng(prefix)
        depth = len(prefix)
        u = r.random()  # latent difficulty: the audio verifier agrees iff u < alpha
        hazard_d = 0.0 if depth < self.len_draft - 3 else 0.35
        d_eos = depth > 0 and r.random() < hazard_d
        d_token = EOS_ID if d_eos else self._word(r)
        z = m.coupling * (1.0 - u) + (1.0 - m.coupling) * r.random()
        p1 = 0.15 + 0.84 * z
        rest = 1.0 - p1
        probs = [p1]
        for _ in range(S.TOPK - 1):
            share = min(probs[-1], rest * (0.15 + 0.35 * r.random()))
            probs.append(share)
            rest -= share
        ids = [d_token]
        while len(ids) < S.TOPK:
            t = r.randrange(0, m.n_words)
            if t not in ids:
                ids.append(t)
        tail = max(rest, 1e-12)
        # The exact entropy over vocab_size ids: the top-K, then TAIL_SUPPORT tokens of tail/TAIL_SUPPORT each.
        entropy = -sum(p * math.log(p) for p in probs if p > 0) - tail * math.log(tail / TAIL_SUPPORT)
        # Optional per-node signals (x_* columns), drawn from their own stream so the base trie is unchanged:
        # stability = how little the drafter's prediction moves as the block grows (a second, independently
        # noisy view of the latent difficulty); audio_shift = how far its distribution moves without the audio
        # (large where only the audio-hearing verifier agrees, i.e. the token depends on the audio).
        rx = self._rng(prefix, b"x")
        stability = m.coupling * (1.0 - u) + (1.0 - m.coupling) * rx.random()
        audio_dep = m.alpha_blind <= u < m.alpha
        audio_shift = (1.5 * m.coupling if audio_dep else 0.0) * rx.random() ** 0.5 + 0.4 * rx.random()
        # MC-dropout: the node's difficulty seen through its own noise sets the passes' spread (drawn last, so the
        # two signals above are what they were before MC-dropout existed).
        sigma = mc_sigma(m.mc_rate, m.coupling * u + (1.0 - m.coupling) * rx.random())
        mc_in = (probs, tail, sigma, rx.getrandbits(64) ^ self._mc_key)
        extra = {"stability": stability, "audio_shift": audio_shift}
        if self._pending is None:
            extra.update(self._mc([mc_in])[0])
        else:
            self._pending.append((extra, mc_in))
        draft = DraftToken(d_token, math.log(p1), max(entropy, 0.0), p1 - probs[1], d_eos,
                           extra, tuple(ids), tuple(probs))
        verdicts = {}
        hazard_v = 0.0 if depth < self.len_cloud - 3 else 0.35
        wants_eos = depth > 0 and r.random() < hazard_v
        for mode, alpha in (("audio", m.alpha), ("blind", m.alpha_blind)):
            top1_prob = 0.45 + 0.54 * r.random()
            ent = 0.2 + 2.5 * (1.0 - top1_prob) * (1.0 + r.random())
            if u < alpha:
                verdicts[mode] = Judgement(1, top1_prob, d_token, top1_prob, d_eos, ent)
                continue
            rank = 2 + int(-math.log(1.0 - r.random()) / 0.25)
            prob = top1_prob * math.exp(-0.4 * rank) * r.random()
            if mode == "blind" and "audio" in verdicts and verdicts["audio"].rank > 1 and r.random() < 0.5:
                top1 = verdicts["audio"].top1
            elif wants_eos and not d_eos:
                top1 = EOS_ID
            else:
                top1 = self._word(r, avoid=(d_token, EOS_ID))
            verdicts[mode] = Judgement(rank, prob, top1, top1_prob, top1 == EOS_ID, ent)
        st = self._cache[prefix] = (draft, verdicts)
        return st

    def _mc(self, inputs) -> list[dict]:
        probs, tails, sigmas, seeds = zip(*inputs)
        return mc_stats_batch(probs, tails, sigmas, seeds, self.m.mc_passes, TAIL_SUPPORT)

    def fill_mc(self) -> None:
        """Add the MC-dropout signals to every draft made since the last call (one numpy batch)."""
        if self._pending:
            for (extra, _), values in zip(self._pending, self._mc([x for _, x in self._pending])):
                extra.update(values)
            self._pending.clear()

    def draft(self, prefix) -> DraftToken:
        return self._state(prefix)[0]

    def advance(self, prefix, token):
        return prefix + (int(token),)

    def judge(self, prefix, tokens, mode):
        out = []
        for i in range(len(tokens) + 1):
            draft, verdicts = self._state(prefix + tuple(tokens[:i]))
            jg = verdicts[mode]
            if i < len(tokens) and tokens[i] != draft.token:
                # Only greedy drafts are ever judged; anything else is a caller bug.
                raise ValueError("the synthetic verifier only judges the drafter's greedy tokens")
            out.append(jg)
        return out


# Study-like costs (shared/reference/study-tables.csv): edge 2-core CPU at 2.10 tok/s with TTFT 7.74 s,
# cloud A100 at 24.16 tok/s with TTFT 0.39 s. Verify cost per extra token is an assumption (a batched
# teacher-forced pass costs little more than one decode step on a GPU).
SYNTH_COSTS = {
    "edge_prefill_s": 7.74, "edge_decode_s": 1 / 2.10, "edge_decode_per_ctx_s": 0.0005,
    "cloud_prefill_s": 0.39, "cloud_decode_s": 1 / 24.16, "cloud_decode_per_ctx_s": 0.00005,
    "cloud_verify_per_token_s": 0.004,
}


def _timings(seed: int) -> pl.DataFrame:
    r = random.Random(seed)
    c = SYNTH_COSTS
    rows = []

    def noisy(x):
        return x * math.exp(r.gauss(0.0, 0.03))

    for prompt in (150, 200, 250):
        for _ in range(3):
            rows.append(("edge", "prefill", prompt, 0, noisy(c["edge_prefill_s"] * prompt / 200), "synthetic-cpu", 2))
            rows.append(("cloud", "prefill", prompt, 0, noisy(c["cloud_prefill_s"] * prompt / 200), "synthetic-gpu", None))
    for ctx in (200, 220, 240, 260):
        for _ in range(5):
            rows.append(("edge", "decode", 1, ctx, noisy(c["edge_decode_s"] + c["edge_decode_per_ctx_s"] * (ctx - 200)),
                         "synthetic-cpu", 2))
            rows.append(("cloud", "decode", 1, ctx, noisy(c["cloud_decode_s"] + c["cloud_decode_per_ctx_s"] * (ctx - 200)),
                         "synthetic-gpu", None))
        for n in range(1, 17):
            rows.append(("cloud", "verify", n, ctx,
                         noisy(c["cloud_decode_s"] + c["cloud_decode_per_ctx_s"] * (ctx - 200)
                               + c["cloud_verify_per_token_s"] * (n - 1)), "synthetic-gpu", None))
    return pl.DataFrame(rows, schema=S.TIMINGS, orient="row")


def _utterance(model: AlphaModel, i: int) -> dict:
    r = random.Random(f"{model.seed}/utt/{i}")
    emotion = EMOTIONS[i % len(EMOTIONS)]
    seconds = round(r.uniform(2.0, 8.0), 2)
    audio_tokens = int(seconds * 25)
    return {
        "utt_id": f"synth-{i:04d}", "references": list(REFERENCE_TEMPLATES[emotion]), "audio_seconds": seconds,
        "edge_prompt_tokens": 40 + audio_tokens, "cloud_prompt_tokens": 40 + audio_tokens,
        "blind_prompt_tokens": 40, "feature_bytes": int(seconds * 100) * 128 * 2,
        "raw_audio_bytes": int(seconds * 16000) * 2, "emotion": emotion,
    }


def synth_trace(model: AlphaModel, n_utterances: int, policies: list[Policy], progress=None):
    """Explore ``policies`` on the synthetic model and return the trace's tables and manifest."""
    utts, frames = [], []
    calls = {"draft": 0, "judge": 0}
    # MC-dropout is computed per utterance in one batch, unless a policy's gate reads it while exploring.
    defer = not any(c.startswith("x_mc_") for pol in policies for c in columns_needed(pol.gate))
    for i in range(n_utterances):
        src = AlphaSource(model, i, defer_mc=defer)
        rec = TrieRecorder(src, S.VERIFIER_MODES)
        for pol in policies:
            run(rec, pol)
        src.fill_mc()
        row = _utterance(model, i)
        utts.append(row)
        frames.append(rec.frames(row["utt_id"]))
        for key in calls:
            calls[key] += rec.source_calls[key]
        if progress is not None:
            progress(1)
    nodes = pl.concat(frames, how="diagonal_relaxed")
    # Tail-only ids are never drafted, judged or emitted: their pieces are empty.
    pieces = [b""] + [(" " + w if w not in ",." else w).encode() for w in WORDS]
    vocab = pl.DataFrame({"id": list(range(model.vocab_size)),
                          "piece": pieces + [b""] * (model.vocab_size - len(pieces))}, schema=S.VOCAB)
    model_card = {"revision": "synthetic", "vocab_size": model.vocab_size, "tokenizer_fingerprint": "synthetic-words-v2"}
    manifest = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthetic": True,
        "synthetic_model": {"kind": "alpha", **asdict(model), "costs": SYNTH_COSTS},
        "drafter": {"name": "synthetic-drafter", **model_card},
        "verifier": {"name": "synthetic-verifier", **model_card},
        "shared_vocab_size": model.vocab_size,
        "eos_token_ids": [EOS_ID],
        "verifier_modes": list(S.VERIFIER_MODES),
        "prompt_template": "synthetic: no prompt",
        "decoding": {"greedy": True, "max_new_tokens": max(p.max_new_tokens for p in policies),
                     "topk_logged": S.TOPK},
        "hardware": {"edge": {"device": "synthetic-cpu", "threads": 2}, "cloud": {"device": "synthetic-gpu"}},
        "dataset": {"name": "synthetic", "description": "utterances from a stated statistical model "
                    "(AlphaModel); no audio, no real models", "n_utterances": n_utterances},
        "exploration": {"policies": [p.label for p in policies], "nodes": nodes.height,
                        "source_calls": calls},
        "signals": signals_record(model.mc_passes, model.mc_rate, model.mc_seed,
                                  int(nodes["d_token"].is_not_null().sum())),
    }
    return manifest, pl.DataFrame(utts, schema=S.UTTERANCES), nodes, _timings(model.seed), vocab


def synth_recorders(manifest: dict, utt_ids) -> dict:
    """Live sessions on a synthetic trace's own stated model, one per utterance id (``synth-NNNN``).

    A synthetic trace's trie is a memo of this model, so any state it lacks can be generated
    exactly instead of counted as a coverage miss: this is how gate frontiers on synthetic
    traces cover every threshold.
    """

    spec = manifest.get("synthetic_model") or {}
    if spec.get("kind") != "alpha":
        raise UserError("only synthetic traces (sectrace trace synth) can be extended from their model")
    model = AlphaModel(**{k: spec[k] for k in ("alpha", "alpha_blind", "coupling", "mean_length", "seed")},
                       **{k: spec[k] for k in ("mc_passes", "mc_rate", "mc_seed") if k in spec})
    out = {}
    for uid in utt_ids:
        try:
            index = int(str(uid).rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise UserError(f"utterance {uid!r} is not a synthetic utterance id (synth-NNNN)") from None
        out[uid] = TrieRecorder(AlphaSource(model, index), manifest.get("verifier_modes", S.VERIFIER_MODES))
    return out
