"""One writer at a time: `with RunLock(run_dir): ...` holds run_dir/.lock while a run writes there, and
OutputLock(path) holds .NAME.lock beside a results file while `genrenet predict` appends to it.

The lock file holds its owner's pid, host and start time. A second writer is refused while the owner
lives; a lock left by a writer that died on this host, or a damaged one, is taken over. The owner of a
lock made on another host cannot be checked from here, so it counts as alive.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from genrenet.errors import UserError
from genrenet.fileio import process_alive

LOCK_NAME = ".lock"


class WriterLock:
    """The lock file `path` guards `target` (a folder or a file); `writer` names its kind of owner in
    messages ("run"), and `elsewhere` what else the user can do while it is taken."""

    def __init__(self, target: str | Path, path: str | Path, writer: str, elsewhere: str):
        self.target, self.path = Path(target), Path(path)
        self.writer, self.elsewhere = writer, elsewhere
        self._content = None  # what we wrote, while we hold the lock
        self._pid = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock, taking over a stale one; UserError when a live writer holds it, OSError
        when its folder cannot be written."""
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        content = json.dumps(owner).encode()
        with _one_starter_at_a_time(self.path.parent):
            for _ in range(3):  # a stale lock is removed, then ours is created
                try:
                    handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._remove_stale()
                    continue
                with os.fdopen(handle, "wb") as file:
                    file.write(content)
                self._content, self._pid = content, os.getpid()
                return
        raise UserError(f"could not lock {self.target}: other processes keep taking {self.path}; try again")

    @contextlib.contextmanager
    def opening(self):
        """Acquire for a block that opens what the lock guards: a failure there releases the lock
        again, success leaves it held until release()."""
        self.acquire()
        try:
            yield self
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the lock if it is still ours (a process forked from the owner leaves it alone)."""
        if self._content is None or os.getpid() != self._pid:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        self._content = None

    def _remove_stale(self) -> None:
        """The lock exists: raise when its owner may be alive, else remove it and say so."""
        try:
            owner = read_owner(self.path)
        except FileNotFoundError:
            return  # released meanwhile
        if owner is None:
            reason = "its lock file was damaged"
        elif owner["host"] != socket.gethostname() or process_alive(owner["pid"]):
            raise UserError(
                f"{self.target} is in use by another {self.writer} (pid {owner['pid']} on {owner['host']}, "
                f"started {owner.get('started', 'at an unknown time')}): wait for it to end or "
                f"{self.elsewhere}; if that {self.writer} is gone, delete {self.path}"
            )
        else:
            reason = f"its previous {self.writer} (pid {owner['pid']} on {owner['host']}) is gone"
        self.path.unlink(missing_ok=True)
        print(f"taking over {self.target}: {reason}", file=sys.stderr)


class RunLock(WriterLock):
    """run_dir/.lock, made with the folder; an unwritable folder is found here, before any long work."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        super().__init__(self.run_dir, self.run_dir / LOCK_NAME, "run", "choose another run folder")
        self._made_folder = False

    def acquire(self) -> None:
        try:
            self._made_folder = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            super().acquire()
        except OSError as error:
            raise UserError(
                f"run folder {self.run_dir} cannot be written ({error.strerror or error}); "
                "choose another with --set run.dir=PATH"
            ) from None

    def release(self) -> None:
        held = self._content is not None and os.getpid() == self._pid
        super().release()
        if held and self._made_folder:  # a run that stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()


class OutputLock(WriterLock):
    """.NAME.lock beside an output file that one `genrenet predict` at a time may write (`option`
    names it in messages: --output, --embeddings)."""

    def __init__(self, output: str | Path, option: str):
        output = Path(output)
        super().__init__(output, output.with_name(f".{output.name}.lock"), "genrenet predict", f"give another {option}")
        self.option = option

    def acquire(self) -> None:
        try:
            super().acquire()
        except OSError as error:
            raise UserError(f"{self.option} {self.target}: cannot write ({error.strerror or error})") from None


def read_owner(path: Path) -> dict | None:
    """The lock's owner ({"pid", "host", "started"}), or None for an empty or damaged lock file."""
    try:
        owner = json.loads(path.read_bytes())
        if isinstance(owner["pid"], int) and isinstance(owner["host"], str):
            return owner
    except (ValueError, TypeError, KeyError):
        pass
    return None


@contextlib.contextmanager
def _one_starter_at_a_time(folder: Path):
    """Starters on this host take turns at the lock, so two that find one stale lock cannot both take
    it over, and none reads a lock its creator has not written yet. The kernel ends a turn when its
    process dies, so nothing here can go stale."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system that cannot lock a folder: go on without turns
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # ends the turn
