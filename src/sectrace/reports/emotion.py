"""Emotion words: does a caption name the utterance's emotion, and which emotion words reach the cloud.

A small hand-made lexicon (English and Chinese) per emotion class. Consistency uses the dataset's
label where the utterance has one; otherwise the classes its references name. It is a coarse,
transparent check ("does the caption say the right emotion at all"), not a classifier.
"""

from __future__ import annotations

import re

import polars as pl

LEXICON: dict[str, tuple[str, ...]] = {
    "angry": ("angry", "anger", "angrily", "irritated", "irritation", "furious", "fury", "annoyed", "annoyance",
              "frustrated", "frustration", "mad", "rage", "enraged", "hostile", "outraged", "indignant",
              "生气", "愤怒", "恼火", "气愤", "不满", "烦躁"),
    "happy": ("happy", "happily", "happiness", "joy", "joyful", "cheerful", "glad", "pleased", "delighted",
              "content", "excited", "excitedly", "elated", "laughing", "laughter", "amused", "upbeat",
              "高兴", "开心", "快乐", "愉快", "兴奋", "喜悦"),
    "sad": ("sad", "sadly", "sadness", "sorrow", "sorrowful", "gloomy", "unhappy", "depressed", "melancholy",
            "crying", "tears", "sobbing", "grief", "upset", "despair", "downcast", "dejected",
            "悲伤", "难过", "伤心", "沮丧", "失落", "哭"),
    "fearful": ("fear", "fearful", "afraid", "scared", "frightened", "terrified", "nervous", "nervously", "anxious",
                "anxiety", "panic", "trembling", "worried", "worry", "uneasy", "apprehensive",
                "害怕", "恐惧", "紧张", "担心", "焦虑", "不安"),
    "surprised": ("surprise", "surprised", "astonished", "astonishment", "startled", "amazed", "amazement",
                  "shocked", "shock", "disbelief", "stunned", "惊讶", "吃惊", "震惊", "意外"),
    "neutral": ("neutral", "calm", "calmly", "flat", "steady", "even", "evenly", "relaxed", "matter-of-fact",
                "composed", "unemotional", "平静", "中性", "平淡", "冷静"),
    "disgusted": ("disgust", "disgusted", "contempt", "repulsed", "revolted", "disdain", "厌恶", "恶心", "鄙视"),
}
#: Dataset labels and their spellings (IEMOCAP codes, MER2024 names) mapped to a lexicon class.
LABEL_ALIASES = {
    "ang": "angry", "anger": "angry", "angry": "angry", "fru": "angry", "frustrated": "angry",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy", "exc": "happy", "excited": "happy",
    "sad": "sad", "sadness": "sad",
    "fea": "fearful", "fear": "fearful", "fearful": "fearful", "worried": "fearful", "worry": "fearful",
    "sur": "surprised", "surprise": "surprised", "surprised": "surprised",
    "neu": "neutral", "neutral": "neutral", "calm": "neutral",
    "dis": "disgusted", "disgust": "disgusted", "disgusted": "disgusted",
}
_WORD_TO_CLASS = {w: c for c, ws in LEXICON.items() for w in ws}
_ZH_WORDS = sorted((w for w in _WORD_TO_CLASS if not w.isascii()), key=len, reverse=True)
_EN = re.compile(r"[a-z]+(?:-[a-z]+)*")


def label_class(label: str | None) -> str | None:
    """The lexicon class of a dataset label, None if it has none or is unknown."""
    if not label:
        return None
    return LABEL_ALIASES.get(label.strip().lower())


def emotion_words(text: str | None) -> list[tuple[str, str]]:
    """(word, class) for each emotion word in the text, in order of appearance."""
    if not text:
        return []
    low = text.lower()
    found = [(m.start(), m.group(0)) for m in _EN.finditer(low) if m.group(0) in _WORD_TO_CLASS]
    for w in _ZH_WORDS:
        for m in re.finditer(re.escape(w), low):
            found.append((m.start(), w))
    found.sort()
    return [(w, _WORD_TO_CLASS[w]) for _, w in found]


def emotion_classes(text: str | None) -> set[str]:
    return {c for _, c in emotion_words(text)}


def emotion_consistency(per_caption: pl.DataFrame, utterances: pl.DataFrame, chinese: bool = False) -> pl.DataFrame:
    """Per (utterance, caption): 1 if the caption names the target emotion, 0 if not, null if no target.

    The target is the utterance's label mapped to a class; without a (known) label, the classes
    the references name. ``emotion_named`` says whether the caption names any emotion at all.
    """
    labels = dict(zip(utterances["utt_id"].to_list(),
                      utterances["emotion"].to_list() if "emotion" in utterances.columns else [None] * utterances.height))
    refs = dict(zip(utterances["utt_id"].to_list(), utterances["references"].to_list()))
    target: dict[str, set[str]] = {}
    source: dict[str, str] = {}
    for u in labels:
        c = label_class(labels[u])
        if c is not None:
            target[u], source[u] = {c}, "label"
        else:
            t = set().union(*(emotion_classes(r) for r in (refs.get(u) or []))) if refs.get(u) else set()
            target[u], source[u] = t, "references" if t else "none"
    cons, named, src = [], [], []
    for u, cap in zip(per_caption["utt_id"].to_list(), per_caption["caption"].to_list()):
        got = emotion_classes(cap)
        named.append(float(bool(got)))
        t = target.get(u, set())
        cons.append(float(bool(got & t)) if t else None)
        src.append(source.get(u, "none"))
    return pl.DataFrame({"utt_id": per_caption["utt_id"], "caption": per_caption["caption"],
                         "emotion_consistency": cons, "emotion_named": named, "emotion_target_from": src},
                        strict=False)
