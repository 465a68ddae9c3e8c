"""Concurrency (issue 6, item 4): one compiled quantized model called from two threads at once
gives exactly the outputs of serial calls (fused oneDNN ops, frozen prepacked weights shared)."""

import threading

import pytest
import torch

from helpers import ConvLinear, compile_frozen, onednn_calls, ptq

CALLS_PER_THREAD = 20


@pytest.fixture(scope="module", params=["python_wrapper", "cpp_wrapper"])
def compiled(request, our_passes_only):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    q = ptq(ConvLinear().eval(), (x,))
    with torch._inductor.config.patch(cpp_wrapper=request.param == "cpp_wrapper"):
        fn, _, code = compile_frozen(q, x)
    assert onednn_calls(code, "qconv_pointwise") == 1 and onednn_calls(code, "qlinear_pointwise") == 1
    return fn


def _run(fn, inputs):
    with torch.no_grad():  # thread-local; Inductor's config is global, so it is not patched in threads
        return [fn(x) for x in inputs]


def test_two_threads_match_serial_calls(compiled):
    g = torch.Generator().manual_seed(1)
    inputs = [[torch.randn(2, 3, 8, 8, generator=g) for _ in range(CALLS_PER_THREAD)] for _ in range(2)]
    serial = [_run(compiled, batch) for batch in inputs]

    start = threading.Barrier(2)
    results, errors = [None, None], []

    def worker(i):
        try:
            start.wait()  # both threads call the compiled model at the same time
            results[i] = _run(compiled, inputs[i])
        except BaseException as exc:  # surface it in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    with torch._dynamo.config.patch(error_on_recompile=True):  # both threads run the one compiled graph
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    for i in range(2):
        for got, want in zip(results[i], serial[i]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
