"""The cloud side's model work: verify a block on a session's cache, stream cloud-only decoding.

The same :class:`sectrace.collect.CachedLM` and judgement code the collector uses, so a live
verify sees exactly the logits a trace records; one lock serialises forward passes (one
model, one device), the way a server without batching runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..errors import UserError
from ..models.lm import KEEP_ROWS, CachedLM, judgements
from ..protocol import Accept, accepted_prefix
from .wire import WireError


@dataclass
class CloudModel:
    """A loaded verifier and what the service needs to know about it."""

    model: object
    vocab: int  # ids 0..vocab-1 are real tokens; others are refused
    eos: frozenset
    name: str = "verifier"
    backend: str = "causal-lm"
    device: str = "cpu"
    threads: int | None = None
    feature_extractor: object | None = None  # audio backends in `raw` privacy compute features here

    def __post_init__(self):
        self.lock = threading.Lock()
        self.dtype = next(self.model.parameters()).dtype

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one position adds to a session's KV cache (what the service's memory budget counts)."""
        return kv_bytes_per_token(self.model.config, self.dtype)

    @property
    def cache_overhead_bytes(self) -> int:
        """Bytes a cache holds whatever its length: the logit rows CachedLM keeps (float64, one per vocab id)."""
        return KEEP_ROWS * self.vocab * 8

    def new_cache(self, first_kwargs: dict | None) -> CachedLM:
        return CachedLM(self.model, self.vocab, first_kwargs or {}, slots=1)

    def kwargs_for(self, mode: str, features: dict | None, audio: bytes | None) -> dict:
        """First-pass model inputs from what the edge sent (audio features in `features`, PCM in `raw`)."""
        if mode == "blind":
            if features:
                raise WireError(422, "features: the blind (token-only) verifier takes no audio features")
            return {}
        if self.backend == "causal-lm":
            if features:
                raise WireError(422, "features: this verifier is a text model (causal-lm); the transcript goes "
                                     "in the prompt, not as audio features")
            return {}  # cascaded: the prompt carries the transcript; raw audio, if sent, is not used by the model
        if features:
            allowed = {"input_features", "feature_attention_mask"}
            extra = set(features) - allowed
            if extra:
                raise WireError(422, f"features: unknown input {sorted(extra)[0]!r}; send input_features and "
                                     "feature_attention_mask")
            kw = {k: v.to(self.device) for k, v in features.items()}
            if "input_features" in kw:
                kw["input_features"] = kw["input_features"].to(self.dtype)
            return kw
        if audio is not None and self.feature_extractor is not None:
            import numpy as np

            wav = np.frombuffer(audio[: len(audio) // 2 * 2], dtype="<i2").astype("float32") / 32768.0
            f = self.feature_extractor(wav, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                                       return_tensors="pt")
            return {"input_features": f["input_features"].to(self.device, self.dtype),
                    "feature_attention_mask": f["attention_mask"].to(self.device)}
        raise WireError(422, "mode audio on an audio verifier needs features (privacy `features`) or audio "
                             "(privacy `raw`)")

    def check_ids(self, ids, field: str):
        for t in ids:
            if not 0 <= t < self.vocab:
                raise WireError(422, f"{field}: token id {t} is outside the verifier's vocabulary "
                                     f"(0..{self.vocab - 1}); are the edge and cloud models of one tokenizer?")

    def verify(self, lm: CachedLM, seq: list[int], draft: list[int], accept: Accept) -> dict:
        """Judge ``draft`` after ``seq`` (prompt + committed); the reply the edge needs, nothing more."""
        t0 = time.perf_counter()
        with self.lock:
            t1 = time.perf_counter()
            logits = lm.logits_for(seq + draft, len(draft) + 1)
            js = judgements(logits, draft, self.eos)
            t2 = time.perf_counter()
        j = accepted_prefix(js, len(draft), accept)
        keep = js[: j + 1]  # the accepted prefix, the rejected position (its top-1 is the correction) or the bonus
        return {"accepted": j, "rank": [g.rank for g in keep], "prob": [g.prob for g in keep],
                "top1": [g.top1 for g in keep], "top1_prob": [g.top1_prob for g in keep],
                "top1_eos": [bool(g.top1_eos) for g in keep], "compute_ms": round((t2 - t1) * 1e3, 3),
                "queue_ms": round((t1 - t0) * 1e3, 3)}

    def generate(self, lm: CachedLM, prompt: list[int], max_new: int, cancelled=lambda: False):
        """Greedy decoding from ``prompt``: yields (token, prob, eos) as each is made."""
        seq = list(prompt)
        for _ in range(max_new):
            if cancelled():
                return
            with self.lock:
                g = judgements(lm.logits_for(seq, 1), (), self.eos)[0]
            yield g.top1, g.top1_prob, bool(g.top1_eos)
            if g.top1_eos:
                return
            seq.append(g.top1)


def kv_bytes_per_token(config, dtype) -> int:
    """layers × KV heads × head dim × 2 (keys and values) × bytes per element, read from the model's config.

    Why from the config rather than measured: the service must bound memory before a cache exists. A
    DynamicCache holds exactly this per position (tests/test_live_service.py checks it against one);
    sliding-window layers would hold less, so this is an upper bound."""
    import torch

    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return int(cfg.num_hidden_layers * kv_heads * head_dim * 2 * torch.empty((), dtype=dtype).element_size())


def check_device(device: str) -> str:
    """``device`` if this machine has it, else a UserError (torch's own failure is an AssertionError traceback)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device; write cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA device that torch can use; "
                            "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return device
    if dev.type == "mps" and torch.backends.mps.is_available():
        return device
    raise UserError(f"--device {device}: not available here; use cpu or cuda[:N]")


def load_cloud_model(path: str, backend: str = "causal-lm", device: str = "cpu", dtype: str = "auto",
                     threads: int | None = None) -> CloudModel:
    """Load a verifier for serving (tokenizer read for its vocabulary and end-of-caption ids)."""
    import torch

    from ..models.pair import eos_ids, load_model, load_tokenizer, model_rows

    if threads:
        torch.set_num_threads(threads)
    tok = load_tokenizer(path, "verifier")
    model = load_model(backend, path, "verifier", device, dtype)
    eos = eos_ids(tok, model)
    fe = None
    if backend != "causal-lm":
        end = tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end, int) and end != tok.unk_token_id:
            eos = eos | {end}
        try:
            from ..models.audio import load_feature_extractor

            fe = load_feature_extractor(path)
        except Exception:  # the service then needs features from the edge (privacy `features`)
            fe = None
    vocab = min(len(tok), model_rows(model))
    return CloudModel(model, vocab, eos, name=str(path), backend=backend, device=device,
                      threads=threads or torch.get_num_threads(), feature_extractor=fe)
