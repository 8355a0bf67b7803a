"""Units as people write them: ``50ms``, ``0.05s``, ``20Mbit/s``, ``1.5 MB/s``, ``64B``."""

from __future__ import annotations

import re

from .errors import UserError

_NUM = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
_TIME = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0}
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_duration(text: str | float, what: str = "duration", require_unit: bool = False) -> float:
    """Seconds from ``50ms``, ``0.05s``, ``2min``; a bare number is seconds unless ``require_unit``
    (on the command line ``--rtt 50`` could mean 50 ms or 50 s, so it is refused there)."""
    if isinstance(text, (int, float)) and not require_unit:
        return float(text)
    m = re.fullmatch(_NUM + r"([a-zµ]*)\s*", str(text).strip().lower())
    if not m or m.group(2) not in _TIME:
        raise UserError(f"cannot read {what} {text!r}; write it with a unit, e.g. 50ms, 0.05s or 2min")
    value = float(m.group(1)) * _TIME[m.group(2)]
    if require_unit and not m.group(2) and value != 0:
        raise UserError(f"{what} {text!r} has no unit; write {m.group(1)}ms or {m.group(1)}s")
    return value


def parse_rate(text: str | float, what: str = "bandwidth", require_unit: bool = False) -> float:
    """Bytes per second from ``20Mbit/s``, ``20Mbps``, ``2.5MB/s``, ``100kbit/s``; a bare number (from
    Python) is bytes per second unless ``require_unit`` (in a grid file ``20`` could mean 20 Mbit/s)."""
    if isinstance(text, (int, float)):
        if require_unit:
            raise UserError(f"{what} {text!r} has no unit; write {text:g}Mbit/s, {text:g}kbit/s or {text:g}MB/s")
        return float(text)
    s = str(text).strip()
    m = re.fullmatch(_NUM + r"([kKmMgG]?)(bit/s|bps|b/s|B/s|Bps|byte/s|bytes/s)\s*", s)
    if not m:
        raise UserError(f"cannot read {what} {text!r}; write it like 20Mbit/s, 100kbit/s or 2.5MB/s")
    number, prefix, unit = m.groups()
    value = float(number) * _PREFIX[prefix.lower()]
    if unit in ("bit/s", "bps", "b/s"):
        value /= 8.0
    if value <= 0:
        raise UserError(f"{what} {text!r} must be positive")
    return value


def parse_size(text: str | int, what: str = "size", require_unit: bool = False) -> int:
    """Bytes from ``64B``, ``1.5kB``, ``2MB``; a bare number is bytes unless ``require_unit``
    (a grid file asks for ``100B``, so that ``100`` is never read as kilobytes or bits by mistake)."""
    if isinstance(text, (int, float)) and not require_unit:
        return int(text)
    m = re.fullmatch(_NUM + r"([kKmMgG]?)(B|bytes?)?\s*", str(text).strip())
    if not m:
        raise UserError(f"cannot read {what} {text!r}; write it like 64B, 1.5kB or 2MB")
    value = int(float(m.group(1)) * _PREFIX[m.group(2).lower()])
    if require_unit and not m.group(3) and value != 0:
        raise UserError(f"{what} {text!r} has no unit; write {m.group(1)}{m.group(2)}B")
    return value


def fmt_seconds(x: float) -> str:
    if x != x:
        return "–"
    if x < 1.0:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


def fmt_bytes(x: float) -> str:
    if x != x:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{x:.0f} B"
