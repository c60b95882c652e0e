"""One run directory, one writer: `with RunLock(run_dir): ...` holds run_dir/.lock while a run writes there.

The lock file holds its owner's pid, host and start time. A second run on the same folder is refused
while the owner lives; a lock left by a run that died on this host, or a damaged one, is taken over.
The owner of a lock made on another host cannot be checked from here, so it counts as alive.
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


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._content = None  # what we wrote, while we hold the lock
        self._pid = None
        self._made_folder = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock, taking over a stale one; UserError when a live run holds it, or when the
        folder cannot be written (found here, before any long work)."""
        try:
            self._acquire()
        except OSError as error:
            raise UserError(
                f"run folder {self.run_dir} cannot be written ({error.strerror or error}); "
                "choose another with --set run.dir=PATH"
            ) from None

    def _acquire(self) -> None:
        self._made_folder = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        content = json.dumps(owner).encode()
        with _one_starter_at_a_time(self.run_dir):
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
        raise UserError(f"could not lock {self.run_dir}: other runs keep taking {self.path}; try again")

    def release(self) -> None:
        """Remove the lock if it is still ours (a process forked from the owner leaves it alone)."""
        if self._content is None or os.getpid() != self._pid:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        self._content = None
        if self._made_folder:  # a run that stopped before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

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
                f"{self.run_dir} is in use by another run (pid {owner['pid']} on {owner['host']}, "
                f"started {owner.get('started', 'at an unknown time')}): wait for it to end or "
                f"choose another run folder; if that run is gone, delete {self.path}"
            )
        else:
            reason = f"its previous run (pid {owner['pid']} on {owner['host']}) is gone"
        self.path.unlink(missing_ok=True)
        print(f"taking over {self.run_dir}: {reason}", file=sys.stderr)


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
