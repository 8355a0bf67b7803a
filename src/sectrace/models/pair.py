"""Loading a drafter/verifier pair, checking that they share a tokenizer, and the per-utterance source.

The source is what :class:`sectrace.trace.TrieRecorder` wraps: states are tuples of
caption token ids, ``draft`` runs the drafter on one prefix (its cache cropped back to the
shared part), ``judge`` runs the verifier once over the whole block (teacher forcing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import UserError
from .lm import CachedLM, draft_token, judgements
from .paths import resolve_model_path


def tokenizer_fingerprint(tok) -> str:
    """A hash of the token ↔ id map (added/special tokens included): equal fingerprints, interchangeable ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    h = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()[:32]


def check_tokenizers(d_tok, v_tok, d_name="drafter", v_name="verifier") -> None:
    """Refuse a pair whose token ids mean different things: the protocol sends ids only."""
    dv, vv = d_tok.get_vocab(), v_tok.get_vocab()
    if dv == vv:
        return
    only_d = len(set(dv.items()) - set(vv.items()))
    only_v = len(set(vv.items()) - set(dv.items()))
    example = next(iter(sorted(set(dv.items()) ^ set(vv.items()), key=lambda kv: kv[1])), None)
    raise UserError(
        f"the {d_name} and {v_name} tokenizers differ ({only_d} token ids only in the drafter's, {only_v} only in "
        f"the verifier's, e.g. {example!r}); draft–verify sends token ids, so both models must share one "
        "tokenizer: pick a drafter and verifier of the same family (e.g. Qwen2.5-Omni-3B with -7B)")


def load_tokenizer(path: str, what: str):
    from transformers import AutoTokenizer

    src, local = resolve_model_path(path, what)
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=local)
    except Exception as exc:  # transformers raises OSError/ValueError/... for a missing or broken tokenizer
        raise UserError(f"cannot load the {what}'s tokenizer from {path} ({str(exc).splitlines()[0][:160]}); "
                        "the folder needs tokenizer files (tokenizer.json or vocab/merges)") from None


BACKENDS = ("causal-lm", "omni-thinker", "qwen2-audio")


def torch_dtype(dtype: str):
    import torch

    out = {"auto": "auto", "float32": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "float64": torch.float64}.get(dtype)
    if out is None:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return out


def load_model(backend: str, path: str, what: str, device: str = "cpu", dtype: str = "auto"):
    if backend == "causal-lm":
        return load_causal_lm(path, what, device, dtype)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    from .audio import load_audio_model

    return load_audio_model(backend, path, what, device, torch_dtype(dtype))


def load_causal_lm(path: str, what: str, device: str = "cpu", dtype: str = "auto"):
    from transformers import AutoModelForCausalLM

    src, local = resolve_model_path(path, what)
    torch_dtype_ = torch_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=local, dtype=torch_dtype_)
    except Exception as exc:
        raise UserError(f"cannot load the {what} from {path} ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval()


def eos_ids(tok, *models) -> frozenset[int]:
    ids = set()
    for m in models:
        gc = getattr(m, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if e is not None:
            ids.update([e] if isinstance(e, int) else e)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return frozenset(int(i) for i in ids)


def model_rows(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def shared_vocab(tok, drafter, verifier) -> int:
    """Ids every party understands: the tokenizer's ids, which both output layers must cover.

    Embedding tables are often padded (Qwen2.5-Omni-3B has 151936 rows, 7B 152064); rows
    past the tokenizer are never real tokens, so logits are compared over this range only.
    """
    n = len(tok)
    rows_d, rows_v = model_rows(drafter), model_rows(verifier)
    if n > min(rows_d, rows_v):
        raise UserError(f"the tokenizer has {n} ids but the drafter's output layer has {rows_d} rows and the "
                        f"verifier's {rows_v}; a model cannot emit every token: check the model paths")
    return n


@dataclass
class PairInfo:
    tokenizer: object
    drafter: object
    verifier: object
    shared_vocab: int
    eos: frozenset
    drafter_name: str
    verifier_name: str


def load_pair(drafter: str, verifier: str, edge_device="cpu", cloud_device="cpu", dtype="auto",
              edge_threads: int | None = None, backend: str = "causal-lm", edge_dtype: str | None = None) -> PairInfo:
    """Load both models after checking their tokenizers (cheap) so a bad pair fails before the heavy load."""
    import torch

    d_tok = load_tokenizer(drafter, "drafter")
    v_tok = load_tokenizer(verifier, "verifier")
    check_tokenizers(d_tok, v_tok)
    if edge_threads:
        torch.set_num_threads(edge_threads)
    d = load_model(backend, drafter, "drafter", edge_device, edge_dtype or dtype)
    v = load_model(backend, verifier, "verifier", cloud_device, dtype)
    eos = eos_ids(v_tok, d, v)
    if backend != "causal-lm":
        for name in ("audio_token_index", "audio_token_id", "audio_start_token_id", "audio_end_token_id"):
            if getattr(d.config, name, None) != getattr(v.config, name, None):
                raise UserError(f"the drafter and verifier disagree on {name} ({getattr(d.config, name, None)} vs "
                                f"{getattr(v.config, name, None)}); use two checkpoints of the same model family")
        end = v_tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end, int) and end != v_tok.unk_token_id:
            eos = eos | {end}  # chat models end their turn with <|im_end|>
    return PairInfo(v_tok, d, v, shared_vocab(v_tok, d, v), eos, drafter, verifier)


class PairSource:
    """A drafter and a verifier on one utterance; prefix-keyed, as TrieRecorder expects.

    ``cloud_prompts`` maps a verifier mode (``audio``/``blind``) to its prompt ids; each
    mode keeps its own cache so alternating modes never evicts the other's prefix.
    """

    def __init__(self, drafter: CachedLM, edge_prompt: list[int], verifiers: dict[str, CachedLM],
                 cloud_prompts: dict[str, list[int]], eos: frozenset[int]):
        self.drafter = drafter
        self.edge_prompt = list(edge_prompt)
        self.verifiers = verifiers
        self.cloud_prompts = {m: list(p) for m, p in cloud_prompts.items()}
        self.eos = eos
        self.root = ()

    def draft(self, prefix):
        logits = self.drafter.logits_for(self.edge_prompt + list(prefix), 1)
        return draft_token(logits[0], self.eos)

    def advance(self, prefix, token):
        return tuple(prefix) + (int(token),)

    def judge(self, prefix, tokens, mode):
        seq = self.cloud_prompts[mode] + list(prefix) + list(tokens)
        logits = self.verifiers[mode].logits_for(seq, len(tokens) + 1)
        return judgements(logits, tokens, self.eos)
