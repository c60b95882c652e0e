"""Train a model: python train.py --config configs/gtzan.yaml [--set section.key=value ...]"""

import sys

try:
    from genrenet.cli import train_main
except KeyboardInterrupt:  # Ctrl-C while PyTorch and friends load: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(train_main())
