"""The driver's view of the cluster: its GPUs now, its nodes as recorded in the ledger, the nodes
that left (or that the driver's host can no longer reach) since the last look."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipeline.records.nodes import node_identity
from pipeline.run.context import RunContext
from pipeline.run.scheduler import Capacity


class ClusterView:
    def __init__(self, ctx: RunContext, every_s: float, on_record: Callable[[dict[str, Any]], None]):
        self.ctx = ctx
        self.every_s = every_s
        self.on_record = on_record  # given each `cluster` event recorded (the bill follows them)
        self.capacity = Capacity()
        self.nodes: list[dict] | None = None  # the cluster as last recorded in the ledger
        self.alive: set[str] | None = None  # the nodes alive at the last look
        self.gone: set[str] = set()  # nodes seen leaving the alive set, not acted on yet
        self.unreachable: set[str] = set()  # of the nodes Ray lists alive, those the driver's host cannot reach
        self.looked = -1e18  # when it last looked (time.monotonic)

    def look(self, force: bool = False) -> bool:
        """At most once every `every_s` (or when forced): the cluster's GPUs and nodes (pods die,
        replacements join). True if it looked."""
        now = time.monotonic()
        if not force and now - self.looked < self.every_s:
            return False
        self.looked = now
        self.capacity = replace(self.ctx.executor.capacity(), span=self.ctx.spec.cluster.groups_span_nodes)
        self._record()
        return True

    def take_gone(self) -> set[str]:
        """The nodes that left since this was last asked; the caller acts on them."""
        gone, self.gone = self.gone, set()
        return gone

    def end(self) -> dict[str, Any] | None:
        """The run's last `cluster` event: its nodes billed until now (the ledger's end of this run,
        however long it waited since its last unit); None if it never looked."""
        return None if self.nodes is None else self.ctx.ledger.cluster(self.nodes)

    def _record(self) -> None:
        """A `cluster` event when the nodes (or their liveness) changed."""
        raw = self.ctx.executor.nodes()
        alive = {n["NodeID"] for n in raw if n["Alive"]}
        if self.alive is not None:
            self.gone |= self.alive - alive
        self.alive = alive
        unreachable = {n["NodeID"]: n["Unreachable"] for n in raw if n.get("Unreachable") is not None}
        for node, silent in unreachable.items():
            if node not in self.unreachable:
                self.ctx.log(f"node {node[:12]} has not answered this host's connects for {silent:.1f} s: treated as gone (Ray still lists it)")
        self.unreachable = set(unreachable)
        nodes = [node_identity(n, self.ctx.spec.cluster.pricing).as_dict() for n in raw]
        nodes.sort(key=lambda n: n["node_id"])
        if nodes != self.nodes:
            self.nodes = nodes
            self.on_record(self.ctx.ledger.cluster(nodes))
