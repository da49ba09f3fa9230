"""``masklab models``: the model table with published accuracy and whether weights are cached, then the
models shipped inside masklab (``shapes_demo``, the offline demo model)."""

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
    p.add_argument("--verify", action="store_true",
                   help="re-hash every cached weights file against the digest recorded at its first verification "
                   "(exit 3 if any is corrupt)")
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


def _bundled_cards() -> list[tuple[str, object]]:
    """``(name, card)`` of each bundled model, its card read from the file beside its weights."""
    from masklab.models.source import read_card_file
    from masklab.models.zoo import BUNDLED, bundled_model

    return [(name, read_card_file(bundled_model(name).with_suffix(".json"))) for name in BUNDLED]


def _pct(v) -> str:
    """A card score (a fraction) in the table's units (percent, as the published COCO APs)."""
    return "-" if v is None else f"{100 * float(v):.1f}"


def _verify() -> int:
    from masklab.models.weights import verify_cache, weights_path
    from masklab.models.zoo import MODELS

    specs = {s.weights.filename: s.weights for s in MODELS.values() if s.weights is not None}
    results = verify_cache(specs.values())
    for name, problem in results.items():
        print(f"{'ok     ' if problem is None else 'CORRUPT'}  {weights_path(specs[name])}" + (f": {problem}" if problem else ""))
    bad = [n for n, p in results.items() if p is not None]
    print(f"{len(results)} cached weights files checked, {len(bad)} corrupt"
          + (": delete them and run again (they are downloaded anew), or copy them from their URLs" if bad else ""))
    return 3 if bad else 0  # 3: those models' weights are unavailable (masklab.errors.WeightsUnavailableError)


def _cache_column(spec) -> str:
    from masklab.models.weights import cache_problem

    if spec.weights is None:
        return "-"
    problem = cache_problem(spec.weights)
    return "cached" if problem is None else ("not cached" if problem == "not cached" else "CORRUPT (masklab models --verify)")


def run(args) -> int:
    if args.prepare:
        return _prepare(args)
    if args.verify:
        return _verify()
    from masklab.models.weights import is_cached, weights_path
    from masklab.models.zoo import DEFAULT_MODEL, MODELS, bundled_model

    bundled = _bundled_cards()
    if args.json:
        docs = [{**s.card().to_json(), "cached": s.weights is not None and is_cached(s.weights)} for s in MODELS.values()]
        # "weights" describes a download; a bundled model has none: "bundled" is its file in the package
        docs += [{**card.to_json(), "name": name, "weights": None, "bundled": str(bundled_model(name))}
                 for name, card in bundled]
        print(json.dumps(docs, indent=2))
        return 0
    rows = [("model", "box AP", "mask AP", "weights", "tags")]
    for s in MODELS.values():
        cached = _cache_column(s)
        name = s.name + (" (default)" if s.name == DEFAULT_MODEL else "")
        rows.append((name, str(s.published.get("box_ap", "-")), str(s.published.get("mask_ap", "-")), cached, ",".join(s.tags)))
    for name, card in bundled:
        rows.append((name, _pct(card.metrics.get("box_ap")), _pct(card.metrics.get("mask_ap")), "bundled", "demo,offline"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for name, card in bundled:
        classes = ", ".join(c for c in card.categories if c != "__background__")
        print(f"\n{name}: the offline demo model, shipped with masklab ({classes}; AP on its own synthetic val set); "
              f"works without network: masklab segment IMAGES --model {name}\n  file: {bundled_model(name)}")
    some = next((s for s in MODELS.values() if s.weights is not None), None)
    if some is not None:
        print(f"\nweights cache: {weights_path(some.weights).parent}")
    return 0
