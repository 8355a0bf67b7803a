"""The structure holds: imports point down (lint-imports checks the layers in CI), and library modules
import other packages at their top, where the structure can be seen, unless the target brings an optional
heavy dependency (torch, transformers, fastapi: models, live, collect.probes, demo, validate)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sectrace"
HEAVY = ("models", "live", "collect.probes", "demo", "validate")  # imported lazily on purpose: optional extras
EXEMPT = ("cli", "__init__.py", "__main__.py")  # the CLI loads commands lazily; the package face loads the API lazily


def _inner_imports():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in EXEMPT:
            continue
        pkg = rel.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = list(rel.parts[:-1])
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join(base + (node.module.split(".") if node.module else []))
                    if target.split(".")[0] != pkg and not target.startswith(HEAVY):
                        yield f"{rel}:{node.lineno} imports {target} inside {fn.name}()"


def test_cross_package_imports_sit_at_the_top():
    found = list(_inner_imports())
    assert not found, "move these imports to the module's top (or say why they are heavy):\n" + "\n".join(found)


def test_the_rule_sees_an_inner_import(tmp_path, monkeypatch):
    """The check itself can fail: a module with an inner cross-package import is reported."""
    pkg = tmp_path / "simulate"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from ..trace import load_trace\n    return load_trace\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert list(_inner_imports()) == ["simulate/x.py:2 imports trace inside f()"]
