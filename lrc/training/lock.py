"""One run per output directory: ``RunLock``, a kernel ``flock`` on ``OUT/.lrc.lock`` held by the run's main process for
its whole life (the file names the holder for the refusal message)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lrc.errors import RunDirError
from lrc.files import current_umask, pid_alive
from lrc.training.run_dir import LOCK_NAME


@dataclass
class LockHolder:
    host: str
    pid: int
    started: str
    command: str = ""

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


class RunLock:
    """Exclusive lock on an output directory for a run's life (``with RunLock(out) as lock: ...``).

    A kernel ``flock`` on ``OUT/.lrc.lock`` decides who holds it, so a run that dies releases it
    with its process. The file also names the holder (host, pid, start, command) for the refusal
    message. A holder that died without releasing (SIGKILL, node failure) is reported
    (``stale_holder``) and replaced. On filesystems without ``flock`` (some Lustre mounts), the
    file alone decides: a holder on this host whose pid is gone is stale; on another host it is
    presumed alive (delete the file if you know that run is gone).
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None
        self.stale_holder: LockHolder | None = None
        self.kernel_lock = True
        self.created = False
        """Whether this process created the lock file (``release(remove=True)`` then deletes it)."""

    def _read(self) -> LockHolder | None:
        try:
            d = json.loads(self.path.read_text() or "null")
            return LockHolder(str(d["host"]), int(d["pid"]), str(d["started"]), str(d.get("command", "")))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _refuse(self, holder: LockHolder | None) -> RunDirError:
        who = holder.describe() if holder else "an unknown process"
        return RunDirError(f"--output_dir {str(self.path.parent)!r} is in use by another run ({who}); wait for it to "
                           f"end or use another --output_dir (lock file {self.path})")

    def acquire(self) -> RunLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666 & ~current_umask())
                self.created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._read()) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                self.kernel_lock = False
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder deleted the file before we locked it: lock the new one
            self.created = False
        previous = self._read()
        if previous is not None and (previous.host, previous.pid) != (socket.gethostname(), os.getpid()):
            if not self.kernel_lock and (previous.host != socket.gethostname() or pid_alive(previous.pid)):
                os.close(fd)
                raise self._refuse(previous)
            self.stale_holder = previous  # its process is gone (the kernel lock was free) but never released
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        """Mark the lock released (an empty file) and drop the kernel lock. ``remove``: delete the file if this
        process created it (a run that ends before writing anything leaves nothing behind; a process that opened
        the file meanwhile notices the new inode and retries)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            if remove and self.created:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()
