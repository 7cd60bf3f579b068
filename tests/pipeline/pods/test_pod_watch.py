"""The pod checks run off the driver loop: with the RunPod API hanging, the loop's tick returns at
once, the outage is one log line when it begins and one when it ends, and `pipeline status` shows
it while it lasts."""

from __future__ import annotations

import time

from pipeline.records.ledger import Ledger
from pipeline.pods.campaign import CampaignPods
from pipeline.pods.client import RunPodClient
from pipeline.pods.health import RayNode
from pipeline.pods.idle import Demand
from pipeline.pods.checks import OUTAGE_KEY, PodChecks
from pipeline.progress.render import status_lines
from pipeline.progress.view import campaign_status
from pipeline.store import Layout, open_store
from tests.conftest import make_spec


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def watch_of(runpod, log, record, client_timeout_s: float, clock=time.monotonic) -> PodChecks:
    w = runpod.add_pod(name="ray-t-w", count=2)
    client = RunPodClient.from_env(timeout_s=client_timeout_s, max_attempts=1)
    pods = CampaignPods(client, 10, None, log.append, nodes=lambda: {w: RayNode("nw", True, 2, 2)})
    return PodChecks(pods, log.append, record, every_s=0.01, clock=clock)


def test_a_hanging_api_never_holds_the_loop_and_the_outage_is_logged_once_and_ends(runpod):
    clock, log, records = Clock(), [], []
    watch = watch_of(runpod, log, records.append, client_timeout_s=60, clock=clock).start()
    runpod.hold()  # every call hangs until released
    watch.tick(Demand(2))
    wait_for(lambda: runpod.held >= 1)  # the watch's look is in flight, waiting on the API
    for _ in range(5):
        watch.tick(Demand(2))  # returns with the look still hanging: the loop does not wait on it
    assert runpod.held == 1 and watch.outage is None and log == []  # not stuck for long yet
    clock.t = 150  # the look has hung for stuck_s
    watch.tick(Demand(2))
    watch.tick(Demand(2))
    assert watch.outage is not None and "no answer in 150 s" in watch.outage.error
    assert len(log) == 1 and "idle pods are not stopped until the API answers" in log[0], log
    assert len(records) == 1 and records[0].startswith("the RunPod API (not answering since")
    runpod.release()

    def over():
        watch.tick(Demand(2))
        return watch.outage is None

    wait_for(over)
    assert len(log) == 2 and "answers again" in log[1] and records[-1] is None
    watch.stop()


def test_a_failing_api_is_an_outage_in_the_logs_and_in_status(runpod, data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"))
    store = open_store(spec.store)
    ledger = Ledger(store, Layout(spec.name), "r1")
    log: list[str] = []
    watch = watch_of(runpod, log, lambda what: ledger.waiting(OUTAGE_KEY, what), client_timeout_s=0.2)
    runpod.hold()  # each call times out after 0.2 s: the looks fail
    watch.start()

    def outage():
        watch.tick(Demand(2))
        return watch.outage is not None

    wait_for(outage)
    wait_for(lambda: runpod.held >= 3)  # it keeps looking
    watch.tick(Demand(2))
    assert len(log) == 1 and "RunPod API: myself" in log[0] and runpod.key not in log[0]
    st = campaign_status(spec, store, live_run="r1")
    assert "RunPod API: myself" in st.waiting[OUTAGE_KEY]
    assert any(line.startswith("waiting: the RunPod API (not answering since") for line in status_lines(st))
    assert watch.still_billing(wait_s=0.5)[0].startswith("pods: ")  # bounded at the end of a run too
    watch.stop()  # the run is over: nothing waits on the API any more
    assert OUTAGE_KEY not in campaign_status(spec, store, live_run="r1").waiting
