"""Spreading work over processes with torch.distributed (torchrun; gloo on CPU, NCCL on GPUs).

Everything degrades to a single process when no process group exists, so the same
code paths serve `segfungi build-bank` and `torchrun -m segfungi build-bank`."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment, once: NCCL with
    one GPU per local rank when GPUs exist, gloo on CPUs."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """Sum an integer or float array over all processes (identity in one process)."""
    if not active():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()
