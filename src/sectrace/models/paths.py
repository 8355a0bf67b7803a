"""Where a model comes from: a local directory, or (only when allowed) a hub id."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


def resolve_model_path(path: str, what: str) -> tuple[str, bool]:
    """A local directory (hub never contacted) or a hub id; a missing local path is a clear error."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise UserError(f"{what} {path} is not a model directory (no config.json in it); give the folder "
                            "written by save_pretrained or downloaded from the hub")
        return str(p), True
    looks_like_hub = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_hub:
        raise UserError(f"{what} {path} does not exist; give a local model directory or a hub id like "
                        "Qwen/Qwen2.5-Omni-3B")
    return path, bool(os.environ.get("HF_HUB_OFFLINE"))
