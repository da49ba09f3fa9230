"""``masklab models``: the model table with published accuracy and whether weights are cached."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the available models", description="List models, their published accuracy and whether their weights are cached.")
    p.add_argument("--json", action="store_true", help="print model cards as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
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
