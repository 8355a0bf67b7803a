"""Writing files: one rule for every output, and atomic writes.

The rule, for every command that writes: an output that exists is replaced only with ``--force``;
a table's format follows its extension (``.parquet`` or ``.csv``) and any other is refused; a write
goes through a temporary sibling and a rename, so a reader sees the old file or the whole new one,
never a torn one. New files get the user's umask like any other file they create (``mkstemp``
alone would make results private to their owner). Temporary siblings left by a killed writer are
removed by the next write to the same path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

TABLE_SUFFIXES = (".parquet", ".csv")


def check_output(path, force: bool = False, suffixes: tuple[str, ...] | None = TABLE_SUFFIXES, flag: str = "--out",
                 directory: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot or must not be written.

    ``suffixes`` None accepts any name; ``directory`` True expects a directory (reports, traces)."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: the format follows the extension; name it {_either(path, suffixes)}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {path}: {parent} is a file, not a directory")
            break
    if path.exists() or path.is_symlink():
        if path.is_dir() and not directory:
            raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {path / ('out' + (suffixes or ('',))[0])}")
        if not path.is_dir() and directory:
            raise UserError(f"{flag} {path} is a file; give a directory to write into")
        if not force:
            raise UserError(f"{path} already exists; choose another path or pass --force to replace it")
    return path


def _either(path: Path, suffixes) -> str:
    stem = path.with_suffix("") if path.suffix else path
    return " or ".join(f"{stem.name}{s}" for s in suffixes)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path, mode: int = 0o777) -> None:
    """Give ``path`` ``mode`` less the user's umask, as if created plainly: ``mkdtemp``/``mkstemp`` make private
    (0700/0600) temporaries, which a published result must not stay (a trace on a shared cluster disk)."""
    os.chmod(path, mode & ~_umask())


def _clean_stale(path: Path) -> None:
    """Remove temporary siblings of ``path`` whose writing process is gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            try:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            except OSError:
                pass
        except PermissionError:
            pass  # another user's live writer


def fsync(path) -> None:
    """Flush a file (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make a rename or unlink inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fsync(Path(path))
    except OSError:
        pass


@contextmanager
def atomic_path(path, mode: int = 0o666, force: bool = True, durable: bool = False, rename=os.replace):
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` in one rename.

    Files get ``mode`` less the umask. On any error, or a kill, the old ``path`` is untouched.
    ``durable`` also fsyncs the file before the rename and the folder after it (what a resumable
    collection needs); ``rename`` is the publishing step (a seam for tests that kill there)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    _clean_stale(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, mode & ~_umask())
            if durable:
                fsync(tmp)
        if not force and path.exists():
            raise UserError(f"{path} already exists; choose another path or pass --force to replace it")
        if path.is_dir() and tmp.is_dir():
            old = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            os.replace(path, old)
            rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            rename(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except Exception as exc:  # an error: leave nothing behind (a kill leaves the temp file; the next write cleans it)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror}") from None
        raise


def write_table(df, path, force: bool = True) -> Path:
    """Write a polars frame as Parquet or CSV (by the extension), atomically.

    Commands check the path with :func:`check_output` before their work and write with
    ``force=True`` after it; a caller that did not check passes its own ``force``."""
    path = check_output(path, force=force)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            _csv_ready(df).write_csv(tmp)
        else:
            df.write_parquet(tmp)
    return path


def _csv_ready(df):
    """CSV holds no lists: token-id lists become space-separated text; other nested columns are refused."""
    import polars as pl

    cols = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.List) and not dtype.inner.is_nested():
            cols.append(pl.col(name).cast(pl.List(pl.String)).list.join(" ").alias(name))
        elif dtype.is_nested():
            raise UserError(f"column {name!r} ({dtype}) cannot be written as CSV; write .parquet instead")
        else:
            cols.append(pl.col(name))
    return df.select(cols)


def write_text(text: str, path, force: bool = True) -> Path:
    """Write text atomically (JSON documents, gate files, Perfetto traces)."""
    path = Path(path)
    if not force:
        check_output(path, force=False, suffixes=None)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(obj, path, force: bool = True, indent: int | None = 1) -> Path:
    return write_text(json.dumps(obj, indent=indent, default=str) + "\n", path, force=force)


def write_parquet_atomic(df, path) -> Path:
    """Parquet through a temporary sibling and a rename, replacing what is there (trace internals)."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)
