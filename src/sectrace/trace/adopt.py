"""Give a trace the timing probes of another trace of the same models.

Why: what the models *said* (the trie) does not depend on how busy the machine was, but the probes
that price it do. A collection run beside other work (a test suite, a second collection) explores
correctly and probes wrongly; a trace re-collected to add signals explores again but need not probe
again. Adopting the probes of a trace collected from the same models, with the same backend and
prompt, on a quiet machine keeps the prices honest, and the manifest says where they came from.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone

from .io import Trace, TraceError

#: Fields of a model card that must agree for two traces' timings to describe the same computation.
MODEL_FIELDS = ("name", "architecture", "parameters", "dtype", "vocab_size", "tokenizer_fingerprint")
#: Manifest fields that change what a timed pass computes.
SETUP_FIELDS = ("backend", "prompt_template", "shared_vocab_size")


def timings_sha256(trace: Trace) -> str:
    """SHA-256 of a trace's timings table (Arrow IPC bytes): which probes were adopted."""
    buf = io.BytesIO()
    trace.timings.write_ipc(buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _mismatches(trace: Trace, source: Trace) -> list[str]:
    out = []
    for side in ("drafter", "verifier"):
        mine, theirs = trace.manifest.get(side) or {}, source.manifest.get(side) or {}
        out += [f"{side} {f} {mine.get(f)!r} vs {theirs.get(f)!r}" for f in MODEL_FIELDS if mine.get(f) != theirs.get(f)]
    out += [f"{f} {trace.manifest.get(f)!r} vs {source.manifest.get(f)!r}" for f in SETUP_FIELDS
            if trace.manifest.get(f) != source.manifest.get(f)]
    threads = [((m.get("hardware") or {}).get("edge") or {}).get("threads") for m in (trace.manifest, source.manifest)]
    if None not in threads and threads[0] != threads[1]:
        out.append(f"edge threads {threads[0]} vs {threads[1]}")
    return out


def adopt_timings(trace: Trace, source: Trace) -> tuple[dict, object]:
    """The manifest and timings table for ``trace`` with ``source``'s probes (the trie is untouched).

    Refused, with what differs, unless both traces come from the same models (name, architecture,
    parameters, dtype, tokenizer), backend, prompt and edge thread count, and the source has probes.
    The source's hardware description and probe load come along (they describe the probes), and
    ``hardware.timings_from`` records the source's name, creation time and the timings' hash."""
    if trace.synthetic or source.synthetic:
        raise TraceError("probes are adopted between traces of real models only; a synthetic trace's timings are "
                         "part of its stated model")
    if source.timings.height == 0:
        raise TraceError(f"{source.path or source.name} has no timing probes to adopt; give a trace collected with "
                         "probes (without --no-probes)")
    bad = _mismatches(trace, source)
    if bad:
        raise TraceError(f"{source.path or source.name} was not collected from the same models and setup as "
                         f"{trace.path or trace.name} ({'; '.join(bad[:3])}), so its probes would price other "
                         "computations; re-probe instead with `sectrace collect --reprobe`")
    manifest = json.loads(json.dumps(trace.manifest))
    hw = manifest.setdefault("hardware", {})
    src_hw = source.manifest.get("hardware") or {}
    for key in ("edge", "cloud", "probe_load", "reprobed"):
        if key in src_hw:
            hw[key] = src_hw[key]
        else:
            hw.pop(key, None)
    hw["timings_from"] = {"trace": source.path.name if source.path else source.name, "created": source.manifest.get("created"),
                          "timings": source.timings.height, "timings_sha256": timings_sha256(source),
                          "adopted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "previous_timings": trace.timings.height}
    return manifest, source.timings
