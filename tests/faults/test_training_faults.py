"""Training under faults (issue 20): torn, truncated and bit-flipped checkpoints, a dataset changed under a
run, and SIGKILL at a random point of a run or of a checkpoint write. After each, ``masklab train
--resume`` either continues and ends bit-identical to an uninterrupted run, or stops with a clear message
and the right exit code; never a traceback.

The runs are tiny: the ``small`` architecture from scratch on 2 generated 64-px images, one optimizer step
per epoch, one CPU thread (``MASKLAB_NUM_THREADS=1``: the same arithmetic in every process)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import ROOT

from masklab.cli import main
from masklab.data.shapes import write_shapes
from masklab.training.checkpoint import checkpoint_paths, load_checkpoint

EPOCHS = 4
TINY = ("--model", "small", "--init", "scratch", "--min-size", "64", "--max-size", "64", "--batch-size", "2",
        "--warmup-steps", "1", "--device", "cpu", "--no-progress")
ENV = {"MASKLAB_NUM_THREADS": "1", "MASKLAB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """`masklab train` sets torch's threads from MASKLAB_NUM_THREADS; put torch and the budget back after."""
    import masklab.hardware as hw

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    threads, budget = torch.get_num_threads(), list(hw._BUDGET)
    yield
    torch.set_num_threads(threads)
    hw._BUDGET[:] = budget


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root / "train", n=2, size=64, seed=3)
    write_shapes(root / "other", n=2, size=64, seed=11)  # same classes, different images and masks
    return root


def _train(*argv: str, capsys=None) -> tuple[int, str]:
    """``masklab train ARGV`` in this process: (exit code, stderr). An exception that is not a clean
    MasklabError exit propagates: that is the traceback a user would have seen."""
    rc = main(["train", *argv])
    return rc, (capsys.readouterr().err if capsys is not None else "")


@pytest.fixture(scope="module")
def reference(shapes, tmp_path_factory) -> Path:
    """An uninterrupted run of EPOCHS steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as m:
        for k, v in ENV.items():
            m.setenv(k, v)
        threads = torch.get_num_threads()
        assert _train("--data", str(shapes / "train"), "--out", str(out), "--epochs", str(EPOCHS), *TINY)[0] == 0
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def interrupted(shapes, tmp_path_factory) -> Path:
    """The same run stopped (Ctrl-C) when its 4th epoch starts: checkpoints of steps 2 (previous) and 3 (last)."""
    import masklab.training.trainer as tr

    out = tmp_path_factory.mktemp("int") / "run"
    real = tr.epoch_batches

    def stop_at_3(n, *, epoch, **kw):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(n, epoch=epoch, **kw)

    with pytest.MonkeyPatch.context() as m:
        for k, v in ENV.items():
            m.setenv(k, v)
        m.setattr(tr, "epoch_batches", stop_at_3)
        threads = torch.get_num_threads()
        assert _train("--data", str(shapes / "train"), "--out", str(out), "--epochs", str(EPOCHS), *TINY)[0] == 130
        torch.set_num_threads(threads)
    assert checkpoint_paths(out, "last").step == 3 and checkpoint_paths(out, "previous").step == 2
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """The last checkpoints of two runs hold bit-identical weights and optimizer state."""
    wa, sa = load_checkpoint(a)
    wb, sb = load_checkpoint(b)
    assert sa["step"] == sb["step"] == EPOCHS
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa["state"][i][name], ob["state"][i][name]), (i, name)
    ra = [(r["epoch"], r["step"], r["loss"]) for r in _metrics(a)]
    assert ra == [(r["epoch"], r["step"], r["loss"]) for r in _metrics(b)]


def _metrics(run: Path) -> list[dict]:
    from masklab.training import read_metrics

    return read_metrics(run)


def _flip_byte(path: Path, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the time put back: only the checksum can tell


def _damage(run: Path, how: str) -> None:
    ck = run / "checkpoints"
    files = {"weights": ck / "step-0000003.safetensors", "state": ck / "step-0000003.state.pt", "pointer": ck / "last.json"}
    kind, part = how.split("-")
    f = files[part]
    if kind == "truncated":
        os.truncate(f, f.stat().st_size // 2)
    else:
        _flip_byte(f, f.stat().st_size // 2)  # in the tensor data: the file still parses


# -- torn and flipped checkpoints --------------------------------------------------------------------
@pytest.mark.parametrize("how, resumed_from", [
    ("truncated-weights", 2), ("truncated-state", 2), ("flipped-weights", 2), ("flipped-state", 2),
    # last.json unreadable: best.json (no --val: best is last) still names the intact step 3
    ("truncated-pointer", 3),
])
def test_damaged_last_checkpoint_falls_back_to_the_newest_that_verifies(interrupted, reference, tmp_path, capsys, how,
                                                                        resumed_from):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    _damage(run, how)
    capsys.readouterr()
    rc, err = _train("--resume", str(run), "--no-progress", capsys=capsys)
    assert rc == 0, err
    assert f"resuming from step {resumed_from}" in err and "newest checkpoint that verifies" in err, err
    problem = {"truncated-pointer": "last.json cannot be read", "truncated-weights": "truncated",
               "truncated-state": "truncated"}.get(how, "sha256")
    assert problem in err, err
    assert_same_run(reference, run)  # nothing lost: the step redone is the step the uninterrupted run made
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names


def test_no_checkpoint_verifies_is_a_clear_error(interrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    for f in (run / "checkpoints").glob("step-*.safetensors"):
        os.truncate(f, 100)
    capsys.readouterr()
    rc, err = _train("--resume", str(run), "--no-progress", capsys=capsys)
    assert rc == 2, err
    assert "no checkpoint verifies" in err and "step 3" in err and "step 2" in err, err
    assert len(list((run / "checkpoints").glob("step-*"))) == 4  # nothing deleted: the files stay for a look


# -- the data under a run ----------------------------------------------------------------------------
def test_settings_record_absolute_data_and_its_fingerprint(interrupted, shapes):
    resolved = json.loads((interrupted / "settings.json").read_text())
    config = resolved["config"]
    assert config["data"] == str(shapes / "train") and os.path.isabs(config["data"])
    fp = resolved["resolved"]["data_fingerprint"]
    assert fp["images"] == 2 and fp["bytes"] == sum(p.stat().st_size for p in (shapes / "train" / "images").iterdir())
    assert len(fp["files_sha256"]) == len(fp["annotations_sha256"]) == 64


def test_relative_data_resumes_from_another_folder(shapes, tmp_path, monkeypatch, capsys):
    import masklab.training.trainer as tr

    shutil.copytree(shapes / "train", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    # One step, then resume from another working directory: before, settings.json said "data".
    real = tr.epoch_batches

    def stop_at_1(n, *, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(n, epoch=epoch, **kw)

    with monkeypatch.context() as m:
        m.setattr(tr, "epoch_batches", stop_at_1)
        assert _train("--data", "data", "--out", "run", "--epochs", "2", *TINY)[0] == 130
    assert json.loads(Path("run/settings.json").read_text())["config"]["data"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    rc, err = _train("--resume", str(tmp_path / "run"), "--no-progress", capsys=capsys)
    assert rc == 0 and checkpoint_paths(tmp_path / "run").step == 2, err


def test_changed_data_is_refused_unless_allowed(interrupted, shapes, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    settings = json.loads((run / "settings.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(shapes / "other", data)  # the run's data path now holds other images, same classes
    settings["config"]["data"] = str(data)
    (run / "settings.json").write_text(json.dumps(settings))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    rc, err = _train("--resume", str(run), "--no-progress", capsys=capsys)
    assert rc == 2, err
    assert "has changed since the run started" in err and "--allow-data-change" in err and str(data) in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (run / "checkpoints").iterdir()) == before  # untouched
    # A moved copy of the run's own data is accepted by fingerprint, without the flag...
    # (--epochs 3: it stops at once, having checked the data and rewritten settings.json with the new path)
    rc, err = _train("--resume", str(run), "--data", str(shapes / "train"), "--epochs", "3", "--no-progress", capsys=capsys)
    assert rc == 0 and "3 epochs done" in err and "since the run started" not in err, err
    assert json.loads((run / "settings.json").read_text())["config"]["data"] == str(shapes / "train")
    # ... and the changed data with --allow-data-change: continued, and the change is on record.
    rc, err = _train("--resume", str(run), "--data", str(data), "--allow-data-change", "--epochs", str(EPOCHS),
                     "--no-progress", capsys=capsys)
    assert rc == 0 and "changed since the run started" in err, err
    resolved = json.loads((run / "settings.json").read_text())["resolved"]
    assert [c["step"] for c in resolved["data_changes"]] == [3] and resolved["data_changes"][0]["path"] == str(data)
    assert checkpoint_paths(run).step == EPOCHS


def test_allow_data_change_needs_resume(shapes, tmp_path, capsys):
    rc = main(["train", "--data", str(shapes / "train"), "--out", str(tmp_path / "r"), "--epochs", "1",
               "--allow-data-change", *TINY])
    assert rc == 2 and "--resume" in capsys.readouterr().err


# -- SIGKILL -------------------------------------------------------------------------------------------
def _child(argv: list[str], *, prelude: str = "") -> subprocess.Popen:
    """``masklab ARGV`` in a child process (``prelude``: Python run first, e.g. to plant a slow write)."""
    code = f"import sys\n{prelude}\nfrom masklab.cli import main\nsys.exit(main({argv!r}))\n"
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before the fault could be injected:\n{proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the child never reached the point of the fault")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stderr.close()


def _resume_and_compare(run: Path, reference: Path, capsys) -> str:
    capsys.readouterr()
    rc, err = _train("--resume", str(run), "--no-progress", capsys=capsys)
    assert rc == 0, err
    assert_same_run(reference, run)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    return err


def _last_step(run: Path) -> int:
    p = checkpoint_paths(run)
    return -1 if p is None else p.step


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_matches(shapes, reference, tmp_path, capsys):
    # MASKLAB_FAULT_SEED picks the point (default 0, so a failure reproduces): after checkpoint `k`, a random
    # fraction of one step's time later, i.e. somewhere in the step after k or in its checkpoint write.
    rng = random.Random(os.environ.get("MASKLAB_FAULT_SEED", "0"))
    k, fraction = rng.randint(2, EPOCHS - 2), rng.random()
    run = tmp_path / "run"
    proc = _child(["train", "--data", str(shapes / "train"), "--out", str(run), "--epochs", str(EPOCHS), *TINY])
    _wait_for(lambda: _last_step(run) >= k - 1, proc)
    t_prev = time.monotonic()
    _wait_for(lambda: _last_step(run) >= k, proc)
    step_s = time.monotonic() - t_prev
    time.sleep(fraction * step_s)
    if proc.poll() is not None:
        pytest.fail(f"the run finished before the kill (after step {k} + {fraction * step_s:.2f} s)")
    _kill(proc)
    assert k <= _last_step(run) < EPOCHS, _last_step(run)
    err = _resume_and_compare(run, reference, capsys)
    assert "newest checkpoint that verifies" not in err  # nothing was damaged: the last checkpoint was whole


# The child writes step 3's `part` slowly: `cut` bytes reach the temp file, then it signals and waits
# for the kill. Atomic writes mean the real file names still hold the previous, complete content.
_SLOW_WRITE = """
import os, time
from pathlib import Path
import masklab.io.atomic as atomic
real = atomic.atomic_write
TARGET, CUT, FLAG = {target!r}, {cut!r}, {flag!r}

class Torn:
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, b):
        room = CUT - self.n
        if len(b) > room:
            self.f.write(b[:max(room, 0)]); self.f.flush(); os.fsync(self.f.fileno())
            Path(FLAG).touch()
            time.sleep(3600)
        self.n += len(b)
        return self.f.write(b)
    def flush(self):
        self.f.flush()
    def __getattr__(self, name):
        return getattr(self.f, name)

def slow(path, write, *, mode="wb"):
    path = Path(path)
    if path.name == TARGET and (path.name != "last.json" or (path.parent / "step-0000003.state.pt").exists()):
        return real(path, lambda f: write(Torn(f)), mode=mode)
    return real(path, write, mode=mode)
atomic.atomic_write = slow
import masklab.training.checkpoint as ck
ck.atomic_write = slow
"""


@pytest.mark.slow
@pytest.mark.parametrize("part", ["weights", "state", "pointer"])
def test_sigkill_during_a_checkpoint_write_then_resume_matches(shapes, reference, tmp_path, capsys, part):
    target = {"weights": "step-0000003.safetensors", "state": "step-0000003.state.pt", "pointer": "last.json"}[part]
    size = (reference / "checkpoints" / target.replace("0000003", "0000004")).stat().st_size  # about step 3's
    cut = random.Random(f"{os.environ.get('MASKLAB_FAULT_SEED', '0')}-{part}").randrange(0, size)  # where the write stops
    run, flag = tmp_path / "run", tmp_path / "torn"
    proc = _child(["train", "--data", str(shapes / "train"), "--out", str(run), "--epochs", str(EPOCHS), *TINY],
                  prelude=_SLOW_WRITE.format(target=target, cut=cut, flag=str(flag)))
    _wait_for(flag.exists, proc)
    _kill(proc)
    assert checkpoint_paths(run).step == 2  # the pointer still names the last complete pair
    torn = [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert torn, "the kill should have left the torn temp file"
    err = _resume_and_compare(run, reference, capsys)
    assert "newest checkpoint that verifies" not in err  # no damage to recover from, only a temp file


def test_a_second_save_at_one_step_never_rewrites_named_files(tmp_path, monkeypatch):
    """Saved twice at step 5 (mid-epoch, then at the epoch's end) and killed before the second pointer
    moves: the pointer's checksums still match its files, because the second pair got a new name."""
    import masklab.training.checkpoint as ck

    ck.save_checkpoint(tmp_path, model_state={"w": torch.zeros(3)}, state={"n": 1}, step=5)

    def killed(path, obj, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(ck, "atomic_write_json", killed)
        ck.save_checkpoint(tmp_path, model_state={"w": torch.ones(3)}, state={"n": 2}, step=5)
    weights, state = load_checkpoint(tmp_path)  # verifies sizes and sha256
    assert state["n"] == 1 and torch.equal(weights["w"], torch.zeros(3))
    ck.save_checkpoint(tmp_path, model_state={"w": torch.ones(3)}, state={"n": 2}, step=5)
    assert load_checkpoint(tmp_path)[1]["n"] == 2 and checkpoint_paths(tmp_path, "previous").step == 5
