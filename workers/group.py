"""A process's place in a data-parallel group, the few collectives the workers use, and a local
launcher (k processes on this machine) for running a group without Ray.

Ray Train sets up the process group for training and for TTT on k GPUs; `spawn` does the same for
`pipeline eval` on one machine, the way torchrun would. Every collective degrades to the identity
in a group of one, so single-GPU code paths stay free of `if distributed` branches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.spec import ClusterSpec
from pipeline.store import Store
from workers.device import select_device


# Errors that mean the unit itself is wrong (bad input, a refused artifact): restarting its group
# would only repeat them. Anything else (a dead peer, a killed process) is a system failure.
APP_ERRORS = (ValueError, FloatingPointError, FileNotFoundError, ImportError)


def record_error(store: Store, key: str, rank: int, err: BaseException) -> None:
    """Write a rank's application error where its launcher looks before deciding FAILED vs resume."""
    store.put_new_json(key, {"version": 1, "rank": rank, "error": f"{type(err).__name__}: {err}"})  # first rank's wins


@dataclass
class Group:
    """Where this process sits in the worker group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (decisions that must not differ, e.g. which state to resume)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors in place across the group: one collective per dtype, through a flat buffer.
        The reduction runs once per element and is shared, so every rank gets the same bits."""
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for ts in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for t in ts:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if dist.get_backend() == "nccl" else None

    @classmethod
    def on(cls, rank: int, world: int, local_rank: int, cluster: ClusterSpec) -> Group:
        """This process's place, computing on the cluster's accelerator (GPU = local rank)."""
        return cls(rank, world, local_rank, select_device(cluster.accelerator, local_rank, cluster.cpu_threads))

    @classmethod
    def of_ray_train(cls, cluster: ClusterSpec) -> Group:
        """Inside a Ray Train worker: the group Ray Train set up."""
        import ray.train

        ctx = ray.train.get_context()
        return cls.on(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), cluster)


def collective_timeout() -> float | None:
    """Seconds this process's default process group waits in a collective; None outside a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    pg = dist.distributed_c10d._get_default_group()
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    try:
        return pg._get_backend(device).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):  # a torch without the backend's options: not known
        return None


def weights_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors' bytes: the ranks of a group compare it to prove they hold the same weights."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host` ("" = every interface, for a rendezvous other nodes reach)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, world: int, port: int, accelerator: str, fn: Callable, args: tuple, errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if accelerator == "cuda" else "gloo"
    dist.init_process_group(backend, rank=local_rank, world_size=world)
    try:
        fn(local_rank, world, *args)
    except APP_ERRORS as e:
        errors.put((local_rank, type(e), str(e)[:2000]))  # small: a full pipe would block this exit
        raise  # without tearing the group down: peers may sit in a collective (NCCL would block)
    dist.barrier()  # every rank's work is done (and rank 0's store writes are durable)
    # Leave without tearing the group down: gloo's and the TCP store's threads racing each other
    # at exit can abort a rank (std::terminate) whose work is complete, failing a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable, world: int, accelerator: str, args: tuple = ()) -> None:
    """Run fn(rank, world, *args) in `world` fresh processes on this machine joined in one process
    group (NCCL on cuda: rank r on GPU r; gloo on cpu). When a rank fails the others are stopped;
    an application error of a rank is raised here as itself (so the CLI prints its one line), any
    other failure as torch reports it. The processes share this one's process group, so killing
    the group (as a dying pod does) kills them all."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException  # the module (mp.spawn is the function)

    errors = mp.get_context("spawn").SimpleQueue()
    log = logging.getLogger("torch.multiprocessing.spawn")
    level = log.level
    try:
        # torch warns for each peer it stops after one rank failed; that failure is raised below
        log.setLevel(logging.ERROR)
        mp.start_processes(
            _spawned, args=(world, free_port(), accelerator, fn, args, errors), nprocs=world, join=True, start_method="spawn"
        )
    except ProcessException:
        if errors.empty():
            raise
        rank, kind, msg = errors.get()
        try:
            err = kind(msg)
        except Exception:  # noqa: BLE001 - an error type with another constructor
            err = ValueError(msg)
        raise err from None
    finally:
        log.setLevel(level)
