"""Training entry point: `deepspeed launch/train.py --config C.yaml [--set key=value ...]`.

Also runs as `python launch/train.py ...` (one process) and under `torchrun`.
"""

import sys

from fastprod.recipe.train import main

if __name__ == "__main__":
    sys.exit(main())
