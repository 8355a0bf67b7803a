"""Atomic writes: a result file is either the old one or the complete new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def write_parquet_atomic(df, path) -> Path:
    """Write a polars frame to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
