"""The cold-start process: ``python -m masklab.bench.child SETTINGS_JSON IMAGE STARTED``.

Builds a Segmenter from ``SETTINGS_JSON`` (:meth:`InferenceSettings.to_json`), segments ``IMAGE`` once,
the ``masklab segment one.jpg`` path, and prints one JSON line: ``import_s``, ``load_s``,
``first_image_s``, ``total_s`` (seconds) and ``peak_rss_mb`` (this process's own peak resident memory).

``STARTED`` is the parent's ``time.monotonic()`` when it started this process (CLOCK_MONOTONIC is one
clock for every process of the machine): ``python -m`` imports masklab before this module runs, so
``import_s`` counts from there, interpreter start-up included.
"""

from __future__ import annotations

import json
import sys
import time

from masklab import Segmenter
from masklab.inference.threads import configure_threads
from masklab.settings import InferenceSettings

__all__ = ["main", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB.

    ``ru_maxrss`` would be wrong here: Linux carries it over fork + exec, so a child of a 4 GB bench
    process reports >= 4 GB. ``VmHWM`` belongs to the address space, which exec replaces: the child's own
    peak. (``ru_maxrss`` only where there is no ``/proc``.)
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    settings_json, image, started = sys.argv[1:] if argv is None else argv
    t0, t1 = float(started), time.monotonic()
    configure_threads()  # this process is an entry point: it sets its threads as `masklab segment` does
    seg = Segmenter(settings=InferenceSettings.from_json(json.loads(settings_json)))
    t2 = time.monotonic()
    seg(image)
    t3 = time.monotonic()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_image_s": t3 - t2, "total_s": t3 - t0,
                      "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
