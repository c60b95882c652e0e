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

from genrenet import distributed

LINE_SECONDS = 15.0  # how often a progress line is written when stderr is not a terminal

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
    """`iterable`, reporting progress on stderr: a bar on a terminal, a line now and then elsewhere
    (from rank 0 alone under torchrun)."""
    if is_quiet() or not distributed.is_main():
        return _Lines(iterable, desc, total, unit, initial, every=None, leave=False)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave)
    return _Lines(iterable, desc, total, unit, initial, every=LINE_SECONDS, leave=leave)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # a closed or detached stream
        return False


class _Lines:
    """The subset of tqdm's interface the commands use (iteration, set_postfix, close), written as
    one line every `every` seconds, or never (every=None); with leave, a last line when done."""

    def __init__(self, iterable, desc, total, unit, initial, every, leave):
        self.iterable, self.desc, self.unit, self.every, self.leave = iterable, desc, unit, every, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.done, self.postfix = initial, {}
        self.started = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.done += 1
            if self.every is not None and time.monotonic() - self.last >= self.every and self.done != self.total:
                self.last = time.monotonic()
                self._write()
        if self.leave:
            self._write(f" in {time.monotonic() - self.started:.1f}s")

    def set_postfix(self, **values):
        self.postfix = values

    def close(self):
        pass

    def _write(self, suffix: str = ""):
        of = f"/{self.total}" if self.total is not None else ""
        extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}{of} {self.unit}{extra}{suffix}", file=sys.stderr, flush=True)
