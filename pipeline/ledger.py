"""Append-only event ledger in the store: one object per unit transition (README "Store layout").

`events/<time_ns>-<rand>.json`: names sort by time, objects are never rewritten, so several drivers
(or a restarted one) append without coordination. Cost and progress are computed from these later.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from pipeline.store import Layout, Store
from pipeline.units import Unit, UnitState

EVENT_VERSION = 1


class Ledger:
    def __init__(self, store: Store, layout: Layout, run_id: str):
        self.store, self.layout, self.run_id = store, layout, run_id

    def record(self, unit: Unit, state: UnitState, **detail: Any) -> dict[str, Any]:
        """A state transition, written by the driver."""
        return self._append({"event": "state", "unit": unit.id, "state": state.value, "driver_host": platform.node(), **detail})

    def placed(self, unit: Unit, **where: Any) -> dict[str, Any]:
        """Where an attempt of a unit landed (node, GPUs, pid), written by the task itself."""
        return self._append({"event": "placed", "unit": unit.id, "host": platform.node(), **where})

    def cluster(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """The nodes the driver sees now (id, alive, GPUs, GPU type, price, pod): written when they
        change, so pod time no unit used (idle cost) can be told from the ledger."""
        return self._append({"event": "cluster", "nodes": nodes})

    def waiting(self, key: str, what: str | None) -> dict[str, Any]:
        """A unit starts (`what`) or stops (None) waiting for something the cluster lacks."""
        return self._append({"event": "waiting", "key": key, "what": what})

    def _append(self, body: dict[str, Any]) -> dict[str, Any]:
        now = time.time_ns()
        event = {"version": EVENT_VERSION, "time": now / 1e9, "run": self.run_id, **body}
        self.store.put_json(f"{self.layout.events}/{now:020d}-{os.urandom(4).hex()}.json", event)
        return event

    def events(self) -> list[dict[str, Any]]:
        return [self.store.get_json(k) for k in self.store.list(self.layout.events)]

    def failed(self) -> dict[str, dict[str, Any]]:
        """Units whose latest state is FAILED → that event (reason, error class, log tail)."""
        return {u: e for u, e in latest_states(self.events()).items() if e["state"] == UnitState.FAILED.value}


def latest_states(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """unit id → its latest state event (events in time order, as `Ledger.events` gives them)."""
    return {e["unit"]: e for e in events if e.get("event") == "state"}
