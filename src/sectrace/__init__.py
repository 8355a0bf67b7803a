"""sectrace: edge–cloud speculative decoding for speech emotion captioning, collected once, replayed exactly.

From Python (docs/api.md)::

    import sectrace
    summary = sectrace.simulate_trace(sectrace.sample_trace(), ["k=5 gate=entropy:2.5 accept=rank:20 features"],
                                rtt=["20ms", "100ms"])

The names below load on first use, so ``import sectrace`` (and the CLI's start-up) stays light.
"""

from .version import __version__ as __version__

_API = {"load_trace", "networks", "policies", "sample_trace", "simulate_trace"}


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sectrace' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
