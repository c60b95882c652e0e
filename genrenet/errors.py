"""User-facing errors: a user's mistake ends in one line on stderr, never a traceback."""

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (config, data, files) that a message can explain."""


class AudioError(UserError):
    """A file that cannot be decoded as audio."""


def cli_entry(main):
    """Wrap a `main(argv)` so UserError prints one line and exits 2, Ctrl-C exits 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
