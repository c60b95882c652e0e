"""Train a model: python train.py --config configs/gtzan.yaml [--set section.key=value ...]"""

import sys

from genrenet.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
