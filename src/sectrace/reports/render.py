"""The report's Jinja2 environment: templates shipped as package data, autoescaped, strict about names."""

from __future__ import annotations

import json
import re
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def _env():
    import jinja2
    import markupsafe

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson_safe"] = lambda v: markupsafe.Markup(json.dumps(v, default=str).replace("<", "\\u003c"))
    env.globals["raw"] = _raw
    return env


def _raw(name: str):
    """A CSS or JS file of templates/ inlined as it is (not parsed as a template; no closing tag inside)."""
    import markupsafe

    text = (TEMPLATES / name).read_text(encoding="utf-8")
    if re.search(r"</(script|style)", text, re.I):
        raise RuntimeError(f"templates/{name} may not contain </script or </style")
    return markupsafe.Markup(text)


def render(template: str, **data) -> str:
    return _env().get_template(template).render(**data)
