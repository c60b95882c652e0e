"""python -m genrenet: the same as the `genrenet` command."""

import sys

try:
    from genrenet.cli import main
except KeyboardInterrupt:  # Ctrl-C while PyTorch and friends load: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
