"""Audio backends: Qwen2.5-Omni's thinker and Qwen2-Audio, audio → 128-mel features + placeholder tokens.

Processor-free on purpose: ``Qwen2_5OmniProcessor`` builds image/video processors that need
torchvision. The prompt is the models' chat format written out, the audio block is
``<|audio_bos|>`` + N × ``<|AUDIO|>`` + ``<|audio_eos|>`` where N follows the encoder's two
stride-2 stages exactly as the processor computes it, and features come from the
checkpoint's ``WhisperFeatureExtractor`` padded to 30 s with a mask over the real frames.

Verifier modes: ``audio`` sees the same audio block as the drafter; ``blind`` sees the
system prompt and instruction only, never the audio (the token-only privacy mode).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .backends import Prepared
from .dataset import SAMPLE_RATE, Utterance, load_audio

DEFAULT_INSTRUCTION = "Describe the speaker's emotional state in one sentence, based on their voice."
OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")
QWEN2_AUDIO_SYSTEM = "You are a helpful assistant."


def audio_tokens(n_frames: int) -> int:
    """Placeholder count for ``n_frames`` mel frames (conv stride 2, then pooling stride 2)."""
    first = (n_frames - 1) // 2 + 1
    return (first - 2) // 2 + 1


def load_feature_extractor(path: str):
    from transformers import WhisperFeatureExtractor

    try:
        return WhisperFeatureExtractor.from_pretrained(path, local_files_only=Path(path).exists())
    except Exception as exc:
        raise UserError(f"cannot load the audio feature extractor from {path} ({str(exc).splitlines()[0][:120]}); "
                        "the model folder needs preprocessor_config.json") from None


class AudioChatBackend:
    """Chat-format prompt with an audio block; ``kind`` is ``omni-thinker`` or ``qwen2-audio``."""

    def __init__(self, kind: str, tokenizer, model, feature_extractor, instruction: str | None = None):
        self.name = kind
        self.tok = tokenizer
        self.fe = feature_extractor
        cfg = model.config
        self.audio_id = int(getattr(cfg, "audio_token_index", None) or getattr(cfg, "audio_token_id"))
        self.bos_id = tokenizer.convert_tokens_to_ids("<|audio_bos|>")
        self.eos_id = tokenizer.convert_tokens_to_ids("<|audio_eos|>")
        if getattr(cfg, "audio_start_token_id", None) is not None:
            self.bos_id, self.eos_id = int(cfg.audio_start_token_id), int(cfg.audio_end_token_id)
        self.instruction = instruction or DEFAULT_INSTRUCTION
        self.system = OMNI_SYSTEM if kind == "omni-thinker" else QWEN2_AUDIO_SYSTEM
        if getattr(self.fe, "feature_size", 128) != 128:
            raise UserError(f"the feature extractor gives {self.fe.feature_size} mel bins; these models need 128")
        p = next(model.parameters())
        self.dtype = p.dtype

    def _ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tok(text, add_special_tokens=False)["input_ids"]]

    def prompt(self, n_audio: int | None) -> list[int]:
        head = self._ids(f"<|im_start|>system\n{self.system}<|im_end|>\n<|im_start|>user\n")
        audio = []
        if n_audio is not None:
            lead = self._ids("Audio 1: ") if self.name == "qwen2-audio" else []
            audio = lead + [self.bos_id] + [self.audio_id] * n_audio + [self.eos_id]
            if self.name == "qwen2-audio":
                audio += self._ids("\n")
        tail = self._ids(f"{self.instruction}<|im_end|>\n<|im_start|>assistant\n")
        return head + audio + tail

    def features(self, wav, device):
        f = self.fe(wav, sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length",
                    return_tensors="pt")
        mask = f["attention_mask"]
        frames = int(mask.sum())
        return {"input_features": f["input_features"].to(device=device, dtype=self.dtype),
                "feature_attention_mask": mask.to(device)}, frames

    def prepare(self, utt: Utterance, modes, edge_device="cpu", cloud_device="cpu") -> Prepared:
        if utt.audio is None:
            raise UserError(f"utterance {utt.utt_id} has no audio path; the {self.name} backend captions audio")
        wav = load_audio(utt.audio)
        seconds = len(wav) / SAMPLE_RATE
        if seconds > 30:
            raise UserError(f"{utt.audio} lasts {seconds:.1f} s; the Whisper-style encoder takes at most 30 s: "
                            "cut the file or drop it from the manifest")
        edge_kw, frames = self.features(wav, edge_device)
        n = audio_tokens(frames)
        with_audio = self.prompt(n)
        cloud_kw = {"audio": self.features(wav, cloud_device)[0], "blind": {}}
        return Prepared(with_audio, {"audio": with_audio, "blind": self.prompt(None)}, edge_kwargs=edge_kw,
                        cloud_kwargs={m: cloud_kw[m] for m in modes}, audio_seconds=seconds,
                        feature_bytes=frames * 128 * 2, raw_audio_bytes=len(wav) * 2)


def load_audio_model(kind: str, path: str, what: str, device: str, dtype):
    """The thinker (from a thinker checkpoint or a full Omni checkpoint, talker dropped) or Qwen2-Audio."""
    import json

    from .paths import resolve_model_path

    src, local = resolve_model_path(path, what)
    try:
        if kind == "qwen2-audio":
            from transformers import Qwen2AudioForConditionalGeneration

            model = Qwen2AudioForConditionalGeneration.from_pretrained(src, local_files_only=local, dtype=dtype)
        else:
            from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

            mtype = None
            if local:
                mtype = json.loads((Path(src) / "config.json").read_text()).get("model_type")
            if mtype == "qwen2_5_omni":  # the released checkpoints: thinker + talker + token2wav
                full = Qwen2_5OmniForConditionalGeneration.from_pretrained(src, local_files_only=local, dtype=dtype,
                                                                           enable_audio_output=False)
                model = full.thinker
            else:
                model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(src, local_files_only=local,
                                                                                   dtype=dtype)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load the {what} ({kind}) from {path} ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval()
