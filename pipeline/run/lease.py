"""One owner at a time: a lease in the store, renewed by a heartbeat (docs/faults.md "One driver per campaign").

A lease is a directory of generations, `<dir>/<gen:08d>.json`, each written create-only by the
process that takes the lease: two processes racing for generation g+1 cannot both win, on a local
disk (link) or on S3 (IfNoneMatch). The holder of the newest generation owns the lease; it rewrites
its own generation's object with a fresh heartbeat every `renew_s`, and notices within one beat
when a newer generation appears (someone took over), after which it must stop writing.

A lease is free when its holder released it, when its heartbeat is older than `ttl_s` and the
caller asks to take over (`--take-over`), or at once when its holder ran on this host and that
process is gone (a driver killed with -9 is re-run without waiting). Clocks of different hosts are
compared, so `ttl_s` is minutes, far above any skew NTP leaves.
"""

from __future__ import annotations

import os
import platform
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline.store import NotFoundError, Store, StoreError, newest

LEASE_VERSION = 1
_GEN_RE = re.compile(r"/(\d{8})\.json$")


def _gen(key: str) -> int | None:
    """The generation of a lease object's key (`<dir>/<gen:08d>.json`); None for any other key."""
    m = _GEN_RE.search(key)
    return int(m.group(1)) if m else None


class LeaseHeld(RuntimeError):
    """Another live process holds the lease; the message names it and its heartbeat's age."""


class LeaseUnreadable(LeaseHeld):
    """The newest lease object is not one (a partial copy, a hand edit): who holds it cannot be
    told, so only --take-over replaces it."""

    def __init__(self, message: str, gen: int):
        super().__init__(message)
        self.gen = gen


# The fields of a lease object and their types (bool is an int: pid and the rest must not be one).
_FIELDS = {"host": str, "pid": int, "token": str, "started": (int, float), "heartbeat": (int, float), "ttl_s": (int, float), "what": str}


def _malformed(obj: dict) -> str | None:
    """Why a lease object (its version aside) is not one, or None."""
    missing = [k for k in _FIELDS if k not in obj]
    unknown = sorted(set(obj) - set(_FIELDS) - {"released"})
    wrong = [k for k, t in _FIELDS.items() if k in obj and (not isinstance(obj[k], t) or isinstance(obj[k], bool))]
    wrong += ["released"] if not isinstance(obj.get("released", False), bool) else []
    parts = [f"{what} {', '.join(keys)}" for what, keys in (("no", missing), ("unknown key", unknown), ("wrong type:", wrong)) if keys]
    return "; ".join(parts) or None


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str  # this holder's identity: host and pid can repeat across pods
    started: float
    heartbeat: float
    ttl_s: float
    what: str  # "driver", "pipeline eval", ...
    released: bool = False

    def age(self, now: float) -> float:
        return max(0.0, now - self.heartbeat)

    def _gone(self) -> bool:
        """Released, or a holder on this host whose process is dead."""
        return self.released or (self.host == platform.node() and not _pid_alive(self.pid))

    def free_for(self, now: float, take_over: bool) -> bool:
        return self._gone() or (take_over and self.age(now) > self.ttl_s)

    def live(self, now: float) -> bool:
        """Whether the holder still holds it, as far as anyone can tell from here."""
        return not self._gone() and self.age(now) <= self.ttl_s

    def describe(self, now: float) -> str:
        return f"{self.what} {self.host}:{self.pid} (heartbeat {self.age(now):.0f} s ago, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(
        self, store: Store, prefix: str, name: str, what: str, ttl_s: float = 180.0, renew_s: float = 30.0, token: str | None = None,
    ):
        """`token` names the holder (a driver passes its run id, so the ledger's events of the run
        that holds the campaign can be told from those of drivers that died)."""
        self.store, self.prefix, self.name, self.what = store, prefix, name, what
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self.token = token or uuid.uuid4().hex
        self.gen: int | None = None
        self.started = time.time()
        self.lost = threading.Event()  # set when another process took the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading ------------------------------------------------------------------------------

    def _newest(self) -> tuple[int, Holder | None]:
        found = newest(self.store, self.prefix, _gen)
        if found is None:
            return 0, None
        gen = found[0]
        where = f"{self.store.uri}/{self._key(gen)}"
        try:
            obj = self.store.get_json(self._key(gen))
        except NotFoundError:  # pruned between list and get: a newer one exists
            return self._newest()
        except StoreError as e:  # not JSON
            obj, why = None, str(e).removeprefix(f"{where}: ")
        else:
            why = "not a JSON object" if not isinstance(obj, dict) else None
        if why is None and obj.get("version") != LEASE_VERSION:
            if isinstance(obj.get("version"), int):  # a newer code's lease: not ours to replace
                raise LeaseHeld(f"{where}: unknown lease version {obj.get('version')}")
            why = "no version"
        if why is None:
            obj = {k: v for k, v in obj.items() if k != "version"}
            why = _malformed(obj)
        if why is not None:
            raise LeaseUnreadable(
                f"{where}: not a lease object ({why}): who holds {self.name} cannot be told; once no process "
                "runs it, run with --take-over to replace the object", gen,
            )
        return gen, Holder(**obj)

    def holder(self) -> Holder | None:
        return self._newest()[1]

    def _key(self, gen: int) -> str:
        return f"{self.prefix}/{gen:08d}.json"

    def _me(self, released: bool = False) -> dict:
        h = Holder(platform.node(), os.getpid(), self.token, self.started, time.time(), self.ttl_s, self.what, released)
        return {"version": LEASE_VERSION, **asdict(h)}

    # --- owning -------------------------------------------------------------------------------

    def acquire(self, take_over: bool = False) -> Holder | None:
        """Take the lease or raise LeaseHeld. Returns the holder it replaced (None if there was none)."""
        try:
            gen, held = self._newest()
        except LeaseUnreadable as e:
            if not take_over:
                raise
            gen, held = e.gen, None
        now = time.time()
        if held is not None and not held.free_for(now, take_over):
            expired = held.age(now) > held.ttl_s
            hint = (
                "its heartbeat has expired: run again with --take-over to take the campaign over"
                if expired
                else f"wait for it, or once its heartbeat is older than {held.ttl_s:.0f} s run with --take-over"
            )
            raise LeaseHeld(f"{self.name} is held by {held.describe(now)}; {hint}")
        if not self.store.put_new_json(self._key(gen + 1), self._me()):
            _, won = self._newest()
            raise LeaseHeld(f"{self.name} was just taken by {won.describe(time.time()) if won else 'another process'}")
        self.gen = gen + 1
        for k in self.store.list(self.prefix):  # older generations are history now
            if (g := _gen(k)) is not None and g < self.gen:
                self.store.delete(k)
        return held

    def renew(self) -> bool:
        """One heartbeat; False (and `lost` set) when a newer generation took over."""
        gen, held = self._newest()
        if gen != self.gen or held is None or held.token != self.token:
            self.lost.set()
            return False
        self.store.put_json(self._key(self.gen), self._me())
        return True

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.renew_s):
                try:
                    if not self.renew():
                        return
                except Exception:  # noqa: BLE001 - a missed beat (S3 hiccup) is retried next beat
                    continue

        self._thread = threading.Thread(target=beat, name=f"lease:{self.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.gen is not None and not self.lost.is_set():
            try:
                gen, held = self._newest()
            except LeaseUnreadable:  # someone broke the newest object: ours is not it, nothing to release
                gen, held = -1, None
            if gen == self.gen and held is not None and held.token == self.token:
                self.store.put_json(self._key(self.gen), self._me(released=True))
        self.gen = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
