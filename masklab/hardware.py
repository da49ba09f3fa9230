"""What this CPU does natively, read once per process: the facts behind every precision choice.

Reduced precision only pays where the CPU has instructions for it. Measured on this project's machines
(``benchmarks/RESULTS.md``): on an AMD EPYC Zen 4 (avx512_bf16) OpenVINO bf16 runs 3.3x faster than eager
fp32; on an Intel Xeon Ice Lake (AVX-512 + VNNI, **no** avx512_bf16, no AMX) the same bf16 is emulated and
runs 0.36x (2-3x *slower*). int8 uses VNNI / AMX-INT8 (x86) or the dot-product instructions (ARM) and is the
fast path on both kinds. So:

=============== =============================================================== ===========================
precision       native when the CPU has                                         otherwise
=============== =============================================================== ===========================
``bf16``        avx512_bf16 or AMX-BF16 (x86: Zen 4+, Cooper Lake, Sapphire      emulated: slower than fp32;
                Rapids+); ``bf16`` in ARM's features (Neoverse V1+, Apple M2+)   masklab runs fp32 instead
``fp16``        avx512_fp16 or AMX-FP16 (Sapphire Rapids+); ARM ``asimdhp``       emulated (as bf16)
``int8``        avx512_vnni / avx_vnni / AMX-INT8 (x86); ARM ``asimddp``          runs, smaller gain (~1.2x)
=============== =============================================================== ===========================

:func:`cpu_features` reads ``/proc/cpuinfo`` on Linux and ``sysctl`` on macOS (``hw.optional.arm.FEAT_BF16``);
elsewhere it reports no reduced-precision support, so nothing is ever *assumed* native. The result is cached
for the process (reading it costs well under a millisecond; nothing is written to disk).
``MASKLAB_CPU_FLAGS`` (space-separated flags) replaces what the CPU reports, to try the other machine
kind's choices (``MASKLAB_CPU_FLAGS="avx512f avx512_vnni"`` behaves like the Ice Lake above).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass

__all__ = ["CpuFeatures", "cpu_features", "native_precision", "available_cpus", "thread_budget",
           "set_thread_budget"]

_BF16 = ("avx512_bf16", "amx_bf16", "bf16")  # x86 flags; "bf16" is ARM's feature name
_FP16 = ("avx512_fp16", "amx_fp16", "asimdhp")
_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
#: the flags worth showing next to a speed figure (the rest of /proc/cpuinfo says nothing about it)
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimddp", "asimdhp", "bf16", "i8mm")


@dataclass(frozen=True)
class CpuFeatures:
    """``model``: the CPU's name (``"AMD EPYC 9R14"``); ``cores``: CPUs this process may use;
    ``flags``: the :data:`SHOWN_FLAGS` the CPU has, in that order; ``source``: where they were read."""

    model: str
    cores: int
    flags: tuple[str, ...]
    source: str

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (see the module table)."""
        return any(f in self.flags for f in _BF16)

    @property
    def fp16(self) -> bool:
        return any(f in self.flags for f in _FP16)

    @property
    def int8(self) -> bool:
        """Native int8 dot products (VNNI / AMX-INT8 / ARM dot product)."""
        return any(f in self.flags for f in _INT8)

    def native(self, precision: str) -> bool:
        """Whether ``precision`` (fp32, bf16, fp16, int8) runs natively here; fp32 always does."""
        return {"fp32": True, "bf16": self.bf16, "fp16": self.fp16, "int8": self.int8}.get(precision, False)

    def describe(self) -> str:
        """One line for logs and reports: model, cores, the flags that decide precision."""
        native = [p for p in ("bf16", "fp16", "int8") if self.native(p)] or ["fp32 only"]
        return f"{self.model}, {self.cores} CPUs, flags: {' '.join(self.flags) or 'none of note'} (native: {', '.join(native)})"


def _linux() -> tuple[str, set[str]] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    model, flags, ids = "", set(), {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", ARM "Features"
            flags = set(value.split())
        elif key in ("cpu family", "model") and key not in ids:
            ids[key] = value.strip()
    if ids and model:  # virtual machines often show a bare "AMD EPYC": family/model name the generation
        model = f"{model} (family {ids.get('cpu family', '?')}, model {ids.get('model', '?')})"
    if not model and "CPU implementer" in text:
        model = f"ARM ({platform.machine()})"
    return model or platform.processor() or platform.machine(), flags


def _macos() -> tuple[str, set[str]] | None:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = sysctl("machdep.cpu.brand_string")
    if not model:
        return None
    flags = {"asimd"} if platform.machine() == "arm64" else set()
    for feat, flag in (("FEAT_BF16", "bf16"), ("FEAT_DotProd", "asimddp"), ("FEAT_FP16", "asimdhp"), ("FEAT_I8MM", "i8mm")):
        if sysctl(f"hw.optional.arm.{feat}") == "1":
            flags.add(flag)
    return model, flags


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware), or ``MASKLAB_NUM_THREADS`` when set."""
    env = os.environ.get("MASKLAB_NUM_THREADS")
    try:
        return max(1, int(env)) if env else _cores()
    except ValueError:
        return _cores()


_BUDGET: list[int] = []  # what the entry point configured (masklab.inference.threads.configure_threads)


def set_thread_budget(n: int) -> None:
    """Record the CPU threads the entry point chose, for runtimes that do not use torch's setting."""
    _BUDGET[:] = [max(1, int(n))]


def thread_budget() -> int:
    """Threads a runtime should use when not told: the entry point's choice, else torch's setting when
    torch is already loaded, else :func:`available_cpus` (never imports torch)."""
    import sys

    if _BUDGET:
        return _BUDGET[0]
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else available_cpus()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This CPU's :class:`CpuFeatures` (cached for the process; ``MASKLAB_CPU_FLAGS`` overrides the flags)."""
    found = _linux() if platform.system() == "Linux" else _macos() if platform.system() == "Darwin" else None
    model, flags = found if found is not None else (platform.processor() or platform.machine() or "unknown CPU", set())
    source = {"Linux": "/proc/cpuinfo", "Darwin": "sysctl"}.get(platform.system(), "none") if found else "none"
    override = os.environ.get("MASKLAB_CPU_FLAGS")
    if override is not None:
        flags, source = set(override.split()), "MASKLAB_CPU_FLAGS"
    return CpuFeatures(model=model, cores=_cores(), flags=tuple(f for f in SHOWN_FLAGS if f in flags), source=source)


def native_precision(precision: str) -> bool:
    """Whether ``precision`` runs natively on this CPU (:meth:`CpuFeatures.native`)."""
    return cpu_features().native(precision)
