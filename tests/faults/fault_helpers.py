"""Helpers of the fault-injection suite: a live ``masklab serve`` (real sockets), the CLI in a child
process (so exit codes and stderr are the user's), and helpers to drop root's capabilities and to mount a
small tmpfs (each skips with the reason where the machine does not allow it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "masklab" / "assets" / "shapes_small.safetensors"


def cli(*argv: str, cwd: Path | None = None, timeout: float = 300, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``masklab ARGV`` in a child process with this checkout first on the path; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "MASKLAB_OFFLINE": "1"}
    cmd = [*wrap, sys.executable, "-m", "masklab", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit ``code``, no Python traceback, and every one of ``words`` in stderr (case-insensitive)."""
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == code, (proc.returncode, err)
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def unprivileged() -> tuple[str, ...]:
    """A command prefix that runs without the capabilities that let root read everything (setpriv, as
    uid 65534 with an empty bounding set); () when not root. Skips when setpriv is missing."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop the capability to read anything")
    return (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``masklab serve`` with the demo model in a child process; ``url``, ``port``, ``proc``, ``log``."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MASKLAB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "masklab", "serve", "--port", str(self.port), "--model", str(DEMO_MODEL),
               "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"masklab serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"server not ready after {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_images(folder: Path, n: int, *, size: int = 64, seed: int = 0) -> list[Path]:
    """``n`` small random PNGs ``img00.png``... in ``folder`` (created)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (np.random.default_rng(seed + i).random((size, size, 3)) * 255).astype(np.uint8)
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def segment_args(*inputs: str | Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """``masklab segment`` arguments for the demo model on the CPU."""
    return ["segment", *map(str, inputs), "--out", str(out), "--model", str(DEMO_MODEL), "--device", "cpu",
            "--no-progress", *extra]


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` (e.g. ``"96k"``) at ``where``; skips when mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("disk-full tests mount a small tmpfs: needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({proc.stderr.strip()})")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)
