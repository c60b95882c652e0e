"""Progress reports that suit where the output goes.

A terminal gets a tqdm bar. Anything else (a file, a pipe, a CI log) gets one plain line every
LINE_SECONDS at most: every refresh of a bar would be written there, carriage returns and all.
`quiet()` turns both off for the commands' --quiet.
"""

import contextlib
import contextvars
import sys
import time

from tqdm import tqdm

LINE_SECONDS = 10.0  # how often a progress line is written when stderr is not a terminal

# A context variable, not a module global: the setting ends with the `with quiet():` block.
_quiet = contextvars.ContextVar("genrenet_quiet", default=False)


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """No progress reports inside the block."""
    token = _quiet.set(enabled)
    try:
        yield
    finally:
        _quiet.reset(token)


def is_quiet() -> bool:
    return _quiet.get()


def progress(iterable, desc: str, total: int | None = None, unit: str = "it", initial: int = 0, leave: bool = True):
    """`iterable`, reporting progress on stderr: a bar on a terminal, a line now and then elsewhere."""
    if is_quiet():
        return _Lines(iterable, desc, total, unit, initial, every=None)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave)
    return _Lines(iterable, desc, total, unit, initial, every=LINE_SECONDS)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # a closed or detached stream
        return False


class _Lines:
    """The subset of tqdm's interface the commands use (iteration, set_postfix, close), written as
    one line every `every` seconds, or never (every=None)."""

    def __init__(self, iterable, desc, total, unit, initial, every):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.done, self.postfix = initial, {}
        self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.done += 1
            if self.every is not None and time.monotonic() - self.last >= self.every:
                self.last = time.monotonic()
                self._write()

    def set_postfix(self, **values):
        self.postfix = values

    def close(self):
        pass

    def _write(self):
        of = f"/{self.total}" if self.total is not None else ""
        extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}{of} {self.unit}{extra}", file=sys.stderr, flush=True)
