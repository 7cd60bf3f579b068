"""Which torch device a worker computes on."""

from __future__ import annotations

import torch


def select_device(accelerator: str, local_rank: int, cpu_threads: int) -> torch.device:
    """cuda: the local rank's GPU (Ray shares CUDA_VISIBLE_DEVICES across a node's train workers).
    cpu: a fixed thread count, because CPU kernels may sum in another order with another count and
    resumed evals must repeat bit for bit."""
    if accelerator == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("cluster.accelerator is cuda but this worker sees no CUDA device")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    torch.set_num_threads(cpu_threads)
    return torch.device("cpu")


def cuda_index(gpu_ids: list[str], visible: str | None) -> int:
    """The torch device index of the GPU Ray assigned to this task.

    Eval tasks reuse their worker processes and tell Ray not to narrow CUDA_VISIBLE_DEVICES per
    task (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): a process keeps its first CUDA context,
    so a narrowed mask would leave a later task computing on the first task's GPU. The process
    sees the node's GPUs (its mask, if the node has one) and each task picks Ray's GPU by id."""
    if not gpu_ids:
        return 0
    gid = str(gpu_ids[0])
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if gid in ids:
            return ids.index(gid)
    return int(gid)
