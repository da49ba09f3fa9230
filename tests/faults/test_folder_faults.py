"""Folder runs under faults (issue 20): a full disk, file names that are not UTF-8, unreadable folders,
unwritable outputs, two runs into one folder, SIGKILL at random points then resume."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fault_helpers import (
    ROOT,
    assert_clean_failure,
    cli,
    mount_tmpfs,
    segment_args,
    unmount,
    unprivileged,
    write_images,
)


def _rows(out: Path) -> list[dict]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as f:  # the csv module, strict UTF-8
        return list(csv.DictReader(f))


def test_disk_full_is_a_clear_failure_that_lists_every_unwritten_image(tmp_path):
    inputs = write_images(tmp_path / "in", 8, size=96)
    out = tmp_path / "full"
    mount_tmpfs(out, "48k")
    try:
        proc = cli(*segment_args(tmp_path / "in", out=out))
        written = {p.stem for p in out.glob("*.json") if p.name != "run.json"}
        assert 0 < len(written) < 8, (written, proc.stderr)  # the disk really filled mid-run
        assert_clean_failure(proc, 1, "disk full", str(out))
        missing = [p for p in inputs if p.stem not in written]
        for p in missing:  # every image without outputs is named as failed, in the summary or on stderr
            assert f"failed: {p}" in proc.stderr or any(r["image"] == str(p) and r["status"] == "failed"
                                                        for r in (_rows(out) if (out / "summary.csv").exists() else []))
        assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no torn temp files left behind
    finally:
        unmount(out)


def test_a_file_name_that_is_not_utf8_is_summarised_and_written(tmp_path):
    write_images(tmp_path / "in", 1)
    bad = os.fsencode(tmp_path / "in") + b"/bad\xff\xfe.png"
    os.rename(tmp_path / "in" / "img00.png", bad)
    write_images(tmp_path / "in2", 1)
    out = tmp_path / "out"
    proc = cli(*segment_args(tmp_path / "in", tmp_path / "in2", out=out, extra=("--viz", "none")))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = _rows(out)
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    assert any(r["image"].endswith("bad\\xff\\xfe.png") for r in rows), rows
    records = [json.loads(p.read_bytes()) for p in out.iterdir() if p.suffix == ".json" and p.name != "run.json"]
    assert sorted(Path(r["image"]).name for r in records) == ["bad\\xff\\xfe.png", "img00.png"]
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["complete"] is True


@pytest.fixture
def shared_tmp():
    """A folder every user can enter (pytest's own tmp is private to root); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="masklab-faults-"))
    d.chmod(0o777)
    yield d
    subprocess.run(["chmod", "-R", "u+rwx", str(d)], capture_output=True)
    subprocess.run(["rm", "-rf", str(d)], capture_output=True)


def test_unreadable_folders_and_unwritable_out_are_reported(shared_tmp):
    wrap = unprivileged()
    write_images(shared_tmp / "in", 2)
    write_images(shared_tmp / "in" / "locked", 1, seed=5)
    for p in [shared_tmp / "in", *(shared_tmp / "in").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (shared_tmp / "in" / "locked").chmod(0o000)
    out = shared_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    proc = cli(*segment_args(shared_tmp / "in", out=out, extra=("-r", "--viz", "none")), wrap=wrap)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr  # one input failed
    rows = {r["image"]: r for r in _rows(out)}
    locked = rows[str(shared_tmp / "in" / "locked")]
    assert locked["status"] == "failed" and "cannot list this folder" in locked["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 2

    proc = cli(*segment_args(shared_tmp / "in" / "locked", out=out), wrap=wrap)
    assert_clean_failure(proc, 2, "cannot list the folder", "locked")
    ro = shared_tmp / "readonly"
    ro.mkdir(mode=0o555)
    ro.chmod(0o555)
    proc = cli(*segment_args(shared_tmp / "in", out=ro / "out"), wrap=wrap)
    assert_clean_failure(proc, 2, "cannot write there", str(ro / "out"))
    proc = cli(*segment_args(shared_tmp / "in", out=ro), wrap=wrap)
    assert_clean_failure(proc, 2, "cannot write there", str(ro))


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    sys.path.insert(0, str(ROOT))
    from masklab.runs.ledger import folder_lock

    write_images(tmp_path / "in", 1)
    with folder_lock(tmp_path / "out"):  # a first run in progress
        proc = cli(*segment_args(tmp_path / "in", out=tmp_path / "out"))
    assert_clean_failure(proc, 1, "another masklab run", f"pid {os.getpid()}", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "run.json").exists()  # the refused run wrote nothing
    proc = cli(*segment_args(tmp_path / "in", out=tmp_path / "out"))  # the lock is free again
    assert proc.returncode == 0, proc.stderr


def _instances(out: Path) -> dict[str, list]:
    return {p.name: json.loads(p.read_text())["instances"] for p in sorted(out.glob("img*.json"))}


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    write_images(tmp_path / "in", 6)
    ref = tmp_path / "ref"
    assert cli(*segment_args(tmp_path / "in", out=ref)).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASKLAB_OFFLINE": "1"}
    rng = random.Random(20)
    for _ in range(2):  # killed twice, at seeded random moments after start-up
        proc = subprocess.Popen([sys.executable, "-m", "masklab", *segment_args(tmp_path / "in", out=out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = cli(*segment_args(tmp_path / "in", out=out))
    assert resumed.returncode == 0, resumed.stderr
    assert _instances(out) == _instances(ref) and len(_instances(ref)) == 6
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no temp files left
    assert _rows(out) and all(r["status"] in ("ok", "skipped") for r in _rows(out))
