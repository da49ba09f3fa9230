"""A 2-process torchrun (gloo, CPU) run of `masklab train`: the same command, no code change."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from masklab.data.shapes import write_shapes
from masklab.training.checkpoint import load_checkpoint


@pytest.mark.slow
def test_torchrun_two_processes_cpu(tmp_path):
    write_shapes(tmp_path / "train", n=4, size=64, seed=5)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "masklab", "train", "--data", str(tmp_path / "train"), "--out", str(run),
        "--model", "small", "--init", "scratch", "--min-size", "64", "--max-size", "64",
        "--batch-size", "1", "--epochs", "1", "--device", "cpu", "--no-progress", "--warmup-steps", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((run / "settings.json").read_text())
    assert settings["resolved"]["world_size"] == 2 and settings["resolved"]["backend"] == "gloo"
    # 4 images over 2 processes with 1 image per step: one epoch is 2 DDP steps.
    weights, state = load_checkpoint(run, "last")
    assert (state["step"], state["epoch"]) == (2, 1)
    assert len(list((run / "checkpoints").glob("step-*.safetensors"))) == 1
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert proc.stderr.count("training stopped") == 1  # only rank 0 reports and writes
