"""Evaluate a checkpoint: python evaluate.py --checkpoint runs/gtzan/best.pt [--split test|valid|train]"""

import os
import signal
import sys

# Ctrl-C while PyTorch and friends load: leave at once, quietly (an interrupted import can only
# print a traceback); nothing has been written yet.
signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
from genrenet.cli import evaluate_main as main  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":
    sys.exit(main())
