"""Claims on a run's work folder: one process at a time trains and logs into one MLflow run.

A claim is an exclusive ``flock`` on ``<workdir>/claim.lock``, held for as long as the run is
open, with the holder's pid, host and start time written inside for the message a second
command prints. The kernel drops the lock when the process ends, however it ends (``kill -9``
included), so a stale claim never blocks a later resume: the text left in the file is read
only while somebody holds the lock. Linux NFS clients (v4) map ``flock`` onto the server's
locks, so a work folder shared between nodes is claimed across them too.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import os
import socket
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError

CLAIM = "claim.lock"
_held: dict[str, list] = {}  # claim file -> [open handle, depth]: re-entrant within one process


@contextlib.contextmanager
def claim(workdir: Path, run_id: str) -> Iterator[None]:
    """Hold ``workdir``'s claim for the ``with`` block; a BenchError naming the holder if another
    process has it. Nested claims of one folder in one process are allowed."""
    path = (Path(workdir) / CLAIM).resolve()
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _release(key)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    if not _try_lock(fh):
        who = _who(fh)
        fh.close()
        raise BenchError(f"run {run_id} is in use by {who} (claim {path}); wait for it to end or "
                         f"stop it, then try again")
    since = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()} since {since}\n")
        fh.flush()
    except OSError:
        pass  # the lock is what counts; the text only makes the message friendlier
    _held[key] = [fh, 1]
    try:
        yield
    finally:
        _release(key)


def _try_lock(fh) -> bool:
    import fcntl

    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _who(fh) -> str:
    fh.seek(0)
    text = fh.read().strip()
    return text.splitlines()[0][:200] if text else "another process"


def _release(key: str) -> None:
    entry = _held[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        entry[0].close()  # closing the last handle releases the flock
