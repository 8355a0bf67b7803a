"""The Python API: docs/api.md's example runs as written and gives the CLI's numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sectrace
from sectrace.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_example_runs():
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "shape: (8, 5)" in out.stdout and "cloud_calls" in out.stdout  # 4 policies × 2 RTTs


def test_import_is_light():
    code = "import sys, sectrace; print(sorted(m for m in ('polars', 'numpy', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_equals_the_cli(tmp_path):
    spec = "k=5 gate=entropy:2.5 accept=rank:20 features"
    summary = sectrace.simulate_trace(None, [spec], rtt=["20ms", "100ms"])
    r = CliRunner().invoke(main, ["simulate", "--rtt", "20ms,100ms", "--json"])
    import json

    cli = {(row["policy"], row["rtt_s"]): row["latency_s"] for row in json.loads(r.stdout)["summary"]}
    api = {(p, rtt): lat for p, rtt, lat in summary.select("policy", "rtt_s", "latency_s").iter_rows()}
    assert set(cli) == set(api) and len(api) == 6
    for key, lat in api.items():
        assert lat == pytest.approx(cli[key], rel=1e-12)


def test_api_refuses_bad_input_with_one_sentence():
    from sectrace.errors import UserError

    with pytest.raises(UserError, match="unit"):
        sectrace.simulate_trace(None, rtt="50")
    with pytest.raises(UserError):
        sectrace.policies(["k=5 gate=nope"])
