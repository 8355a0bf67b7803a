"""The docs cannot drift: printed output in README.md and docs/*.md must be what the command prints today,
and every block marked runnable runs.

- A fenced block whose first line is ``$ sectrace ...`` (continued with ``\\``) shows a command and its output;
  the output must match what the command prints on stdout, line for line (the bundled trace's path is
  shown as ``.../sectrace/data/sample-trace``).
- A fenced block preceded by ``<!-- runnable -->`` is run line by line, in order, in a fresh directory
  (``examples/`` is there); each ``sectrace ...`` line must exit 0.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from sectrace.cli import main
from sectrace.trace import sample_trace_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- runnable -->\s*\n)?```[a-z]*\n(.*?)\n```", re.S)


def _blocks():
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text(encoding="utf-8")):
            yield doc, bool(m.group(1)), m.group(2)


def _commands(text: str) -> list[str]:
    """Logical lines (backslash continuations joined), comments dropped, only `sectrace` lines."""
    out, cur = [], ""
    for line in text.splitlines():
        line = line.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        cmd = cur.split(" #")[0].strip()
        cur = ""
        if cmd.startswith("sectrace "):
            out.append(cmd)
    return out


OUTPUT_BLOCKS = [(d, t) for d, r, t in _blocks() if t.startswith("$ sectrace ")]
RUNNABLE = [(d, t) for d, r, t in _blocks() if r]


def test_the_docs_have_checked_blocks():
    assert len(OUTPUT_BLOCKS) >= 3 and len(RUNNABLE) >= 2


@pytest.mark.parametrize("doc,text", OUTPUT_BLOCKS, ids=[f"{d.name}:{t.splitlines()[0][2:60]}" for d, t in OUTPUT_BLOCKS])
def test_printed_output_is_what_the_command_prints(doc, text):
    lines = text.splitlines()
    cmd, i = "", 0
    while True:
        line = lines[i][2:] if i == 0 else lines[i]
        i += 1
        if line.rstrip().endswith("\\"):
            cmd += line.rstrip()[:-1] + " "
            continue
        cmd += line
        break
    want = [ln.rstrip() for ln in lines[i:]]
    r = CliRunner().invoke(main, shlex.split(cmd)[1:], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = [ln.rstrip().replace(str(sample_trace_path().parent.parent.parent), "...")
           for ln in r.stdout.splitlines()]
    assert got == want, f"{doc.name}: `{cmd}` prints something else now; update the doc"


@pytest.mark.parametrize("doc,text", RUNNABLE, ids=[f"{d.name}:{i}" for i, (d, _) in enumerate(RUNNABLE)])
def test_runnable_blocks_run(doc, text, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for cmd in _commands(text):
        r = runner.invoke(main, shlex.split(cmd)[1:], catch_exceptions=False)
        assert r.exit_code == 0, f"{doc.name}: `{cmd}` exited {r.exit_code}: {r.output}"
