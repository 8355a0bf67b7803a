from __future__ import annotations

from pathlib import Path

import pytest

from sectrace.gates import default_exploration
from sectrace.trace import load_trace, write_trace
from sectrace.trace.synth import AlphaModel, synth_trace


def make_trace(path: Path, n: int = 6, max_new: int = 48, policies=None, **model) -> Path:
    m = AlphaModel(**model)
    pols = policies if policies is not None else default_exploration(max_new)
    write_trace(path, *synth_trace(m, n, pols))
    return path


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory):
    """A small synthetic trace explored with the default policies."""
    return load_trace(make_trace(tmp_path_factory.mktemp("t") / "small", n=6, seed=3))


@pytest.fixture(scope="session")
def small_trace_path(small_trace):
    return small_trace.path
