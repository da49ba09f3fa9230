"""Distributed data parallel set-up from ``torchrun``'s environment: no code change for the user.

``torchrun --nproc_per_node N -m masklab train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on CPUs).
Launched without torchrun, everything here is a no-op with rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DistInfo", "world_size_from_env", "init_distributed", "wrap_module", "barrier", "all_reduce_mean", "broadcast_flag", "close_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """``rank``/``world_size`` of this process; ``local_rank`` its index on this node; ``device`` the
    torch device it trains on; ``dist_backend`` torch.distributed's backend, ``"nccl"``, ``"gloo"`` or
    None (not distributed; not to be confused with masklab's inference runtime)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    dist_backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str) -> DistInfo:
    """Join the process group when ``WORLD_SIZE`` > 1; ``device`` is the resolved ``cpu``/``cuda``."""
    import torch
    import torch.distributed as dist

    world = world_size_from_env()
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device, dist_backend = f"cuda:{local}", "nccl"
    else:
        dist_backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=dist_backend)
    return DistInfo(rank, world, local, device, dist_backend)


def wrap_module(module, info: DistInfo):
    """``module`` inside DistributedDataParallel when distributed, else ``module`` itself. DDP registers
    its gradient hooks for the parameters that train when it is built: wrap again after a freeze change."""
    if not info.distributed:
        return module
    import torch

    device_ids = [info.local_rank] if info.dist_backend == "nccl" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(info: DistInfo, values: list[float]) -> list[float]:
    """The mean of ``values`` over all processes (the values themselves when not distributed)."""
    if not info.distributed:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.dist_backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "stop now": the time budget is judged by rank 0)."""
    if not info.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=info.device if info.dist_backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def close_distributed(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
