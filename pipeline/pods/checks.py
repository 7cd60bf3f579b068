"""The driver's pod checks on a thread of their own: the loop never waits on RunPod's API.

In an API outage one look can take minutes (timeouts and retries), and a driver loop that waited
on it would launch and merge nothing meanwhile. So the loop only hands the watch what its units
need (`tick(demand)`, which never calls the API) and reads back how the looks go; the thread looks
once every `every_s` with the newest demand. An outage (a look failed, or one has gone on longer
than `stuck_s`) is one log line when it begins and one when the API answers again, and while it
lasts a `waiting` entry the driver records in its ledger, which `pipeline status` shows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.pods.campaign import CampaignPods
from pipeline.pods.client import RunPodError
from pipeline.pods.idle import Demand

OUTAGE_KEY = "RunPod API"  # the ledger's `waiting` key of an outage
STUCK_S = 150.0  # a look longer than this is an outage even before it fails (its calls are bounded: campaign.py)
BILLING_WAIT_S = 30.0  # how long the end of a run waits for the list of pods still billing


@dataclass(frozen=True)
class Outage:
    since: float  # time.time() of the look that first failed or hung
    error: str


class PodChecks:
    def __init__(
        self, pods: CampaignPods, log: Callable[[str], None], record: Callable[[str | None], Any] | None = None,
        every_s: float | None = None, stuck_s: float = STUCK_S, clock: Callable[[], float] = time.monotonic,
    ):
        """`record(what)` is told when an outage begins and (None) ends; `every_s`: between looks
        (None: the pods' own, a minute); `clock` times looks."""
        self.pods, self.log, self.record, self.stuck_s, self.clock = pods, log, record, stuck_s, clock
        self.every_s = pods.every_s if every_s is None else every_s
        self.outage: Outage | None = None
        self._lock = threading.Lock()  # guards what the thread and the loop share, below
        self._demand: Demand | None = None
        self._looking_since: float | None = None  # clock() when the look now running began
        self._looking_wall = 0.0
        self._error: tuple[float, str] | None = None  # the last look's failure (time.time(), error); None: it answered
        self._have_demand = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PodChecks:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)  # a hung call never holds up exit
        self._thread.start()
        return self

    def tick(self, demand: Demand) -> None:
        """The loop's side, once a turn: hand over what the units need now; report an outage's
        beginning and end. Never calls the API."""
        with self._lock:
            self._demand = demand
            since, wall, error = self._looking_since, self._looking_wall, self._error
        self._have_demand.set()
        if since is not None and self.clock() - since >= self.stuck_s:
            error = (wall, f"RunPod API: no answer in {self.stuck_s:.0f} s")
        if error is not None and self.outage is None:
            self.outage = Outage(*error)
            self.log(f"pods: {self.outage.error}; idle pods are not stopped until the API answers (scheduling goes on)")
            if self.record is not None:
                self.record(f"the RunPod API (not answering since {_utc(self.outage.since)}: {self.outage.error}); idle pods are not stopped")
        elif error is None and self.outage is not None:
            self.log(f"pods: the RunPod API answers again after {(time.time() - self.outage.since) / 60:.0f} min")
            self._outage_over()

    def stop(self) -> None:
        """The run is over: no more looks (one in flight ends on its own, bounded)."""
        self._stop.set()
        self._have_demand.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self.outage is not None:
            self._outage_over()

    def still_billing(self, wait_s: float = BILLING_WAIT_S) -> list[str]:
        """CampaignPods.still_billing, waited for at most `wait_s`: the end of a run is not held up
        by an API that does not answer either."""
        out: list[list[str]] = []
        t = threading.Thread(target=lambda: out.append(self.pods.still_billing()), name="pod-billing", daemon=True)
        t.start()
        t.join(wait_s)
        if out:
            return out[0]
        return [f"pods: the RunPod API did not answer in {wait_s:.0f} s: `pipeline pods list` names the pods still billing"]

    def _outage_over(self) -> None:
        self.outage = None
        if self.record is not None:
            self.record(None)

    def _run(self) -> None:
        self._have_demand.wait()  # the first look has the loop's first demand
        while not self._stop.is_set():
            with self._lock:
                demand = self._demand
                self._looking_since, self._looking_wall = self.clock(), time.time()
            error: str | None = None
            try:
                self.pods.look(demand)
            except RunPodError as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - Ray's view failing must not end the watch unseen
                error = f"pod check failed: {type(e).__name__}: {e}"
            with self._lock:
                self._error = None if error is None else (self._looking_wall, error)
                self._looking_since = None
            self._stop.wait(self.every_s)


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))
