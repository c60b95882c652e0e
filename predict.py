"""Predict genres: python predict.py --checkpoint runs/gtzan/best.pt song.mp3 more/*.flac [--segments] [--json]"""

import sys

from genrenet.cli import predict_main as main

if __name__ == "__main__":
    sys.exit(main())
