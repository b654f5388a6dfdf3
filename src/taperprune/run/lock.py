"""One writer per run directory: `OUT/.taperprune.lock`, held (flock) while a run writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import TaperpruneError

LOCK_NAME = ".taperprune.lock"


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the run directory's lock; a second writer is refused at once, naming the first.

    The operating system releases the lock when the process dies (kill -9 included), so a
    stale lock file never blocks anyone.
    """
    path = out / LOCK_NAME
    try:
        # O_NOFOLLOW: a lock file that is a link to a file elsewhere is refused, not truncated.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise TaperpruneError(
            f"cannot lock {out}: {path.name}: {exc.strerror or exc} (remove it if it is a "
            "link or not a file)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = path.read_text(errors="replace").strip() or "another process"
        raise TaperpruneError(
            f"{out} is being written by {holder}; wait for that run to finish, or choose "
            "another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
