"""One edge–cloud network path, as plain data: the simulator prices it, the live proxy shapes it.

Jitter is a scipy.stats spec (parsed lazily: pricing a preset needs only its mean, in closed form
for the common families); loss costs one retransmission timeout per lost message.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Network:
    """One edge–cloud path: round-trip time, bandwidth each way, bytes of framing per message,
    jitter (a scipy.stats spec: extra one-way delay per message), loss (probability a message is
    lost; each loss costs one retransmission timeout ``rto_s``).

    The closed form prices jitter and loss at their expected values (mean jitter per message;
    ``loss/(1-loss)`` timeouts per message); the SimPy engine samples them.
    """

    rtt_s: float = 0.05
    up_Bps: float = 20e6 / 8
    down_Bps: float = 50e6 / 8
    overhead_bytes: int = 100
    jitter: str | None = None
    loss: float = 0.0
    rto_s: float = 0.2
    name: str = ""

    def __post_init__(self):
        if self.rtt_s < 0:
            raise UserError(f"RTT {self.rtt_s}s cannot be negative")
        if self.up_Bps <= 0 or self.down_Bps <= 0:
            raise UserError("bandwidths must be positive, e.g. 20Mbit/s")
        if not 0.0 <= self.loss < 1.0:
            raise UserError(f"loss {self.loss} must be a probability in [0, 1), e.g. 0.01")
        if self.rto_s < 0:
            raise UserError("the retransmission timeout cannot be negative, e.g. 200ms")
        _jitter_mean(self.jitter)  # fail early on a bad spec

    @property
    def jitter_mean_s(self) -> float:
        return _jitter_mean(self.jitter)

    @property
    def expected_extra_s(self) -> float:
        """Expected seconds added to each message by jitter and retransmissions."""
        return self.jitter_mean_s + self.loss / (1.0 - self.loss) * self.rto_s

    def jitter_dist(self):
        return parse_jitter(self.jitter)


_DIST = re.compile(r"\s*([a-z_0-9]+)\s*\((.*)\)\s*")


@functools.lru_cache(maxsize=256)
def parse_jitter(spec: str | None):
    """A frozen scipy.stats distribution (seconds of extra one-way delay per message) from a spec such as
    ``expon(scale=0.002)`` or ``lognorm(s=0.5,scale=0.003)``; ``None``/``none`` means no jitter."""
    if spec is None or str(spec).strip().lower() in ("", "none", "0"):
        return None
    import scipy.stats as st

    m = _DIST.fullmatch(str(spec).lower())
    if not m:
        raise UserError(f"cannot read jitter {spec!r}; write a scipy.stats distribution, e.g. expon(scale=0.002)")
    name, args = m.groups()
    dist = getattr(st, name, None)
    if not isinstance(dist, st.rv_continuous):
        raise UserError(f"jitter {spec!r}: {name!r} is not a continuous scipy.stats distribution; try expon or lognorm")
    kwargs = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"jitter {spec!r}: write parameters as name=number, e.g. scale=0.002")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"jitter {spec!r}: write parameters as name=number, e.g. scale=0.002") from None
    try:
        frozen = dist(**kwargs)
        mean = float(frozen.mean())
        low = float(frozen.support()[0])
    except (TypeError, ValueError) as exc:
        raise UserError(f"jitter {spec!r}: {exc}") from None
    if not (mean >= 0 and low >= 0) or mean == float("inf"):
        raise UserError(f"jitter {spec!r} must be a non-negative delay with a finite mean (support from 0 up)")
    return frozen


# Means in closed form for the common families, so pricing a preset does not import scipy.stats (seconds).
_MEANS = {"expon": lambda loc=0.0, scale=1.0: loc + scale,
          "lognorm": lambda s, loc=0.0, scale=1.0: loc + scale * math.exp(s * s / 2),
          "uniform": lambda loc=0.0, scale=1.0: loc + scale / 2,
          "gamma": lambda a, loc=0.0, scale=1.0: loc + a * scale}


@functools.lru_cache(maxsize=256)
def _jitter_mean(spec: str | None) -> float:
    if spec is None or str(spec).strip().lower() in ("", "none", "0"):
        return 0.0
    m = _DIST.fullmatch(str(spec).lower())
    if m and m.group(1) in _MEANS:
        try:
            kw = {k.strip(): float(v) for k, _, v in (p.partition("=") for p in m.group(2).split(",") if p.strip())}
            mean = _MEANS[m.group(1)](**kw)
            if mean >= 0 and all(v >= 0 for v in kw.values()) and kw.get("scale", 1.0) > 0:
                return mean
        except (TypeError, ValueError):
            pass  # let scipy say what is wrong
    d = parse_jitter(spec)
    return 0.0 if d is None else float(d.mean())
