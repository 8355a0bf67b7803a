"""The trace format: schema, load/validate, write, the prefix trie, synthetic traces."""

from .io import Trace, TraceError, load_trace, validate, write_trace
from .schema import SCHEMA_VERSION
from .trie import TrieRecorder, TrieSession

__all__ = ["SCHEMA_VERSION", "Trace", "TraceError", "TrieRecorder", "TrieSession", "load_trace", "validate",
           "write_trace"]
