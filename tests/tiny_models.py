"""Tiny randomly initialised models and a tiny BPE tokenizer, built offline for the collect tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the speaker sounds calm and steady", "she sounds angry, her voice sharp and loud",
    "a happy voice, warm and bright", "he is sad, speaking slowly and softly",
    "the tone is nervous and fast", "a neutral, flat voice without strong emotion",
]


def make_tokenizer(path: Path, vocab_size: int = 300, extra: str = ""):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS + ([extra] if extra else []), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")
    fast.save_pretrained(path)
    return fast


def make_qwen2(path: Path, tok, seed: int, vocab_rows: int | None = None, layers: int = 2, hidden: int = 32,
               dtype="float64"):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_rows or len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      bos_token_id=None, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    # Random init is near-uniform; sharpen the output layer so greedy paths have real structure.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def make_pair(root: Path, drafter_rows: int | None = None):
    """A drafter (padded output layer when ``drafter_rows``) and a verifier sharing one tokenizer."""
    tok = make_tokenizer(root / "tok")
    d = make_qwen2(root / "drafter", tok, seed=1, vocab_rows=drafter_rows)
    v = make_qwen2(root / "verifier", tok, seed=2, layers=3)
    return tok, root / "drafter", root / "verifier"
