"""Evaluate a checkpoint: python evaluate.py --checkpoint runs/gtzan/best.pt [--split test|valid|train]"""

import sys

from genrenet.cli import evaluate_main as main

if __name__ == "__main__":
    sys.exit(main())
