"""Names appearing in one directory, from the kernel (Linux inotify through ctypes).

The kill test waits for an eval to write its next segments, or to be caught in the middle of a
write (its temp file exists), before it SIGKILLs it. Globbing the shard folder every half
millisecond for that took CPU from the eval it waits for (the module: 117 CPU-s with the polls,
109 with this, same 5 kills); a blocking read of inotify events sees a temp file the moment it is
created.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
from collections.abc import Iterator
from pathlib import Path

IN_CREATE, IN_MOVED_TO = 0x100, 0x80  # <sys/inotify.h>: a file created, or renamed into the folder
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class DirEvents:
    """`new(timeout)` yields the names created in (or renamed into) `path` since the last call."""

    def __init__(self, path: Path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self.fd, os.fsencode(path), IN_CREATE | IN_MOVED_TO) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def new(self, timeout: float) -> Iterator[str]:
        """The names that appeared, waiting at most `timeout` seconds for the first."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        at = 0
        while at < len(buf):
            _, _, _, n = _HEADER.unpack_from(buf, at)
            yield buf[at + _HEADER.size : at + _HEADER.size + n].rstrip(b"\0").decode()
            at += _HEADER.size + n

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> DirEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
