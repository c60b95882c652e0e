"""Files written so that a crash never leaves half of one: a temp file in the same folder, then a rename."""

import functools
import glob
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

import torch


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file.

    Several processes may save the same path at once (runs sharing a feature cache): each writes its
    own temp file, and the last rename wins with a whole file. A write that fails (a full disk) is
    the OSError it was, not torch's RuntimeError."""
    atomic_write(path, lambda file: torch_save(obj, file))


def torch_save(obj, file) -> None:
    """torch.save into an open file. torch's zip writer swallows the OSError of a failed write and
    raises its own RuntimeError ("unexpected pos"), which says nothing of a full disk: that OSError
    is raised instead."""
    recorder = _WriteErrors(file)
    try:
        torch.save(obj, recorder)
    except RuntimeError:
        if recorder.error is not None:
            raise recorder.error from None
        raise


class _WriteErrors:
    """A file's write(), keeping the OSError it raised."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_write(path: str | Path, write) -> None:
    """write(file) into a temp file beside `path`, synced to disk, then renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's host and pid in the name let a later save tell a killed writer's leftover from
    # a write still in flight in another process.
    prefix = f".{path.name}.{safe_hostname()}.{os.getpid()}."
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600; a saved file gets the usual mode
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    remove_stale_temps(path)


def remove_stale_temps(path: Path) -> None:
    """Remove temp files of `path` whose writer was killed mid-write: those of a dead process on
    this host, and those named before temp names carried their writer. Writers on other hosts
    cannot be checked, so their temp files stay."""
    prefix, host = f".{path.name}.", safe_hostname()
    for temp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        writer = re.fullmatch(r"(.*)\.(\d+)\.[^.]+", temp.name[len(prefix) : -len(".tmp")])
        if writer and (writer[1] != host or process_alive(int(writer[2]))):
            continue
        temp.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one owned by another user counts too)."""
    if os.name == "nt":
        return True  # os.kill would end it there; keeping a leftover file is the harmless side
    if pid <= 0:
        return False  # kill(0 or negative) would ask about a whole process group
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def safe_hostname() -> str:
    """This host's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())


WHOLE_FILE_BYTES = 1 << 20  # files up to this size are hashed whole; larger ones by SAMPLES blocks
SAMPLES, SAMPLE_BYTES = 64, 8 << 10


def fingerprint(path: str | Path) -> str:
    """A file's size and a hash of its content, to tell an edited or replaced file: all of it up to
    1 MiB, beyond that 64 blocks of 8 KiB spread evenly from its first byte to its last (512 KiB
    read: a library of large files stays cheap to check), so that an edit longer than a 63rd of the
    file always touches a block. Raises OSError when the file cannot be read.

    Hashed once per process for as long as the file's stat is the same (the store and the recorded
    split both ask); ctime is part of it, since an edit that sets mtime back still moves ctime."""
    stat = os.stat(path)
    return _fingerprint(os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _fingerprint(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        digest = hashlib.sha256()
        if size <= WHOLE_FILE_BYTES:
            digest.update(file.read())
        else:
            for block in range(SAMPLES):
                file.seek(block * (size - SAMPLE_BYTES) // (SAMPLES - 1))
                digest.update(file.read(SAMPLE_BYTES))
    return f"v2:{size}:{digest.hexdigest()[:32]}"
