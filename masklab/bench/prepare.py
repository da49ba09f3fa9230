"""The preparing process: ``python -m masklab.bench.prepare SETTINGS_JSON HxW``.

Makes what a case runs and a user makes once beforehand (``masklab models --prepare``: the OpenVINO
conversion an ``auto`` case runs; the int8 model of an int8 case, calibrated on generated images), in a
process of its own, so that the bench process times every case in the same state whether or not the cache
was warm. Converting or calibrating in the bench process itself changed the eager torchvision reference
by 25 % (3.95 s instead of 5.16-5.28 s, idle 2-core Zen 4): the hundreds of large tensors they allocate
and free leave glibc's heap grown and its mmap threshold raised, so eager torch's later allocations no
longer fault in fresh pages. A user's torchvision process does not start that way.
"""

from __future__ import annotations

import json
import sys

from masklab.bench.cases import BenchCase, prepare_case
from masklab.settings import InferenceSettings

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from masklab import Segmenter

    settings = InferenceSettings.from_json(json.loads(argv[0]))
    h, w = (int(v) for v in argv[1].split("x"))
    case = prepare_case(BenchCase(settings), size_hw=(h, w), say=lambda msg: print(f"bench: {msg}", file=sys.stderr))
    if case.settings.backend == "auto":
        seg = Segmenter(settings=case.settings)
        if seg.eager_by_default:
            seg.prepare()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
