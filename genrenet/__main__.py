"""python -m genrenet: the same as the `genrenet` command."""

import sys

from genrenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
