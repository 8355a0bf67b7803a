"""Where a results table came from: tool version, git commit, package versions, the command, the trace's content hash.

Every results table (simulate's rows, sweep's rows, fleet's rows) carries these as flat columns, so a
number can be traced back to the code, the input and the command that made it, and two results files
can be told apart even when their traces share a name.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from ..version import __version__

#: Packages whose versions change numbers in the results (numerics, tables, bootstrap, fleet).
KEY_PACKAGES = ("numpy", "polars", "scipy", "simpy")


def trace_sha256(trace) -> str:
    """SHA-256 of the trace's content, computed once per loaded trace (cached on it).

    A trace on disk hashes its files (relative path and bytes, in sorted order); an in-memory one
    hashes its manifest and tables (Arrow IPC bytes)."""
    cache = getattr(trace, "_cache", None)
    if cache is not None and "sha256" in cache:
        return cache["sha256"]
    h = hashlib.sha256()
    path = getattr(trace, "path", None)
    if path is not None and Path(path).is_dir():
        root = Path(path)
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    else:
        h.update(json.dumps(trace.manifest, sort_keys=True, default=str).encode())
        for df in (trace.utterances, trace.nodes, trace.timings, trace.vocab):
            if df is not None:
                buf = io.BytesIO()
                df.write_ipc(buf)
                h.update(buf.getvalue())
    digest = h.hexdigest()
    if cache is not None:
        cache["sha256"] = digest
    return digest


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the sectrace checkout this code runs from (``+dirty`` with uncommitted changes to it),
    or None when it is an installed package, not a checkout (or git is missing)."""
    pkg = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", "-C", str(pkg), *args], check=False, capture_output=True, text=True, timeout=5)

    try:
        # only when sectrace itself is tracked there: a venv inside some other repository is not a checkout
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--", ".").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def package_versions() -> str:
    """``python 3.11.9, numpy 2.4.6, ...``: the interpreter and the key packages installed."""
    parts = [f"python {platform.python_version()}"]
    for name in KEY_PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def provenance_columns(trace, command: str | None = None) -> dict:
    """Flat provenance columns for a results table made from ``trace`` by ``command`` (None from the API)."""
    return {
        "trace": trace.name,
        "trace_path": str(trace.path.resolve()) if trace.path else None,
        "trace_sha256": trace_sha256(trace),
        "synthetic": trace.synthetic,
        "tool_version": __version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "command": command,
    }
