"""scripts/reprice_validation.py re-prices the committed 2026-12-04 live run exactly as `validate` priced it.

The run's facts must be enough to price it again (costs, network, framing), so a change to the simulator can
be checked against live runs already measured; with the simulator as it is, today's prices equal the recorded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_run_reprices_to_its_recorded_predictions():
    spec = importlib.util.spec_from_file_location("reprice", ROOT / "scripts" / "reprice_validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    df = mod.reprice(ROOT / "docs" / "validation" / "2026-12-04")
    assert df["runs"].sum() == 72 and df.height == 4
    assert df["bias_now"].to_list() == pytest.approx(df["bias_recorded"].to_list(), abs=1e-12)
    assert df["median_ape_now"].to_list() == pytest.approx(df["median_ape_recorded"].to_list(), abs=1e-12)
    assert df["bias_ttft_now"].to_list() == pytest.approx(df["bias_ttft_recorded"].to_list(), abs=1e-12)
