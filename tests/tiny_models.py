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
    make_qwen2(root / "drafter", tok, seed=1, vocab_rows=drafter_rows)
    make_qwen2(root / "verifier", tok, seed=2, layers=3)
    return tok, root / "drafter", root / "verifier"


AUDIO_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def make_audio_tokenizer(path: Path):
    tok = make_tokenizer(path)
    tok.add_special_tokens({"additional_special_tokens": AUDIO_SPECIALS})
    tok.save_pretrained(path)
    return tok


def make_thinker(path: Path, tok, seed: int, layers: int = 2, hidden: int = 32, dtype="float64"):
    """A tiny Qwen2.5-Omni thinker (audio encoder of one layer, 128 mels) plus its WhisperFeatureExtractor."""
    import torch
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    torch.manual_seed(seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in AUDIO_SPECIALS}
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=hidden, n_window=100, max_source_positions=1500),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=tok.eos_token_id, tie_word_embeddings=False),
        audio_token_index=ids["<|AUDIO|>"], audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"], image_token_index=tok.unk_token_id,
        video_token_index=tok.unk_token_id, user_token_id=tok.eos_token_id)
    cfg.vision_start_token_id = tok.unk_token_id  # real checkpoints carry it; get_rope_index reads it
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128, sampling_rate=16000).save_pretrained(path)
    return model


def tone(seconds: float, freq: float, sr: int = 16000):
    import numpy as np

    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def make_qwen2_audio(path: Path, tok, seed: int, hidden: int = 32, dtype="float64"):
    """A tiny Qwen2-Audio (one-layer Whisper-style encoder, 128 mels, Qwen2 text model)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    torch.manual_seed(seed)
    cfg = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.eos_token_id, tie_word_embeddings=False),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    model = Qwen2AudioForConditionalGeneration(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128, sampling_rate=16000).save_pretrained(path)
    return model
