"""`fast_options()` (inductor_quant/compile_options.py): what its Dynamo guard filter gives up and
what it keeps. Dynamo stops checking the converted module's parameters and buffers before each
call; the inputs and the global state (bf16 autocast) stay guarded, so a call that needs other
code still compiles it."""

import copy

import torch
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from inductor_quant.compile_options import skip_module_guards


def _converted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    return iq.quantize(model, (x,), [(x,)], quantizer=quantizer), x


def _compiles(converted, options, x, change):
    """Graphs compiled over: a call, `change(module)`, a call, a call under bf16 autocast; and the
    first call's output."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(converted, options=options)
    graphs = []
    with torch.no_grad():
        out = compiled(x)
        graphs.append(counters["stats"]["unique_graphs"])
        change(converted)
        compiled(x)
        graphs.append(counters["stats"]["unique_graphs"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compiled(x)
        graphs.append(counters["stats"]["unique_graphs"])
    return graphs, out


def _retype_a_buffer(module):
    """A change Dynamo's default guards catch: a buffer replaced by one of another dtype."""
    name = next(n for n, _ in module.named_buffers() if n.endswith("weight_scale"))
    setattr(module, name, getattr(module, name).double())


def test_fast_options_drop_the_guards_on_the_module_and_keep_autocasts():
    converted, x = _converted()
    with torch.no_grad():
        expected = converted(x)
    step = max(float(n.args[1]) for n in converted.graph.nodes if n.target is torch.ops.quantized_decomposed.quantize_per_tensor.default)

    # witness: by default the changed buffer recompiles
    default, _ = _compiles(copy.deepcopy(converted), {"freezing": True, "cpp_wrapper": True}, x, _retype_a_buffer)
    assert default == [1, 2, 3], default

    options = iq.fast_options()
    assert options["guard_filter_fn"] is skip_module_guards
    fast, out = _compiles(copy.deepcopy(converted), options, x, _retype_a_buffer)
    assert fast == [1, 1, 2], fast  # the module unchecked; bf16 autocast still compiles its own graph
    assert (out - expected).abs().max().item() <= step
    assert "guard_filter_fn" in iq.fast_options()  # each call a new dict (torch.compile pops the key)
