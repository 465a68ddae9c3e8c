#!/bin/sh
# Everything the accuracy benchmarks need beyond `pip install -e .[test]` (run as root for apt).
#   sh benchmarks/accuracy/install.sh [path/to/venv/bin/python]
# Fashion-MNIST: IDX .gz files under /usr/share/datasets/fashion-mnist.
# (The MiniLM/WordNet evaluation of issue 5 will add wordnet-base and its pip packages here.)
set -eu
PY="${1:-.venv/bin/python}"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
fi
if [ -x "$PY" ]; then
    "$PY" -m pip install -q matplotlib   # the `plot` extra: debugger PNGs
fi
