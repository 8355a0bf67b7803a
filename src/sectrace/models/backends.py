"""Backends: how an utterance becomes prompt ids (and model inputs) for the edge and each verifier mode.

``causal-lm``: any AutoModelForCausalLM pair with a text prompt, for cascaded pipelines where
the device turns audio into text (the manifest's ``text`` column). Its ``audio`` verifier
mode sees the full prompt, transcript included; its ``blind`` mode sees the instruction only
(the transcript is what stays on the device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .dataset import Utterance

DEFAULT_TEXT_PROMPT = "Transcript: {transcript}\nDescribe the speaker's emotion in one sentence."


@dataclass
class Prepared:
    """One utterance ready to decode: prompt ids per side and mode, extra first-pass inputs, sizes."""

    edge_prompt: list[int]
    cloud_prompts: dict[str, list[int]]
    edge_kwargs: dict = field(default_factory=dict)
    cloud_kwargs: dict[str, dict] = field(default_factory=dict)
    audio_seconds: float = 0.0
    feature_bytes: int = 0
    raw_audio_bytes: int = 0


def encode_prompt(tok, text: str) -> list[int]:
    """Prompt ids; wrapped in the tokenizer's chat template when it has one (instruct models expect it)."""
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]
    return [int(i) for i in tok(text)["input_ids"]]


class CausalLMBackend:
    name = "causal-lm"

    def __init__(self, tokenizer, template: str = DEFAULT_TEXT_PROMPT):
        if "{transcript}" not in template:
            raise UserError("the causal-lm prompt must contain {transcript}, where the utterance's text goes")
        self.tok = tokenizer
        self.template = template

    def prepare(self, utt: Utterance, modes, edge_device="cpu", cloud_device="cpu") -> Prepared:
        import soundfile as sf

        if not utt.text:
            raise UserError(f"utterance {utt.utt_id} has no transcript; the causal-lm backend needs a 'text' column "
                            "in the manifest (use an audio backend to caption from audio)")
        full = encode_prompt(self.tok, self.template.format(transcript=utt.text))
        blind = encode_prompt(self.tok, self.template.format(transcript="").strip())
        seconds, raw = 0.0, 0
        if utt.audio is not None:
            try:
                info = sf.info(str(utt.audio))
                seconds, raw = float(info.duration), int(info.frames * 2)  # 16-bit mono at the source rate
            except Exception:
                from .dataset import load_audio

                load_audio(utt.audio)  # raises the clear error
        return Prepared(full, {"audio": full, "blind": blind}, audio_seconds=seconds,
                        feature_bytes=len(utt.text.encode()), raw_audio_bytes=raw)
