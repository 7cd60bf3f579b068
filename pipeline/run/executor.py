"""Where the driver's attempts run: Ray (the product) or threads in this process (tests, bench).

The driver decides *what* runs *when* (pipeline/run/scheduler.py); an executor only starts an attempt
of a unit, says which attempts have ended, and describes the cluster (GPUs, nodes). Keeping Ray
behind this small interface is what lets a 10,000-unit campaign of fake units run through the real
driver in seconds (tests/pipeline/run/test_scale.py, bench/scale_bench.py), with nothing of the
scheduling swapped out.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.run.reach import NodeReach, Target, avoid_nodes
from pipeline.run.scheduler import Capacity
from pipeline.records.units import Unit

# Eval tasks keep their worker process across shards; Ray must then not narrow
# CUDA_VISIBLE_DEVICES per task (workers/device.py cuda_index says why).
EVAL_TASK_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


@dataclass(frozen=True)
class Launch:
    """What one attempt runs: the unit, its attempt id, the GPUs it holds and the nodes to avoid."""

    unit: Unit
    attempt: str
    gpus: float
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnitFns:
    """The functions an attempt runs (pipeline/run/tasks.py's `train_unit`, `eval_unit`,
    `eval_group_unit`; a bench swaps in fakes of the same signature) and their fixed arguments.
    RayExecutor passes the two group launchers `avoid=` (node ids) too, while some node it lists
    cannot be reached."""

    train: Callable[..., dict]
    eval: Callable[..., dict]
    group_eval: Callable[..., dict]
    spec_json: dict
    store_uri: str
    context: dict
    run_id: str

    def args(self, launch: Launch) -> tuple[Callable[..., dict], tuple]:
        u = launch.unit
        if u.kind == "train":
            return self.train, (self.spec_json, u.seed, self.store_uri, self.context, self.run_id, launch.attempt)
        fn = self.group_eval if launch.gpus > 1 else self.eval
        return fn, (self.spec_json, u.seed, u.recipe, self.store_uri, u.shard, self.run_id, launch.attempt)


class Executor(ABC):
    """Starts attempts and reports the ones that ended. A handle is whatever `submit` returned."""

    @abstractmethod
    def submit(self, launch: Launch) -> Any: ...

    @abstractmethod
    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles among `handles` whose attempt ended: waits up to `timeout` for the first,
        then takes every other that has ended too (one loop turn handles a burst of them)."""

    @abstractmethod
    def result(self, handle: Any) -> dict:
        """The attempt's return value; raises what the attempt raised."""

    @abstractmethod
    def cancel(self, handle: Any) -> None: ...

    def abandon(self, handle: Any, placement_groups: list[str]) -> None:
        """Give up an attempt whose node died: stop what of it still runs without waiting for its
        end (its node may never answer), and free the GPUs its placement groups hold elsewhere."""
        self.cancel(handle)

    @abstractmethod
    def capacity(self) -> Capacity:
        """The cluster's GPUs now: per alive node, and per node free where known."""

    @abstractmethod
    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes in `ray.nodes()`'s shape (NodeID, Alive, Resources, Labels)."""

    def close(self) -> None:
        """The run is over: let go of what the executor holds (Ray's own tasks end with their driver)."""


class RayExecutor(Executor):
    def __init__(self, fns: UnitFns, reach: NodeReach | None = None):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.fns, self._affinity = fns, NodeAffinitySchedulingStrategy
        self.here = ray.get_runtime_context().get_node_id()
        # the driver's own view of vanished nodes, seconds before Ray's health check (pipeline/run/reach.py)
        self.reach = reach if reach is not None else NodeReach()
        # The launcher of a worker group stays on the driver's node, so losing a GPU node costs the
        # group its workers but never the launcher itself.
        here = NodeAffinitySchedulingStrategy(self.here, soft=True)
        self._train = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(fns.train)
        # max_calls=0: reuse eval worker processes across shards (Ray's default for GPU tasks is a
        # fresh process each time, which re-imports torch and re-creates the CUDA context per
        # shard); EVAL_TASK_ENV keeps each task on the GPU Ray assigned to it.
        self._eval = ray.remote(max_retries=0, max_calls=0, runtime_env={"env_vars": EVAL_TASK_ENV})(fns.eval)
        self._group = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(fns.group_eval)

    def submit(self, launch: Launch) -> Any:
        _, args = self.fns.args(launch)
        # nodes Ray still lists but the driver cannot reach: nothing new goes there
        gone = tuple(sorted(self.reach.unreachable()))
        groups = {"avoid": gone} if gone else {}
        if launch.unit.kind == "train":
            return self._train.remote(*args, **groups)
        if launch.gpus > 1:
            return self._group.remote(*args, **groups)
        strategy = self._elsewhere(launch)
        options = {"scheduling_strategy": strategy} if strategy else {}
        if gone:
            options["label_selector"] = avoid_nodes(gone)
        return self._eval.options(num_gpus=1, **options).remote(*args)

    def _elsewhere(self, launch: Launch) -> Any:
        """A soft affinity to an alive GPU node the unit has not failed on, if there is one."""
        if not launch.avoid:
            return None
        for n in self.nodes():
            if n["Alive"] and n["NodeID"] not in launch.avoid and n["Resources"].get("GPU", 0) >= launch.gpus:
                return self._affinity(n["NodeID"], soft=True)
        return None

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        import ray

        if not handles:
            return []
        ready, rest = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> dict:
        import ray

        return ray.get(handle)

    def cancel(self, handle: Any) -> None:
        import ray

        ray.cancel(handle, force=True, recursive=True)

    def abandon(self, handle: Any, placement_groups: list[str]) -> None:
        import ray
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        def cancel() -> None:
            try:  # the launcher (a group's) is alive: force-cancelling it ends the actors it owns
                ray.cancel(handle, force=True, recursive=True)
            except Exception:  # noqa: BLE001 - a task on a dead node: nothing left to stop there
                pass

        # off the loop: a cancel reaches for the task's host, which may have vanished before Ray
        # marked it dead (one pod-farm run recorded an eval's death 42 s late with it on the loop)
        threading.Thread(target=cancel, name="abandon", daemon=True).start()
        for pg in placement_groups:  # a group's ranks on alive nodes and the GPUs they reserve
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg))))
            except Exception:  # noqa: BLE001 - already removed with its owner
                pass

    def capacity(self) -> Capacity:
        alive = [n for n in self.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
        try:  # per-node free GPUs: Ray has no public call for them (ray.available_resources() sums)
            from ray._private.state import available_resources_per_node

            avail = available_resources_per_node()
            free = tuple(float(avail.get(n["NodeID"], {}).get("GPU", 0.0)) for n in alive)
        except Exception:  # noqa: BLE001 - an internal API that moved: schedule on sums only
            free = None
        return Capacity(tuple(float(n["Resources"]["GPU"]) for n in alive), free)

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's nodes, those the driver's host cannot reach any more marked not alive (`Unreachable`:
        the seconds since one last answered)."""
        import ray

        raw = ray.nodes()
        self.reach.watch(Target(n["NodeID"], n["NodeManagerAddress"], int(n["NodeManagerPort"]))
                         for n in raw if n["Alive"] and n["NodeID"] != self.here and n.get("NodeManagerPort"))  # fmt: skip
        gone = self.reach.unreachable()
        return [{**n, "Alive": False, "Unreachable": self.reach.silent_s(n["NodeID"])} if n["NodeID"] in gone else n for n in raw]

    def close(self) -> None:
        self.reach.close()


class ThreadExecutor(Executor):
    """Attempts as threads of this process on `gpus` logical GPUs of one node: for fake units
    (tests, bench/scale_bench.py), where the driver is what is exercised. A cancelled attempt's
    thread runs on (a thread cannot be killed) but its end is never reported."""

    NODE_ID = "local"

    def __init__(self, fns: UnitFns, gpus: float, threads: int = 4):
        self.fns, self.gpus = fns, gpus
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="unit")
        self._ended: queue.SimpleQueue[Future] = queue.SimpleQueue()  # filled by the attempts' threads
        self._cancelled: set[Future] = set()
        self._done: set[Future] = set()  # ended, not reported yet

    def submit(self, launch: Launch) -> Future:
        fn, args = self.fns.args(launch)
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._ended.put)
        return fut

    def _drain(self, block: float | None = None) -> None:
        try:
            while True:
                fut = self._ended.get(timeout=block) if block else self._ended.get_nowait()
                block = None
                if fut not in self._cancelled:
                    self._done.add(fut)
        except queue.Empty:
            pass

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        self._drain()
        if handles and not self._done.intersection(handles):
            self._drain(block=timeout)
        ready = [h for h in handles if h in self._done]
        self._done.difference_update(ready)
        return ready

    def result(self, handle: Future) -> dict:
        return handle.result()

    def cancel(self, handle: Future) -> None:
        self._cancelled.add(handle)
        handle.cancel()

    def capacity(self) -> Capacity:
        return Capacity.of(self.gpus)

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": self.NODE_ID, "Alive": True, "Resources": {"GPU": self.gpus}, "Labels": {}}]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
