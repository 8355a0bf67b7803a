from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sectrace.explore import default_exploration
from sectrace.explore.synth import AlphaModel, synth_trace
from sectrace.trace import load_trace, write_trace

# Hypothesis profiles. "ci" is reproducible: the same examples on every run (derandomize), no example
# database carried between runs, no wall-clock deadline on shared runners. "dev" explores: fresh random
# examples each run, and failures are remembered in the local database and replayed first.
# Tests that set max_examples themselves keep their own count; the profile supplies the rest.
# CI set (non-empty) loads "ci", otherwise "dev"; HYPOTHESIS_PROFILE=ci|dev overrides both.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=50,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", derandomize=False, deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


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


@functools.lru_cache(maxsize=None)
def synthetic_sample() -> Path:
    """The synthetic sample trace (40 utterances, seed 0, default exploration), built once per test run.

    Tests that need a sizeable trace with known statistics (x_* signals, a stated model) use this
    rather than the bundled sample, which is a real-model trace once one is shipped.
    """
    from sectrace.explore.synth import synth_recorders  # noqa: F401  (fails early if synth changed shape)

    out = Path(tempfile.mkdtemp(prefix="sectrace-synthetic-sample-")) / "sample-trace"
    return make_trace(out, n=40, max_new=64, seed=0)


@functools.lru_cache(maxsize=None)
def synthetic_trace():
    """The synthetic sample, loaded once per test run (it is read-only: polars frames, no test mutates it)."""
    return load_trace(synthetic_sample())


@functools.lru_cache(maxsize=None)
def synthetic_replayer():
    """One replayer over the synthetic sample: replays are pure and cached per policy, so modules share it."""
    from sectrace.simulate import Replayer

    return Replayer(synthetic_trace())


def trace_subset(trace, n: int):
    """The first n utterances of a trace, as a Trace (fast fixtures for slower stages)."""
    import polars as pl

    keep = trace.utterances["utt_id"].to_list()[:n]
    return type(trace)(trace.manifest, trace.utterances.filter(pl.col("utt_id").is_in(keep)),
                       trace.nodes.filter(pl.col("utt_id").is_in(keep)), trace.timings, trace.vocab, trace.path)
