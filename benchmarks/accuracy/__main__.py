"""`python -m inductor_quant.benchmarks.accuracy`: both real-model accuracy tables in one run."""

import sys

from . import fashion_mnist, minilm


def main() -> int:
    return max(fashion_mnist.main([]), minilm.main([]))


if __name__ == "__main__":
    sys.exit(main())
