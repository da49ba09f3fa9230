"""Distributed data parallel set-up from ``torchrun``'s environment: no code change for the user.

``torchrun --nproc_per_node N -m masklab train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on CPUs).
Launched without torchrun, everything here is a no-op with rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DistInfo", "init_distributed", "barrier", "all_reduce_mean", "close_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """``rank``/``world_size`` of this process; ``local_rank`` its index on this node; ``device`` the
    torch device it trains on; ``backend`` ``"nccl"``, ``"gloo"`` or None (not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group when ``WORLD_SIZE`` > 1; ``device`` is the resolved ``cpu``/``cuda``."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, device, backend)


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

    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "stop now": the time budget is judged by rank 0)."""
    if not info.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=info.device if info.backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def close_distributed(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
