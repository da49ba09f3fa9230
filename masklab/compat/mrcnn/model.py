"""matterport's ``MaskRCNN`` model class for inference, running a masklab :class:`~masklab.Segmenter`.

    model = modellib.MaskRCNN(mode="inference", model_dir=MODEL_DIR, config=config)
    model.load_weights(COCO_MODEL_PATH, by_name=True)
    r = model.detect([image], verbose=1)[0]     # rois, masks, class_ids, scores

``load_weights`` recognises what the file holds from its content through
:func:`masklab.models.loading.resolve` (torchvision Mask R-CNN v1/v2 or small state dicts,
``.pth``/``.pt``/``.safetensors``; matterport's Keras ``mask_rcnn_coco.h5``) and builds that model.
The result dicts are matterport's: ``rois`` int32 (N, 4) ``y1, x1, y2, x2``; ``masks`` bool (H, W, N);
``class_ids`` int32 (N,) indexing the tutorial's ``class_names``; ``scores`` float32 (N,).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UsageError

__all__ = ["MaskRCNN", "log"]


def log(text: str, array: np.ndarray | None = None) -> None:
    """Print ``text`` and, given an array, its shape, min, max and dtype (matterport's format)."""
    if array is not None:
        text = text.ljust(25)
        text += f"shape: {str(array.shape):20}  "
        if array.size:
            text += f"min: {array.min():10.5f}  max: {array.max():10.5f}"
        else:
            text += f"min: {'':10}  max: {'':10}"
        text += f"  {array.dtype}"
    print(text)


class MaskRCNN:
    """Inference-mode Mask R-CNN with matterport's interface.

    Args:
        mode: ``"inference"`` (training is ``masklab train``).
        config: a :class:`~masklab.compat.mrcnn.config.Config`; its ``IMAGE_MIN_DIM`` / ``IMAGE_MAX_DIM``
            become the resize (``min_size`` / ``max_size``), ``DETECTION_*`` the post-processing.
        model_dir: kept for compatibility (matterport's log folder); nothing is written there.
    """

    def __init__(self, mode: str, config: Any, model_dir: str | os.PathLike) -> None:
        if mode != "inference":
            raise UsageError(f"mode must be 'inference' (found {mode!r}); to train on your own data use `masklab train`")
        self.mode, self.config, self.model_dir = mode, config, str(model_dir)
        self.segmenter = None

    def load_weights(self, filepath: str | os.PathLike, by_name: bool = False, exclude: Any = None) -> None:
        """Build the model the file holds and load it (``by_name`` is accepted and has no effect: the
        weights always load by name, strictly)."""
        from masklab.inference.segmenter import Segmenter

        if exclude:
            raise UsageError("load_weights(exclude=...) is for training new heads; to train use `masklab train`")
        path = Path(os.fspath(filepath))
        if not path.is_file():
            raise UsageError(f"weights file {path} does not exist")
        c = self.config
        try:
            self.segmenter = Segmenter(
                path,
                device="auto",
                score_thresh=float(c.DETECTION_MIN_CONFIDENCE),
                nms_thresh=float(c.DETECTION_NMS_THRESHOLD),
                max_detections=int(c.DETECTION_MAX_INSTANCES),
                min_size=int(c.IMAGE_MIN_DIM),
                max_size=int(c.IMAGE_MAX_DIM),
            )
        except UsageError as e:
            if path.suffix.lower() == ".h5":
                # resolve() takes matterport's mask_rcnn_coco.h5 by content; any other .h5 ends up here
                raise UsageError(
                    f"{path}: not weights masklab can read ({e}).\n"
                    "  load_weights takes matterport's mask_rcnn_coco.h5 (Keras, ResNet-101 COCO) or a torchvision "
                    "Mask R-CNN state dict (.pth/.safetensors)"
                ) from None
            raise

    def _need_weights(self):
        if self.segmenter is None:
            raise UsageError("no weights loaded: call model.load_weights(path) before detect()")
        return self.segmenter

    @property
    def class_names(self) -> tuple[str, ...]:
        """The ``class_names`` the results' ``class_ids`` index (``"BG"`` first)."""
        return self._need_weights().class_names

    def detect(self, images: list, verbose: int = 0) -> list[dict[str, np.ndarray]]:
        """Detect objects in a list of ``config.BATCH_SIZE`` RGB uint8 (H, W, 3) images; one dict each."""
        seg = self._need_weights()
        if not isinstance(images, (list, tuple)):
            raise UsageError("detect() takes a list of images: model.detect([image])")
        if len(images) != self.config.BATCH_SIZE:
            raise UsageError(
                f"len(images) must be equal to BATCH_SIZE ({self.config.BATCH_SIZE}), found {len(images)}; "
                "set IMAGES_PER_GPU = 1 in your config to pass one image"
            )
        if verbose:
            log(f"Processing {len(images)} images")
            for image in images:
                log("image", np.asarray(image))
        return seg.detect(list(images))
