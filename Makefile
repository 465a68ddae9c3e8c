# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv. torch==2.13.0 is installed explicitly first: a bare
# `torch` requirement could pull a multi-GB CUDA build from the registry.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.inductor-quant-installed

# torch 2.14 (a CUDA build that runs on the CPU, several GB) lives in a venv outside the clone,
# created once and reused by later runs and clones.
VENV214 ?= $(HOME)/.cache/inductor-quant/venv-torch2.14
PY214   := $(VENV214)/bin/python

.PHONY: venv demo test test-slow test-torch214 accuracy fuzz bench-readme clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,accuracy,peers,llm]" "$(TORCH)"
	touch $(STAMP)

demo: venv
	$(PY) -P -m inductor_quant demo

# two pytest workers (pytest-xdist): compiles are mostly one thread, so two workers take about
# half the time of one (2-core AMD EPYC Zen 4, 2026-12-05: ~18 min for torch 2.13, ~14 for 2.14.1)
test: venv
	$(PY) -P -m pytest -q -n 2 -m "not slow" --durations=15 tests

# The README's speed table against the peers, on this machine's CPU (~21 min on 2 cores).
BENCH_MODELS ?= resnet50:1,16 bert_base:1,8 mobilenet_v2:1 vit_b16:1
BENCH_MODES  ?= inductor_fp32 inductor_bf16 int8 int8_bf16 int8_cpp int8_fast int8_bf16_fast int8_builtin
bench-readme: venv
	$(PY) -P -m inductor_quant --quiet bench --models $(BENCH_MODELS) --modes $(BENCH_MODES) \
	    --peers openvino onnxruntime --runs 20 --out benchmarks/results/latest --readme README.md

accuracy: venv   # both real-model accuracy tables (data: sh benchmarks/accuracy/install.sh)
	$(PY) -P -m inductor_quant.benchmarks.accuracy

# The differential fuzzer's full sweep (500 graphs x every config of tests/fuzz/harness.py: 16 where
# bf16 is native, 14 elsewhere; two shards use both cores). With ONEDNN_MAX_CPU_ISA=AVX2
# MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 set, the same sweep as an AVX2-only CPU runs it.
FUZZ_GRAPHS ?= 500
fuzz: venv
	$(PY) tests/fuzz/fuzz.py --graphs $$(( $(FUZZ_GRAPHS) / 2 )) --shard 0/2 --out fuzz-out > fuzz-out-0.log 2>&1 & \
	$(PY) tests/fuzz/fuzz.py --graphs $$(( $(FUZZ_GRAPHS) / 2 )) --shard 1/2 --out fuzz-out > fuzz-out-1.log 2>&1; wait
	$(PY) tests/fuzz/fuzz.py --summary fuzz-out

test-slow: venv
	$(PY) -P -m pytest -q -m slow tests

# The whole default suite again on torch 2.14 (no built-in quantization fusions there).
test-torch214:
	test -x $(PY214) || $(PYTHON) -m venv $(VENV214)
	$(PY214) -m pip install -q "torch==2.14.1"
	$(PY214) -m pip install -q -e ".[test,accuracy,peers,llm]" "torch==2.14.1"
	$(PY214) -P -m pytest -q -n 2 -m "not slow" --durations=15 tests -p no:cacheprovider

clean:
	rm -rf $(VENV) build dist *.egg-info
