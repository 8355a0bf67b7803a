"""The drafter on llama.cpp (a GGUF file through llama-cpp-python), as phones and laptops run it.

Why: an edge device does not run PyTorch float32; it runs a quantised GGUF in llama.cpp, several
times faster on the same CPU. A trace whose drafter ran in transformers prices the edge with the
wrong device. With ``sectrace collect --drafter-runtime llama-cpp`` the drafter's proposals, its
signals and its timing probes all come from llama.cpp; the verifier stays in transformers.

The contract is :class:`~sectrace.models.lm.CachedLM`'s (``logits_for(seq, n)``, ``counters``,
``reset``, ``forget_logits``), so the trie walk, the signals and the probes drive either runtime
the same way. How the KV cache is reused: one llama.cpp context per utterance holds a *unified* KV
memory shared by several sequences (the cache slots). A request crops the slot with the longest
common prefix (``llama_memory_seq_rm``) and runs only the new tokens; exploring a new branch first
copies the nearest slot's prefix to a free sequence (``llama_memory_seq_cp``: in a unified memory
that tags the same cells with one more sequence id, no data is copied), so coming back costs nothing.

Token ids come from the verifier's Hugging Face tokenizer and are fed to llama.cpp as ids, never as
text: :func:`check_vocab` first refuses a GGUF whose token list differs from that tokenizer's.
What llama.cpp cannot give: ``--signals mc-dropout`` (its graph has no dropout to switch on),
refused by :func:`check_signals`; audio backends (llama.cpp here runs text-only models).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

#: The llama-cpp-python release this module is written and tested against (the `llama-cpp` extra pins it).
PINNED = "0.3.36"
RUNTIMES = ("transformers", "llama-cpp")
DEFAULT_N_CTX = 4096  # KV cells shared by all slots of one utterance: prompt once, plus each branch's tail
N_BATCH = 512


def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("--drafter-runtime llama-cpp needs llama-cpp-python (built from source, a few minutes): "
                        f"pip install 'sectrace[llama-cpp]' (llama-cpp-python=={PINNED})") from None
    try:
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and context logs would drown collect's own lines
    except ImportError:  # another release moved it: noisier, not wrong
        pass
    return llama_cpp


def check_signals(spec) -> None:
    """Refuse, before any model loads, a signal that llama.cpp cannot compute."""
    if spec is not None and "mc-dropout" in spec.names:
        raise UserError("--signals mc-dropout needs dropout in the drafter's graph, which llama.cpp does not have; "
                        "collect it with --drafter-runtime transformers, or drop mc-dropout from --signals "
                        "(stability and audio-shift work on llama.cpp)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _ftype_names(lib) -> dict[int, str]:
    names = {}
    for key in dir(lib):
        if key.startswith("LLAMA_FTYPE_") and isinstance(getattr(lib, key), int):
            names[getattr(lib, key)] = key.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return names


class LlamaCppModel:
    """A GGUF model loaded once (weights memory-mapped); each :meth:`open` makes a context with its own KV memory."""

    def __init__(self, path: str | Path, n_threads: int | None = None, n_ctx: int = DEFAULT_N_CTX):
        lib = _lib()
        from llama_cpp._internals import LlamaModel

        self.lib = lib
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"the drafter GGUF {path} does not exist; give --drafter the path of a .gguf file")
        if not _is_gguf(self.path):
            raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF'); --drafter-runtime llama-cpp "
                            "takes a .gguf model file, e.g. the one `sectrace weights setup` keeps")
        self.n_threads = int(n_threads or max((os.cpu_count() or 2) // 2, 1))
        self.n_ctx = int(n_ctx)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # the edge is a CPU here; a GPU build would otherwise offload
        if not _init_backend.done:
            lib.llama_backend_init()
            _init_backend.done = True
        try:
            self._model = LlamaModel(path_model=str(self.path), params=params, verbose=False)
        except ValueError:
            raise UserError(f"llama.cpp cannot load {path}; is it a complete GGUF of a text model "
                            "(re-download or re-join it)?") from None
        m = self._model.model
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._model.vocab))
        self.n_params = int(lib.llama_model_n_params(m))
        self.architecture = self.meta("general.architecture") or "unknown"
        ftype = self.meta("general.file_type")
        self.quantisation = _ftype_names(lib).get(int(ftype), f"file_type {ftype}") if ftype and ftype.isdigit() \
            else "unknown"
        buf = bytes(256)
        lib.llama_model_desc(m, buf, len(buf))
        self.desc = buf.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.size = self.path.stat().st_size
        train = int(lib.llama_model_n_ctx_train(m))
        if 0 < train < self.n_ctx:  # never past the trained context (llama.cpp warns, and positions extrapolate)
            self.n_ctx = train
        self._sha = None

    def meta(self, key: str) -> str | None:
        buf = bytes(4096)
        n = self.lib.llama_model_meta_val_str(self._model.model, key.encode(), buf, len(buf))
        return buf[:n].decode("utf-8", "replace") if n >= 0 else None

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha

    def token_text(self, i: int) -> str:
        return (self.lib.llama_vocab_get_text(self._model.vocab, i) or b"").decode("utf-8", "surrogateescape")

    def eos(self) -> set[int]:
        """The GGUF's end-of-generation ids (eos, eot) that it defines."""
        v = self._model.vocab
        ends = (self.lib.llama_vocab_eos(v), self.lib.llama_vocab_eot(v))
        return {int(t) for t in ends if 0 <= int(t) < self.n_vocab}

    def runtime_record(self) -> dict:
        """What the manifest says about how the drafter ran: the collection's identity keeps the content part."""
        import llama_cpp

        return {"name": "llama.cpp", "package": "llama-cpp-python", "version": llama_cpp.__version__,
                "gguf_file": self.path.name, "gguf_sha256": self.sha256, "gguf_bytes": self.size,
                "quantisation": self.quantisation, "description": self.desc, "n_threads": self.n_threads,
                "n_ctx": self.n_ctx, "kv_cache": "unified, f16 (llama.cpp default)"}

    def card(self, name: str, tok_fp: str) -> dict:
        """The manifest's model card, with the fields a transformers card has (adopt-probes compares them)."""
        return {"name": name, "revision": "sha256:" + self.sha256[:24], "vocab_size": self.n_vocab,
                "tokenizer_fingerprint": tok_fp, "architecture": f"{self.architecture} (GGUF, llama.cpp)",
                "dtype": self.quantisation, "parameters": self.n_params, "runtime": self.runtime_record()}

    def open(self, vocab: int, slots: int = 4, extra_seqs: int = 0) -> LlamaCppLM:
        return LlamaCppLM(self, vocab, slots=slots, extra_seqs=extra_seqs)

    def context(self, n_seq_max: int):
        from llama_cpp._internals import LlamaContext

        lib = self.lib
        p = lib.llama_context_default_params()
        p.n_ctx = self.n_ctx
        p.n_batch = p.n_ubatch = N_BATCH
        p.n_seq_max = n_seq_max
        p.n_threads = p.n_threads_batch = self.n_threads
        p.kv_unified = True  # slots share the prompt's cells; seq_cp only tags them
        p.no_perf = True
        try:
            return LlamaContext(model=self._model, params=p, verbose=False)
        except ValueError:
            raise UserError(f"llama.cpp cannot make a context of {self.n_ctx} tokens for {self.path.name} "
                            "(out of memory?)") from None


class _init_backend:
    done = False


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


class _CPU:
    type = "cpu"  # what the probes ask (`lm.device.type == "cuda"` means synchronise)


@dataclass
class _Slot:
    seq_id: int
    tokens: list
    used: int
    rows: dict  # position -> logit row (float32 numpy, shared vocabulary) computed at that position


class LlamaCppLM:
    """One utterance's llama.cpp context: ``logits_for(seq, n)`` as :class:`~sectrace.models.lm.CachedLM` has it.

    Logit rows are computed only for the positions a request needs (the last ``n``), and kept
    per slot (at most ``KEEP_ROWS``) so a request that goes back up the trie is answered without a pass.
    Row ``i`` depends on tokens ``0..i`` only, so rows below a crop stay valid.
    """

    def __init__(self, model: LlamaCppModel, vocab: int, slots: int = 4, extra_seqs: int = 0):
        from .lm import Counters

        self.model = model
        self.lib = model.lib
        self.vocab = int(vocab)
        self.max_slots = max(1, slots)
        self.extra = int(extra_seqs)  # sequence ids above the slots, for batched continuations (stability)
        self.ctx = model.context(self.max_slots + self.extra)
        self.mem = self.lib.llama_get_memory(self.ctx.ctx)
        self.batch = self.lib.llama_batch_init(N_BATCH, 0, 1)
        self.device = _CPU()
        self.counters = Counters()
        self.reset()

    def close(self):
        if getattr(self, "batch", None) is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()
            self.ctx = None

    def __del__(self):
        self.close()

    def reset(self):
        self.lib.llama_memory_clear(self.mem, True)
        self.slots: list[_Slot] = []
        self._clock = 0

    def forget_logits(self):
        """Drop stored rows (the KV memory stays), so the next request really runs its last position (probes)."""
        for s in self.slots:
            s.rows = {}

    @property
    def seq(self) -> list[int]:
        return max(self.slots, key=lambda s: s.used).tokens if self.slots else []

    def _best(self, seq):
        from .lm import CachedLM

        best, common = None, 0
        for s in self.slots:
            c = CachedLM._common(s.tokens, seq)
            if best is None or c > common:
                best, common = s, c
        return best, common

    def _free_id(self) -> int:
        taken = {s.seq_id for s in self.slots}
        return next(i for i in range(self.max_slots) if i not in taken)

    def _evict(self, keep=None):
        victim = min((s for s in self.slots if s is not keep), key=lambda s: s.used)
        self.slots.remove(victim)
        self.lib.llama_memory_seq_rm(self.mem, victim.seq_id, -1, -1)

    def _prepare(self, best, keep: int) -> _Slot:
        """The slot to extend, holding the first ``keep`` positions (a copy when cropping would lose a branch)."""
        lib = self.lib
        self._clock += 1
        if best is None or keep == 0:
            if len(self.slots) >= self.max_slots:
                self._evict()
            slot = _Slot(self._free_id(), [], self._clock, {})
            lib.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            self.slots.append(slot)
            return slot
        if keep < len(best.tokens) and self.max_slots > 1:
            if len(self.slots) >= self.max_slots:
                self._evict(keep=best)
            slot = _Slot(self._free_id(), list(best.tokens[:keep]), self._clock,
                         {p: r for p, r in best.rows.items() if p < keep})
            lib.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            lib.llama_memory_seq_cp(self.mem, best.seq_id, slot.seq_id, 0, keep)
            self.slots.append(slot)
            return slot
        best.used = self._clock
        if keep < len(best.tokens):
            if not lib.llama_memory_seq_rm(self.mem, best.seq_id, keep, -1):
                raise RuntimeError("llama.cpp refused to crop the KV cache")
            best.tokens = best.tokens[:keep]
            best.rows = {p: r for p, r in best.rows.items() if p < keep}
        return best

    def _decode(self, items, want) -> dict:
        """Run ``items`` ((token, position, seq_id), …) in batches of N_BATCH; rows at the indices in ``want``.

        Returns {index in items: logit row}."""
        import numpy as np

        lib, b, out = self.lib, self.batch, {}
        for lo in range(0, len(items), N_BATCH):
            chunk = items[lo: lo + N_BATCH]
            b.n_tokens = len(chunk)
            for i, (tok, pos, sid) in enumerate(chunk):
                b.token[i] = int(tok)
                b.pos[i] = int(pos)
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = int(sid)
                b.logits[i] = (lo + i) in want
            rc = lib.llama_decode(self.ctx.ctx, b)
            if rc != 0:
                raise UserError(f"llama.cpp could not run {len(chunk)} tokens (llama_decode returned {rc}"
                                + (f": the context of {self.model.n_ctx} tokens is full; the prompt plus the "
                                   "explored captions do not fit" if rc == 1 else "") + ")")
            for i in range(len(chunk)):
                if (lo + i) in want:
                    ptr = lib.llama_get_logits_ith(self.ctx.ctx, i)
                    out[lo + i] = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))[: self.vocab].copy()
        return out

    def logits_for(self, seq: list[int], n: int):
        """Logits (float64 torch tensor, shared vocabulary) at the last ``n`` positions of ``seq``."""
        import numpy as np
        import torch

        from .lm import KEEP_ROWS

        if n < 1 or n > len(seq):
            raise ValueError("need 1 <= n <= len(seq)")
        first = len(seq) - n
        best, common = self._best(seq)
        if best is not None and common == len(seq) and all(p in best.rows for p in range(first, len(seq))):
            best.used = self._clock = self._clock + 1
            self.counters.reused += n
            return torch.from_numpy(np.stack([best.rows[p] for p in range(first, len(seq))])).double()
        keep = min(common, len(seq) - 1)
        for p in range(first, keep):  # a needed row that is not stored: run from there
            if best is None or p not in best.rows:
                keep = p
                break
        slot = self._prepare(best, keep)
        t0 = time.perf_counter()
        items = [(seq[p], p, slot.seq_id) for p in range(keep, len(seq))]
        want = {p - keep for p in range(max(first, keep), len(seq))}
        fresh = self._decode(items, want)
        rows = [fresh[p - keep] if p >= keep else slot.rows[p] for p in range(first, len(seq))]
        for i, row in fresh.items():
            slot.rows[keep + i] = row
        if len(slot.rows) > KEEP_ROWS:
            for p in sorted(slot.rows)[: len(slot.rows) - KEEP_ROWS]:
                del slot.rows[p]
        slot.tokens = list(seq)
        c = self.counters
        c.seconds += time.perf_counter() - t0
        c.calls += 1
        c.tokens += len(items)
        c.reused += max(0, keep - first)
        if keep == 0:
            c.prefill_tokens += len(items)
        c.recomputed += max(0, min(common, len(seq)) - keep)
        return torch.from_numpy(np.stack(rows)).double()

    def continuation_rows(self, seq: list[int], tokens: list[int]):
        """Logit rows after appending each of ``tokens`` to ``seq``: one batched pass, on copies of ``seq``'s cells.

        The llama.cpp form of :func:`~sectrace.models.lm.one_token_rows` on a ``prefix_cache``: each
        candidate runs on its own temporary sequence that shares ``seq``'s cells (``seq_cp``), so the
        slots, their rows and ``counters`` are untouched (the signal's cost is counted by the caller)."""
        import numpy as np
        import torch

        if len(tokens) > self.extra:
            raise ValueError(f"{len(tokens)} continuations, but the context has {self.extra} spare sequences")
        best, common = self._best(seq)
        if best is None or common < len(seq):
            self.logits_for(seq, 1)  # only when no slot holds the prefix; counted in counters
            best, common = self._best(seq)
        lib, L = self.lib, len(seq)
        ids = [self.max_slots + j for j in range(len(tokens))]
        for sid in ids:
            lib.llama_memory_seq_rm(self.mem, sid, -1, -1)
            lib.llama_memory_seq_cp(self.mem, best.seq_id, sid, 0, L)
        try:
            rows = self._decode([(t, L, sid) for t, sid in zip(tokens, ids)], set(range(len(tokens))))
        finally:
            for sid in ids:
                lib.llama_memory_seq_rm(self.mem, sid, -1, -1)
        return torch.from_numpy(np.stack([rows[j] for j in range(len(tokens))])).double()


def check_vocab(model: LlamaCppModel, tok) -> int:
    """Refuse a GGUF whose token list is not the tokenizer's; returns the shared vocabulary size.

    The protocol sends token ids, and the drafter is fed the Hugging Face tokenizer's ids, so every
    id below ``len(tok)`` must name the same token string in the GGUF (rows past it are padding)."""
    n = len(tok)
    if model.n_vocab < n:
        raise UserError(f"the drafter GGUF has {model.n_vocab} tokens but the verifier's tokenizer {n}; both models "
                        "must share one tokenizer: use a GGUF of the verifier's model family")
    hf = tok.convert_ids_to_tokens(list(range(n)))
    bad = [i for i in range(n) if model.token_text(i) != hf[i]]
    if bad:
        i = bad[0]
        raise UserError(f"the drafter GGUF's vocabulary differs from the verifier's tokenizer at {len(bad)} of {n} ids "
                        f"(e.g. id {i}: {model.token_text(i)!r} in the GGUF, {hf[i]!r} in the tokenizer); "
                        "draft–verify sends token ids, so both must share one tokenizer: use a GGUF of the "
                        "verifier's model family")
    return n


def load_pair_llamacpp(drafter: str, verifier: str, cloud_device: str = "cpu", dtype: str = "auto",
                       edge_threads: int | None = None, n_ctx: int = DEFAULT_N_CTX):
    """The pair with the drafter on llama.cpp: the verifier's tokenizer and model (transformers), the GGUF
    drafter, their shared vocabulary and end ids. The vocabulary check runs before the verifier's heavy load."""
    import torch

    from .pair import PairInfo, eos_ids, load_causal_lm, load_tokenizer, model_rows

    tok = load_tokenizer(verifier, "verifier")
    d = LlamaCppModel(drafter, n_threads=edge_threads, n_ctx=n_ctx)
    shared = check_vocab(d, tok)
    if edge_threads:
        torch.set_num_threads(edge_threads)  # as the transformers runtime does: the verifier runs beside it
    v = load_causal_lm(verifier, "verifier", cloud_device, dtype)
    if shared > model_rows(v):
        raise UserError(f"the tokenizer has {shared} ids but the verifier's output layer has {model_rows(v)} rows; "
                        "check the verifier path")
    eos = eos_ids(tok, v) | frozenset(d.eos())
    return PairInfo(tok, d, v, shared, frozenset(eos), drafter, verifier)
