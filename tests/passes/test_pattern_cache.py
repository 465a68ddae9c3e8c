"""Our traced patterns on disk (passes/pattern_cache.py): a later process reads back exactly the
patterns a trace gives, never a stale or broken file."""

import json

import pytest
from torch._inductor.pattern_matcher import PatternPrettyPrinter

from inductor_quant.passes import pattern_cache, registry

FUSIONS = registry.fusions()
VARIADIC = {f.id for f in FUSIONS if f.example is None}  # built, not traced: ListOf has no printed form


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INDUCTOR_QUANT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("INDUCTOR_QUANT_PATTERN_CACHE", raising=False)
    return tmp_path


def _text(pattern) -> str:
    return PatternPrettyPrinter.run(pattern, output_name="pattern")


def _untraceable(fusion_id):
    def trace():
        raise AssertionError(f"{fusion_id} was traced, not read from the cache")
    return trace


def test_a_later_process_reads_every_traced_pattern_back_the_same(cache_dir):
    first = pattern_cache.patterns_of({f.id: f.pattern for f in FUSIONS})
    held = json.loads(pattern_cache.path().read_text())
    assert set(held) == {f.id for f in FUSIONS} - VARIADIC and VARIADIC, sorted(VARIADIC)
    # what a later process does: every held id from the file (tracing one would fail here)
    again = pattern_cache.patterns_of({f.id: (f.pattern if f.id in VARIADIC else _untraceable(f.id)) for f in FUSIONS})
    for f in FUSIONS:
        traced = f.pattern()
        assert _text(again[f.id]) == _text(traced) == _text(first[f.id]) and repr(again[f.id]) == repr(traced), f.id


def test_an_edited_source_or_another_torch_keys_another_file(cache_dir, tmp_path_factory, monkeypatch):
    src = tmp_path_factory.mktemp("pkg")
    (src / "patterns.py").write_text("def f(x): return x\n")
    monkeypatch.setattr(pattern_cache, "_package_dirs", lambda: [src])
    before = pattern_cache.key()
    (src / "patterns.py").write_text("def f(x): return x + 1\n")
    assert pattern_cache.key() != before
    edited = pattern_cache.key()
    monkeypatch.setattr(pattern_cache.torch, "__version__", "0.0.0-other")
    assert pattern_cache.key() not in (before, edited)


@pytest.mark.parametrize("content", ["", '{"int8.view": "pattern = CallFunction(', '{"int8.view": "pattern = nosuchname"}', "[1, 2]"],
                         ids=["empty", "cut-short", "no-longer-evaluates", "not-a-table"])
def test_a_broken_file_is_traced_again_and_rewritten(cache_dir, content):
    fusions = [f for f in FUSIONS if f.id in ("int8.view", "int8.permute")]
    pattern_cache.path().parent.mkdir(parents=True, exist_ok=True)
    pattern_cache.path().write_text(content)
    got = pattern_cache.patterns_of({f.id: f.pattern for f in fusions})
    assert all(_text(got[f.id]) == _text(f.pattern()) for f in fusions)
    assert set(json.loads(pattern_cache.path().read_text())) == {"int8.view", "int8.permute"}


def test_switched_off_it_neither_reads_nor_writes(cache_dir, monkeypatch):
    monkeypatch.setenv("INDUCTOR_QUANT_PATTERN_CACHE", "0")
    fusion = next(f for f in FUSIONS if f.id == "int8.view")
    assert _text(pattern_cache.patterns_of({fusion.id: fusion.pattern})[fusion.id]) == _text(fusion.pattern())
    assert not pattern_cache.path().exists()
