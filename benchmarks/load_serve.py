"""Load test of ``masklab serve``: K concurrent clients posting images for a fixed time.

    .venv/bin/python benchmarks/load_serve.py                          # starts a server (small arch, seeded random weights)
    .venv/bin/python benchmarks/load_serve.py --clients 8 --duration 60 --workers 2 --queue-size 8
    .venv/bin/python benchmarks/load_serve.py --url http://127.0.0.1:8000   # an already running server

Each client loops: POST /v1/segment with a freshly generated image (one pixel changed per request, so the
server's result cache never answers; a started server also runs with --cache-mb 0), and records latency
and status. A probe GETs /healthz every 0.25 s meanwhile: its latency shows whether the event loop stays
free while the model works. Reported: requests/s (2xx), p50/p90/p99 latency of the 2xx answers, the count
of 503s (queue full: expected only when clients > workers + queue size) and of every other failure
(status or transport error; should be 0).

Scenarios (``--scenario``, default all three, each ``--duration`` seconds with the same normal clients):
``normal``; ``slow-body``: 5 more sockets each send ``POST /v1/segment`` headers with Content-Length
100000, then 1 byte/s (reopened when the server cuts them off); ``flood``: 200 more sockets each send
one byte and then nothing (reopened when closed). For each: requests served, 503/504 counts, /healthz
p99, whether the normal clients were still served, and how many attack sockets the server cut off.

Weights: seeded random weights by default (nothing is downloaded here). Speed does not depend on the
weight values, only on the number of detections: random weights give up to --max-detections (100).
Numbers are for this machine at this moment; on a shared CPU they move with the neighbours' load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _random_small_weights(folder: Path) -> Path:
    import dataclasses

    import torch

    from masklab.models.loading import build_module
    from masklab.models.zoo import get_spec

    spec = dataclasses.replace(get_spec("small"), categories=("__background__", "a", "b", "c"))
    torch.manual_seed(99)
    path = folder / "small_random.pth"
    torch.save(build_module(spec).state_dict(), path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args, folder: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    weights = args.weights or (None if args.model else str(_random_small_weights(folder)))
    port = _free_port()
    cmd = [sys.executable, "-m", "masklab", "serve", "--port", str(port), "--model", args.model or weights,
           "--device", args.device, "--min-size", str(args.min_size), "--max-size", str(args.max_size),
           "--workers", str(args.workers), "--queue-size", str(args.queue_size), "--cache-mb", "0"]  # fmt: skip
    if args.model and args.weights:
        cmd += ["--weights", args.weights]
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{(folder / 'server.log').read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > 300:
            proc.kill()
            sys.exit("server not ready after 300 s")
        time.sleep(0.2)
    print(f"server ready in {time.monotonic() - t0:.1f} s (model load + warm-up)", file=sys.stderr)
    return proc, url


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _client(url: str, base: np.ndarray, seed: int, stop: float, out: list) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=120) as http:
        while time.monotonic() < stop:
            img = base.copy()
            img[rng.integers(0, img.shape[0]), rng.integers(0, img.shape[1])] = rng.integers(0, 255, 3)
            body = _png(img)
            t = time.perf_counter()
            try:
                r = http.post(f"{url}/v1/segment", content=body, headers={"content-type": "image/png"})
                status = r.status_code
                if status == 200:
                    r.json()
            except httpx.HTTPError as e:
                status = type(e).__name__
            out.append((status, time.perf_counter() - t))


def _probe(url: str, stop: float, out: list) -> None:
    import httpx

    with httpx.Client(timeout=30) as http:
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                ok = http.get(f"{url}/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((ok, time.perf_counter() - t))
            time.sleep(0.25)


def _slow_bodies(port: int, stop: float, n: int, counts: Counter) -> None:
    """``n`` sockets trickling a 100000-byte body at 1 byte/s; each one the server cuts off is reopened."""

    def opened() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        s.setblocking(False)
        return s

    socks = [opened() for _ in range(n)]
    while time.monotonic() < stop:
        for i, s in enumerate(socks):
            try:
                s.send(b"x")
                if s.recv(64):  # an answer (408): the server cut the trickle off
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                counts["cut_off"] += 1
                s.close()
                socks[i] = opened()
        time.sleep(1.0)
    for s in socks:
        s.close()


def _flood(port: int, stop: float, n: int, counts: Counter) -> None:
    """``n`` sockets that each send one byte and then nothing; each one the server closes is reopened."""

    def opened() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        s.send(b"G")
        s.setblocking(False)
        return s

    socks = [opened() for _ in range(n)]
    while time.monotonic() < stop:
        for i, s in enumerate(socks):
            try:
                if s.recv(64) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                counts["cut_off"] += 1
                s.close()
                socks[i] = opened()
        time.sleep(0.2)
    for s in socks:
        s.close()


def _run_scenario(url: str, base: np.ndarray, args, scenario: str) -> dict:
    """Normal clients and the /healthz probe for ``args.duration`` s, alongside the scenario's attackers."""
    stop = time.monotonic() + args.duration
    results: list = []
    probes: list = []
    attack: Counter = Counter()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    threads = [threading.Thread(target=_client, args=(url, base, i, stop, results)) for i in range(args.clients)]
    threads.append(threading.Thread(target=_probe, args=(url, stop, probes)))
    if scenario == "slow-body":
        threads.append(threading.Thread(target=_slow_bodies, args=(port, stop, 5, attack)))
    elif scenario == "flood":
        threads.append(threading.Thread(target=_flood, args=(port, stop, 200, attack)))
    t0 = time.monotonic()
    for t in threads[::-1]:  # attackers first
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    statuses = Counter(s for s, _ in results)
    ok = np.array([d for s, d in results if s == 200])
    probe_lat = np.array([d for _, d in probes])
    return {
        "scenario": scenario,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": len(results),
        "ok": int(len(ok)),
        "normal_clients_served": bool(len(ok)),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "latency_p50_s": round(float(np.percentile(ok, 50)), 3) if len(ok) else None,
        "latency_p90_s": round(float(np.percentile(ok, 90)), 3) if len(ok) else None,
        "latency_p99_s": round(float(np.percentile(ok, 99)), 3) if len(ok) else None,
        "status_503": statuses.get(503, 0),
        "status_504": statuses.get(504, 0),
        "other_errors": {str(k): v for k, v in statuses.items() if k not in (200, 503, 504)},
        "healthz_probes": len(probes),
        "healthz_failures": int(sum(not ok_ for ok_, _ in probes)),
        "healthz_p99_s": round(float(np.percentile(probe_lat, 99)), 4) if len(probe_lat) else None,
        "attack_sockets_cut_off": attack["cut_off"],
    }


SCENARIOS = ("normal", "slow-body", "flood")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="an already running server (default: start one)")
    p.add_argument("--clients", "-k", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: 60)")
    p.add_argument("--size", default="240x320", help="image HxW (default: 240x320)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="normal, slow-body or flood; repeatable "
                   "(default: all three, one after the other)")
    g = p.add_argument_group("server started by this script")
    g.add_argument("--model", default=None, help="model name (default: the small architecture with random weights)")
    g.add_argument("--weights", default=None, help="weights file")
    g.add_argument("--device", default="cpu")
    g.add_argument("--min-size", type=int, default=256)
    g.add_argument("--max-size", type=int, default=384)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--queue-size", type=int, default=4)
    g.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # not "tests.": a package of that name
    from conftest import make_scene  # ships inside some wheels (label-studio-converter) and would shadow ours

    h, w = (int(v) for v in args.size.lower().split("x"))
    base = make_scene(h, w, seed=7)
    tmp = tempfile.TemporaryDirectory(prefix="masklab-load-")
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_server(args, Path(tmp.name))
    try:
        runs = [_run_scenario(url, base, args, sc) for sc in (args.scenario or SCENARIOS)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()
    report = {
        "image_hw": [h, w],
        "cpu_count": os.cpu_count(),
        "server": url if args.url else f"started: workers={args.workers} queue={args.queue_size} device={args.device}",
        "scenarios": runs,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(r["other_errors"] or r["healthz_failures"] or not r["normal_clients_served"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
