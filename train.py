"""Train a model: python train.py --config configs/gtzan.yaml [--set section.key=value ...]"""

import sys

from genrenet.training import main

if __name__ == "__main__":
    sys.exit(main())
