"""Training defaults that follow the data and the budget (issue 19): input size from the images, warm-up and
augmentation from the run's length, batch from the input size; the choices printed once and saved in
settings.json; progress lines when the output is not a terminal; warnings for settings that cannot work."""

from __future__ import annotations

import json

import pytest
import torch

from masklab.data.shapes import write_shapes
from masklab.models.zoo import get_spec
from masklab.training import TrainConfig, train
from masklab.training.defaults import AUGMENT_FROM_EPOCHS, check_warnings, resolve_choices
from masklab.training.progress import ProgressLines, format_seconds

SMALL = get_spec("small")  # min_size 512, max_size 768


def _stats(short: float, long: float) -> dict:
    return {"images": 10, "image_short_side_px": short, "image_long_side_px": long, "objects": 20}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d", out="o", model="small", init="scratch", **kw)


@pytest.mark.parametrize(
    ("short", "long", "expected", "batch"),
    [
        (128, 128, (128, 128), 4),  # the benchmark's set: was trained at 512/768 (a silent 4x upscale)
        (200, 300, (200, 300), 4),  # the held-out textured set of issue 19: was 512-614 px
        (600, 800, (512, 768), 2),  # larger than the model's: capped, never above its own size
        (3000, 4000, (512, 768), 2),
    ],
)
def test_input_size_and_batch_follow_the_images(short, long, expected, batch):
    ch = resolve_choices(_cfg(epochs=1), SMALL, _stats(short, long), images=10, world=1)
    assert (ch.min_size, ch.max_size) == expected and ch.batch_size == batch
    assert "median image" in ch.reasons["size"]


def test_given_values_win():
    ch = resolve_choices(_cfg(epochs=1, min_size=96, max_size=160, batch_size=3, warmup_steps=7, augment=True),
                         SMALL, _stats(128, 128), images=10, world=1)
    assert (ch.min_size, ch.max_size, ch.batch_size, ch.warmup_steps, ch.augment) == (96, 160, 3, 7, True)


def test_warmup_and_augmentation_follow_the_budget():
    # 600 images, batch 4: 150 steps per epoch. 15 minutes at 0.5 s/step: ~1620 steps, ~11 epochs.
    budget = resolve_choices(_cfg(time_budget_s=900), SMALL, _stats(128, 128), images=600, world=1, step_s=0.5)
    assert budget.steps == 1620 and budget.warmup_steps == 81  # 5 %, not the old fixed 100
    assert budget.augment is False and "11 passes" in budget.reasons["augment"]
    assert budget.flip is True and "flips only" in budget.summary()  # past FLIP_FROM_EPOCHS: mirrored images
    # a machine four times slower (busy): the warm-up shrinks with the run instead of eating it
    busy = resolve_choices(_cfg(time_budget_s=900), SMALL, _stats(128, 128), images=600, world=1, step_s=2.0)
    assert busy.warmup_steps == 20 and busy.steps == 405 and busy.flip is False  # ~3 passes: still underfitting
    # long runs get augmentation; short step-counted runs a short warm-up
    long = resolve_choices(_cfg(epochs=AUGMENT_FROM_EPOCHS), SMALL, _stats(128, 128), images=600, world=1)
    assert long.augment is True and long.warmup_steps == 100
    off = resolve_choices(_cfg(time_budget_s=900, augment=False), SMALL, _stats(128, 128), images=600, world=1,
                          step_s=0.5)
    assert off.augment is False and off.flip is False  # --no-augment: not even flips
    short = resolve_choices(_cfg(max_steps=30), SMALL, _stats(128, 128), images=600, world=1)
    assert short.warmup_steps == 2 and short.augment is False


def test_warnings_for_settings_that_cannot_work():
    cfg = _cfg(max_steps=30, warmup_steps=100, min_size=512, max_size=768)
    ch = resolve_choices(cfg, SMALL, _stats(128, 128), images=8, world=1)
    warnings = check_warnings(cfg, ch, _stats(128, 128))
    assert len(warnings) == 2
    assert "--warmup-steps 100 is not shorter than the run (30 steps)" in warnings[0]
    assert "512 px" in warnings[1] and "128 px" in warnings[1] and "4.0x upscale" in warnings[1]
    # the defaults themselves never warn
    ok = _cfg(max_steps=30)
    assert check_warnings(ok, resolve_choices(ok, SMALL, _stats(128, 128), images=8, world=1), _stats(128, 128)) == []


def test_progress_lines_every_n_steps(capsys):
    import io

    out = io.StringIO()
    lines = ProgressLines(every=2, total_steps=6, budget_s=None, stream=out)
    printed = [lines.step(step=s, epoch=0, loss=1.0 / s, lr=1e-3, elapsed_s=float(s)) for s in range(1, 7)]
    assert [p is not None for p in printed] == [False, True, False, True, False, True]
    first = out.getvalue().splitlines()[0]
    assert first.startswith("train: step 2/6, epoch 1, loss 0.750, lr 1.00e-03, elapsed 0:02, ETA ")  # mean of 1, 1/2
    assert format_seconds(3725) == "1:02:05" and format_seconds(75) == "1:15"
    silent = ProgressLines(every=0, total_steps=6, budget_s=None, stream=out)
    assert silent.step(step=2, epoch=0, loss=1.0, lr=1e-3, elapsed_s=1.0) is None


@pytest.mark.slow
def test_default_run_follows_the_data_and_says_so(tmp_path, capsys):
    """A real run with only a time budget: a step is timed, the choices are printed once and saved, the
    model card has the data's input size, and progress lines come out (stderr is not a terminal here)."""
    write_shapes(tmp_path / "train", n=4, size=64, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(data=str(tmp_path / "train"), out=str(tmp_path / "run"), model="small", init="scratch",
                          time_budget_s=4, device="cpu", patience=None, log_every=1)
        train(cfg)
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert err.count("settings for this run:") == 1
    assert "input 64 px shorter side" in err and "the data's median image is 64x64 px" in err
    assert "s/step" in err  # the warm-up came from a timed step and the budget
    assert "train: step 1," in err and "loss " in err and "lr " in err and "ETA " in err
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    choices = settings["resolved"]["choices"]
    assert (choices["min_size"], choices["max_size"], choices["batch_size"]) == (64, 64, 4)
    assert choices["step_s"] > 0 and choices["augment"] is False
    assert settings["config"]["min_size"] is None  # what was asked stays recorded apart from what was chosen
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (card["min_size"], card["max_size"]) == (64, 64)


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU flags masklab sees (``MASKLAB_CPU_FLAGS``), with the cached reading cleared around it."""
    from masklab.hardware import cpu_features

    def use(flags: str) -> None:
        monkeypatch.setenv("MASKLAB_CPU_FLAGS", flags)
        cpu_features.cache_clear()

    yield use
    monkeypatch.delenv("MASKLAB_CPU_FLAGS", raising=False)
    cpu_features.cache_clear()


def test_mixed_precision_only_where_the_cpu_runs_it_natively(cpu_flags):
    from masklab.training.defaults import resolve_amp

    cpu_flags("avx2 fma avx512f avx512_vnni")  # an Ice Lake: bf16 would be emulated, slower than fp32
    assert resolve_amp(None, "cpu")[0] is None
    dtype, reason = resolve_amp(True, "cpu")
    assert dtype is None and "no native bf16" in reason and "--amp" in reason
    cpu_flags("avx2 fma avx512f avx512_vnni avx512_bf16")  # a Zen 4
    assert resolve_amp(None, "cpu") == ("bfloat16", "the CPU has native bf16")
    assert resolve_amp(False, "cpu")[0] is None
    assert resolve_amp(None, "cuda")[0] == "float16" and resolve_amp(False, "cuda")[0] is None


@pytest.mark.parametrize(("flags", "amp"), [("avx512f avx512_bf16", "bfloat16"), ("avx512f avx512_vnni", False)])
def test_a_cpu_run_trains_channels_last_in_the_chosen_precision_and_its_weights_load(tmp_path, capsys, cpu_flags,
                                                                                      flags, amp):
    """bf16 autocast where native, fp32 elsewhere, channels-last either way: the run learns (its loss falls),
    says which precision it used, records it, and its packaged weights load into a plain fp32 model."""
    from masklab import Segmenter

    cpu_flags(flags)
    write_shapes(tmp_path / "train", n=8, size=64, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(data=str(tmp_path / "train"), out=str(tmp_path / "run"), model="small", init="scratch",
                          epochs=6, batch_size=4, warmup_steps=2, min_size=64, max_size=64, augment=False,
                          device="cpu", patience=None, log_every=0)
        train(cfg)
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert f"precision {amp} autocast" in err if amp else "precision fp32 (this CPU has no native bf16)" in err
    resolved = json.loads((tmp_path / "run" / "settings.json").read_text())["resolved"]
    assert resolved["amp"] == amp and resolved["memory_format"] == "channels_last"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[4]) for r in rows]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    # the checkpoint written from the channels-last module loads into a plain model, tensor for tensor
    from safetensors.torch import load_file

    card = json.loads((tmp_path / "run" / "model.json").read_text())
    saved = load_file(str(tmp_path / "run" / card["weights"]["file"]))
    seg = Segmenter(str(tmp_path / "run"), backend="torch", device="cpu")
    loaded = seg.loaded.module.state_dict()
    assert saved.keys() <= loaded.keys() and len(saved) > 100
    for k, v in saved.items():
        assert torch.equal(loaded[k].float(), v.float()), k
    out = seg(write_shapes_image(tmp_path))
    assert out.masks.shape[1:] == (64, 64)  # and the model runs on an image


def write_shapes_image(tmp_path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(sorted((tmp_path / "train").rglob("*.png"))[0]).convert("RGB"))


@pytest.mark.parametrize(("times", "expected"), [({2: 1.15, 1: 0.90}, 1), ({2: 0.47, 1: 0.80}, 2), ({2: 0.50, 1: 0.48}, 2)])
def test_threads_are_halved_only_when_a_timed_step_says_so(times, expected):
    """A half-busy machine (2 threads slower than 1) trains on 1; an idle one, or a tie within 10 %, keeps all."""
    from masklab.training.defaults import choose_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n, step_s, reason = choose_threads(lambda: times[torch.get_num_threads()], threads=2)
        assert (n, step_s) == (expected, times[expected]) and torch.get_num_threads() == expected
        assert f"{times[2]:.2f} s with 2 threads, {times[1]:.2f} s with 1" in reason
        assert ("other programs" in reason) == (expected == 1)
        with pytest.raises(ValueError, match="at least 2 threads"):
            choose_threads(lambda: 1.0, threads=1)  # nothing to halve: the caller does not time a step
    finally:
        torch.set_num_threads(before)
