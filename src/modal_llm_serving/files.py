"""Files the toolkit writes and reads on the user's machine, done safely in one place.

- `write_atomic`: a file appears whole or not at all, through a temporary file of a unique name
  created exclusively beside it (a user's file or a symlink is never written through), renamed
  over the target;
- `FolderClaim`: one writer per results folder, an advisory lock the kernel drops when its
  process dies, so a crashed run never leaves a folder stuck;
- `read_text_limited`: a user's input file read with a size bound (`/dev/zero`, a disk image);
- `cannot_write`: an OSError from the machine (disk full, read-only, no permission) as the
  one-line `FileError` the CLI shows with exit code 2.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from modal_llm_serving.errors import FileError, UsageError

__all__ = ["ENVIRONMENT_ERRNOS", "LOCK_NAME", "FolderClaim", "cannot_write", "read_text_limited",
           "require_regular_file", "write_atomic"]

# What the machine, not the toolkit, makes fail; each with what the user can do about it.
_SPACE = "free some space or choose another folder"
_PERMISSION = "choose a folder you can write to"
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: _SPACE, errno.EDQUOT: _SPACE, errno.EFBIG: _SPACE,
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: _PERMISSION, errno.EPERM: _PERMISSION,
    errno.EIO: "the disk or terminal reported an I/O error; check it",
    errno.ENOTDIR: "a part of the path is a file; give a folder",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENAMETOOLONG: "give a shorter path",
    errno.ELOOP: "it is a symbolic link (or a loop of them); give a plain file or folder",
    errno.EEXIST: "it exists already; remove it or choose another name",
    errno.ENOENT: "a folder on the way does not exist; create it first",
}


def cannot_write(path: Path | str, exc: OSError, *, what: str = "write") -> FileError:
    """The one-line error for an OSError the machine caused at `path`."""
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = ENVIRONMENT_ERRNOS.get(exc.errno or 0, "check the path and try again")
    return FileError(f"cannot {what} {path}: {exc.strerror or exc}"
                     f"{f' ({name})' if name else ''}; {hint}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all (an OSError, its file untouched, on failure).

    The temporary file gets a unique name (mkstemp: O_CREAT | O_EXCL, so it never opens an
    existing file or follows a symlink) in the target's own folder, so the rename is atomic;
    the rename replaces a symlink at `path` itself, never the file it points to.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # as open() would have made it
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_text_limited(path: Path, *, limit: int = 16 * 2**20, what: str = "file") -> str:
    """A user's text file, UTF-8, at most `limit` bytes; a one-line UsageError otherwise.

    Only a regular file is opened (a FIFO would block, /dev/zero never ends), and the read is
    bounded (a disk image named by mistake)."""
    require_regular_file(path, what=what)
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise cannot_write(path, exc, what="read") from None
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit // 2**20} MiB; give the text "
                         "file meant here")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start}); give a text "
                         "file") from None


def require_regular_file(path: Path, *, what: str = "file") -> None:
    """A one-line UsageError unless `path` is a regular file (a FIFO would block a read,
    /dev/zero or /dev/urandom never end); an OSError of stat() as a FileError."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise cannot_write(path, exc, what="read") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{what} {path} is {kind}; give a text file")


LOCK_NAME = ".mls-lock"


class FolderClaim:
    """One writer per folder: `with FolderClaim(folder):` holds `folder/.mls-lock` locked.

    The lock is flock(2) on that file: the kernel releases it when the process ends in any way
    (even SIGKILL), so a crashed run's lock is free for the next one at once. The file holds
    the owner's pid and start time, for the message a second run gets. On release the file is
    removed (while still locked, so no other run can hold a lock on a name that is gone).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the claim; UsageError if another live run holds it, OSError if the folder
        cannot be written."""
        for _attempt in range(20):
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(descriptor)
                os.close(descriptor)
                raise UsageError(f"{self.folder} is being written by another run ({owner}); "
                                 "wait for it to end, or give another folder") from None
            # the previous owner may have removed the name between our open and our lock
            if not _same_file(descriptor, self.path):
                os.close(descriptor)
                continue
            self._descriptor = descriptor
            started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            try:
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"pid {os.getpid()} started {started}\n".encode())
            except OSError:
                self.release()
                raise
            return
        raise UsageError(f"{self.folder}: could not take its lock; try again")

    def release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> FolderClaim:
        if self._descriptor is None:  # `with prepare_out_dir(...)`: taken already
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _owner(descriptor: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(descriptor, 200, 0).decode("ascii", "replace").strip()
        if text.startswith("pid "):
            return text.splitlines()[0]
    return "its pid unknown"


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(descriptor)
    return (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev)
