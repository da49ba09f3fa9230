"""`Segmenter`: the easy tier of the API (path / PIL / numpy in, :class:`Instances` out).

    >>> from masklab import Segmenter                      # doctest: +SKIP
    >>> seg = Segmenter()                                  # default model, device="auto"
    >>> inst = seg("photo.jpg")                            # Instances
    >>> r = seg.detect([image])[0]                         # the tutorial's dict
    >>> r["masks"].shape[-1]                               # number of objects

The model loads once, in the constructor; every call runs under ``torch.inference_mode()``. The
options are one :class:`~masklab.settings.InferenceSettings` (``Segmenter(settings=...)``), or its fields
as keywords (the easy tier); ``seg.inference`` holds what is in force, model defaults filled in.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from masklab.errors import UsageError
from masklab.hardware import cpu_features
from masklab.inference.refine import refined_masks
from masklab.inference.threads import configure_threads, resolve_device
from masklab.inference.tiling import TILE_BATCH, predict_tiled, resolve_tile
from masklab.io.formats.common import NOT_CLASSES
from masklab.io.images import LoadedImage, load_image
from masklab.models.card import ModelCard
from masklab.models.loading import LoadedModel, load_model
from masklab.models.source import find_source
from masklab.models.zoo import ModelSpec
from masklab.runtime import Runtime, make_runtime, prepare, resolve_precision, worth_preparing
from masklab.runtime.prepared import note, openvino_installed, prepared_model
from masklab.settings import MODEL_OPTIONS, InferenceSettings
from masklab.structures.instances import Instances
from masklab.structures.quality import detection_quality

if TYPE_CHECKING:
    from masklab.inference.explain import Trace

__all__ = ["Segmenter", "DENSE_MASK_BYTES"]

#: tiled results keep dense (N, H, W) masks, as every untiled result, up to this many bytes; above it
#: (huge images, many objects) ``Instances.masks`` is a :class:`~masklab.structures.cropped.CroppedMasks`
DENSE_MASK_BYTES = 512 * 2**20

#: options a loaded segmenter can change per call (:meth:`Segmenter.with_options`): how images are cut, not the network
PER_CALL_OPTIONS = ("tile", "tile_overlap", "tile_full_pass")
_FIELDS = tuple(f.name for f in fields(InferenceSettings))
#: older keyword names still accepted (torchvision's)
_ALIASES = {"rpn_post_nms_top_n": "proposals"}
#: runs of at least this many images compile OpenVINO for throughput (:meth:`Segmenter.plan`)
THROUGHPUT_FROM_IMAGES = 4


def _settings_from(model, settings: InferenceSettings | None, keywords: dict[str, Any]) -> InferenceSettings:
    """``settings`` (or the defaults) with ``model`` and the keyword overrides applied."""
    changes = {}
    for key, value in keywords.items():
        name = _ALIASES.get(key, key)
        if name not in _FIELDS:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"Segmenter() got an unknown option {key!r}{hint} (options: {', '.join(_FIELDS)})")
        if value is not None:
            changes[name] = value
    if model is not None:
        changes["model"] = os.fspath(model)
    base = settings if settings is not None else InferenceSettings()
    return base.replace(**changes) if changes else base


class Segmenter:
    """Instance segmentation with one loaded model.

    Args:
        model: a model name (``masklab models`` lists them), a weights / exported / ``.h5`` file or a
            training run folder; default: ``settings.model`` (``maskrcnn_resnet50_fpn_v2``).
        settings: every option at once (:class:`~masklab.settings.InferenceSettings`); keywords override it.
        **options: any :class:`~masklab.settings.InferenceSettings` field: ``weights``, ``device``
            (``"auto"``, ``"cpu"``, ``"cuda"``), ``backend`` (``"auto"``: eager on the CPU, torch-fast on
            CUDA; ``"torch"``, ``"torch-fast"``, ``"openvino"``, ``"onnx"``, ``"torchscript"``),
            ``precision`` (``"fp32"`` exact; ``"bf16"``/``"fp16"`` only when asked for), ``score_thresh``
            (None: the model's, 0.5; 0.7 for ``matterport_r101_coco``), ``classes`` (names to keep),
            ``nms_thresh``, ``max_detections``, ``proposals`` (``rpn_post_nms_top_n`` is accepted too),
            ``min_size``, ``max_size``, ``threads`` (set torch's CPU threads; None leaves them as they are),
            ``tile`` (None: off; SIZE, ``(w, h)`` or ``"auto"``: tiled inference, see
            :mod:`masklab.inference.tiling`), ``tile_overlap`` (fraction, 0.2), ``tile_full_pass``.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, settings: InferenceSettings | None = None,
                 **options: Any) -> None:
        asked = _settings_from(model, settings, options)
        device = resolve_device(asked.device)
        if asked.threads is not None and device == "cpu":
            configure_threads(asked.threads)  # asked for explicitly: the caller's choice, not a side effect
        asked = asked.replace(precision=resolve_precision(asked.precision, device=device, strict=asked.strict_precision))
        source = find_source(asked.model, asked.weights)
        candidate = _candidate(asked, source) if device == "cpu" and asked.backend in ("auto", "openvino") else None
        found = _found(candidate, asked.precision) if openvino_installed() else None
        self.loaded: LoadedModel = load_model(asked, source=source, prepared=found)
        self.card: ModelCard = self.loaded.card
        self.spec: ModelSpec = self.loaded.spec
        self.card.check_classes(asked.classes)
        #: the settings in force: the model's defaults filled in, the device resolved
        self.inference: InferenceSettings = asked.replace(device=device).with_model_defaults(self.card.defaults())
        if self.card.precision == "int8" and self.inference.precision == "fp32":  # an int8 file runs at int8
            self.inference = self.inference.replace(precision="int8")
        self.runtime: Runtime = make_runtime(self.loaded, self.inference, device=device)
        self._planned: int | None = None  # images still to come in this run (plan()), for auto's decision
        self._plan_calls = 0  # eager calls since plan(): the first is warm-up, the second is timed
        self._refit_streams = False  # end_run() after a throughput run: recompile for latency on the next image
        self._asked = asked  # what the user named: the prepare command the first eager call prints
        self._preparable = candidate is not None  # decided once: the weights are hashed (memoised) only here

    # -- the fast path (see masklab.runtime: backend "auto") ------------------------------------------------
    @property
    def eager_by_default(self) -> bool:
        """True when ``backend="auto"`` runs eager torch on the CPU because no prepared model exists yet
        (and one could be made): :meth:`prepare` would make this segmenter faster."""
        o = self.inference
        return (o.backend == "auto" and self.device == "cpu" and o.precision == "fp32" and self.loaded.prepared is None
                and self.runtime.name == "torch" and self._preparable)

    def prepare(self) -> Path | None:
        """Convert the model to OpenVINO once (cached; a second call, or another process with the same
        weights and options, finds it) and, under ``backend="auto"`` on the CPU, switch to it. Returns the
        prepared file (matterport's port: its export folder), or None for what masklab does not convert
        (exported files; no OpenVINO installed)."""
        if self.loaded.prepared is not None:
            return self.loaded.prepared
        if self.loaded.module is None or not openvino_installed():
            return None
        if self.spec.arch == "matterport_resnet101":  # its own export (three networks); auto finds it next time
            from masklab.runtime.matterport_ov import prepared_export

            path = Path(prepared_export(self.loaded.module))
            if self.inference.backend == "auto" and self.device == "cpu" and self.inference.precision == "fp32":
                self.runtime = make_runtime(self.loaded, self.inference, device=self.device)
            return path
        self.loaded = dataclasses.replace(self.loaded, prepared=prepare(self.loaded, "openvino"))
        if self.inference.backend == "auto" and self.device == "cpu" and self.inference.precision != "int8":
            self.runtime = make_runtime(self.loaded, self.inference, device=self.device)
        return self.loaded.prepared

    def plan(self, *, images: int) -> None:
        """Tell the segmenter how many images this run will give it. Under ``backend="auto"`` with no
        prepared model, after the second call (timed: the first pays the runtime's warm-up, which would
        make the model look slower than it is) it prepares one when the rest of the run repays the
        conversion (:func:`masklab.runtime.worth_preparing`), and says so."""
        self._planned = images if self.eager_by_default and openvino_installed() else None
        self._plan_calls = 0
        # a run straight after another (no single image between): the last run's pending switch back to
        # latency must not fire on this run's first image
        self._refit_streams = False
        self._fit_streams(images)

    def end_run(self) -> None:
        """The run that :meth:`plan` announced is over: the next image gets the lowest latency again (the
        recompile waits for that image: a command that ends with the run never pays it)."""
        self._refit_streams = getattr(self.runtime, "throughput", False)

    def _fit_streams(self, images: int) -> None:
        """An OpenVINO runtime compiled for throughput (more streams) while a run of at least
        :data:`THROUGHPUT_FROM_IMAGES` images lasts, for latency otherwise (a recompile: ~0.2 s from
        OpenVINO's cache and ~0.5 s more on each stream's first image, against 2-5 % more images per
        second on 2 cores and one image per 4 cores in parallel on larger machines)."""
        switch = getattr(self.runtime, "for_throughput", None)  # OpenVINO's (CPU) runtime only
        if switch is not None:
            self.runtime = switch(images >= THROUGHPUT_FROM_IMAGES)

    def _after_eager(self, n: int, seconds: float) -> None:
        if not self.eager_by_default:  # prepared meanwhile (a large tiled image does it mid-image)
            self._planned = None
            return
        self._planned -= n
        self._plan_calls += 1
        if self._plan_calls < 2 and self._planned > 0:
            return  # the warm-up call: decide on the next one
        left, self._planned = self._planned, None  # decided once
        self._prepare_if_repaid(left, seconds / max(n, 1), unit="images")

    def _switch_mid_image(self, tiles_left: int, seconds_per_tile: float) -> Runtime | None:
        """A tiled image is a run of its own: after its first tiles, prepare the fast path when the
        remaining tiles repay the conversion (the same rule as :meth:`plan`'s); the new runtime, or None."""
        if self._prepare_if_repaid(tiles_left, seconds_per_tile, unit="tiles"):
            return self.runtime if self.runtime.name != "torch" else None
        return None

    def _prepare_if_repaid(self, left: int, seconds_each: float, *, unit: str) -> bool:
        """Prepare the fast path when ``left`` more inputs at ``seconds_each`` eagerly repay the conversion
        (:func:`masklab.runtime.worth_preparing`), saying so; whether it did."""
        if left <= 0 or not worth_preparing(images=left, seconds_per_image=seconds_each):
            return False
        note(f"{left} more {unit} at {seconds_each:.2f} s each: preparing the fast path first")
        self.prepare()
        return True

    @property
    def device(self) -> str:
        return self.inference.device

    @property
    def score_thresh(self) -> float:
        """The minimum score in force (the model's default when none was given)."""
        return self.inference.score_thresh

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.inference.classes

    @property
    def precision(self) -> str:
        return self.inference.precision

    @property
    def concurrency(self) -> int:
        """How many :meth:`predict` calls may usefully run at once from different threads (the runtime's:
        OpenVINO has a request per stream plus one; eager torch 1, as it uses every core itself)."""
        return max(1, int(getattr(self.runtime, "concurrency", 1)))

    @property
    def backend(self) -> Runtime:
        """The runtime (same object as :attr:`runtime`; kept for code written against older masklab)."""
        return self.runtime

    @property
    def num_threads(self) -> int | None:
        """CPU threads the runtime uses now (None on CUDA): torch's setting for torch runtimes, else the
        runtime's own (OpenVINO / ONNX Runtime)."""
        if self.device != "cpu":
            return None
        threads = getattr(self.runtime, "threads", None)
        if threads:
            return int(threads)
        import torch

        return torch.get_num_threads()

    # -- the easy tier ------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The tutorial's ``class_names`` list (``"BG"`` first) that ``detect()``'s ``class_ids`` index."""
        return self.spec.class_names

    def __call__(self, images: Any) -> Instances | list[Instances]:
        """Segment one image (path, PIL, numpy (H, W, 3) uint8 RGB) -> its Instances, or several (a list,
        a (N, H, W, 3) array) -> a list (:func:`_as_images` tells them apart)."""
        many, alone = _as_images(images)
        out = self.predict(many)
        return out[0] if alone else out

    def predict(self, images: Sequence[Any] | Any) -> list[Instances]:
        """Segment images; one :class:`Instances` per image, in order.

        ``images``: a list of images (paths, numpy RGB uint8 (H, W, 3) or (H, W) arrays, PIL images,
        :class:`~masklab.io.images.LoadedImage`), or a (N, H, W, 3) array. One image given alone (an
        (H, W[, C]) array, a path, a PIL image) is segmented as a list of one, so ``predict(image)[0]``
        is its result (iterating an array would otherwise take its rows for images)."""
        if self._refit_streams:
            self._refit_streams = False
            self._fit_streams(0)
        arrays = [im.array if isinstance(im, LoadedImage) else load_image(im).array for im in _as_images(images)[0]]
        if not arrays:
            return []
        t0 = time.perf_counter()
        if self.inference.tile is not None:
            out = [self._predict_tiled(a) for a in arrays]
        else:
            out = [self._to_instances(d, a.shape[:2], image=a) for d, a in zip(self.runtime.predict(arrays), arrays)]
        if self._planned is not None:
            self._after_eager(len(arrays), time.perf_counter() - t0)
        if self.runtime.name == "torch" and self.eager_by_default:  # said once per model and process
            _say_how_to_prepare(self._asked, self.spec.name)
        return out

    def with_options(self, **changes: Any) -> Segmenter:
        """A segmenter sharing this one's loaded model and runtime, with other :data:`PER_CALL_OPTIONS`
        (tiling: ``tile``, ``tile_overlap``, ``tile_full_pass``), e.g. for one web request. Options that
        shape the network itself need a new :class:`Segmenter`."""
        bad = sorted(set(changes) - set(PER_CALL_OPTIONS))
        if bad:
            raise UsageError(f"{bad} cannot change per call (they are built into the model); per call: {', '.join(PER_CALL_OPTIONS)}")
        other = copy.copy(self)
        other.inference = self.inference.replace(**changes)
        return other

    def tile_for(self, size_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The tile ``(w, h)`` this segmenter uses for an image of ``size_hw``, or None (one pass)."""
        o = self.inference
        stats = self.card.data_stats or {}
        native = None
        if stats.get("image_short_side_px"):  # trained with masklab: objects at their training scale
            native = stats["image_short_side_px"] * o.min_size / self.card.min_size
        return resolve_tile(o.tile, image_hw=size_hw, min_size=o.min_size, max_size=o.max_size, native_side=native)

    def _predict_tiled(self, array: np.ndarray) -> Instances:
        tile = self.tile_for(array.shape[:2])
        if tile is None:  # auto, and the model would not shrink this image: one pass, as untiled
            return self._to_instances(self.runtime.predict([array])[0], array.shape[:2], image=array)
        o = self.inference
        batch = TILE_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]
        switch = self._switch_mid_image if self.eager_by_default and openvino_installed() else None
        det = predict_tiled(self.runtime, array, tile_wh=tile, overlap=o.tile_overlap, full_pass=o.tile_full_pass,
                            batch=batch, switch=switch)
        inst = self._to_instances(det, array.shape[:2])
        return inst.dense() if inst.masks.size <= DENSE_MASK_BYTES else inst

    def _to_instances(self, det, size_hw, *, image: np.ndarray | None = None) -> Instances:
        cats = self.spec.categories
        labels = [cats[i] if 0 <= i < len(cats) else f"class_{i}" for i in det.class_ids.tolist()]
        inst = Instances(
            boxes=det.boxes,
            masks=refined_masks(det, image, self.inference) if image is not None else det.masks,
            scores=det.scores,
            class_ids=det.class_ids,
            labels=labels,
            image_size=size_hw,
            quality=detection_quality(det),
        )
        if self.inference.min_quality is not None:
            if inst.quality is None:
                raise UsageError(f"min_quality: the {self.runtime.name} runtime gives no mask quality to filter on")
            inst = inst.filter(min_quality=self.inference.min_quality)
        # COCO's unused ids ("N/A") are not classes: a detection there (seen with untrained heads) is dropped.
        keep = np.array([lab not in NOT_CLASSES for lab in inst.labels], bool)
        if not keep.all():  # indexing copies every mask: only when something goes
            inst = inst[keep]
        if self.classes is not None:
            inst = inst.filter(classes=self.classes)
        return inst

    def explain(self, image: Any) -> Trace:
        """One image (path, PIL, numpy (H, W, 3) uint8 RGB) through the model stage by stage: the input
        tensor, feature maps, anchors, RPN, RoIAlign crops, box head, 28x28 masks (see
        :mod:`masklab.inference.explain`). ``trace.instances`` equals ``seg(image)``: the pass is this
        segmenter's own eager runtime with hooks on its modules (another runtime: the eager torch module
        of the same weights, as ``trace.note`` says)."""
        from masklab.inference.explain import build_trace, explain_runtime, record

        array = load_image(image).array
        loaded = self.loaded
        if loaded.module is None and loaded.prepared is not None:  # running prepared: the same weights, eager
            loaded = load_model(loaded.settings or self.inference, source=loaded.source)
        runtime, note = explain_runtime(self.runtime, loaded, device=self.device)
        stages = record(runtime, array)
        inst = self._to_instances(stages.detections, array.shape[:2])
        return build_trace(stages, instances=inst, model=self.spec.name, categories=self.spec.categories, note=note)

    def detect(self, images: Sequence[Any], verbose: int = 0) -> list[dict[str, np.ndarray]]:
        """The tutorial's ``model.detect(images)``: one dict per image with ``rois`` int32 (N, 4)
        ``y1, x1, y2, x2``; ``masks`` bool (H, W, N); ``class_ids`` int32 (N,) indexing
        :attr:`class_names`; ``scores`` float32 (N,)."""
        if not isinstance(images, (list, tuple)):
            raise UsageError("detect() takes a list of images, as the tutorial's model.detect([image])")
        results = []
        for i, inst in enumerate(self.predict(images)):
            if verbose:
                print(f"Processing image {i}: {inst.image_size[0]}x{inst.image_size[1]}, {len(inst)} objects")
            results.append(inst.to_mrcnn(self.class_names))
        return results

    def describe(self) -> str:
        """The settings, one per line (like the tutorial's ``config.display()``)."""
        s, o = self.spec, self.inference
        rows = [
            ("MODEL", s.name),
            ("ARCHITECTURE", s.arch),
            ("BACKBONE", "resnet50 + FPN" if s.arch.startswith("torchvision") else s.arch),
            ("NUM_CLASSES", s.num_classes),
            ("CLASSES", f"{len(s.class_names) - 1} (+ BG)"),
            ("MASK_SHAPE", "28x28"),
            ("IMAGE_MIN_DIM", o.min_size),
            ("IMAGE_MAX_DIM", o.max_size),
            ("DETECTION_MIN_CONFIDENCE", o.score_thresh),
            ("DETECTION_NMS_THRESHOLD", o.nms_thresh),
            ("DETECTION_MAX_INSTANCES", o.max_detections),
            ("POST_NMS_ROIS_INFERENCE", o.proposals),
            ("CLASS_FILTER", ",".join(o.classes) if o.classes else "all"),
            ("BACKEND", f"{o.backend} -> {self.runtime.name} ({o.precision})"),
            ("DEVICE", f"{self.device} ({self.num_threads} threads)" if self.device == "cpu" else self.device),
            ("CPU", cpu_features().describe()),
            ("PREPARED", str(self.loaded.prepared) if self.loaded.prepared else "no (masklab models --prepare)"),
            ("WEIGHTS", self.loaded.weights_source),
        ]
        lines = ["", "Configurations:"] + [f"{k:<30}{v}" for k, v in rows] + [""]
        return "\n".join(lines)

    def settings(self) -> dict[str, Any]:
        """The resolved settings as JSON-ready values (``run.json``'s settings block)."""
        doc = self.inference.to_run_json(self.card, weights_source=self.loaded.weights_source)
        doc["threads"] = self.num_threads
        return doc

    def __repr__(self) -> str:
        return f"Segmenter(model={self.spec.name!r}, device={self.device!r}, score_thresh={self.score_thresh})"


def _candidate(settings: InferenceSettings, source):
    """The :class:`~masklab.runtime.prepared.PreparedModel` that could serve ``settings`` (existing or not),
    or None (a model masklab does not convert; an unreadable weights file or cache)."""
    try:
        return prepared_model(settings, source=source)
    except OSError:
        return None


def _found(candidate, precision: str) -> Path | None:
    """The file that runs ``precision`` when the cache has it: the fp32 IR (also run at bf16/fp16), or for
    int8 the model ``masklab quantize`` made beside it."""
    from masklab.export.quantize import quantized_path

    if candidate is None:
        return None
    try:
        if precision != "int8":
            return candidate.path if candidate.exists else None
        int8 = quantized_path(candidate.path)
        return int8 if int8.is_file() else None
    except OSError:  # an unreadable cache: run as if nothing were prepared
        return None


_TOLD: set[str] = set()


def _say_how_to_prepare(settings: InferenceSettings, name: str) -> None:
    """One line, once per model and process: how to get the fast path (the exact command)."""
    flags = [f"--weights {settings.weights}"] if settings.weights else []
    flags += [f"--{k.replace('_', '-')} {getattr(settings, k)}" for k in MODEL_OPTIONS if getattr(settings, k) is not None]
    command = " ".join(["masklab models --prepare", settings.model, *flags])
    if command in _TOLD:
        return
    _TOLD.add(command)
    why = "" if openvino_installed() else " (needs OpenVINO: pip install openvino)"
    note(f"running {name} on eager torch; `{command}` once makes the fast path (OpenVINO, same instances, "
         f"1.4-1.7x faster on 2-core Zen 4 and Xeon CPUs){why}")


def _as_images(images: Any) -> tuple[list[Any], bool]:
    """``(images as a list, whether one image was given alone)``. Several: a list, a tuple, an iterator,
    or a (N, H, W, C) array; anything else (a path, bytes, a PIL image, an (H, W[, C]) array, a
    LoadedImage) is one image, so an array's rows are never taken for images."""
    if isinstance(images, (list, tuple, Iterator)) or (isinstance(images, np.ndarray) and images.ndim == 4):
        return list(images), False
    return [images], True
