"""Predict genres: python predict.py --checkpoint runs/gtzan/best.pt song.mp3 more/*.flac [--segments] [--json]"""

import sys

try:
    from genrenet.cli import predict_main as main
except KeyboardInterrupt:  # Ctrl-C while PyTorch and friends load: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
