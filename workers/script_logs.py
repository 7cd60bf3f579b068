"""A script rank's output in the store: written in ordered chunks as it runs (LogSink), read back
whole or from a point on (`pipeline logs`, `pipeline status`), and the last exception it printed."""

from __future__ import annotations

import re
import time

from pipeline.store import Layout, Store

TAIL_LINES = 50  # of a failed script's log, in its error
_START_RE = re.compile(r"/log-([0-9a-z]+)/start\.json$")
_EXC_RE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)))(?::\s?(.*))?$")


class LogSink:
    """One rank's output: every line kept (for the tail and the metrics) and written to the store
    as numbered chunks at most every `every_s`, so the store's log follows the run."""

    def __init__(self, store: Store, prefix: str, every_s: float):
        self.store, self.prefix, self.every_s = store, prefix, every_s
        self.lines: list[str] = []
        self._pending: list[str] = []
        self._n = 0
        self._last = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._pending.append(line)

    def flush(self, force: bool = False) -> None:
        if self._pending and (force or time.monotonic() - self._last >= self.every_s):
            self.store.put(f"{self.prefix}/{self._n:06d}.txt", "".join(self._pending).encode())
            self._pending.clear()
            self._n += 1
            self._last = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        return [ln.rstrip("\n") for ln in self.lines[-n:]]


def read_log(store: Store, layout: Layout, seed: int, attempt: str | None = None, rank: int = 0) -> tuple[str | None, str]:
    """(attempt, its rank's whole log so far) from the store; by default the committed attempt, or
    the newest one that started."""
    attempt = attempt or current_attempt(store, layout, seed)
    if attempt is None:
        return None, ""
    return attempt, read_chunks(store, layout.script_log(seed, attempt, rank))[0]


def read_chunks(store: Store, prefix: str, after: str | None = None) -> tuple[str, str | None]:
    """(the text of one rank's log chunks under `prefix` after the chunk `after`, the last chunk
    read, or `after` if none is new): chunks are written once, in name order (LogSink)."""
    keys = [k for k in store.list(prefix, start_after=after) if k.endswith(".txt")]
    return "".join(b.decode("utf-8", "replace") for b in store.get_many(keys)), keys[-1] if keys else after


def current_attempt(store: Store, layout: Layout, seed: int) -> str | None:
    """The seed's committed script attempt, else the newest one that started (None: none yet)."""
    m = store.get_json(layout.manifest(seed)) if store.exists(layout.manifest(seed)) else {}
    if m.get("kind") == "script" and m.get("attempt"):
        return m["attempt"]
    started = attempts(store, layout, seed)
    return started[-1][1] if started else None


def attempts(store: Store, layout: Layout, seed: int) -> list[tuple[float, str]]:
    """(start time, attempt) of every attempt of the seed's script that started, oldest first."""
    out = []
    for k in store.list(layout.train_dir(seed)):
        if (m := _START_RE.search(k)) and k.startswith(layout.script_log(seed)):
            out.append((store.get_json(k)["time"], m.group(1)))
    return sorted(out)


def last_exception(lines: list[str]) -> str | None:
    """'Type: message' of the script's last Python exception in its log, if it printed one."""
    for ln in reversed(lines[-200:]):
        m = _EXC_RE.match(ln.strip())
        if m:
            return f"{m.group(2)}: {m.group(3) or ''}".strip()
    return None
