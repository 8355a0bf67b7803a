"""The sweep grid file, declared once: every section's keys with their parser, a correct example and a line of doc.

A grid is read the way the command line reads its flags: durations, rates and sizes need their
unit (``rtt = [50]`` could be 50 s or 50 ms, so it is refused, as ``--rtt 50`` is), names are checked
against the presets, numbers against their ranges, and a misspelt key or section is an error naming
the known ones rather than silently falling back to a default. Every failure is one sentence
naming the file, section, key and bad value, with a correct line to copy.

:func:`read_grid` only validates (nothing is built, so a huge grid can be counted and refused
first); :func:`sectrace.simulate.sweep.load_grid` builds the policies and configurations from it.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import UserError
from ..gates import parse_gate
from ..network import parse_jitter
from ..protocol import Accept
from ..protocol.policy import CLOUD_CACHES, PRIVACY_MODES
from ..units import parse_duration, parse_rate, parse_size
from .profiles import cloud_device, edge_device, network_preset


class _Bad(UserError):
    """A value's problem as a clause that follows the value: ``50`` *has no unit ...*."""


@dataclass(frozen=True)
class Key:
    """One grid key: ``parse(value, trace)`` returns the parsed value or raises (_Bad or UserError);
    ``many``: a list sweeps over its values (else one value, a one-element list allowed)."""

    parse: Callable[[Any, Any], Any]
    example: str
    doc: str
    many: bool = True


# --- value checks ---------------------------------------------------------------------------
def _kind(v) -> str:
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int):
        return "a whole number"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return "a date or time"


def _toml(v) -> str:
    """``v`` as it would be written in TOML (so the message shows what the user typed)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return repr(v)


def _string(v) -> str:
    if not isinstance(v, str):
        raise _Bad(f"is {_kind(v)}, not a string in quotes")
    if not v.strip():
        raise _Bad("is empty")
    return v.strip()


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"is {_kind(v)}, not a number")
    if not math.isfinite(v):
        raise _Bad("is not a finite number")
    return float(v)


def _positive_int(v, _trace=None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"is {_kind(v)}, not a whole number")
    if v < 1:
        raise _Bad("must be at least 1 (k = 0 is cloud-only decoding, which baselines = true adds)")
    return v


def _bool(v, _trace=None) -> bool:
    if isinstance(v, str):
        raise _Bad("is a string; write true or false without quotes")
    if not isinstance(v, bool):
        raise _Bad(f"is {_kind(v)}, not true or false")
    return v


def _choice(options):
    def parse(v, _trace=None):
        s = _string(v).lower()
        if s not in options:
            raise _Bad(f"is not one of {', '.join(options)}")
        return s
    return parse


def _gate(v, trace=None):
    s = _string(v)
    parse_gate(s, trace)  # raises a UserError naming the problem
    return s


def _accept(v, _trace=None):
    return Accept.parse(_string(v))


def _adaptive(v, _trace=None):
    if isinstance(v, str):
        if v.strip().lower() in ("off", "none"):
            return None
        raise _Bad('is a string; write "off" or a probability as a number, e.g. 0.3')
    x = _number(v)
    if not 0.0 < x < 1.0:
        raise _Bad("is not a probability strictly between 0 and 1")
    return x


def _named(lookup):
    """A preset's name, checked by the lookup that will use it (an unknown one raises its own sentence)."""
    def parse(v, _trace=None):
        s = _string(v)
        lookup(s)
        return s
    return parse


def _duration(what):
    def parse(v, _trace=None):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
            raise _Bad("has no unit, so it could mean seconds or milliseconds; write it as a string with a unit")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return 0.0
        return parse_duration(_string(v), what, require_unit=True)
    return parse


def _rate(what):
    def parse(v, _trace=None):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise _Bad("has no unit, so it could mean bytes, bits or megabits per second; "
                       "write it as a string with a unit")
        return parse_rate(_string(v), what, require_unit=True)
    return parse


def _size(v, _trace=None):
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
        raise _Bad("has no unit; write it as a string with a unit")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return 0
    return parse_size(_string(v), "overhead", require_unit=True)


def _jitter(v, _trace=None):
    if not isinstance(v, str):
        raise _Bad(f'is {_kind(v)}; write "none" or a scipy.stats distribution in seconds as a string')
    s = v.strip()
    return None if parse_jitter(s) is None else s


def _loss(v, _trace=None):
    x = _number(v)
    if not 0.0 <= x < 1.0:
        raise _Bad("is not a probability in [0, 1)")
    return x


def _speedup(v, _trace=None):
    x = _number(v)
    if x <= 0:
        raise _Bad("must be positive (4 = four times faster)")
    return x


def _trace_key(v, _trace=None):
    return _string(v)


#: The grid, declared once: section (None = top level) → key → Key. docs/simulator.md lists the same.
SCHEMA: dict[str | None, dict[str, Key]] = {
    None: {
        "trace": Key(_trace_key, '"traces/t1"', "the trace to replay, relative to the grid file "
                                                "(--trace overrides it)", many=False),
        "baselines": Key(_bool, "true", "add the edge-only and cloud-only baselines (default true)", many=False),
    },
    "policy": {
        "k": Key(_positive_int, "[3, 5, 8]", "block size, a whole number >= 1 (default 5)"),
        "gate": Key(_gate, '["always", "entropy:2.5"]', "gate specs as for --gate (default entropy:2.5)"),
        "accept": Key(_accept, '["top1", "rank:20"]', "top1, rank:R or prob:P (default rank:20)"),
        "bonus": Key(_bool, "[true, false]", "take the verifier's next token after a fully accepted block "
                                             "(default true)"),
        "privacy": Key(_choice(PRIVACY_MODES), '["features", "token-only"]',
                       f"{', '.join(PRIVACY_MODES)} (default features)"),
        "cloud_cache": Key(_choice(CLOUD_CACHES), '["stateful", "stateless"]',
                           f"{' or '.join(CLOUD_CACHES)} (default stateful)"),
        "adaptive": Key(_adaptive, '["off", 0.3]', '"off" or a drafter probability in (0, 1) (default "off")'),
    },
    "network": {
        "preset": Key(_named(network_preset), '["wifi", "4g"]', "network presets the keys below override (default: the "
                                                 "built-in 50 ms, 20/50 Mbit/s path)"),
        "rtt": Key(_duration("rtt"), '["20ms", "0.1s"]', "round-trip times, with a unit"),
        "uplink": Key(_rate("uplink"), '["20Mbit/s", "2.5MB/s"]', "edge → cloud bandwidths, with a unit"),
        "downlink": Key(_rate("downlink"), '["50Mbit/s"]', "cloud → edge bandwidths, with a unit"),
        "overhead": Key(_size, '["100B", "1.5kB"]', "framing bytes per message, with a unit"),
        "jitter": Key(_jitter, '["none", "expon(scale=0.002)"]', "a scipy.stats distribution in seconds, or "
                                                                 "none (default: the preset's)"),
        "loss": Key(_loss, "[0, 0.01]", "message loss probability in [0, 1) (default: the preset's)"),
    },
    "device": {
        "edge": Key(_named(edge_device), '"study-cpu-2core"', "one edge device preset", many=False),
        "cloud": Key(_named(cloud_device), '"study-a100"', "one cloud device preset", many=False),
        "edge_speedup": Key(_speedup, "[1, 2, 4]", "edge speed-ups, finite and > 0 (default 1)"),
        "cloud_speedup": Key(_speedup, "[1, 2]", "cloud speed-ups, finite and > 0 (default 1)"),
    },
}

_SECTIONS = [s for s in SCHEMA if s is not None]


def grid_keys_doc() -> str:
    """The schema as text (one line per key), for help and docs."""
    lines = []
    for sec, keys in SCHEMA.items():
        for name, key in keys.items():
            where = f"[{sec}] " if sec else ""
            lines.append(f"{where}{name} = {key.example}   # {key.doc}")
    return "\n".join(lines)


# --- the validated grid ---------------------------------------------------------------------
@dataclass
class GridSpec:
    """A validated grid: parsed values of the keys the file gives (lists for sweeping keys)."""

    path: Path
    values: dict[str | None, dict[str, Any]] = field(default_factory=dict)

    def given(self, section: str | None, key: str) -> bool:
        return key in self.values.get(section, {})

    def get(self, section: str | None, key: str, default=None):
        return self.values.get(section, {}).get(key, default)

    @property
    def trace_path(self) -> Path | None:
        t = self.get(None, "trace")
        if t is None:
            return None
        p = Path(t)
        return p if p.is_absolute() else self.path.parent / p

    @property
    def n_policies(self) -> int:
        """Policies the grid makes (baselines included), counted without building them."""
        n = 1
        for key in SCHEMA["policy"]:
            vals = self.get("policy", key)
            if vals is not None:
                n *= len(dict.fromkeys(vals)) if key == "gate" else len(vals)
        return n + (2 if self.get(None, "baselines", True) else 0)

    @property
    def n_configs(self) -> int:
        """Configurations (networks × edge speed-ups × cloud speed-ups), counted without building them."""
        n = 1
        for key in ("preset", "rtt", "uplink", "downlink", "overhead", "jitter", "loss"):
            n *= len(self.get("network", key, [None]))
        for key in ("edge_speedup", "cloud_speedup"):
            n *= len(self.get("device", key, [1.0]))
        return n


def _fail(path: Path, section: str | None, key: str, shown: str, problem: str, example: str):
    where = f"[{section}] {key}" if section else key
    raise UserError(f"grid {path}: {where} {shown} {problem} (a correct line: {key} = {example})") from None


def _unknown_key(path: Path, section: str | None, key: str, is_table: bool = False):
    known = list(SCHEMA[section])
    home = [s for s in _SECTIONS if s != section and key in SCHEMA[s]]
    if section is None:
        if home and not is_table:
            raise UserError(f"grid {path}: {key} belongs in the [{home[0]}] section; put it under a "
                            f"[{home[0]}] line")
        shown = f"[{key}]" if is_table else key
        pool = _SECTIONS if is_table else known + _SECTIONS
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        hint = ""
        if close:
            hint = f" (did you mean {f'[{close[0]}]' if close[0] in _SECTIONS else close[0]}?)"
        raise UserError(f"grid {path}: unknown {'section' if is_table else 'top-level key'} {shown}{hint}; a grid "
                        f"has the keys {', '.join(known)} and the sections "
                        f"{', '.join(f'[{s}]' for s in _SECTIONS)}")
    if home:
        raise UserError(f"grid {path}: [{section}] has no key {key}; {key} belongs in the [{home[0]}] section")
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise UserError(f"grid {path}: [{section}] has no key {key}{hint}; its keys are {', '.join(known)}")


def _parse_key(path: Path, section: str | None, name: str, key: Key, raw, trace):
    if isinstance(raw, list):
        if not raw:
            _fail(path, section, name, "= []", "is an empty list, so the grid would have nothing to run",
                  key.example)
        if not key.many and len(raw) > 1:
            _fail(path, section, name, f"= {_toml(raw)}", f"lists {len(raw)} values but takes one "
                  "(run one sweep per value)", key.example)
        items = raw
    else:
        items = [raw]
    out = []
    for item in items:
        shown = f"= {_toml(raw)}" if len(items) == 1 else f"value {_toml(item)}"
        try:
            out.append(key.parse(item, trace))
        except _Bad as exc:
            _fail(path, section, name, shown, str(exc), key.example)
        except UserError as exc:
            _fail(path, section, name, shown, f"is refused: {exc}", key.example)
    return out if key.many else out[0]


def read_grid(path, trace=None) -> GridSpec:
    """Validate a grid file against :data:`SCHEMA` (``trace`` lets content and learned gates check
    against the trace's vocabulary and features). Builds nothing."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read grid {path}: {exc}") from None
    spec = GridSpec(path, {None: {}})
    for name, raw in doc.items():
        if name in SCHEMA and name is not None:
            if not isinstance(raw, dict):
                raise UserError(f"grid {path}: {name} must be a section of keys, not {_kind(raw)}; write a "
                                f"[{name}] line followed by its keys, e.g. "
                                f"{next(iter(SCHEMA[name]))} = {next(iter(SCHEMA[name].values())).example}")
            section = spec.values.setdefault(name, {})
            for key, value in raw.items():
                if key not in SCHEMA[name]:
                    _unknown_key(path, name, key)
                section[key] = _parse_key(path, name, key, SCHEMA[name][key], value, trace)
        elif name in SCHEMA[None]:
            spec.values[None][name] = _parse_key(path, None, name, SCHEMA[None][name], raw, trace)
        else:
            _unknown_key(path, None, name, is_table=isinstance(raw, dict))
    return spec


def grid_trace(path) -> Path | None:
    """The trace a grid names (resolved against the grid's folder), or None; checks only that key,
    so the command can load the trace before the rest of the grid is validated against it."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read grid {path}: {exc}") from None
    if "trace" not in doc:
        return None
    spec = GridSpec(path, {None: {"trace": _parse_key(path, None, "trace", SCHEMA[None]["trace"], doc["trace"],
                                                      None)}})
    return spec.trace_path
