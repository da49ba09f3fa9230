"""Benchmark: int8 (``masklab quantize``) against fp32 — mask AP on trained models, speed on the default model.

Not a CI test. Three parts, one process, one machine state (run it on an idle machine):

(a) quantise the shipped shapes demo model (calibrated on 300 generated shapes scenes, seed 2, neither its
    training nor its val images) and the model ``benchmarks/train_budget.py`` trains (calibrated on 300 of
    its training images; the training, ~20 min, runs only with ``--train`` and is reused when its run folder
    exists);
(b) val mask/box AP of eager fp32 (the reference) and int8, default and with the box/mask predictors kept
    fp32 (``--fp32-heads``), and the share of fp32's instances int8 finds (same class, mask IoU >= 0.5 / 0.9),
    all at score threshold 0.05 (as ``masklab eval``); goal: mask AP drop <= 1 point;
(c) speed at the default size (480x640 generated images, resized to 800x1066 inside the model) of
    ``maskrcnn_resnet50_fpn_v2`` with seeded random weights, quantised on generated images: torchvision
    eager fp32, OpenVINO fp32, OpenVINO int8 (``masklab bench``'s cases, interleaved rounds); goal >= 5x
    over torchvision eager. Random weights give near-tie class scores, so int8 changes which boxes pass a
    0.5 threshold (fewer masks = less work): every case here runs at score threshold 0 so that each returns
    its 100 best detections and does the same work; AP is judged on the trained models only.

    python benchmarks/int8.py --out runs/bench-int8 [--train] [--budget-dir runs/bench-train]
    python benchmarks/int8.py --out /tmp/int8-smoke --quick          # minutes: small sets, a small speed input

Prints Markdown tables and writes ``OUT/int8.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from masklab import Segmenter
from masklab.bench import generated_images, match_instances, parse_case, run_bench
from masklab.bench.report import machine_info
from masklab.data.calibration import calibration_images
from masklab.data.coco import CocoGroundTruth
from masklab.data.shapes import write_shapes
from masklab.evaluation.evaluator import evaluate_instances, model_class_names, predict_dataset
from masklab.export.quantize import ensure_quantized
from masklab.inference.threads import configure_threads
from masklab.io.atomic import atomic_write_json
from masklab.models.loading import load_model
from masklab.runtime import converted_path
from masklab.settings import LOW_SCORE_THRESH, InferenceSettings

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")
_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> str:
    """The CPU's int8/bf16 instruction-set flags from /proc/cpuinfo (what int8 speed depends on)."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(line.split(":", 1)[1].split())
    return " ".join(f for f in _FLAGS if f in have) or "none of " + " ".join(_FLAGS)


def _ap(gt: CocoGroundTruth, seg: Segmenter) -> tuple[dict, dict, float]:
    t0 = time.perf_counter()
    preds = predict_dataset(gt, seg, progress=False).predictions
    per_img = (time.perf_counter() - t0) / max(len(preds), 1)
    res = evaluate_instances(gt, preds, model_classes=model_class_names(seg))
    return preds, {"mask_ap": 100 * res.segm.stats["AP"], "box_ap": 100 * res.bbox.stats["AP"]}, per_img


def _agreement(ref: dict, preds: dict, iou: float) -> float:
    stats = [match_instances(ref[i], preds[i], iou_thresh=iou) for i in ref]
    n = sum(s["n_ref"] for s in stats)
    return 100 * sum(s["matched"] for s in stats) / max(n, 1)


def accuracy(name: str, model: str, *, val: Path, calib: Path, calib_n: int, out: Path) -> list[dict]:
    """(b) for one trained model: eager fp32 and int8 (default, fp32 heads) on the val set ``val``."""
    settings = InferenceSettings(model=model, device="cpu", score_thresh=LOW_SCORE_THRESH)
    gt = CocoGroundTruth.load(val)
    images = calibration_images(calib, limit=calib_n)
    ref_preds, ref, per_img = _ap(gt, Segmenter(settings=settings, backend="torch"))
    rows = [{"model": name, "case": "torch fp32 (reference)", **ref, "s_per_img": per_img}]
    loaded = load_model(settings)
    for label, heads in (("openvino int8", False), ("openvino int8, fp32 heads", True)):
        t0 = time.perf_counter()
        path = ensure_quantized(loaded, images, fp32_ir=converted_path(loaded, "openvino"), force=True, fp32_heads=heads,
                                out=out / name / f"core-int8{'-heads' if heads else ''}.xml", calib_name=str(calib))
        q_s = time.perf_counter() - t0
        preds, m, per_img = _ap(gt, Segmenter(path, device="cpu"))
        rows.append({"model": name, "case": label, **m, "s_per_img": per_img, "quantize_s": q_s,
                     "d_mask_ap": m["mask_ap"] - ref["mask_ap"], "d_box_ap": m["box_ap"] - ref["box_ap"],
                     "matched_50": _agreement(ref_preds, preds, 0.5), "matched_90": _agreement(ref_preds, preds, 0.9)})
        print(f"  {name} {label}: mask AP {m['mask_ap']:.2f} ({m['mask_ap'] - ref['mask_ap']:+.2f})", flush=True)
    return rows


def budget_model(budget_dir: Path, *, train: bool) -> Path | None:
    """The train_budget.py run folder, trained first (~20 min) when missing and ``train``; None to skip."""
    if (budget_dir / "run" / "model.json").is_file():
        return budget_dir / "run"
    if not train:
        print(f"skipping the train_budget model: {budget_dir / 'run'} does not exist (add --train to train it, "
              "~20 min)", flush=True)
        return None
    script = Path(__file__).with_name("train_budget.py")
    subprocess.run([sys.executable, str(script), "--out", str(budget_dir)], check=True)
    return budget_dir / "run"


def speed(out: Path, *, calib_n: int, repeat: int, knobs: dict) -> list[dict]:
    """(c) torchvision eager fp32 vs OpenVINO fp32 vs OpenVINO int8 on the default model, random weights."""
    base = InferenceSettings(model="maskrcnn_resnet50_fpn_v2", weights="random", device="cpu", score_thresh=0.0, **knobs)
    size, loaded = (480, 640), load_model(base)
    fp32_ir = converted_path(loaded, "openvino")  # keyed on weights and baked options: --quick has its own
    int8 = ensure_quantized(loaded, generated_images(calib_n, size_hw=size, seed=1), fp32_ir=fp32_ir,
                            out=out / f"r50-{fp32_ir.parent.name}" / f"core-int8-calib{calib_n}.xml",
                            calib_name=f"{calib_n} generated images")
    cases = [parse_case("torchvision", base=base), parse_case("openvino", base=base),
             parse_case("openvino:int8", base=base.replace(model=str(int8), weights=None))]
    report = run_bench(cases, images=generated_images(2, size_hw=size, seed=0), repeat=repeat, cold=False,
                       flops=False, peaks=False, log=lambda m: print(" ", m, flush=True))
    rows = []
    for r in report.rows:
        rows.append({"case": r.case, "median_s": r.median_s, "speedup": r.speedup, "instances": r.instances,
                     "matched_90": None if r.matched is None else 100 * r.matched, "error": r.error})
    return rows


def _print_tables(doc: dict) -> None:
    print(f"\nCPU: {doc['machine'].get('cpu')} ({doc['machine'].get('threads')} threads); flags: {doc['cpu_flags']}")
    print(f"torch {doc['machine'].get('torch')}, OpenVINO {doc['machine'].get('openvino')}, NNCF {doc['nncf']}\n")
    print("| model | case | mask AP | Δ mask AP | box AP | Δ box AP | matched IoU≥0.5 | matched IoU≥0.9 | s/img |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in doc["accuracy"]:
        d = {k: f"{r[k]:+.2f}" if k in r else "ref" for k in ("d_mask_ap", "d_box_ap")}
        m = {k: f"{r[k]:.1f}%" if k in r else "ref" for k in ("matched_50", "matched_90")}
        print(f"| {r['model']} | {r['case']} | {r['mask_ap']:.2f} | {d['d_mask_ap']} | {r['box_ap']:.2f} | "
              f"{d['d_box_ap']} | {m['matched_50']} | {m['matched_90']} | {r['s_per_img']:.3f} |")
    print("\n| case (maskrcnn_resnet50_fpn_v2, random weights) | median s | vs torchvision | detections | matched IoU≥0.9 |")
    print("|---|---|---|---|---|")
    for r in doc["speed"]:
        if r["error"]:
            print(f"| {r['case']} | error: {r['error']} | | | |")
            continue
        matched = "ref" if r["matched_90"] is None else f"{r['matched_90']:.1f}%"
        print(f"| {r['case']} | {r['median_s']:.3f} | {r['speedup']:.2f}x | {r['instances']:.0f} | {matched} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-int8")
    p.add_argument("--budget-dir", default="runs/bench-train", help="train_budget.py's --out (reused when trained)")
    p.add_argument("--train", action="store_true", help="train the budget model when missing (~20 min)")
    p.add_argument("--calib", type=int, default=300, help="calibration images for the trained models (default 300)")
    p.add_argument("--val", type=int, default=200, help="shapes val images (seed 1; the first 16 are the card's val set)")
    p.add_argument("--speed-calib", type=int, default=32, help="generated calibration images for the speed model")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: small sets, 320 px speed input (not the goal's size)")
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.calib, args.val, args.speed_calib, args.repeat = 16, 24, 4, 1
    out = Path(args.out)
    configure_threads()  # an entry point: every case runs on every CPU this process may use
    shapes = out / "shapes-data"
    if not (shapes / "val" / "annotations.json").is_file():
        write_shapes(shapes / "calib", n=args.calib, seed=2)
        write_shapes(shapes / "val", n=args.val, seed=1)
    rows = accuracy("shapes_small", DEMO, val=shapes / "val" / "annotations.json", calib=shapes / "calib",
                    calib_n=args.calib, out=out)
    run = budget_model(Path(args.budget_dir), train=args.train)
    if run is not None:
        rows += accuracy("train_budget", str(run), val=Path(args.budget_dir) / "val" / "annotations.json",
                         calib=Path(args.budget_dir) / "train", calib_n=args.calib, out=out)
    knobs = {"min_size": 320, "max_size": 427} if args.quick else {}
    speed_rows = [] if args.no_speed else speed(out, calib_n=args.speed_calib, repeat=args.repeat, knobs=knobs)
    import nncf

    doc = {"machine": machine_info(), "cpu_flags": cpu_flags(), "nncf": nncf.__version__, "quick": args.quick,
           "accuracy": rows, "speed": speed_rows, "speed_knobs": knobs}
    atomic_write_json(out / "int8.json", doc, indent=2)
    _print_tables(doc)
    drops = [r["d_mask_ap"] for r in rows if r["case"] == "openvino int8"]
    tv = next((r for r in speed_rows if r["case"].startswith("openvino:int8") and not r["error"]), None)
    met = "MET" if drops and all(d >= -1 for d in drops) else "NOT MET"
    print(f"\ngoal mask AP drop <= 1 point (default int8): {met} ({', '.join(f'{d:+.2f}' for d in drops)})")
    if tv:
        print(f"goal >= 5x vs torchvision eager fp32: {'MET' if tv['speedup'] >= 5 else 'NOT MET'} ({tv['speedup']:.2f}x)"
              + (" [--quick: not the default size]" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
