"""The Ray cluster side of the Ray engine: importing Ray, joining or starting a cluster, sizing the actor
pool, and the Ray Data keywords whose spelling changed between Ray versions."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from masklab.errors import MissingDependencyError, UsageError
from masklab.runs.ledger import one_line

__all__ = ["RAY_INSTALL", "MAX_PART_IMAGES", "WorkerPlan", "require_ray", "ray_session", "actor_pool_kwargs", "from_items_kwargs", "plan_workers", "part_size"]

RAY_INSTALL = 'pip install "masklab[ray]"'
#: Most images per ``map_batches`` call (= per Parquet part); fewer for small runs so every worker gets work.
MAX_PART_IMAGES = 256


def require_ray():
    """Import and return ``ray`` (with Ray Data and pyarrow), or raise with the install line."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"the Ray engine needs ray[data] and pyarrow ({e.name} is not installed): {RAY_INSTALL}") from None
    return ray


def _ray_version() -> tuple[int, int]:
    import ray

    major, minor = (int(v) for v in ray.__version__.split(".")[:2])
    return major, minor


def actor_pool_kwargs(size: int) -> dict[str, Any]:
    """The ``map_batches`` keyword for "a fixed pool of ``size`` actors", as the installed Ray spells it.

    The one place that knows the API history: Ray before 2.9 only had ``compute=ActorPoolStrategy(...)``;
    2.9-2.50 preferred ``concurrency=size``; 2.51 deprecated ``concurrency`` for
    ``compute=ActorPoolStrategy(size=...)`` again.
    """
    import inspect

    import ray.data

    params = inspect.signature(ray.data.Dataset.map_batches).parameters
    if "concurrency" in params and (2, 9) <= _ray_version() < (2, 51):
        return {"concurrency": size}
    return {"compute": ray.data.ActorPoolStrategy(size=size)}


def from_items_kwargs(num_blocks: int) -> dict[str, int]:
    """``from_items``'s block count keyword: ``override_num_blocks`` (Ray >= 2.10) or ``parallelism``."""
    import inspect

    import ray.data

    params = inspect.signature(ray.data.from_items).parameters
    return {"override_num_blocks": num_blocks} if "override_num_blocks" in params else {"parallelism": num_blocks}


@contextmanager
def ray_session(*, address: str | None = None, num_cpus: int | None = None, progress: bool = False) -> Iterator[Any]:
    """Join the cluster at ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``), or start a
    private local Ray with ``num_cpus`` CPUs (default: all) when ``address`` is None. A Ray already
    initialised in this process is used as it is and left running.

    A local Ray is quiet, offline and private: no dashboard, no usage statistics
    (``RAY_USAGE_STATS_ENABLED=0``), its servers on the loopback interface only
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's single-machine mode), workers' output not echoed.
    Both variables are only defaults: a value already in the environment wins.
    """
    import logging

    if address is None:
        # Read by Ray when it is imported (the loopback choice) and by the processes ray.init starts.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        yield ray
        return
    common = {"include_dashboard": False, "log_to_driver": progress, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as e:
            raise UsageError(
                f"cannot join the Ray cluster at {address} ({one_line(e)}): is `ray start --head` running there? "
                "A cluster with token authentication (Ray's default for `ray start`) also needs RAY_AUTH_MODE=token "
                "here, with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(address="local", num_cpus=num_cpus, **common)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerPlan:
    """How many model actors and what each holds: ``cpus``/``gpus`` are Ray resources per actor,
    ``threads`` the torch CPU threads each uses, ``device`` ``"cuda"`` or ``"cpu"``."""

    workers: int
    cpus: float
    gpus: int
    threads: int
    device: str


def plan_workers(*, resources: dict[str, float], device: str = "auto", num_workers: int | None = None) -> WorkerPlan:
    """Choose the actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs present and ``device`` auto/cuda: one actor per GPU (``num_gpus=1`` each), or ``num_workers``.
    Otherwise CPU actors: ``num_workers`` (default one per 4 CPUs, at least 1), the CPUs shared out evenly,
    each actor's torch using as many threads as it holds CPUs (1 when the pool is larger than the CPUs).
    """
    if num_workers is not None and num_workers < 1:
        raise UsageError(f"--num-workers must be at least 1, found {num_workers}")
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if device.startswith("cuda") and gpus == 0:
        raise UsageError("device 'cuda' was asked for but the Ray cluster has no GPUs (use --device cpu or auto)")
    if gpus > 0 and device != "cpu":
        n = num_workers or gpus
        # One CPU reserved and one torch thread: the GPU does the work, and a larger reservation could
        # leave a GPU node unable to place all its actors.
        return WorkerPlan(workers=n, cpus=1, gpus=1, threads=1, device="cuda")
    n = num_workers or max(1, cpus // 4)
    share = cpus / n
    # Whole CPUs when they divide out, else a fraction so that every actor of the pool can be placed.
    cpus_each = float(int(share)) if share >= 1 else round(share, 3)
    return WorkerPlan(workers=n, cpus=cpus_each, gpus=0, threads=max(1, int(share)), device="cpu")




def part_size(n_images: int, workers: int, model_batch: int) -> int:
    """Images per ``map_batches`` call: about four calls per worker for small runs (load balance), at
    most :data:`MAX_PART_IMAGES` for large ones (Parquet parts of a useful size), a multiple of the model
    batch."""
    size = min(MAX_PART_IMAGES, max(1, math.ceil(n_images / (4 * workers))))
    return max(model_batch, math.ceil(size / model_batch) * model_batch)
