"""DICOM Segmentation objects (highdicom) for DICOM inputs: ``dicom-seg/<stem>.dcm``.

One BINARY segment per class label found (segment 1..K in order of first appearance; objects of a class
are joined, as DICOM SEG segments describe tissue classes, not instances), one frame per source frame,
referencing the source image (study, series, frame of reference, plane positions: what PACS viewers,
3D Slicer's QuantitativeReporting / DCMQI and OHIF need to overlay it). Segmented property category
"Tissue" (SCT 85756007); the type is the label under a private coding scheme (``99MASKLAB``), the
algorithm "masklab" (AUTOMATIC, family Artificial Intelligence). A source image that lacks what a
Segmentation must reference (e.g. no Frame of Reference) is refused by highdicom; the run then warns.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from masklab.io.atomic import temp_file_beside
from masklab.optional import require

__all__ = ["write_dicom_seg"]


def write_dicom_seg(path: Path, source: str | Path, frames: dict[int, dict[str, np.ndarray]], labels: list[str]) -> Path:
    """Write the Segmentation of ``source`` (a DICOM file): ``frames[frame index][label]`` = bool (rows, cols)."""
    hd = require("highdicom")
    pydicom = require("pydicom")
    from pydicom.sr.codedict import codes

    from masklab._version import __version__

    ds = pydicom.dcmread(source)
    n = max(1, int(ds.get("NumberOfFrames") or 1))
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = np.zeros((n, rows, cols, len(labels)), bool)
    for index, by_label in frames.items():
        for s, label in enumerate(labels):
            if label in by_label:
                pixels[index, ..., s] = by_label[label]
    algorithm = hd.AlgorithmIdentificationSequence(name="masklab", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=s + 1, segment_label=label[:64], segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=hd.sr.CodedConcept(value=label[:16] or "object", scheme_designator="99MASKLAB", meaning=label[:64] or "object"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for s, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=[ds], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=int(ds.get("SeriesNumber") or 0) + 100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="masklab", manufacturer_model_name="masklab",
        software_versions=__version__, device_serial_number="0", omit_empty_frames=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".dcm")
    os.close(fd)
    try:
        seg.save_as(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
