"""Peak memory of ``masklab segment`` on a GeoTIFF larger than the pixel cap (read window by window).

Writes a ``--size`` x ``--size`` RGB GeoTIFF (tiled, deflate; written window by window, so generating it
needs little memory) with large shapes the shipped demo model finds after its resize, then runs
``masklab segment RASTER --save gpkg,label-tiff`` in a child process with the shipped ``shapes_small``
model and reports the child's own peak RSS (VmHWM from /proc/self/status; ru_maxrss would include the
parent's), its seconds, the windows and the features written. The raster's pixels alone (RGB uint8)
are ``3 * size**2`` bytes: at the default 12000 x 12000 that is 432 MB, over the default 100 MP cap.
The same command on a 512 x 512 raster gives the baseline (torch and the model loaded).

Run: ``python benchmarks/geo_windows.py [--size 12000 --max-pixels 100000000]`` (about 2-4 minutes on
2 idle cores). Smoke: ``python benchmarks/geo_windows.py --size 3000 --max-pixels 1000000``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")

_CHILD = r"""
import json, sys, time
from masklab.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t0
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": peak}))
"""


def write_raster(path: Path, size: int, *, block: int = 2048, seed: int = 0) -> int:
    """A ``size`` x ``size`` RGB GeoTIFF in a UTM CRS (0.3 m pixels) with squares and discs; returns the
    number of shapes drawn."""
    import cv2
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(0.3, 0, 400000.0, 0, -0.3, 5000000.0), "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    shapes = 0
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, block):
            for x in range(0, size, block):
                h, w = min(block, size - y), min(block, size - x)
                tile = np.empty((h, w, 3), np.uint8)
                tile[:] = (70, 90, 60)
                for _ in range(2):
                    r = int(rng.integers(150, 350))
                    cx, cy = int(rng.integers(r, max(r + 1, w - r))), int(rng.integers(r, max(r + 1, h - r)))
                    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
                    if rng.random() < 0.5:
                        cv2.rectangle(tile, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
                    else:
                        cv2.circle(tile, (cx, cy), r, colour, -1)
                    shapes += 1
                dst.write(np.moveaxis(tile, 2, 0), window=Window(x, y, w, h))
    return shapes


def _run(cmd: list[str]) -> dict | None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12000)
    ap.add_argument("--max-pixels", type=int, default=100_000_000)
    ap.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep the files (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        raster = work / "big.tif"
        t0 = time.perf_counter()
        shapes = write_raster(raster, args.size)
        gen_s = time.perf_counter() - t0
        out = work / "out"
        cmd = [sys.executable, "-c", _CHILD, "segment", str(raster), "--out", str(out), "--model", DEMO, "--device", "cpu",
               "--viz", "none", "--save", "gpkg,label-tiff", "--no-progress", "--max-pixels", str(args.max_pixels)]
        child = _run(cmd)
        # the same command on a 512 x 512 raster (one window): the process's baseline (torch, the model)
        small = work / "small.tif"
        write_raster(small, 512)
        base = _run([*cmd[:4], str(small), "--out", str(work / "out-small"), *cmd[7:]])
        if child is None or base is None:
            return 1
        import geopandas as gpd

        feats = len(gpd.read_file(out / "geo" / "big.gpkg", engine="pyogrio"))
        windows = len(list(out.glob("big_w*.json"))) or 1
        report = {"size": args.size, "pixels": args.size**2, "max_pixels": args.max_pixels, "raw_rgb_mb": round(3 * args.size**2 / 2**20, 1),
                  "windows": windows, "shapes_drawn": shapes, "features": feats, "generate_s": round(gen_s, 1),
                  "segment_s": round(child["seconds"], 1), "peak_rss_mb": round(child["peak_rss_mb"], 1),
                  "baseline_peak_rss_mb_512px": round(base["peak_rss_mb"], 1)}
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
