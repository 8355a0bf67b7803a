"""Rewrite the output under every ``$ sectrace ...`` block of README.md and docs/*.md with what it prints now.

tests/test_docs.py fails when a printed output drifts; run this, read the diff, and fix the prose around it.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from click.testing import CliRunner

from sectrace.cli import main
from sectrace.trace import sample_trace_path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```\n(\$ sectrace .*?)\n```", re.S)


def refresh(text: str) -> str:
    def one(m):
        lines = m.group(1).splitlines()
        n = 1
        while lines[n - 1].rstrip().endswith("\\"):
            n += 1
        cmd = " ".join(ln.rstrip().rstrip("\\") for ln in lines[:n])[2:]
        r = CliRunner().invoke(main, shlex.split(cmd)[1:], catch_exceptions=False)
        if r.exit_code:
            sys.exit(f"`{cmd}` exited {r.exit_code}: {r.output}")
        out = [ln.rstrip().replace(str(sample_trace_path().parent.parent.parent), "...") for ln in r.stdout.splitlines()]
        return "```\n" + "\n".join(lines[:n] + out) + "\n```"
    return BLOCK.sub(one, text)


if __name__ == "__main__":
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        old = doc.read_text(encoding="utf-8")
        new = refresh(old)
        if new != old:
            doc.write_text(new, encoding="utf-8")
            print(f"refreshed {doc.relative_to(ROOT)}")
