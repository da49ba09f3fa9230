"""NIfTI label volumes with the input scan's affine and header, for 3D Slicer and ITK-SNAP.

``nifti/<stem>.nii.gz``: the input volume's shape, 0 = background, object ids as in the other stack
outputs; the affine (``qform`` and ``sform``) and header of the scan itself, data type uint16 (int32
above 65535 labels) with ``scl_slope = 1``, ``scl_inter = 0``, so Slicer (Add Data > Segmentation, or as
a label map) and ITK-SNAP overlay it on the scan voxel for voxel. Slices go back across the axis they
were cut along (:mod:`masklab.io.nifti`: slice image ``[row, col]`` = voxel ``[col, row]`` in the two
in-plane axes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from masklab.io.atomic import temp_file_beside
from masklab.optional import require

__all__ = ["label_volume", "write_label_nifti"]


def label_volume(source: str | Path) -> tuple[object, np.ndarray]:
    """``(source image, zeros)``: the scan's nibabel image and an empty uint32 label volume of its 3-D shape."""
    nib = require("nibabel")
    img = nib.load(str(source))
    return img, np.zeros(tuple(int(v) for v in img.shape[:3]), np.uint32)


def put_slice(volume: np.ndarray, labels: np.ndarray, *, axis: int, index: int) -> None:
    """Put one slice's label image (rows = the second in-plane axis) back into ``volume``."""
    key: list = [slice(None)] * 3
    key[axis] = index
    volume[tuple(key)] = labels.T


def write_label_nifti(path: str | Path, volume: np.ndarray, *, source_img) -> Path:
    """Write ``volume`` with ``source_img``'s affine and header (``.nii.gz`` compressed), atomically."""
    nib = require("nibabel")
    path = Path(path)
    data = volume.astype(np.uint16 if (volume.max() if volume.size else 0) <= 65535 else np.int32)
    header = source_img.header.copy()
    header.set_data_dtype(data.dtype)
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1.0, 0.0)
    cls = type(source_img) if isinstance(source_img, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    if cls is not type(source_img):  # another format's header (Analyze...) cannot be copied as is
        header = None
    out = cls(data, source_img.affine, header)
    qform, qcode = source_img.header.get_qform(coded=True)
    sform, scode = source_img.header.get_sform(coded=True)
    if qform is not None:
        out.set_qform(qform, int(qcode))
    if sform is not None:
        out.set_sform(sform, int(scode))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(out, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
