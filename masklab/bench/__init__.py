"""``masklab bench``: backends, precisions and speed knobs side by side, in one process.

Every case is a :class:`~masklab.Segmenter` built from the case's
:class:`~masklab.settings.InferenceSettings` (so the timed path is the user's path: image in,
:class:`~masklab.structures.instances.Instances` out, masks pasted), except the ``torchvision``
baseline, whose runtime calls the torchvision module itself (``model([image])`` + mask threshold).

Per case, the table reports:

- median and p90 latency over ``repeat`` timed runs per image (after one warm-up run), images/s; the
  timed runs are interleaved (round r runs every case), so load changes on a shared machine hit all
  cases alike (:mod:`~masklab.bench.timing`);
- ``GFLOP``: arithmetic per image (2 x multiply-adds, counted with ``torch.utils.flop_counter`` on the
  eager torch model with the case's options), achieved GFLOP/s, and that as a share of the measured
  machine peak (matmul/conv microbenchmark) for the case's precision (:mod:`~masklab.bench.flops`);
- agreement with the first case (the fp32 reference): share of reference instances matched by an
  instance of the same class with mask IoU >= 0.9, and the largest box (px) and score deltas over the
  matched pairs (:mod:`~masklab.bench.agreement`);
- cold start and peak memory: a fresh ``python -m masklab.bench.child`` process that imports masklab,
  builds the Segmenter and segments one image (its own peak, ``VmHWM``), unless ``cold=False``
  (:mod:`~masklab.bench.cold`).

Measurements on a shared CPU are noisy: compare ratios within one run and repeat runs.
"""

from masklab.bench.agreement import agreement, match_instances
from masklab.bench.cases import BASELINE, KNOBS, BenchCase, build_case, default_cases, parse_case
from masklab.bench.cold import cold_start
from masklab.bench.flops import count_gflop, measure_peaks
from masklab.bench.images import generated_images
from masklab.bench.report import BenchReport, BenchRow, format_table, machine_info
from masklab.bench.run import run_bench
from masklab.bench.timing import latency_stats, postprocess_cost, timed_rounds

__all__ = [
    "BASELINE",
    "KNOBS",
    "BenchCase",
    "BenchRow",
    "BenchReport",
    "parse_case",
    "default_cases",
    "build_case",
    "generated_images",
    "match_instances",
    "agreement",
    "measure_peaks",
    "count_gflop",
    "postprocess_cost",
    "timed_rounds",
    "latency_stats",
    "cold_start",
    "machine_info",
    "run_bench",
    "format_table",
]
