"""User-facing errors: a user's mistake ends in one line on stderr, never a traceback."""

import functools
import os
import sys


class UserError(Exception):
    """A problem with the user's input (config, data, files) that a message can explain."""


class AudioError(UserError):
    """A file that cannot be decoded as audio."""


def error_line(error: BaseException, last: bool = False, limit: int = 200) -> str:
    """One line of an exception's text for a one-line message: the first (or, for tools that print
    a banner before the reason, the last) non-empty line, or the exception's type when it says nothing."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if last else lines[0]) if lines else type(error).__name__
    return text[:limit]


def one_line(text: str) -> str:
    """Text kept on one line: a newline inside a file name is shown as \\n, not as a line break."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def cli_entry(main):
    """Wrap a `main(argv)` so UserError prints one line and exits 2, Ctrl-C exits 130, and output
    piped into a reader that stops early (`| head`) ends quietly."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            if sys.stdout is None:  # started with stdout closed: every result would be lost without a word
                raise UserError("standard output is closed, so the results cannot be written")
            code = main(argv)
            sys.stdout.flush()  # a full disk or a closed descriptor shows here, not after we said "done"
            return code
        except UserError as error:
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # The reader is gone; point stdout at devnull so Python's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as error:
            if error.filename is not None:
                raise  # a file's problem, not the output's
            print(f"error: could not write the results to standard output ({error.strerror or error})", file=sys.stderr)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

    return wrapper
