"""Evaluate a checkpoint: python evaluate.py --checkpoint runs/gtzan/best.pt [--split test|valid|train]"""

import sys

from genrenet.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
