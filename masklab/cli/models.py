"""``masklab models``: the model table with published accuracy and whether weights are cached."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    from masklab.cli.options import add_model_arguments

    p = sub.add_parser(
        "models", help="list the available models, or prepare one's fast path",
        description="List models, their published accuracy and whether their weights are cached. "
        "With --prepare MODEL: convert it once to OpenVINO (the fast exact CPU path that backend 'auto' then "
        "uses, without importing torch), e.g. while building a container image.")
    p.add_argument("--json", action="store_true", help="print model cards as JSON")
    p.add_argument("--prepare", metavar="MODEL",
                   help="model name, weights file or training run folder to prepare (with --weights and the baked "
                   "options below, as the runs that will use it pass them)")
    add_model_arguments(p, exclude=("model", "runtime", "classes", "tiling"), title="what --prepare bakes in")
    p.set_defaults(run=run)


def _prepare(args) -> int:
    import time

    from masklab import Segmenter
    from masklab.inference.threads import configure_threads
    from masklab.settings import InferenceSettings

    configure_threads()
    t0 = time.perf_counter()
    seg = Segmenter(settings=InferenceSettings.from_args(args, model=args.prepare, device="cpu", backend="torch"))
    path = seg.prepare()
    if path is None:
        print(f"{args.prepare}: nothing to prepare ({seg.runtime.name} runs it as it is)")
        return 0
    print(f"prepared {seg.spec.name} -> {path} ({time.perf_counter() - t0:.1f} s); backend 'auto' on the CPU now runs it")
    return 0


def run(args) -> int:
    if args.prepare:
        return _prepare(args)
    from masklab.models.weights import is_cached, weights_path
    from masklab.models.zoo import DEFAULT_MODEL, MODELS

    if args.json:
        print(json.dumps([{**s.card().to_json(), "cached": s.weights is not None and is_cached(s.weights)} for s in MODELS.values()], indent=2))
        return 0
    rows = [("model", "box AP", "mask AP", "weights", "tags")]
    for s in MODELS.values():
        cached = "-" if s.weights is None else ("cached" if is_cached(s.weights) else "not cached")
        name = s.name + (" (default)" if s.name == DEFAULT_MODEL else "")
        rows.append((name, str(s.published.get("box_ap", "-")), str(s.published.get("mask_ap", "-")), cached, ",".join(s.tags)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    some = next((s for s in MODELS.values() if s.weights is not None), None)
    if some is not None:
        print(f"\nweights cache: {weights_path(some.weights).parent}")
    return 0
