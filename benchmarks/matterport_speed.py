"""matterport_r101_coco at the molded size (1024x1024): the eager port vs its networks in OpenVINO.

Prints the CPU model and flags, then per (backend, precision, threads) the median seconds per image
(mold -> network -> unmold, i.e. ``detect()``), next to the original TF graph's 7.9-8.4 s on one thread
of the project's 2-core EPYC, and each OpenVINO path's agreement with the eager port on the same input
(the exact rule: >= 99% of instances matched at mask IoU >= 0.9 with the same class, boxes within
0.01 px, scores within 1e-4). bf16 runs only where the CPU has it natively (AVX512-BF16 or AMX-BF16).

    python benchmarks/matterport_speed.py                       # the reference input, rule weights
    python benchmarks/matterport_speed.py --weights mask_rcnn_coco.h5 --image photo.jpg
    python benchmarks/matterport_speed.py --quick               # smoke run: 256x256, one repeat

Without ``--weights`` the reference's deterministic weights are written to a temporary ``.h5``
(``tests/data/mrcnn_ref/weights_rule.py``, 257 MB). Threads: torch's and OpenVINO's are both set to
the figure in the row (the glue between the networks runs in torch). Run on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "data" / "mrcnn_ref"
TF_SECONDS = "7.9-8.4"


def cpu_info() -> tuple[str, list[str]]:
    """(model name, the flags that matter for these paths) from /proc/cpuinfo."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"]
    return model, [f for f in wanted if f in flags]


def rule_weights(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("weights_rule", REF / "weights_rule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = folder / "mask_rcnn_coco_rule.h5"
    mod.write_h5(mod.load_layout(REF / "layout.json"), path)
    return path


def as_instances(result):
    from masklab.structures.instances import Instances

    boxes = result.rois[:, [1, 0, 3, 2]].astype(np.float32).reshape(-1, 4)
    return Instances(
        boxes=boxes, masks=result.masks, scores=result.scores, class_ids=result.class_ids.astype(np.int64),
        labels=[str(c) for c in result.class_ids], image_size=result.masks.shape[1:],
    )


def timed(runtime, image, repeats: int) -> tuple[float, object]:
    runtime.run(image)  # warm-up (first-call allocations, OpenVINO's lazy compile steps)
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = runtime.run(image).result
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="matterport .h5 (default: the reference's rule weights)")
    ap.add_argument("--image", type=Path, default=REF / "input.png")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-confidence", type=float,
                    help="DETECTION_MIN_CONFIDENCE (default: matterport's 0.7 with --weights; 0.3 with the rule weights, "
                    "which score low: the reference's 18 detections)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 256x256 input, one repeat, no 1-thread rows")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from masklab.bench.agreement import match_instances
    from masklab.export.matterport import export_matterport_openvino
    from masklab.models.matterport import MatterportConfig, MatterportMaskRCNN
    from masklab.models.matterport.h5 import load_h5_weights
    from masklab.models.matterport.runtime import MatterportRuntime
    from masklab.runtime.matterport_ov import MatterportOpenVINORuntime

    model, flags = cpu_info()
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    size = 256 if args.quick else 1024
    repeats = 1 if args.quick else args.repeats
    min_conf = args.min_confidence if args.min_confidence is not None else (0.7 if args.weights else 0.3)
    threads = [2] if args.quick else [int(t) for t in args.threads.split(",")]
    print(f"cpu: {model}; flags: {' '.join(flags) or '-'}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    image = np.asarray(Image.open(args.image).convert("RGB"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or rule_weights(Path(tmp))
        cfg = MatterportConfig(IMAGE_MIN_DIM=min(800, size), IMAGE_MAX_DIM=size, DETECTION_MIN_CONFIDENCE=min_conf)
        module = MatterportMaskRCNN(cfg)
        load_h5_weights(module, weights)
        module.eval()
        t = time.perf_counter()
        export = export_matterport_openvino(module, Path(tmp) / "ov")
        print(f"input {image.shape[1]}x{image.shape[0]} molded to {size}x{size}; OpenVINO conversion {time.perf_counter() - t:.1f} s (once)")
        print(f"{'backend':<10} {'precision':<9} {'threads':>7} {'s/image':>8}  vs TF {TF_SECONDS} s (1 thread)  agreement with eager")
        reference = {}
        rows = [("torch", "fp32")] + [("openvino", "fp32")] + ([("openvino", "bf16")] if native_bf16 else [])
        for backend, precision in rows:
            for n in threads:
                torch.set_num_threads(n)
                if backend == "torch":
                    rt = MatterportRuntime(module)
                else:
                    rt = MatterportOpenVINORuntime(export, precision=precision, threads=n)
                sec, result = timed(rt, image, repeats)
                inst = as_instances(result)
                note = ""
                if backend == "torch":
                    reference[n] = inst
                else:
                    m = match_instances(reference[n], inst)
                    share = m["matched"] / m["n_ref"] if m["n_ref"] else 1.0
                    note = (f"{m['matched']}/{m['n_ref']} matched ({share:.1%}), box {m['max_box_delta']:.3g} px, "
                            f"score {m['max_score_delta']:.2g}; {len(inst)} found")
                print(f"{backend:<10} {precision:<9} {n:>7} {sec:>8.2f}  {8.15 / sec:>5.2f}x of TF's midpoint  {note}")
                del rt
        if not native_bf16:
            print("bf16: not run (no native bf16 on this CPU: OpenVINO would emulate it, slower than fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
