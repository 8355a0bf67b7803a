"""The trace format: schema, load/validate, write, the prefix trie."""

from importlib import resources
from pathlib import Path

from .io import Trace, TraceError, load_trace, rebase_paths, trace_relative, validate, write_trace
from .schema import SCHEMA_VERSION
from .trie import TrieRecorder, TrieSession


def sample_trace_path() -> Path:
    """The bundled sample trace: 12 real clips, collected on a 2-core CPU (README, "The bundled sample trace")."""
    return Path(str(resources.files("sectrace") / "data" / "sample-trace"))


__all__ = ["SCHEMA_VERSION", "Trace", "TraceError", "TrieRecorder", "TrieSession", "load_trace", "rebase_paths",
           "sample_trace_path", "trace_relative", "validate", "write_trace"]
