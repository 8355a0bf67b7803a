"""Gate specs as people type them: ``entropy:2.5``, ``margin:0.2``, ``content:emotion``,
``any(entropy:3,content:emotion)``, ``learned:gate.json:0.5``."""

from __future__ import annotations

import math

from ..errors import UserError
from ..protocol import Accept, Policy
from .builtin import (
    Always,
    AudioShift,
    Margin,
    MaxEntropy,
    McDropout,
    MeanEntropy,
    MinLogProb,
    Never,
    RandomGate,
    Stability,
)
from .combine import AllGate, AnyGate
from .oracle import Oracle

GATES = {
    "always": (Always, None, "escalate every block"),
    "never": (Never, None, "never escalate (edge only)"),
    "entropy": (MaxEntropy, 2.5, "max token entropy in the block above T nats (the study's gate)"),
    "entropy-mean": (MeanEntropy, 2.0, "mean token entropy in the block above T nats"),
    "margin": (Margin, 0.2, "smallest top1-top2 probability margin below T"),
    "logprob": (MinLogProb, -1.5, "smallest drafted log-prob below T nats"),
    "random": (RandomGate, 0.5, "escalate with probability T (baseline)"),
    "stability": (Stability, 0.5, "smallest x_stability (drafter prediction stability) below T"),
    "audio": (AudioShift, 0.5, "largest x_audio_shift (drafter distribution moved by the audio) above T"),
    "mc-dropout": (McDropout, 0.75, "smallest x_mc_agree (MC-dropout passes keeping the drafted token) below T"),
    "oracle": (Oracle, None, "escalate exactly the blocks the verifier would change (replay only: the upper bound)"),
}
#: Threshold ranges where a gate's signal has one (lo, hi, what the signal is), inclusive; all must be finite.
RANGES = {
    "entropy": (0.0, math.inf, "an entropy in nats (at least 0)"),
    "entropy-mean": (0.0, math.inf, "an entropy in nats (at least 0)"),
    "margin": (0.0, 1.0, "a probability margin between 0 and 1"),
    "logprob": (-math.inf, 0.0, "a log-probability in nats (at most 0)"),
    "random": (0.0, 1.0, "a probability between 0 and 1"),
    "stability": (0.0, 1.0, "an x_stability value between 0 and 1"),
    "audio": (0.0, math.inf, "an x_audio_shift value (at least 0)"),
    "mc-dropout": (0.0, 1.0, "an x_mc_agree share between 0 and 1"),
}
#: Longest gate spec, and deepest any(...)/all(...) nesting, that parse_gate reads.
MAX_SPEC_CHARS = 4096
MAX_SPEC_DEPTH = 32
#: Gates whose argument is not one threshold: name -> help.
SPECIAL = {
    "content": "content:RULES = a drafted token is a digit, date, name or emotion word (RULES joined by +, "
               "e.g. content:emotion or content:digits+dates+names+emotion)",
    "learned": "learned:FILE:P = a learned gate (sectrace gates train) escalating when P(block rejected) > P",
    "any": "any(G1,G2,...) = escalate if any gate does",
    "all": "all(G1,G2,...) = escalate only if every gate does",
}


def gate_help() -> str:
    parts = [f"{name}{':T' if default is not None else ''} = {text}" for name, (_, default, text) in GATES.items()]
    return "; ".join(parts + list(SPECIAL.values()))


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside parentheses (so gate lists may hold any(...)/all(...))."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UserError(f"unbalanced ')' in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise UserError(f"unbalanced '(' in {text!r}; write e.g. any(entropy:3,content:emotion)")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


class GateFileNotGiven(UserError):
    """A spec read back from results names a learned-gate file the user did not pass; the file was not opened."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"the learned gate file {path} named in the results was not opened (results never choose "
                         f"files to open); pass it explicitly, e.g. --gate-file {path}")


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def parse_gate(spec: str, trace=None, gate_files=None):
    """A gate object from its spec; the spec string doubles as the gate's label in results.

    ``trace`` is needed by gates that read token text (content rules) and lets learned
    gates check that the trace has their features. ``gate_files`` (a
    :class:`~sectrace.gates.learned.GateFiles`) is for specs that come from data rather than
    from the user, such as a results file's gate column: ``learned:FILE`` then loads only a
    file given there, and raises :class:`GateFileNotGiven` (opening nothing) otherwise.
    """
    if not isinstance(spec, str):
        raise UserError(f"a gate spec must be text, e.g. entropy:2.5, not {type(spec).__name__}")
    if len(spec) > MAX_SPEC_CHARS:
        raise UserError(f"the gate spec is {len(spec):,} characters, over the limit of {MAX_SPEC_CHARS:,}; "
                        "write a shorter one, e.g. any(entropy:3,content:emotion)")
    if _nesting(spec) > MAX_SPEC_DEPTH:
        raise UserError(f"the gate spec nests any(...)/all(...) {_nesting(spec)} deep, over the limit of "
                        f"{MAX_SPEC_DEPTH}; flatten it, e.g. any(entropy:3,margin:0.1,content:emotion)")
    return _parse(spec, trace, gate_files)


def _parse(spec: str, trace, gate_files):
    text = spec.strip()
    low = text.lower()
    for combo, cls in (("any", AnyGate), ("all", AllGate)):
        if low.startswith(combo + "(") and low.endswith(")"):
            inner = split_top(text[len(combo) + 1:-1])
            if not inner:
                raise UserError(f"{combo}() needs at least one gate, e.g. {combo}(entropy:3,margin:0.1)")
            return cls(tuple(_parse(s, trace, gate_files) for s in inner))
    name, _, arg = text.partition(":")
    name = name.lower()
    if name == "content":
        from .content import ContentGate, parse_rules

        return ContentGate.for_trace(parse_rules(arg.lower()), trace)
    if name == "learned":
        from .learned import load_learned

        path, _, thr = arg.rpartition(":")
        if not path:
            path, thr = arg, ""
        try:
            threshold = float(thr) if thr else 0.5
        except ValueError:
            path, threshold = arg, 0.5
        if not path:
            raise UserError("learned gates need a file, e.g. learned:gate.json:0.5")
        if gate_files is None:
            return load_learned(path, threshold, trace)
        gate = gate_files.load(path, threshold, trace)
        if gate is None:
            raise GateFileNotGiven(path)
        return gate
    arg = arg.lower()
    if name not in GATES:
        raise UserError(f"unknown gate {spec[:80]!r}; known gates: {', '.join(list(GATES) + list(SPECIAL))} "
                        "(e.g. --gate entropy:2.5)")
    cls, default, _ = GATES[name]
    if default is None:
        if arg:
            raise UserError(f"gate {name!r} takes no threshold; write just {name}")
        return cls()
    try:
        value = float(arg) if arg else default
    except ValueError:
        raise UserError(f"cannot read the threshold in gate {spec[:80]!r}; write e.g. {name}:{default}") from None
    lo, hi, what = RANGES[name]
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{name}:{arg} needs a finite threshold, {what}, e.g. {name}:{default}")
    return cls(value)


def parse_policy(text: str, max_new_tokens: int):
    """A policy from words like ``k=5 gate=entropy:2.5 accept=rank:20 token-only`` (Policy.label's form)."""
    kw = {"k": 5, "gate_spec": "always", "accept": Accept("rank", 20), "privacy": "features"}
    for word in text.replace(",", " ").split():
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq and key in ("token-only", "features", "raw"):
            kw["privacy"] = key
        elif not eq and key == "no-bonus":
            kw["bonus"] = False
        elif not eq and key == "stateless":
            kw["cloud_cache"] = "stateless"
        elif key == "k":
            try:
                kw["k"] = int(value)
            except ValueError:
                raise UserError(f"policy {text!r}: k={value} is not a whole number") from None
        elif key == "gate":
            kw["gate_spec"] = value.lower()
        elif key == "accept":
            kw["accept"] = Accept.parse(value)
        elif key == "privacy":
            kw["privacy"] = value
        elif key == "adaptive":
            kw["adaptive"] = float(value)
        else:
            raise UserError(f"cannot read {word!r} in policy {text!r}; write e.g. "
                            "'k=5 gate=entropy:2.5 accept=rank:20 token-only'")
    return Policy(gate=parse_gate(kw["gate_spec"]), max_new_tokens=max_new_tokens, **kw)
