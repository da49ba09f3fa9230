"""``refine="sam"``: segment-anything (``pip install masklab[sam]``) re-segments each detection.

SAM is prompted with each box and the coarse mask (as its low-resolution mask input) and the refined
mask is kept where it agrees with the coarse one (mask IoU >= :data:`AGREE_IOU`); elsewhere the coarse
mask stays (a box prompt can latch onto a neighbour or the background). Its gain was not measured here:
no SAM weights can be downloaded on the machines masklab is tested on, and the tests run a randomly
initialised SAM.

The checkpoint is read with ``torch.load(weights_only=True)`` (segment-anything's own loader unpickles)
and its ViT size (embedding width, depth, heads, global-attention blocks) is read from the tensors, so
``vit_b``/``vit_l``/``vit_h`` and smaller ones all load.
"""

from __future__ import annotations

import functools

import numpy as np

from masklab.errors import UsageError
from masklab.optional import require

__all__ = ["SamRefiner", "sam_refiner", "build_sam_from_state", "AGREE_IOU"]

#: keep SAM's mask when its IoU with the coarse mask is at least this
AGREE_IOU = 0.5
#: the mask prompt's logit magnitude (SAM's own low-resolution logits are of this order)
_PROMPT_LOGIT = 8.0


def build_sam_from_state(state: dict):
    """A segment-anything ``Sam`` of the size ``state`` (its state dict) describes, weights loaded."""
    require("segment_anything")
    from segment_anything.build_sam import _build_sam

    embed = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    heads = embed // int(rel[0].shape[1])
    global_size = max(int(r.shape[0]) for r in rel)
    global_blocks = [i for i, r in enumerate(rel) if int(r.shape[0]) == global_size]
    sam = _build_sam(encoder_embed_dim=embed, encoder_depth=depth, encoder_num_heads=heads,
                     encoder_global_attn_indexes=global_blocks, checkpoint=None)
    sam.load_state_dict(state)
    return sam.eval()


class SamRefiner:
    """Refine masks with a loaded ``Sam`` (see the module docstring)."""

    def __init__(self, sam, *, device: str = "cpu", agree_iou: float = AGREE_IOU) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam.to(device))
        self.agree_iou = agree_iou

    def _mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """bool (H, W) -> float32 (1, 256, 256) logits in SAM's padded, resized input frame."""
        import cv2

        h, w = mask.shape
        nh, nw = self.predictor.transform.get_preprocess_shape(h, w, self.predictor.transform.target_length)
        side = self.predictor.model.image_encoder.img_size
        canvas = np.zeros((side, side), np.float32)
        canvas[:nh, :nw] = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
        low = cv2.resize(canvas, (side // 4, side // 4), interpolation=cv2.INTER_AREA)
        return ((low > 0.5) * 2.0 - 1.0)[None].astype(np.float32) * _PROMPT_LOGIT

    def refine(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """RGB uint8 ``image`` (H, W, 3), float32 ``boxes`` (N, 4) xyxy, bool ``masks`` (N, H, W) -> bool (N, H, W)."""
        import torch

        out = np.array(masks, dtype=bool, copy=True)
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image))
            for i, box in enumerate(np.asarray(boxes, np.float32)):
                pred, _, _ = self.predictor.predict(box=box, mask_input=self._mask_prompt(out[i]), multimask_output=False)
                new, old = pred[0].astype(bool), out[i]
                union = np.logical_or(new, old).sum()
                if union and np.logical_and(new, old).sum() / union >= self.agree_iou:
                    out[i] = new
        return out


@functools.lru_cache(maxsize=2)
def sam_refiner(checkpoint: str, *, device: str = "cpu") -> SamRefiner:
    """A :class:`SamRefiner` for a checkpoint file, loaded once per (file, device)."""
    import torch

    require("segment_anything")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--sam-checkpoint: no file {checkpoint!r} (a segment-anything checkpoint, e.g. sam_vit_b_01ec64.pth)") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or non-tensor file: say which, not a pickle traceback
        raise UsageError(f"--sam-checkpoint {checkpoint!r} is not a segment-anything state dict ({type(e).__name__}: {e})") from None
    return SamRefiner(build_sam_from_state(state), device="cpu" if device == "auto" else device)
