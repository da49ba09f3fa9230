"""The Ray engine (masklab.runs.ray) against the local engine, on a private local Ray.

One Ray session (2 CPUs, loopback only) serves the module: starting Ray costs ~10 s here, and every
run starts its model actors (~5-10 s each on 2 shared cores), so the module makes three runs in all.
Both engines run torch with one thread per model: with the same thread count the arithmetic is the
same, so the outputs are compared byte for byte (a different thread count may move a score in its
6th decimal).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_scene
from PIL import Image

from masklab.errors import UsageError
from masklab.runs.ray.cluster import actor_pool_kwargs, plan_workers, ray_session
from masklab.runs.ray.storage import Store, expand_sources
from masklab.runs.ray.tables import IMAGES_DIR, INSTANCES_DIR, record_from_rows
from masklab.settings import InferenceSettings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings
# Ray reads this when it is first imported (by any test below): a private Ray on the loopback interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Few instances per image keep RLE/overlay work small; score 0 so the random heads give some.
SEG = {"score_thresh": 0.0, "min_size": 128, "max_size": 192, "max_detections": 8, "device": "cpu"}
STEMS = ["a0", "a1", "a2", "a3"]


# -- no Ray needed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "device", "workers", "expected"),
    [
        ({"CPU": 2.0}, "auto", None, (1, 2.0, 0, 2, "cpu")),
        ({"CPU": 2.0}, "auto", 2, (2, 1.0, 0, 1, "cpu")),
        ({"CPU": 2.0}, "cpu", 4, (4, 0.5, 0, 1, "cpu")),  # more actors than CPUs: fractional shares
        ({"CPU": 64.0}, "auto", None, (16, 4.0, 0, 4, "cpu")),
        ({"CPU": 32.0, "GPU": 4.0}, "auto", None, (4, 1, 1, 1, "cuda")),  # one actor per GPU
        ({"CPU": 32.0, "GPU": 4.0}, "cpu", 2, (2, 16.0, 0, 16, "cpu")),  # GPUs ignored when asked
    ],
)
def test_plan_workers(resources, device, workers, expected):
    p = plan_workers(resources=resources, device=device, num_workers=workers)
    assert (p.workers, p.cpus, p.gpus, p.threads, p.device) == expected


def test_plan_workers_refuses_bad_requests():
    with pytest.raises(UsageError, match="no GPUs"):
        plan_workers(resources={"CPU": 8.0}, device="cuda")
    with pytest.raises(UsageError, match="at least 1"):
        plan_workers(resources={"CPU": 8.0}, num_workers=0)


def test_actor_pool_kwargs_follow_the_ray_version(monkeypatch):
    pytest.importorskip("ray.data")
    import ray.data

    from masklab.runs.ray import cluster

    monkeypatch.setattr(cluster, "_ray_version", lambda: (2, 20))
    assert actor_pool_kwargs(3) == {"concurrency": 3}
    monkeypatch.setattr(cluster, "_ray_version", lambda: (2, 60))
    kw = actor_pool_kwargs(3)
    assert isinstance(kw["compute"], ray.data.ActorPoolStrategy) and kw["compute"].min_size == kw["compute"].max_size == 3


def test_store_and_uri_inputs(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for rel in ("x.png", "sub/x.png", "y.jpg", "notes.txt"):
        (tmp_path / "in" / rel).write_bytes(b"...")
    uri = (tmp_path / "in").as_uri()  # file:///...: read through pyarrow.fs like s3://
    flat = expand_sources([uri])
    assert [(it.url, it.stem) for it in flat] == [(f"{uri}/x.png", "x"), (f"{uri}/y.jpg", "y")]
    deep = expand_sources([uri], recursive=True)
    stems = sorted(it.stem for it in deep)
    assert len(deep) == 3 and stems[2] == "y" and stems[0].startswith("x-") and stems[1].startswith("x-")
    with pytest.raises(UsageError, match="does not exist"):
        expand_sources([f"{uri}/missing"])
    store = Store((tmp_path / "out").as_uri())
    store.write_bytes("d/one.bin", b"abc")
    assert (tmp_path / "out" / "d" / "one.bin").read_bytes() == b"abc"
    assert store.list_files("d", ".bin") == ["one.bin"] and store.list_files("nowhere", ".bin") == []
    assert not [p for p in (tmp_path / "out" / "d").iterdir() if p.name.startswith(".")]  # no temp files left


def test_joining_a_cluster_that_refuses_says_what_to_check(monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")  # this test runs before the module's

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UsageError, match="ray start --head.*RAY_AUTH_MODE=token"):
        with ray_session(address="10.0.0.9:6379"):
            pass


# -- on a local Ray -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    pytest.importorskip("ray.data")
    with pytest.MonkeyPatch.context() as mp:
        # What the actors inherit from the processes ray.init starts: offline, an empty cache.
        mp.setenv("MASKLAB_OFFLINE", "1")
        mp.setenv("MASKLAB_HOME", str(tmp_path_factory.mktemp("ray-home")))
        with ray_session(num_cpus=2) as ray:
            yield ray


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-in")
    for i, stem in enumerate(STEMS):
        Image.fromarray(make_scene(100 + 12 * i, 140, seed=10 + i)).save(d / f"{stem}.png")
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    return d


@pytest.fixture(scope="module")
def runs(ray_local, folder, small_weights, tmp_path_factory):
    """The same folder through the local engine and the Ray engine (2 actors of 1 CPU each)."""
    import torch

    from masklab import Segmenter
    from masklab.io.inputs import expand_inputs
    from masklab.runs import run_segment, run_segment_ray

    threads_before = torch.get_num_threads()  # threads=1 sets torch's process-wide count; restored below
    seg_kwargs = {"model": str(small_weights), **SEG}
    seg = Segmenter(**seg_kwargs, threads=1)  # as each Ray actor below (1 CPU each)
    local_out = tmp_path_factory.mktemp("local-out")
    local = run_segment(expand_inputs([str(folder)]), local_out, seg, viz="instance", progress=False)
    ray_out = tmp_path_factory.mktemp("ray-out")
    settings = {**seg.settings(), "viz": "instance"}
    inference = InferenceSettings(**seg_kwargs)
    ray = run_segment_ray(
        expand_sources([str(folder)]),
        ray_out,
        inference=inference,
        settings=settings,
        model_card=seg.card.to_json(),
        writer_kwargs={"viz": ["instance"]},
        num_workers=2,
        progress=False,
    )
    yield {"local": (local, local_out), "ray": (ray, ray_out), "seg": seg, "inference": inference, "settings": settings}
    torch.set_num_threads(threads_before)


@pytest.mark.slow
def test_ray_equals_local_image_by_image(runs):
    local, local_out = runs["local"]
    ray, ray_out = runs["ray"]
    assert [r.item.stem for r in ray.results] == [r.item.stem for r in local.results] == ["a0", "a1", "a2", "a3", "broken"]
    for stem in STEMS:
        a = json.loads((local_out / f"{stem}.json").read_text())
        b = json.loads((ray_out / f"{stem}.json").read_text())
        assert len(a["instances"]) > 0
        assert b == a  # same instances, same scores, boxes, measurements and RLE strings
        overlay_local = np.asarray(Image.open(local_out / f"{stem}.png"))
        overlay_ray = np.asarray(Image.open(ray_out / f"{stem}.png"))
        assert np.array_equal(overlay_ray, overlay_local)
    assert [r.n_instances for r in ray.results] == [r.n_instances for r in local.results]


@pytest.mark.slow
def test_ray_reports_the_bad_file_and_finishes(runs):
    local, _ = runs["local"]
    ray, ray_out = runs["ray"]
    assert ray.exit_code == 1 and len(ray.failures) == 1
    bad = ray.failures[0]
    assert bad.item.stem == "broken" and bad.error == local.failures[0].error and "broken.jpg" in bad.error
    with open(ray_out / "summary.csv") as f:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"] == bad.error
    assert all(rows[s]["status"] == "ok" and int(rows[s]["instances"]) > 0 for s in STEMS)
    run = json.loads((ray_out / "run.json").read_text())
    assert run["complete"] and run["engine"] == "ray" and run["succeeded"] == 4
    assert run["failed"] == [{"image": bad.item.source, "error": bad.error}]
    assert run["ray"]["actors"] == 2 and run["ray"]["device"] == "cpu"


@pytest.mark.slow
def test_parquet_rows_match_the_json(runs):
    import pandas as pd
    import pyarrow.parquet as pq

    from masklab.structures.masks import decode_rle

    _, ray_out = runs["ray"]
    table = pq.read_table(ray_out / INSTANCES_DIR)
    frame = pd.read_parquet(ray_out / INSTANCES_DIR)  # what a pandas user does
    n_json = sum(len(json.loads((ray_out / f"{s}.json").read_text())["instances"]) for s in STEMS)
    assert len(frame) == table.num_rows == n_json > 0  # every image has instances (checked against local above)
    images = pq.read_table(ray_out / IMAGES_DIR).to_pylist()
    assert sorted(r["stem"] for r in images) == STEMS  # the failed file is not in the ledger
    rows = table.to_pylist()
    for img in images:
        doc = json.loads((ray_out / f"{img['stem']}.json").read_text())
        mine = [r for r in rows if r["stem"] == img["stem"]]
        assert record_from_rows(img, mine, model=doc["model"]) == doc
        assert img["instances"] == len(doc["instances"]) and json.loads(img["counts"]) == {
            lab: sum(d["label"] == lab for d in doc["instances"]) for lab in {d["label"] for d in doc["instances"]}
        }
        # The RLE column decodes to masks whose pixel counts are the area column.
        masks = decode_rle([{"size": r["rle_size"], "counts": r["rle_counts"]} for r in mine], (doc["height"], doc["width"]))
        assert [int(m.sum()) for m in masks] == [r["area_px"] for r in mine]


@pytest.mark.slow
def test_rerun_skips_finished_images_and_redoes_a_lost_part(runs, folder, tmp_path_factory):
    """Rerun after a simulated kill: one image's ledger part is gone (its instances part remains, as a
    kill between the two writes leaves it); a new image comes in as a file:// URI."""
    import pyarrow.parquet as pq

    from masklab.io.formats.writer import image_record
    from masklab.runs import run_segment_ray

    _, ray_out = runs["ray"]
    ledger = {pq.read_table(p).column("stem")[0].as_py(): p for p in (ray_out / IMAGES_DIR).glob("*.parquet")}
    assert len(ledger) == 4  # small runs get one image per part: each can be lost alone
    ledger["a2"].unlink()
    before = {s: (ray_out / f"{s}.json").stat().st_mtime_ns for s in STEMS}
    extra = tmp_path_factory.mktemp("ray-extra")
    Image.fromarray(make_scene(110, 130, seed=42)).save(extra / "late.png")
    uri = (extra / "late.png").as_uri()

    again = run_segment_ray(
        expand_sources([str(folder), uri]),
        ray_out,
        inference=runs["inference"],
        settings=runs["settings"],
        writer_kwargs={"viz": ["instance"]},
        num_workers=2,
        progress=False,
    )
    status = {r.item.stem: ("skipped" if r.skipped else "failed" if r.error else "ok") for r in again.results}
    assert status == {"a0": "skipped", "a1": "skipped", "a2": "ok", "a3": "skipped", "broken": "failed", "late": "ok"}
    assert again.resumed and again.exit_code == 1
    after = {s: (ray_out / f"{s}.json").stat().st_mtime_ns for s in STEMS}
    assert [s for s in STEMS if after[s] != before[s]] == ["a2"]  # only the lost image was rewritten
    # No duplicated rows: the orphan instances part of a2 was removed before a2 was redone.
    table = pq.read_table(ray_out / INSTANCES_DIR).to_pylist()
    for stem in [*STEMS, "late"]:
        doc = json.loads((ray_out / f"{stem}.json").read_text())
        assert sorted(r["id"] for r in table if r["stem"] == stem) == list(range(len(doc["instances"])))
    # The URI input went through pyarrow.fs and gives what the Segmenter gives for that file.
    late = json.loads((ray_out / "late.json").read_text())
    assert late == image_record(uri, runs["seg"](str(extra / "late.png")), runs["seg"].spec.name)
    assert os.path.exists(ray_out / "late.png")


# -- the CLI's plumbing (the engine itself is tested above) ---------------------------------------


def test_cli_passes_its_flags_to_the_ray_engine(tmp_path, small_weights, monkeypatch, capsys):
    """``masklab segment --engine ray`` hands the engine what every actor needs (absolute paths: workers
    do not share the driver's cwd) and reports its summary like the local engine's."""
    from masklab import Segmenter
    from masklab.cli import main
    from masklab.runs import ImageResult, RunSummary
    from masklab.runs.ray import engine as ray_engine

    (tmp_path / "in").mkdir()
    Image.fromarray(make_scene(seed=3)).save(tmp_path / "in" / "x.png")
    seen = {}

    def fake_run(items, out, **kw):
        seen.update(kw, items=items, out=out)
        return RunSummary(results=[ImageResult(items[0], error="x.png: broken on purpose")], seconds=1.0)

    monkeypatch.setattr(ray_engine, "run_segment_ray", fake_run)

    def no_model(*args, **kwargs):
        raise AssertionError("--engine ray built a model on the driver")

    monkeypatch.setattr(Segmenter, "__init__", no_model)  # the actors build it; the driver reads the card
    monkeypatch.chdir(tmp_path)
    argv = ["segment", "in", "--out", "o", "--engine", "ray", "--ray-address", "auto", "--num-workers", "3", "--no-json"]
    argv += ["--model", small_weights.name, "--score-thresh", "0.25", "--min-size", "128", "--max-size", "192", "--viz", "none"]
    (tmp_path / small_weights.name).write_bytes(small_weights.read_bytes())
    assert main(argv) == 1
    assert "failed: x.png: broken on purpose" in capsys.readouterr().err
    assert [it.source for it in seen["items"]] == [os.path.join("in", "x.png")] and seen["out"] == "o"
    inference = seen["inference"]  # one InferenceSettings from the flags, sent to every actor as JSON
    assert isinstance(inference, InferenceSettings) and inference.model == small_weights.name
    assert ray_engine.worker_settings(inference, device="cpu", threads=1)["model"] == str(tmp_path / small_weights.name)
    assert inference.score_thresh == 0.25 and inference.min_size == 128 and inference.max_size == 192
    assert inference.device == "auto"  # the actors choose GPU or CPU on the cluster
    assert (seen["address"], seen["num_workers"], seen["save_json"]) == ("auto", 3, False)
    assert seen["writer_kwargs"]["viz"] == [] and seen["writer_kwargs"]["formats"] == ["json"]
    assert seen["settings"]["viz"] == [] and seen["settings"]["score_thresh"] == 0.25
    # run.json's block from the card, without a model: defaults filled in, the card's name and arch
    assert seen["settings"]["max_detections"] == 100 and seen["settings"]["arch"] == seen["model_card"]["arch"]


def test_cli_ray_checks_class_names_on_the_driver(tmp_path, small_weights, monkeypatch, capsys):
    from masklab.cli import main
    from masklab.runs.ray import engine as ray_engine

    monkeypatch.setattr(ray_engine, "run_segment_ray", lambda *a, **k: pytest.fail("the run started"))
    Image.fromarray(make_scene()).save(tmp_path / "x.png")
    argv = ["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--engine", "ray", "--model", str(small_weights)]
    assert main([*argv, "--classes", "class_1,zebra"]) == 2
    assert "unknown class names ['zebra']" in capsys.readouterr().err


def test_cli_refuses_ray_flags_without_the_ray_engine(tmp_path, capsys):
    from masklab.cli import main

    Image.fromarray(make_scene()).save(tmp_path / "x.png")
    assert main(["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--num-workers", "2"]) == 2
    assert "--num-workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_worker_without_json_and_run_files_from_parquet(tmp_path, small_weights):
    """The actor class run in this process (no Ray): with ``save_json=False`` the writer's files go
    through a scratch folder to the store (all but the JSON), the Parquet parts hold the records, and the
    run-level formats (COCO here) are rebuilt from them."""
    pytest.importorskip("pyarrow")
    from masklab import Segmenter
    from masklab.io.formats.writer import image_record
    from masklab.io.inputs import InputItem
    from masklab.runs import ImageResult, RunLedger, RunSummary
    from masklab.runs.ray.engine import _finish, _records_from_tables, worker_settings
    from masklab.runs.ray.worker import SegmentWorker

    for i in range(2):
        Image.fromarray(make_scene(90, 120, seed=20 + i)).save(tmp_path / f"p{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    kwargs = {"model": str(small_weights), **SEG}
    cats = Segmenter(**kwargs).spec.categories
    writer_kwargs = {"viz": ["instance"], "formats": ["json", "png-masks", "coco"], "categories": cats}
    store_uri = (tmp_path / "out").as_uri()
    settings = worker_settings(InferenceSettings(**kwargs), device="cpu", threads=1)
    worker = SegmentWorker(
        settings=settings, writer_kwargs=writer_kwargs, out=store_uri, save_json=False, threads=1, model_batch=2, max_pixels=None
    )
    names = ["p0.png", "bad.png", "p1.png"]
    batch = {
        "index": np.arange(3),
        "path": np.array(names, dtype=object),
        "location": np.array([str(tmp_path / n) for n in names], dtype=object),
        "stem": np.array(["p0", "bad", "p1"], dtype=object),
        "url": np.array(["", "", ""], dtype=object),
    }
    back = worker(batch)
    assert back["index"] == [1, 0, 2]  # the load failure is reported first, then the segmented images
    assert "bad.png" in back["error"][0] and back["error"][1:] == ["", ""]
    out = tmp_path / "out"
    assert not list(out.glob("*.json"))  # no per-image JSON
    assert {p.name for p in out.glob("*.png")} == {"p0.png", "p1.png"}
    assert {p.name for p in (out / "masks").iterdir()} == {f"p{i}.{k}.png" for i in range(2) for k in ("instances", "semantic")}
    assert not list(worker.scratch.rglob("*.*"))  # everything moved out of the scratch folder

    store = Store(store_uri)
    records = _records_from_tables(store, {"p0", "p1"}, model=worker.model_name)
    expected = image_record("p0.png", worker.segmenter(str(tmp_path / "p0.png")), worker.model_name)
    assert records["p0"] == expected
    items = [InputItem(Path(n), s) for n, s in zip(names, ["p0", "bad", "p1"])]
    results = [ImageResult(items[0], n_instances=back["instances"][1]), ImageResult(items[1], error=back["error"][0])]
    results.append(ImageResult(items[2], n_instances=back["instances"][2]))
    summary = RunSummary(results=results, seconds=1.0)
    ledger = RunLedger.open(store, {"model": worker.model_name})
    _finish(store, ledger, summary, model_card=None, extra={}, writer_kwargs=writer_kwargs, save_json=False)
    coco = json.loads((out / "coco_results.json").read_text())
    rles = sorted(d["segmentation"]["counts"] for d in coco)
    assert rles == sorted(d["rle"]["counts"] for r in records.values() for d in r["instances"]) and rles
    assert [r["status"] for r in csv.DictReader((out / "summary.csv").read_text().splitlines())] == ["ok", "failed", "ok"]
    assert {p.name for p in out.glob("*.json")} == {"coco_results.json", "coco_images.json", "run.json"}


def test_core_imports_no_ray_and_a_missing_ray_says_how_to_install(monkeypatch):
    import subprocess
    import sys

    code = "import sys, masklab, masklab.cli, masklab.runs; print('ray' in sys.modules, 'pyarrow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
    from masklab.errors import MissingDependencyError
    from masklab.runs.ray.cluster import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like to import
    with pytest.raises(MissingDependencyError, match=r'pip install "masklab\[ray\]"'):
        require_ray()

