"""Spreading work over processes with torch.distributed (torchrun; gloo on CPU, NCCL on GPUs).

Everything degrades to a single process when no process group exists, so the same
code paths serve `segfungi build-bank` and `torchrun -m segfungi build-bank`.

* Work: a bank's shards are dealt out over the ranks, each rank writes its own shard
  folders into the one bank folder (a shared file system), rank 0 alone owns the
  build record, the index and the manifest; evaluation deals out one process's image
  batches (rank r scores batches r, r+N, …) and sums the confusion matrices.
* Failures: when a rank fails it exits, and torchrun stops the others; a rank waiting
  in a collective for a peer that died also fails as soon as gloo/NCCL notices the
  closed connection. As a last resort every collective times out after
  `SEGFUNGI_DIST_TIMEOUT` seconds (default 7200: rank 0 builds the bank's ScaNN index
  while the others wait, which takes tens of minutes for 10^7 patches).
* Threads: torchrun sets OMP_NUM_THREADS=1 per process; on CPUs each rank instead uses
  its share of the cores this machine gives the job (cores // local processes), or
  `SEGFUNGI_THREADS` when set (which also applies to a single process: on a machine
  shared with other jobs, fewer threads than cores can be faster, because every
  OpenMP barrier waits for the slowest, descheduled thread).
* Output: ranks other than 0 print nothing on stdout (progress bars are rank 0's too);
  errors still reach stderr from every rank.
* Work of one rank alone: inside `alone()` this process acts as a single process
  (rank 0 of 1: no collectives, no split), for work dealt out whole to one rank, such as
  a benchmark cell (`segfungi.experiments.benchmark._run`). `group_rank()`/`group_size()` still give
  the process's place in the group there.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys

DEFAULT_TIMEOUT_S = 7200
_alone = 0  # depth of `alone()` blocks: inside one, this process acts as a single process


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment, once: NCCL with
    one GPU per local rank when GPUs exist, gloo on CPUs. `SEGFUNGI_THREADS` sets the
    CPU threads of a single process too. A single process without SEGFUNGI_THREADS
    imports nothing (the CLI calls this before every command, `bank info` included)."""
    single = int(os.environ.get("WORLD_SIZE", "1")) < 2
    if single and not os.environ.get("SEGFUNGI_THREADS"):
        return
    import torch
    import torch.distributed as dist

    if single or not dist.is_available() or dist.is_initialized():
        if os.environ.get("SEGFUNGI_THREADS"):
            torch.set_num_threads(threads_per_process())
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get("SEGFUNGI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl", timeout=timeout)
    else:
        dist.init_process_group(backend="gloo", timeout=timeout)
        torch.set_num_threads(threads_per_process())
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def threads_per_process() -> int:
    """CPU threads for one of this machine's ranks: SEGFUNGI_THREADS, else an equal share
    of the cores this process may use."""
    if os.environ.get("SEGFUNGI_THREADS"):
        return max(1, int(os.environ["SEGFUNGI_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cores // max(1, local))


def _group(whole: bool = False):
    """torch.distributed while a group of several processes runs (and, unless `whole`,
    this process is not inside `alone()`), else None. No group can exist before torch is
    imported, so a single process answers without importing it."""
    if _alone and not whole:
        return None
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def active() -> bool:
    return _group() is not None


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist else 0


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist else 1


def group_rank() -> int:
    """This process's rank in the group, also inside `alone()`."""
    dist = _group(whole=True)
    return dist.get_rank() if dist else 0


def group_size() -> int:
    """The group's process count, also inside `alone()`."""
    dist = _group(whole=True)
    return dist.get_world_size() if dist else 1


@contextlib.contextmanager
def alone():
    """Inside: this process acts as a single process (rank 0 of 1), so work dealt out whole
    to it runs without collectives or splits (the other ranks do other work meanwhile)."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints and shows progress."""
    return rank() == 0


def barrier() -> None:
    if active():
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(array):
    """Sum an integer or float array over all processes (identity in one process)."""
    if not active():
        return array
    import numpy as np
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
        tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()
