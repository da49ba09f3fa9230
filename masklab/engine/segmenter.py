"""`Segmenter`: the easy tier of the API (path / PIL / numpy in, :class:`Instances` out).

    >>> from masklab import Segmenter                      # doctest: +SKIP
    >>> seg = Segmenter()                                  # default model, device="auto"
    >>> inst = seg("photo.jpg")                            # Instances
    >>> r = seg.detect([image])[0]                         # the tutorial's dict
    >>> r["masks"].shape[-1]                               # number of objects

The model loads once, in the constructor; every call runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from masklab.errors import UsageError
from masklab.io.images import LoadedImage, load_image
from masklab.models.backend import Backend
from masklab.models.loading import LoadedModel, ModelOptions, resolve
from masklab.models.zoo import DEFAULT_MODEL, ModelSpec
from masklab.structures.instances import Instances

__all__ = ["Segmenter", "resolve_device", "configure_threads"]

_NOT_CLASSES = frozenset({"N/A", "__background__"})


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA GPU is available (use --device cpu or auto)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"device must be auto, cpu or cuda[:N], found {device!r}")
    return device


def configure_threads() -> int:
    """Use every CPU this process may run on (cgroup/affinity aware), unless ``MASKLAB_NUM_THREADS`` says."""
    import torch

    env = os.environ.get("MASKLAB_NUM_THREADS")
    try:
        n = int(env) if env else len(os.sched_getaffinity(0))
    except (AttributeError, ValueError):
        n = os.cpu_count() or 1
    n = max(1, n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class Segmenter:
    """Instance segmentation with one loaded model.

    Args:
        model: a model name (``masklab models`` lists them) or a weights file path.
        weights: a local weights file (``.pth``/``.pt`` loaded with ``weights_only=True``, or
            ``.safetensors``); default: the model's published weights (downloaded once into the cache).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        score_thresh: keep detections with score >= this, in [0, 1]; None: the model's default
            (0.5; 0.7 for ``matterport_r101_coco``, as the tutorial's DETECTION_MIN_CONFIDENCE).
        classes: keep only these class names (e.g. ``["person", "car"]``); None keeps all.
        nms_thresh, max_detections, min_size, max_size: see :class:`~masklab.models.loading.ModelOptions`.
        backend: ``"auto"`` (eager on the CPU, bit-for-bit torchvision; torch-fast on CUDA), ``"torch"``,
            ``"torch-fast"``, ``"openvino"``, ``"onnx"``, ``"torchscript"``; see :mod:`masklab.models.backends`.
            ``model`` may also be an exported file (``masklab export``), run by its own runtime.
        precision: ``"fp32"`` (exact, default), ``"bf16"``, ``"fp16"`` (reduced: only when asked for).
        rpn_post_nms_top_n: proposals kept before the box head (speed knob; default the model's 1000).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        device: str = "auto",
        score_thresh: float | None = None,
        classes: Sequence[str] | None = None,
        nms_thresh: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        rpn_post_nms_top_n: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.num_threads = configure_threads()
        self.options = ModelOptions(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections=max_detections,
            min_size=min_size,
            max_size=max_size,
            rpn_post_nms_top_n=rpn_post_nms_top_n,
        )
        self.loaded: LoadedModel = resolve(model, weights=weights, opts=self.options)
        self.spec: ModelSpec = self.loaded.spec
        #: the minimum score in force (the model's default when none was given)
        self.score_thresh = self.spec.score_thresh if score_thresh is None else float(score_thresh)
        if classes is not None:
            known = set(self.spec.categories) - {"__background__", "N/A"}
            unknown = [c for c in classes if c not in known]
            if unknown:
                raise UsageError(f"unknown class names {unknown} for model {self.spec.name!r}")
        self.classes = None if classes is None else tuple(classes)
        if self.loaded.backend_factory is not None:  # a model with its own graph (matterport's .h5)
            if backend not in ("auto", "torch") or precision != "fp32":
                raise UsageError(f"{self.spec.name} runs only with backend 'torch' at precision 'fp32'")
            self.backend: Backend = self.loaded.backend_factory(device=self.device)
        else:
            from masklab.models.backends import make_backend

            # auto: exact (fp32) and no conversion; reduced precision only when asked for.
            self.backend = make_backend(
                self.loaded,
                backend=backend,
                precision=precision,
                device=self.device,
                threads=self.num_threads if self.device == "cpu" else None,
                score_thresh=self.score_thresh,
            )
        self.precision = precision

    # -- the easy tier ------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The tutorial's ``class_names`` list (``"BG"`` first) that ``detect()``'s ``class_ids`` index."""
        return self.spec.class_names

    def __call__(self, images: Any) -> Instances | list[Instances]:
        """Segment one image (path, PIL, numpy (H, W, 3) uint8 RGB) or a list of them."""
        if isinstance(images, (list, tuple)):
            return self.predict([load_image(im) for im in images])
        return self.predict([load_image(images)])[0]

    def predict(self, images: Sequence[LoadedImage | np.ndarray]) -> list[Instances]:
        """Segment already-loaded images; one :class:`Instances` per image."""
        arrays = [im.array if isinstance(im, LoadedImage) else load_image(im).array for im in images]
        if not arrays:
            return []
        return [self._to_instances(d, a.shape[:2]) for d, a in zip(self.backend.predict(arrays), arrays)]

    def _to_instances(self, det, size_hw) -> Instances:
        cats = self.spec.categories
        labels = [cats[i] if 0 <= i < len(cats) else f"class_{i}" for i in det.class_ids.tolist()]
        inst = Instances(
            boxes=det.boxes,
            masks=det.masks,
            scores=det.scores,
            class_ids=det.class_ids,
            labels=labels,
            image_size=size_hw,
        )
        # COCO's unused ids ("N/A") are not classes: a detection there (seen with untrained heads) is dropped.
        inst = inst[np.array([lab not in _NOT_CLASSES for lab in inst.labels], bool)]
        if self.classes is not None:
            inst = inst.filter(classes=self.classes)
        return inst

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
        s, o = self.spec, self.options
        m = self.loaded.module
        rows = [
            ("MODEL", s.name),
            ("ARCHITECTURE", s.arch),
            ("BACKBONE", "resnet50 + FPN" if s.arch.startswith("torchvision") else s.arch),
            ("NUM_CLASSES", s.num_classes),
            ("CLASSES", f"{len(s.class_names) - 1} (+ BG)"),
            ("MASK_SHAPE", "28x28"),
            ("IMAGE_MIN_DIM", getattr(getattr(m, "transform", None), "min_size", (s.min_size,))[0]),
            ("IMAGE_MAX_DIM", getattr(getattr(m, "transform", None), "max_size", s.max_size)),
            ("DETECTION_MIN_CONFIDENCE", self.score_thresh),
            ("DETECTION_NMS_THRESHOLD", getattr(getattr(m, "roi_heads", None), "nms_thresh", o.nms_thresh)),
            ("DETECTION_MAX_INSTANCES", getattr(getattr(m, "roi_heads", None), "detections_per_img", o.max_detections)),
            ("CLASS_FILTER", ",".join(self.classes) if self.classes else "all"),
            ("BACKEND", f"{self.backend.name} ({self.precision})"),
            ("DEVICE", f"{self.device} ({self.num_threads} threads)" if self.device == "cpu" else self.device),
            ("WEIGHTS", self.loaded.weights_source),
        ]
        lines = ["", "Configurations:"] + [f"{k:<30}{v}" for k, v in rows] + [""]
        return "\n".join(lines)

    def settings(self) -> dict[str, Any]:
        """The resolved settings as JSON-ready values (written to ``run.json``)."""
        return {
            "model": self.spec.name,
            "arch": self.spec.arch,
            "weights": self.loaded.weights_source,
            "device": self.device,
            "threads": self.num_threads,
            "backend": self.backend.name,
            "precision": self.precision,
            "score_thresh": self.score_thresh,
            "nms_thresh": self.options.nms_thresh,
            "max_detections": self.options.max_detections,
            "min_size": self.options.min_size,
            "max_size": self.options.max_size,
            "classes": list(self.classes) if self.classes else None,
        }

    def __repr__(self) -> str:
        return f"Segmenter(model={self.spec.name!r}, device={self.device!r}, score_thresh={self.score_thresh})"
