"""LLM decoders (inductor_quant.llm): our Gemma-3-shaped decoder computes what transformers'
computes; every recipe compiles into two graphs (prompt chunks, decode steps) whose output is
the eager converted model's; the generated code runs our kernels; decoding never recompiles.

One tiny random-weight decoder (2 layers: one sliding-window, one global; 4 query heads on 1 KV
head), compiled once per recipe for the module. Builtins off (tests/conftest.py)."""

from unittest import mock

import pytest
import torch
from torch._inductor.graph import GraphLowering

import inductor_quant.passes as iq_passes
from inductor_quant.generated_code import (attention_calls, float_compute_calls, onednn_int8_calls,
                                           weight_only_int4_calls, weight_only_int8_calls)
from inductor_quant.gptq import FITTED
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.llm import CompiledLM, Decoder, DecoderConfig, sample

CHUNK, MAX_LEN = 8, 288


def _weights(model):
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _weights(Decoder(DecoderConfig.tiny()))


@pytest.fixture(scope="module")
def prompt():
    torch.manual_seed(1)
    return torch.randint(0, 512, (1, 11))  # one full chunk and a padded one


_BUILT = {}


@pytest.fixture(scope="module")
def built(model, our_passes_only):
    """(recipe, float dtype) -> (CompiledLM, generated code of both graphs, stats), compiled once."""
    def get(name, dtype=torch.float32):
        if (name, dtype) not in _BUILT:
            torch.manual_seed(2)
            # 144 rows: GPTQ (the int4 recipes) needs at least as many as a linear's inputs (128)
            calibration = [torch.randint(0, 512, (1, 72)) for _ in range(2)]
            iq_passes.reset_stats()
            lm = CompiledLM(model, name, calibration=calibration, chunk=CHUNK, max_len=MAX_LEN,
                            options={"freezing": True}, float_dtype=dtype)
            codes = []  # as run_and_get_code, without its dynamo reset (the other models' graphs stay)
            # global freezing off: CompiledLM's own options must be enough
            with mock.patch.object(GraphLowering, "save_output_code", codes.append), \
                    torch._inductor.config.patch(freezing=False):
                lm.warm_up()
            _BUILT[name, dtype] = lm, "\n".join(codes), iq_passes.stats()
        return _BUILT[name, dtype]

    yield get
    _BUILT.clear()


def _prefill_and_steps(lm, prompt, fn, steps=3):
    """Logits after the prompt and after each of `steps` greedy tokens."""
    lm.reset()
    out = [lm.prefill(prompt, fn=fn)]
    for i in range(steps):
        out.append(lm.step(out[-1].argmax(-1), prompt.shape[1] + i, fn=fn))
    return torch.stack(out)


def test_decoder_matches_transformers_gemma3():
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma3TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"])
    hf = _weights(transformers.Gemma3ForCausalLM(config))
    ours = Decoder.from_transformers(hf, all_logits=True)
    ids = torch.randint(0, 512, (1, 12))  # longer than the window of 4: the sliding mask matters
    with torch.no_grad():
        expected = hf(ids).logits
        k, v = ours.new_cache(1, 16)
        whole = ours(ids, torch.arange(12), k, v)
        ours.all_logits = False
        k, v = ours.new_cache(1, 16)
        stepped = torch.cat([ours(ids[:, i:i + 1], torch.tensor([i]), k, v) for i in range(12)], 1)
    torch.testing.assert_close(whole, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stepped, expected, rtol=1e-4, atol=1e-4)


# recipe -> what the generated code must call for the 15 linears
KERNELS = {
    # Q/K/V merged into one call, gate/up into one: 4 a layer + the head, in each graph
    "woq_int8": lambda code: weight_only_int8_calls(code) == 2 * (2 * 4 + 1),
    # int4 blocks through our kernel (prompt rows and the decode row), Q/K and gate/up merged:
    # 4 calls a layer in each graph; V (one a layer) and the LM head int8
    "woq_int4": lambda code: (weight_only_int4_calls(code, "ours") == 2 * (2 * 4)
                              and weight_only_int8_calls(code) == 2 * (2 + 1)),
    # all int4, Q/K/V merged: 4 calls a layer and the LM head
    "woq_int4_all": lambda code: weight_only_int4_calls(code, "ours") == 2 * (2 * 4 + 1) and not weight_only_int8_calls(code),
    # per-token int8: Q/K/V merged into one, gate/up into one: 4 GEMMs a layer + the head
    "dyn_int8": lambda code: onednn_int8_calls(code)["qlinear_pointwise"] == 2 * (2 * 4 + 1),
    "dyn_int8_sq": lambda code: onednn_int8_calls(code)["qlinear_pointwise"] == 2 * (2 * 4 + 1),
}


# the int4 recipes' 4-bit linears, every one fitted with GPTQ: q, k, o, gate, up, down a layer; V and the head too in _all
GPTQ_FITTED = {"woq_int4": 2 * 6, "woq_int4_all": 2 * 7 + 1}


@pytest.mark.parametrize("name", ["fp32", "bf16", "woq_int8", "woq_int4", "woq_int4_all", "dyn_int8", "dyn_int8_sq"])
def test_recipe_compiles_to_two_graphs_equal_to_eager(built, prompt, name):
    lm, code, stats = built(name, torch.bfloat16 if name == "bf16" else torch.float32)
    assert lm.compiles == 2  # prompt chunk, decode step
    eager = _prefill_and_steps(lm, prompt, lm.module)
    compiled = _prefill_and_steps(lm, prompt, lm.compiled)
    tol = 0.05 if name == "bf16" else 1e-4  # bf16: the two orders of rounding
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol * eager.abs().max().item())
    assert lm.compiles == 2
    if name in KERNELS:
        assert KERNELS[name](code), code[:2000]
        assert not float_compute_calls(code), float_compute_calls(code)
        assert stats["unfused"] == []
        assert attention_calls(code)["ours"] == 2 * 2  # both layers, both graphs
    if name in GPTQ_FITTED:
        assert list(lm.module.meta["gptq"].values()) == [FITTED] * GPTQ_FITTED[name], lm.module.meta["gptq"]


@pytest.mark.skipif(not cpu_info().bf16_native, reason="int8-mixed-bf16 is recommended only where bf16 is native")
@pytest.mark.parametrize("name", ["woq_int8", "dyn_int8_sq"])
def test_recipe_under_bf16_autocast(built, prompt, name):
    lm, code, stats = built(name, torch.bfloat16)
    eager = _prefill_and_steps(lm, prompt, lm.module)
    compiled = _prefill_and_steps(lm, prompt, lm.compiled)
    # bf16 rounds at different places in the two; a per-token quantize can then round a value
    # one step the other way
    torch.testing.assert_close(compiled, eager, rtol=0.03, atol=0.03 * eager.abs().max().item())
    assert KERNELS[name](code) and stats["unfused"] == []


def test_256_decode_steps_do_not_recompile(built, prompt):
    lm, _, _ = built("woq_int8")
    before = lm.compiles
    result = lm.generate(prompt, max_new_tokens=257)
    assert result.steps == 256 and result.tokens.shape == (1, 257)
    assert lm.compiles == before == 2
    # the same tokens as the eager converted model, greedy, for the first steps
    lm.reset()
    logits, tokens = lm.prefill(prompt, fn=lm.module), []
    for i in range(16):
        tokens.append(logits.argmax(-1))
        logits = lm.step(tokens[-1], prompt.shape[1] + i, fn=lm.module)
    assert torch.equal(result.tokens[0, :16], torch.stack(tokens, 1)[0])


def test_sampling_is_reproducible_and_stops_at_a_stop_token(built, prompt):
    lm, _, _ = built("woq_int8")
    a = lm.generate(prompt, 12, temperature=0.8, top_k=20, seed=7)
    b = lm.generate(prompt, 12, temperature=0.8, top_k=20, seed=7)
    assert torch.equal(a.tokens, b.tokens)
    stop = int(a.tokens[0, 3])
    c = lm.generate(prompt, 12, temperature=0.8, top_k=20, seed=7, stop_tokens=[stop])
    first = int((a.tokens[0] == stop).nonzero()[0])
    assert torch.equal(c.tokens[0], a.tokens[0, :first + 1])


def test_sample_top_k_never_draws_outside_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    drawn = {int(sample(logits, 1.0, 2, torch.Generator().manual_seed(s))) for s in range(50)}
    assert drawn == {1, 2}
    assert int(sample(logits, 0.0, None)) == 1


def test_clear_errors_for_what_does_not_fit(built, prompt):
    lm, _, _ = built("fp32")
    with pytest.raises(ValueError, match="exceed max_len"):
        lm.generate(prompt, MAX_LEN)
    with pytest.raises(ValueError, match="built for batch=1"):
        lm.prefill(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown recipe 'int3'"):
        CompiledLM(lm.model, "int3")


def test_score_gives_every_tokens_logits_as_the_eager_model(model, prompt, our_passes_only):
    """Teacher forcing (the accuracy benchmark): each position's logits, across a padded chunk."""
    lm = CompiledLM(model, "fp32", chunk=CHUNK, max_len=16, options={"freezing": True}, all_logits=True)
    got = lm.score(prompt)
    with torch.no_grad():
        model.all_logits = True
        k, v = model.new_cache(1, 16)
        expected = model(prompt, torch.arange(prompt.shape[1]), k, v)
        model.all_logits = False
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_batch_of_prompts_decodes_each_as_alone(built, model, prompt):
    """batch=2 (the benchmark's batched decode): each row what batch 1 gives."""
    lm = CompiledLM(model, "fp32", chunk=CHUNK, max_len=MAX_LEN, batch=2, options={"freezing": True})
    other = torch.randint(0, 512, (1, prompt.shape[1]))
    both = lm.generate(torch.cat([prompt, other]), 6)
    single, _, _ = built("fp32")  # batch 1, compiled once for the module
    for row, ids in enumerate((prompt, other)):
        assert torch.equal(both.tokens[row], single.generate(ids, 6).tokens[0])


@pytest.mark.parametrize("name", ["woq_int4", "dyn_int8_sq"])
def test_a_batch_calibrates_on_single_texts(model, prompt, name, our_passes_only):
    """batch=2 with calibration texts of one row each (what `benchmarks/llm.py --batch 4` and
    `command.calibration` give): fed two at a time, the last one twice, so GPTQ and SmoothQuant
    calibrate (they failed the export's batch guard before); the eager model decodes both rows."""
    torch.manual_seed(3)
    texts = [torch.randint(0, 512, (1, 72)) for _ in range(3)]  # 216 rows for GPTQ's 128 inputs
    lm = CompiledLM(model, name, calibration=texts, chunk=CHUNK, max_len=MAX_LEN, batch=2, float_dtype=torch.float32)
    batches = lm._calibration_batches()
    assert [b.shape for b in batches] == [(2, 72), (2, 72)]
    assert torch.equal(batches[0], torch.cat(texts[:2])) and torch.equal(batches[1], texts[2].repeat(2, 1))
    if name == "woq_int4":
        assert set(lm.module.meta["gptq"].values()) == {FITTED}, lm.module.meta["gptq"]
    logits = lm.prefill(torch.cat([prompt, prompt]), fn=lm.module)
    assert logits.shape == (2, 512) and torch.equal(logits[0], logits[1])


def test_the_default_options_cpp_wrapper_run_our_kernels(model, prompt, our_passes_only):
    """What `inductor-quant generate` compiles with (freezing + the C++ wrapper), global freezing
    off: the same numbers as eager, our weight-only kernel in the C++ code of both graphs."""
    lm = CompiledLM(model, "woq_int8", chunk=CHUNK, max_len=32, float_dtype=torch.float32)
    codes = []
    with mock.patch.object(GraphLowering, "save_output_code", codes.append), \
            torch._inductor.config.patch(freezing=False):
        eager = _prefill_and_steps(lm, prompt, lm.module)
        compiled = _prefill_and_steps(lm, prompt, lm.compiled)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())
    assert lm.compiles == 2 and KERNELS["woq_int8"]("\n".join(codes))


def test_int4_keeps_int8_where_a_linear_is_not_whole_groups(our_passes_only):
    """One query head of 16: the attention output projection has 16 inputs, not a group of 32.
    The int4 recipe quantizes it int8 (as the LM head) instead of refusing the model."""
    model = _weights(Decoder(DecoderConfig.tiny(num_attention_heads=1, head_dim=16, query_pre_attn_scalar=16)))
    with pytest.warns(UserWarning, match="GPTQ on calibration text, and none was given"):  # rounded to nearest
        lm = CompiledLM(model, "woq_int4", chunk=CHUNK, max_len=16, float_dtype=torch.float32)
    dq = torch.ops.quantized_decomposed.dequantize_per_channel.default
    ranges = [tuple(n.args[4:6]) for n in lm.module.graph.nodes if n.target is dq]
    # per layer q, k, gate, up, down int4, v_proj (the recipe's choice) and o_proj int8; the head int8
    assert sorted(ranges) == sorted([(-8, 7)] * 10 + [(-127, 127)] * 5), ranges


def test_int4_keeps_int8_where_torchs_gemm_does_not_take_the_width(our_passes_only):
    """One KV head of 8 dims: k_proj and v_proj have 8 outputs, and torch's int4 GEMM takes
    multiples of 16 only (kernels/int4pack.py); o_proj has 16 inputs, not a group. Those three go
    int8, so no linear is left in fp32 (decoder fuzz seed 132 reported four unfused)."""
    model = _weights(Decoder(DecoderConfig.tiny(num_attention_heads=2, head_dim=8, query_pre_attn_scalar=8)))
    lm = CompiledLM(model, "woq_int4", chunk=CHUNK, max_len=16, float_dtype=torch.float32)
    dq = torch.ops.quantized_decomposed.dequantize_per_channel.default
    ranges = [tuple(n.args[4:6]) for n in lm.module.graph.nodes if n.target is dq]
    # per layer q, gate, up, down int4; k, v, o_proj int8; the head int8
    assert sorted(ranges) == sorted([(-8, 7)] * 8 + [(-127, 127)] * 7), ranges
