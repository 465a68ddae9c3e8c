"""The llama.cpp peer of benchmarks/llm.py (benchmarks/llm_peers.py): optional, so what a user
without it sees is a clear message; its names parse; unknown llama.cpp types are refused."""

import sys

import pytest

from inductor_quant.benchmarks import llm_peers


def test_missing_llama_cpp_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when not installed
    with pytest.raises(RuntimeError, match="pip install llama-cpp-python"):
        llm_peers.LlamaCppLM("gemma3-270m", "Q8_0", 64, 1)


def test_peer_names_and_types():
    assert llm_peers.is_peer("llama.cpp:Q4_0") and not llm_peers.is_peer("woq_int4")
    with pytest.raises(ValueError, match="llama.cpp type 'Q3_K'"):
        llm_peers.gguf("gemma3-270m", "Q3_K")
