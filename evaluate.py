"""Evaluate a checkpoint: python evaluate.py --checkpoint runs/gtzan/best.pt [--split test|valid|train]"""

import sys

try:
    from genrenet.cli import evaluate_main as main
except KeyboardInterrupt:  # Ctrl-C while PyTorch and friends load: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
