"""Devices and CPU threads, decided at entry points (CLI commands, the server, Ray actors, benchmark
children) or by an explicit ``threads=``; library objects never change the process by themselves."""

from __future__ import annotations

import os

from masklab.errors import UsageError

__all__ = ["resolve_device", "configure_threads", "available_cpus"]


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA GPU is available (use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"device must be auto, cpu or cuda[:N], found {device!r}")
    return device


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware), or ``MASKLAB_NUM_THREADS`` when set."""
    env = os.environ.get("MASKLAB_NUM_THREADS")
    try:
        n = int(env) if env else len(os.sched_getaffinity(0))
    except (AttributeError, ValueError):
        n = os.cpu_count() or 1
    return max(1, n)


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default :func:`available_cpus`); returns the number set.

    Call it from an entry point: it changes the whole process."""
    import torch

    n = available_cpus() if n is None else max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
