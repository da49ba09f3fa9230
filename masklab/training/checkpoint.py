"""Training checkpoints that survive crashes: ``RUN_DIR/checkpoints/{last,best}.json`` pointers.

A checkpoint is two files named after its step, both written atomically (temp file + ``os.replace``):

- ``step-000123.safetensors``: the model weights (safetensors: loading runs no code);
- ``step-000123.state.pt``: optimizer, LR schedule, AMP scaler, RNG states, epoch/step, as tensors and
  plain Python values only, so it loads with ``torch.load(weights_only=True)``.

Only then is the small pointer ``last.json`` (or ``best.json``) replaced, atomically, to name the pair;
files no pointer names are deleted afterwards. A crash at any moment therefore leaves the previous
pointer naming a complete previous pair.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UsageError
from masklab.io.atomic import atomic_write, atomic_write_json

__all__ = ["CheckpointPaths", "save_checkpoint", "load_checkpoint", "checkpoint_paths", "rng_state", "set_rng_state",
           "write_safetensors"]

_POINTERS = ("last", "best")


@dataclass(frozen=True)
class CheckpointPaths:
    """The files of one checkpoint: ``weights`` (.safetensors), ``state`` (.state.pt), and its ``step``."""

    weights: Path
    state: Path
    step: int


def _dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_paths(run_dir: str | os.PathLike, which: str = "last") -> CheckpointPaths | None:
    """The files ``which`` (``last`` or ``best``) points to, or None if there is no such checkpoint."""
    pointer = _dir(run_dir) / f"{which}.json"
    if not pointer.is_file():
        return None
    doc = json.loads(pointer.read_text(encoding="utf-8"))
    d = _dir(run_dir)
    return CheckpointPaths(d / doc["weights"], d / doc["state"], int(doc["step"]))


def rng_state() -> dict[str, Any]:
    """Every RNG training touches, as tensors and plain values (``weights_only`` loadable)."""
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    """``tensors`` (moved to the CPU, made contiguous) as a .safetensors file, written atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def _write_torch(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(run_dir: str | os.PathLike, *, model_state: dict, state: dict[str, Any], step: int,
                    which: tuple[str, ...] = ("last",)) -> CheckpointPaths:
    """Write the pair for ``step`` and point ``which`` (``"last"`` and/or ``"best"``) at it.

    ``model_state``: the model's state dict (float tensors stored as they are). ``state``: the rest
    (optimizer/scheduler/scaler state dicts, RNG, counters); tensors and plain values only.
    """
    bad = [w for w in which if w not in _POINTERS]
    if bad:
        raise ValueError(f"checkpoint pointers are {_POINTERS}, found {bad}")
    d = _dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    paths = CheckpointPaths(d / f"{name}.safetensors", d / f"{name}.state.pt", step)
    write_safetensors(paths.weights, model_state, {"step": str(step), "format": "masklab-checkpoint"})
    _write_torch(paths.state, {**state, "step": step})
    for w in which:
        atomic_write_json(d / f"{w}.json", {"weights": paths.weights.name, "state": paths.state.name, "step": step})
    _collect_garbage(run_dir)
    return paths


def _collect_garbage(run_dir: str | os.PathLike) -> None:
    d = _dir(run_dir)
    keep = set()
    for w in _POINTERS:
        p = checkpoint_paths(run_dir, w)
        if p is not None:
            keep |= {p.weights.name, p.state.name}
    for f in d.glob("step-*"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def load_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> tuple[dict, dict[str, Any]]:
    """``(model_state, state)`` of the checkpoint ``which`` points to; UsageError when there is none."""
    import torch
    from safetensors.torch import load_file

    paths = checkpoint_paths(run_dir, which)
    if paths is None:
        raise UsageError(f"{run_dir}: no {which!r} checkpoint (expected {_dir(run_dir) / (which + '.json')})")
    for p in (paths.weights, paths.state):
        if not p.is_file():
            raise UsageError(f"{run_dir}: checkpoint file {p.name} named by {which}.json is missing")
    model_state = load_file(str(paths.weights))
    state = torch.load(paths.state, map_location="cpu", weights_only=True)
    return model_state, state
