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


#: How few-shot examples are put before the prompt: the references' style, shown, not described.
FEW_SHOT_HEADER = "Examples of how such descriptions are written:\n"


def few_shot_examples(pool: list[Utterance], scored: list[Utterance], n: int, seed: int = 0) -> list[str]:
    """``n`` reference captions to show as examples, none of them a reference of any clip being scored.

    Drawn from the pool's utterances that are not scored (by id), leaving out any caption that is also a
    reference of a scored clip (the same text under another id), one per emotion label in turn where the
    pool has labels (so the examples do not lean towards one emotion), in an order fixed by ``seed``. One
    set for every clip: the same prompt prefix, so every shard and every clip sees the same examples."""
    import random

    if n < 1:
        return []
    taken_ids = {u.utt_id for u in scored}
    taken_text = {r.strip() for u in scored for r in u.references}
    by_label: dict[str, list[str]] = {}
    for u in pool:
        if u.utt_id in taken_ids:
            continue
        for r in u.references:
            if r.strip() and r.strip() not in taken_text:
                by_label.setdefault(str(u.emotion or ""), []).append(r.strip())
    rng = random.Random(seed)
    labels = sorted(by_label)
    for lab in labels:
        rng.shuffle(by_label[lab])
    rng.shuffle(labels)
    out: list[str] = []
    while len(out) < n and any(by_label.values()):
        for lab in labels:
            if by_label[lab] and len(out) < n:
                out.append(by_label[lab].pop())
    if len(out) < n:
        raise UserError(f"--few-shot {n} needs {n} reference captions from clips that are not being collected; "
                        f"the pool has {len(out)}: give --few-shot-from MANIFEST with other clips, or collect "
                        "fewer (--limit)")
    return out


def with_examples(template: str, examples: list[str]) -> str:
    """The prompt (template or instruction) with the examples before it, one per line."""
    if not examples:
        return template
    return FEW_SHOT_HEADER + "".join(f"- {e}\n" for e in examples) + "\n" + template


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
