"""Write a transformers Qwen2 checkpoint as a GGUF file that llama.cpp loads (F32 or F16).

Why: to run the *same* drafter in both runtimes (tokens/s of llama.cpp against transformers in
benchmarks/bench_llamacpp.py, and the llama.cpp tests on tiny random models), without the
convert script, which ships in llama.cpp's source but not in the llama-cpp-python wheel. Qwen2
is the only architecture written (the study's drafters are Qwen2.5); its rotary embedding is
llama.cpp's NEOX kind, so the Q/K weights go in unpermuted, as llama.cpp's convert script writes
them. The token list is the tokenizer's, padded to the output layer's rows with unused
``[PADi]`` tokens, so :func:`sectrace.models.llamacpp.check_vocab` accepts it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

OUTTYPES = ("f32", "f16")


def _merges(tok) -> list[str]:
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise UserError("only byte-level BPE tokenizers (Qwen2's kind) are written to GGUF")
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def export_qwen2_gguf(model_dir: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """Write ``model_dir`` (a saved Qwen2ForCausalLM and its tokenizer) to ``out`` as GGUF; returns ``out``."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if outtype not in OUTTYPES:
        raise UserError(f"unknown GGUF type {outtype!r}; use f32 or f16")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg = model.config
    if cfg.model_type != "qwen2":
        raise UserError(f"{model_dir} is a {cfg.model_type} model; only qwen2 checkpoints are written to GGUF here")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = int(model.get_output_embeddings().weight.shape[0])
    n_tok = len(tok)
    if n_tok > rows:
        raise UserError(f"the tokenizer has {n_tok} ids but the model's output layer {rows} rows")
    arch = gguf.MODEL_ARCH.QWEN2
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(Path(model_dir).name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(cfg.num_key_value_heads))
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    w.add_rope_freq_base(float(rope))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    ftype = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    w.add_file_type(int(ftype))
    # The vocabulary: the tokenizer's strings by id, specials as control tokens, padding rows unused.
    special = set(tok.all_special_ids)
    added = {i: t for i, t in tok.added_tokens_decoder.items()}
    tokens, types = [], []
    for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n_tok)))):
        tokens.append(t)
        if i in special or (i in added and added[i].special):
            types.append(gguf.TokenType.CONTROL)
        elif i in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(n_tok, rows):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(_merges(tok))
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = eos if eos is not None else tok.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is not None:
        w.add_eos_token_id(int(eos))
    if tok.pad_token_id is not None:
        w.add_pad_token_id(int(tok.pad_token_id))
    w.add_add_bos_token(False)
    # The tensors, by llama.cpp's names; 1-D ones (norms, biases) stay F32 as llama.cpp's converter keeps them.
    names = gguf.get_tensor_name_map(arch, int(cfg.num_hidden_layers))
    state = model.state_dict()
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for key, t in state.items():
        if tied and key == "lm_head.weight":
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for tensor {key} of {model_dir}")
        data = t.detach().cpu().numpy()
        data = data.astype(np.float16 if outtype == "f16" and data.ndim > 1 else np.float32)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
