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
