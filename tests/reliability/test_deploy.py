"""Serialization and deployment (issue 6, item 3).

* torch.export.save/load of a converted model -> torch.compile (freezing, no_grad) gives the same
  generated code and bit-identical outputs as compiling the original;
* AOTInductor: the .pt2 package's generated C++ calls the fused oneDNN int8 ops (no fp32 conv/GEMM
  left for the quantized layers) and its outputs match the eager converted model within one
  quantization step;
* the QAT checkpoint flow of the tutorial: state_dict of a prepared QAT model -> torch.save ->
  re-export + re-prepare -> load_state_dict -> resume training -> convert.
"""

import copy
import zipfile

import pytest
import torch
from torch import nn

import inductor_quant.passes as iq_passes
from inductor_quant import convert_pt2e, move_exported_model_to_eval, prepare_qat_pt2e
from helpers import ConvLinear, compile_frozen, float_compute_calls, onednn_calls, ptq, quant_step, x86_quantizer


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    return ptq(ConvLinear().eval(), (x,)), x


def _fused(code: str) -> bool:
    return (onednn_calls(code, "qconv_pointwise") == 1 and onednn_calls(code, "qlinear_pointwise") == 1
            and not float_compute_calls(code))


def test_export_save_load_then_compile_is_identical(tmp_path, our_passes_only, converted):
    q, x = converted
    _, before, code_before = compile_frozen(q, x)
    path = tmp_path / "converted.pt2"
    torch.export.save(torch.export.export(q, (x,)), path)
    iq_passes.uninstall()  # a fresh process: loading alone installs nothing ...
    loaded = torch.export.load(path).module()
    iq_passes.install()  # ... the documented step for models loaded from disk
    _, after, code_after = compile_frozen(loaded, x)
    assert _fused(code_before) and _fused(code_after)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)


def _package_sources(path) -> str:
    with zipfile.ZipFile(path) as z:
        return "\n".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".cpp"))


def test_aotinductor_package_runs_fused_onednn_ops(tmp_path, our_passes_only, converted):
    q, x = converted
    iq_passes.reset_stats()
    # AOTInductor freezes only when config.freezing is set (and, like torch.compile, under no_grad);
    # no FX-graph-cache hit, so our stats see this compile
    with torch.no_grad(), torch._inductor.config.patch(freezing=True, fx_graph_cache=False):
        ep = torch.export.export(q, (x,))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "q.pt2"))
    stats = iq_passes.stats()
    assert stats["fused"].get("qconv.prepack") == 1 and stats["fused"].get("qlinear.prepack.2d") == 1, stats
    src = _package_sources(path)
    assert onednn_calls(src, "qconv_pointwise") == 1, "no fused qconv in the package"
    assert onednn_calls(src, "qlinear_pointwise") == 1, "no fused qlinear in the package"
    assert not float_compute_calls(src), "an fp32 conv/GEMM remains"
    runner = torch._inductor.aoti_load_package(path)
    for inp in (x, torch.randn_like(x)):
        with torch.no_grad():
            torch.testing.assert_close(runner(inp), q(inp), rtol=0, atol=quant_step(q))


# ---- QAT checkpoint --------------------------------------------------------------------------


class QATNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _prepare_qat(x):
    torch.manual_seed(1)  # the float model: "export and prepare the exact same way"
    gm = torch.export.export(QATNet().train(), (x,)).module()
    return prepare_qat_pt2e(gm, x86_quantizer(is_qat=True))


def _train(model, batches, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_qat_checkpoint_save_reprepare_load_resume_convert(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(6)]
    x = data[0][0]
    first = _prepare_qat(x)
    _train(first, data[:3])
    path = tmp_path / "checkpoint_0.pth"
    torch.save(first.state_dict(), path)

    resumed = _prepare_qat(x)
    resumed.load_state_dict(torch.load(path))
    for (name, a), b in zip(first.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # resuming from the checkpoint continues exactly like the uninterrupted run
    reference = copy.deepcopy(first)
    assert _train(resumed, data[3:]) == _train(reference, data[3:])
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    q_ref, q_res = (convert_pt2e(move_exported_model_to_eval(m)) for m in (reference, resumed))
    probe = torch.randn(4, 3, 8, 8, generator=g)
    torch.testing.assert_close(q_res(probe), q_ref(probe), rtol=0, atol=0)
    targets = [n.target for n in q_res.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.quantized_decomposed.dequantize_per_channel.default) == 2


def test_aotinductor_with_grad_enabled_falls_back_to_fp32_with_one_warning(tmp_path, our_passes_only, converted):
    """Without no_grad AOTInductor does not freeze: the package is the correct dq -> fp32 -> q
    model, and our pass says once how to get the int8 kernels."""
    import importlib
    import warnings

    q, x = converted
    importlib.import_module("inductor_quant.passes.install").reset_warning()
    iq_passes.reset_stats()
    with torch._inductor.config.patch(freezing=True, fx_graph_cache=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = torch._inductor.aoti_compile_and_package(torch.export.export(q, (x,)),
                                                        package_path=str(tmp_path / "q_grad.pt2"))
    ours = [str(w.message) for w in caught if "inductor_quant" in str(w.message)]
    assert len(ours) == 1 and "torch.no_grad()" in ours[0], ours
    assert not iq_passes.stats()["fused"] and len(iq_passes.stats()["unfused"]) == 2
    assert onednn_calls(_package_sources(path), "qconv_pointwise") == 0
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(path)(x), q(x), rtol=0, atol=1e-5)
