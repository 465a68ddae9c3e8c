"""`python -m inductor_quant` == the `inductor-quant` console script."""

import sys

from inductor_quant.cli import main

if __name__ == "__main__":
    sys.exit(main())
