"""Training checkpoints that survive crashes and torn files: ``RUN_DIR/checkpoints/*.json`` pointers.

A checkpoint is two files named after its step, both written atomically (temp file + ``os.replace``):

- ``step-000123.safetensors``: the model weights (safetensors: loading runs no code);
- ``step-000123.state.pt``: optimizer, LR schedule, AMP scaler, RNG states, epoch/step, as tensors and
  plain Python values only, so it loads with ``torch.load(weights_only=True)``.

Only then is the small pointer ``last.json`` (or ``best.json``) replaced, atomically, to name the pair
with each file's size and sha256; the pointer it replaces is kept as ``previous.json``. Files no pointer
names are deleted afterwards. A crash at any moment therefore leaves a pointer naming a complete pair,
and a file damaged later (a torn copy, a full disk, a flipped bit) no longer matches its pointer's
checksum: :func:`newest_intact` then resumes from the newest checkpoint that still verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UsageError
from masklab.io.atomic import atomic_write, atomic_write_json
from masklab.models.weights import sha256_file

__all__ = ["CheckpointPaths", "IntactCheckpoint", "save_checkpoint", "load_checkpoint", "newest_intact",
           "checkpoint_paths", "has_checkpoint", "rng_state", "set_rng_state", "write_safetensors"]

_POINTERS = ("last", "best")
#: every pointer file: the two a caller names, and ``previous`` (the ``last`` before the current one)
_ALL_POINTERS = ("last", "previous", "best")
_PARTS = ("weights", "state")


@dataclass(frozen=True)
class CheckpointPaths:
    """The files of one checkpoint: ``weights`` (.safetensors), ``state`` (.state.pt), and its ``step``;
    ``sha256`` / ``size``: each file's digest and byte count as written (``{"weights": .., "state": ..}``;
    empty for a pointer written before masklab recorded them)."""

    weights: Path
    state: Path
    step: int
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IntactCheckpoint:
    """What :func:`newest_intact` found: ``model_state``, ``state``, their ``paths``, the pointer that
    named them (``which``), and ``skipped``: one line per newer checkpoint that did not verify."""

    model_state: dict
    state: dict[str, Any]
    paths: CheckpointPaths
    which: str
    skipped: list[str]


def _dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


class _BadPointer(ValueError):
    pass


def _read_pointer(run_dir: str | os.PathLike, which: str) -> CheckpointPaths | None:
    """The pointer ``which``, None when there is no such file; _BadPointer when it cannot be read."""
    pointer = _dir(run_dir) / f"{which}.json"
    if not pointer.is_file():
        return None
    try:
        doc = json.loads(pointer.read_text(encoding="utf-8"))
        d = _dir(run_dir)
        return CheckpointPaths(d / doc["weights"], d / doc["state"], int(doc["step"]),
                               dict(doc.get("sha256", {})), {k: int(v) for k, v in doc.get("bytes", {}).items()})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _BadPointer(f"{which}.json cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None


def checkpoint_paths(run_dir: str | os.PathLike, which: str = "last") -> CheckpointPaths | None:
    """The files ``which`` (``last``, ``best`` or ``previous``) points to, or None if there is no such
    pointer or it cannot be read."""
    try:
        return _read_pointer(run_dir, which)
    except _BadPointer:
        return None


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds any checkpoint pointer (readable or not): a run exists there."""
    return any((_dir(run_dir) / f"{w}.json").is_file() for w in _ALL_POINTERS)


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


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> str:
    """``tensors`` (moved to the CPU, made contiguous) as a .safetensors file, written atomically;
    returns the sha256 of the bytes written."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def _write_torch(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def _pointer_doc(paths: CheckpointPaths) -> dict[str, Any]:
    return {"weights": paths.weights.name, "state": paths.state.name, "step": paths.step,
            "bytes": dict(paths.size), "sha256": dict(paths.sha256)}


def save_checkpoint(run_dir: str | os.PathLike, *, model_state: dict, state: dict[str, Any], step: int,
                    which: tuple[str, ...] = ("last",)) -> CheckpointPaths:
    """Write the pair for ``step`` and point ``which`` (``"last"`` and/or ``"best"``) at it, with each
    file's size and sha256; moving ``last`` keeps the checkpoint it named as ``previous``.

    ``model_state``: the model's state dict (float tensors stored as they are). ``state``: the rest
    (optimizer/scheduler/scaler state dicts, RNG, counters); tensors and plain values only.
    """
    bad = [w for w in which if w not in _POINTERS]
    if bad:
        raise ValueError(f"checkpoint pointers are {_POINTERS}, found {bad}")
    d = _dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = _free_name(run_dir, step)
    weights, state_file = d / f"{name}.safetensors", d / f"{name}.state.pt"
    digest = write_safetensors(weights, model_state, {"step": str(step), "format": "masklab-checkpoint"})
    _write_torch(state_file, {**state, "step": step})
    # The state file is hashed as it lies on disk (re-read from the page cache), not kept in memory twice.
    paths = CheckpointPaths(weights, state_file, step, {"weights": digest, "state": sha256_file(state_file)},
                            {"weights": weights.stat().st_size, "state": state_file.stat().st_size})
    if "last" in which:
        old = checkpoint_paths(run_dir, "last")  # never this pair: _free_name chose a name no pointer has
        if old is not None:
            atomic_write_json(d / "previous.json", _pointer_doc(old))
    for w in which:
        atomic_write_json(d / f"{w}.json", _pointer_doc(paths))
    _collect_garbage(run_dir)
    return paths


def _free_name(run_dir: str | os.PathLike, step: int) -> str:
    """``step-0000123``, or ``step-0000123.1``... when a pointer names that pair already (a second save at
    one step, e.g. mid-epoch then at the epoch's end): files a pointer names are never rewritten in place,
    so a crash cannot leave a pointer whose checksums no longer match its files."""
    named = {p.weights.name for w in _ALL_POINTERS if (p := checkpoint_paths(run_dir, w)) is not None}
    name, k = f"step-{step:07d}", 0
    while f"{name}.safetensors" in named:
        k += 1
        name = f"step-{step:07d}.{k}"
    return name


def _collect_garbage(run_dir: str | os.PathLike) -> None:
    """Delete checkpoint files no pointer names, and temp files a killed writer left. Nothing is deleted
    while some pointer cannot be read (its files might be the ones to keep)."""
    d = _dir(run_dir)
    keep = set()
    for w in _ALL_POINTERS:
        try:
            p = _read_pointer(run_dir, w)
        except _BadPointer:
            return
        if p is not None:
            keep |= {p.weights.name, p.state.name}
    for f in [*d.glob("step-*"), *d.glob(".step-*.tmp"), *d.glob(".*.json.*.tmp")]:
        if f.name not in keep:
            f.unlink(missing_ok=True)


def _verify(paths: CheckpointPaths) -> str | None:
    """Why the files of ``paths`` are not the ones its pointer recorded, or None (sizes first: cheap)."""
    files = {"weights": paths.weights, "state": paths.state}
    for part, f in files.items():
        if not f.is_file():
            return f"{f.name} is missing"
        size, want = f.stat().st_size, paths.size.get(part)
        if want is not None and size != want:
            return f"{f.name} is {size} bytes, {want} were written (truncated or overwritten)"
    for part, f in files.items():
        want = paths.sha256.get(part)
        if want is not None and sha256_file(f) != want:
            return f"{f.name}: its sha256 is not the one recorded when it was written (the file was damaged)"
    return None


def _read_pair(paths: CheckpointPaths) -> tuple[dict, dict[str, Any]]:
    """Load a verified pair; UsageError naming the file when its bytes do not parse."""
    import torch
    from safetensors.torch import load_file

    try:
        model_state = load_file(str(paths.weights))
    except Exception as e:  # SafetensorError (truncated header/data), OSError
        raise UsageError(f"{paths.weights.name} cannot be read as safetensors ({str(e).splitlines()[0][:100]})") from None
    try:
        state = torch.load(paths.state, map_location="cpu", weights_only=True)
    except Exception as e:  # zip "central directory" errors, refused globals, OSError
        raise UsageError(f"{paths.state.name} cannot be read ({str(e).splitlines()[0][:100]})") from None
    return model_state, state


def load_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> tuple[dict, dict[str, Any]]:
    """``(model_state, state)`` of the checkpoint ``which`` points to, verified against the pointer's
    sizes and sha256; UsageError when there is none or it is damaged (:func:`newest_intact` falls back)."""
    try:
        paths = _read_pointer(run_dir, which)
    except _BadPointer as e:
        raise UsageError(f"{run_dir}: checkpoints/{e}") from None
    if paths is None:
        raise UsageError(f"{run_dir}: no {which!r} checkpoint (expected {_dir(run_dir) / (which + '.json')})")
    problem = _verify(paths)
    if problem:
        raise UsageError(f"{run_dir}: the {which!r} checkpoint is damaged: {problem}")
    try:
        return _read_pair(paths)
    except UsageError as e:
        raise UsageError(f"{run_dir}: the {which!r} checkpoint is damaged: {e}") from None


def _candidates(run_dir: str | os.PathLike, skipped: list[str]) -> list[tuple[str, CheckpointPaths]]:
    """Every pointer's checkpoint, newest step first (one entry per pair); unreadable pointers noted."""
    seen: dict[str, tuple[str, CheckpointPaths]] = {}
    for w in _ALL_POINTERS:
        try:
            p = _read_pointer(run_dir, w)
        except _BadPointer as e:
            skipped.append(str(e))
            continue
        if p is not None and p.weights.name not in seen:
            seen[p.weights.name] = (w, p)
    return sorted(seen.values(), key=lambda wp: -wp[1].step)


def newest_intact(run_dir: str | os.PathLike) -> IntactCheckpoint:
    """The newest checkpoint any pointer names whose files verify and load. When that is not the one
    ``last.json`` named, ``last.json`` (and any pointer naming a damaged pair) is re-pointed at it, so
    the next save keeps it as ``previous``. UsageError listing every problem when none verifies."""
    skipped: list[str] = []
    for which, paths in _candidates(run_dir, skipped):
        problem = _verify(paths)
        if problem is None:
            try:
                model_state, state = _read_pair(paths)
            except UsageError as e:
                problem = str(e)
        if problem is not None:
            skipped.append(f"step {paths.step} ({which}.json): {problem}")
            continue
        if skipped:
            _repoint(run_dir, paths)
        return IntactCheckpoint(model_state, state, paths, which, skipped)
    detail = "; ".join(skipped) or "no checkpoint pointer"
    raise UsageError(f"{run_dir}: no checkpoint verifies ({detail}); start a new run with another --out")


def _repoint(run_dir: str | os.PathLike, good: CheckpointPaths) -> None:
    """Point ``last``, and every other pointer that is unreadable or names a pair that fails
    :func:`_verify`, at ``good``."""
    d = _dir(run_dir)
    for w in _ALL_POINTERS:
        if w != "last":
            if not (d / f"{w}.json").is_file():
                continue
            p = checkpoint_paths(run_dir, w)
            if p is not None and (p.weights == good.weights or _verify(p) is None):
                continue
        atomic_write_json(d / f"{w}.json", _pointer_doc(good))
