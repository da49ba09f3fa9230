"""Devices and CPU threads, decided at entry points (CLI commands, the server, Ray actors, benchmark
children) or by an explicit ``threads=``; library objects never change the process by themselves."""

from __future__ import annotations

import os

from masklab.errors import UsageError
from masklab.hardware import available_cpus, set_thread_budget

__all__ = ["resolve_device", "configure_threads", "available_cpus", "cuda_possible"]


def cuda_possible() -> bool:
    """False when this process certainly has no CUDA GPU (no NVIDIA driver, or ``CUDA_VISIBLE_DEVICES``
    hides every device), decided without importing torch; True means "ask torch"."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0") or os.name == "nt"


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without one is an error.
    A machine without an NVIDIA driver gets ``"cpu"`` without importing torch (a prepared run needs none)."""
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA GPU is available (use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"device must be auto, cpu or cuda[:N], found {device!r}")
    return device


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default :func:`available_cpus`); returns the number set.

    Call it from an entry point: it changes the whole process."""
    import sys

    n = available_cpus() if n is None else max(1, int(n))
    set_thread_budget(n)  # OpenVINO / ONNX Runtime read it (masklab.hardware.thread_budget)
    torch = sys.modules.get("torch")
    if torch is None:  # a torch-free run (a prepared model) need not import torch to set it; if torch is
        os.environ["OMP_NUM_THREADS"] = str(n)  # imported later, it starts with n threads
        return n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
