"""The driver's own view of which nodes are gone: whether each Ray node's raylet port still takes
a TCP connection from the driver's host.

A pod that vanishes (RunPod reclaims it, its host dies) sends nothing: Ray's health check marks
its node dead only after several timed-out checks (27.6 s in a pod-farm run, docs/pods.md "The pod
farm"), and a group's launcher hears of its dead rank later still. A connect to a vanished host
fails within a second or two, while a live node's kernel accepts it however busy the node is (even
a stopped raylet's socket does: that case is left to Ray's health check). A node counts as
unreachable after `misses` failed connects in a row, only once it had answered before (a port the
driver's host was never able to reach is a network layout, not a death), and reachable again as
soon as it answers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class ReachPolicy:
    period_s: float = 1.0  # from one round of connects to the next
    timeout_s: float = 1.0  # of one connect
    misses: int = 3  # failed connects in a row before a node that answered before is called gone


@dataclass(frozen=True)
class Target:
    node_id: str
    host: str
    port: int


def avoid_nodes(node_ids: tuple[str, ...]) -> dict[str, str]:
    """A Ray label selector that keeps a task or a group's workers off these nodes."""
    return {"ray.io/node-id": f"!in({', '.join(node_ids)})"}


def tcp_connect(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class NodeReach:
    """Probes the nodes `watch` names, in a thread, every `policy.period_s`; `unreachable()` is
    the set of node ids that answered once and then missed `policy.misses` connects in a row."""

    def __init__(self, policy: ReachPolicy = ReachPolicy(), connect: Callable[[str, int, float], bool] = tcp_connect,
                 thread: bool = True):
        self.policy, self._connect, self._threaded = policy, connect, thread  # thread=False: rounds by probe_once()
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self._answered: dict[str, float] = {}  # answered at least once: when last (time.monotonic)
        self._missed: dict[str, int] = {}  # failed connects in a row
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="reach")

    def watch(self, targets: Iterable[Target]) -> None:
        """The nodes to probe from now on (Ray's alive nodes but the driver's own); starts the thread."""
        with self._lock:
            self._targets = {t.node_id: t for t in targets}
        if self._thread is None and self._threaded:
            self._thread = threading.Thread(target=self._run, name="node-reach", daemon=True)
            self._thread.start()

    def unreachable(self) -> frozenset[str]:
        with self._lock:
            return frozenset(n for n in self._targets if n in self._answered and self._missed.get(n, 0) >= self.policy.misses)

    def silent_s(self, node_id: str) -> float | None:
        """Seconds since the node last answered (None: never did)."""
        with self._lock:
            last = self._answered.get(node_id)
        return None if last is None else time.monotonic() - last

    def probe_once(self) -> None:
        """One round: every target connected to at once (a dead host's timeout does not delay the others)."""
        with self._lock:
            targets = list(self._targets.values())
        answers = list(self._pool.map(lambda t: self._connect(t.host, t.port, self.policy.timeout_s), targets))
        with self._lock:
            for t, ok in zip(targets, answers):
                if ok:
                    self._answered[t.node_id] = time.monotonic()
                    self._missed[t.node_id] = 0
                else:
                    self._missed[t.node_id] = self._missed.get(t.node_id, 0) + 1

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.probe_once()
            self._stop.wait(max(0.0, self.policy.period_s - (time.monotonic() - began)))  # a round a period
        self._pool.shutdown(wait=False, cancel_futures=True)  # here: a round never meets a pool shut under it

    def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            self._pool.shutdown(wait=False, cancel_futures=True)
