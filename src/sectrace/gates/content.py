"""Content rules: escalate blocks whose *text* carries what a caption must get right.

Entropy is blind to meaning: it fires on uncertain filler and stays quiet on a confident
wrong emotion word. These rules look at the drafted words instead (digits, dates, names,
and the emotion words that carry an emotion caption), so they need the trace's token
pieces (vocab.parquet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError
from ..protocol import Block

#: Emotion words (and their common forms): the words an emotion caption is judged on.
EMOTION_WORDS = frozenset("""
angry anger angrily irritated irritation annoyed annoyance frustrated frustration furious rage mad hostile
happy happiness happily joy joyful cheerful cheerfully glad delighted excited excitedly excitement elated
content contented pleased amused laughing laughter playful
sad sadness sadly sorrow sorrowful gloomy upset unhappy depressed crying sobbing tears despair grief
melancholy miserable disappointed disappointment
fear fearful afraid scared anxious anxiety nervous nervously worried worry panic terrified frightened
tense tension trembling hesitant uneasy
surprise surprised surprising astonished amazed startled shocked disbelief
disgust disgusted contempt scornful
neutral calm calmly relaxed steady composed flat indifferent bored
pride proud shame ashamed hope hopeful relief relieved confidence confident doubt doubtful
emotion emotional mood feeling feelings
""".split())
MONTHS = frozenset("january february march april may june july august september october november december "
                   "jan feb mar apr jun jul aug sep sept oct nov dec".split())
WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
#: Capitalised words that are not names (sentence starts, pronouns).
NOT_NAMES = frozenset("the a an he she they it i we you his her their this that there these those "
                      "speaker speakers voice".split())
RULES = ("digits", "dates", "names", "emotion")
_ORDINAL = re.compile(r"^\d{1,2}(st|nd|rd|th)$")


def _is(rule: str, piece: str) -> bool:
    word = piece.strip()
    low = word.lower().strip(".,;:!?\"'")
    if not word:
        return False
    if rule == "digits":
        return any(ch.isdigit() for ch in word)
    if rule == "dates":
        return low in MONTHS or low in WEEKDAYS or bool(_ORDINAL.match(low))
    if rule == "names":
        w = word.strip(".,;:!?\"'")
        return len(w) > 1 and w[0].isupper() and w[1:].islower() and w.isalpha() and low not in NOT_NAMES
    return low in EMOTION_WORDS


def token_flags(pieces: dict[int, bytes], rules) -> frozenset[int]:
    """The token ids whose text matches any of ``rules``."""
    flagged = set()
    for tid, raw in pieces.items():
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        if any(_is(rule, text) for rule in rules):
            flagged.add(int(tid))
    return frozenset(flagged)


def parse_rules(arg: str) -> tuple[str, ...]:
    rules = tuple(r for r in (arg or "emotion").replace("+", " ").split() if r)
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise UserError(f"unknown content rule {bad[0]!r}; use {', '.join(RULES)}, joined with +, "
                        "e.g. content:digits+emotion")
    return rules


@dataclass(frozen=True)
class ContentGate:
    """Escalate a block that drafts a flagged token (by its text).

    Build it with :meth:`for_trace` (or give ``flagged`` token ids directly). A word split
    into several tokens is flagged by each piece's own text, so this is a per-token rule.
    """

    rules: tuple[str, ...]
    flagged: frozenset[int] = field(default=frozenset(), repr=False)

    @classmethod
    def for_trace(cls, rules, trace) -> "ContentGate":
        if trace is None or getattr(trace, "vocab", None) is None:
            raise UserError("content gates need token text: use a trace with vocab.parquet (and pass the trace "
                            "when building the gate from Python: parse_gate(spec, trace=trace))")
        pieces = dict(zip(trace.vocab["id"].to_list(), trace.vocab["piece"].to_list()))
        return cls(tuple(rules), token_flags(pieces, rules))

    def escalate(self, block: Block) -> bool:
        flagged = self.flagged
        return any(t in flagged for t in block.tokens)
