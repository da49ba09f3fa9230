"""Microscopy and medical files in (TIFF stacks, OME-TIFF, DICOM, NIfTI), the files Fiji, napari and
3D Slicer open out (label TIFF, ImageJ ROI zip, NIfTI labels), physical units, 3-D stitching.

Every input is written here with the real library (tifffile, pydicom, nibabel) and every output is
read back with the consumer's own loader (tifffile, roifile, nibabel), never masklab's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
roifile = pytest.importorskip("roifile")
pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from masklab.errors import ImageLoadError, UsageError  # noqa: E402
from masklab.io.formats.imagej_roi import RoiEntry, write_roi_zip  # noqa: E402
from masklab.io.formats.outlines import pixel_polygons  # noqa: E402
from masklab.io.formats.writer import OutputWriter  # noqa: E402
from masklab.io.images import load_image, probe_stack  # noqa: E402
from masklab.io.inputs import expand_inputs  # noqa: E402
from masklab.io.planes import ReadOptions, parse_planes, parse_window, window_to_uint8  # noqa: E402
from masklab.io.stacks import expand_planes  # noqa: E402
from masklab.structures.instances import Instances  # noqa: E402

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")


# -- helpers -------------------------------------------------------------------------------------


def _fill(rings: list[np.ndarray], hw: tuple[int, int], rule: str) -> np.ndarray:
    """Fill closed rings at pixel centres (x + 0.5, y + 0.5), ImageJ's rule: ``evenodd`` or ``nonzero``."""
    h, w = hw
    px, py = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    winding = np.zeros((h, w), np.int64)
    crossings = np.zeros((h, w), np.int64)
    for ring in rings:
        r = np.asarray(ring, np.float64)
        if np.allclose(r[0], r[-1]):
            r = r[:-1]
        for (x0, y0), (x1, y1) in zip(r, np.roll(r, -1, axis=0)):
            up = (y0 <= py) & (y1 > py)
            down = (y1 <= py) & (y0 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                xc = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
            right = (up | down) & (xc > px)
            crossings += right
            winding += (up & right).astype(np.int64) - (down & right).astype(np.int64)
    return (crossings % 2 == 1) if rule == "evenodd" else (winding != 0)


def _roi_rings(roi) -> list[np.ndarray]:
    if roi.multi_coordinates is not None:
        return roi.path2coords(roi.multi_coordinates)
    return [roi.coordinates()]


def _masks_with_holes() -> np.ndarray:
    """Four objects: a plain rectangle, a ring with a hole, a ring with an island in its hole, and two
    parts touching at a corner plus a one-pixel-wide line."""
    m = np.zeros((4, 40, 48), bool)
    m[0, 2:9, 3:12] = True
    m[1, 12:30, 2:20] = True
    m[1, 17:24, 7:14] = False
    m[2, 2:24, 24:46] = True
    m[2, 6:20, 28:42] = False
    m[2, 10:15, 32:37] = True
    m[3, 30:34, 25:29] = True
    m[3, 34:37, 29:32] = True  # touches the square above only at a corner
    m[3, 36, 32:45] = True
    return m


def _instances(masks: np.ndarray) -> Instances:
    n = len(masks)
    return Instances.from_masks(masks, class_ids=[1] * n, labels=["cell"] * n, scores=np.linspace(0.9, 0.6, n))


# -- pixel-edge polygons and ImageJ ROIs ---------------------------------------------------------


def test_pixel_polygons_fill_back_exactly_and_measure_pixel_counts():
    for mask in _masks_with_holes():
        parts = pixel_polygons(mask)
        rings = [r for p in parts for r in p.rings()]
        np.testing.assert_array_equal(_fill(rings, mask.shape, "evenodd"), mask)
        np.testing.assert_array_equal(_fill(rings, mask.shape, "nonzero"), mask)


def test_imagej_roi_zip_filled_by_roifile_equals_masks(tmp_path):
    masks = _masks_with_holes()
    path = write_roi_zip(tmp_path / "r.zip", [RoiEntry(f"cell-{k + 1}", pixel_polygons(m)) for k, m in enumerate(masks)])
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == ["cell-1", "cell-2", "cell-3", "cell-4"]
    assert rois[0].roitype == roifile.ROI_TYPE.TRACED and not rois[0].composite  # no hole: a plain traced polygon
    assert all(r.composite for r in rois[1:])  # holes / several parts: composite (ShapeRoi) ROIs
    for roi, mask in zip(rois, masks):
        for rule in ("evenodd", "nonzero"):
            np.testing.assert_array_equal(_fill(_roi_rings(roi), mask.shape, rule), mask)
        # ImageJ's bounds of the ROI are the mask's tight box (not one pixel smaller)
        ys, xs = np.nonzero(mask)
        assert (roi.left, roi.top, roi.right, roi.bottom) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


# -- TIFF stacks, OME-TIFF, label TIFF -----------------------------------------------------------


def _write_ome(path: Path) -> np.ndarray:
    z = np.zeros((3, 2, 40, 50), np.uint16)
    z[:, 0, 10:20, 10:30] = 30000
    z[:, 1, 5:15, 5:15] = 65535
    tifffile.imwrite(path, z, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0})
    return z


def test_ome_tiff_planes_channels_and_pixel_size(tmp_path):
    _write_ome(tmp_path / "s.ome.tif")
    info = probe_stack(tmp_path / "s.ome.tif")
    assert (info.kind, info.count, info.hw) == ("ome-tiff", 3, (40, 50))
    assert (info.pixel_size.x, info.pixel_size.y, info.pixel_size.z, info.pixel_size.unit) == (0.5, 0.25, 2.0, "um")
    items = expand_planes(expand_inputs([str(tmp_path / "s.ome.tif")]), options=ReadOptions(planes=(0, 2)))
    assert [(i.stem, i.plane.index) for i in items] == [("s_p0000", 0), ("s_p0002", 2)]
    im = load_image(items[1].path, plane=items[1].plane)
    # channel 0 -> red, channel 1 -> green, 16-bit scaled by 255/65535 (the loader's documented rule)
    assert im.array[12, 20].tolist() == [round(30000 * 255 / 65535), 0, 0]
    assert im.array[7, 7].tolist() == [0, 255, 0]
    grey = load_image(items[0].path, plane=items[0].plane, options=ReadOptions(channels=(1,)))
    assert grey.array[7, 7].tolist() == [255, 255, 255] and grey.array[12, 20].tolist() == [0, 0, 0]
    with pytest.raises(ImageLoadError, match="out of range: the file has 2 channel"):
        load_image(items[0].path, plane=items[0].plane, options=ReadOptions(channels=(5,)))
    with pytest.raises(UsageError, match="has 3 planes"):
        expand_planes(expand_inputs([str(tmp_path / "s.ome.tif")]), options=ReadOptions(planes=(7,)))


def test_many_channels_need_a_choice(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((5, 20, 20), np.uint8), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(ImageLoadError, match="5 channels; choose up to 3 with --channels"):
        load_image(tmp_path / "c.tif")
    assert load_image(tmp_path / "c.tif", options=ReadOptions(channels=(4, 0, 2))).array.shape == (20, 20, 3)


def test_parse_planes_and_window():
    assert parse_planes("0,3-5") == (0, 3, 4, 5) and parse_planes(None) is None
    with pytest.raises(UsageError, match="runs backwards"):
        parse_planes("5-3")
    with pytest.raises(UsageError, match="width must be >= 1"):
        parse_window("40,0.5")


def _stack_writer(tmp_path, formats, **kw) -> OutputWriter:
    return OutputWriter(tmp_path / "out", model_name="m", viz=(), formats=formats, **kw)


def test_label_tiff_stack_keeps_shape_and_pixel_size_and_roi_positions(tmp_path):
    src = tmp_path / "ij.tif"
    stack = np.zeros((3, 40, 48), np.uint8)
    tifffile.imwrite(src, stack, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"axes": "ZYX", "unit": "um", "spacing": 1.5})
    items = expand_planes(expand_inputs([str(src)]))
    masks = _masks_with_holes()
    w = _stack_writer(tmp_path, "label-tiff,imagej-roi,csv")
    for item, sel in zip(items, ([0, 1], [], [2, 3])):
        image = load_image(item.path, plane=item.plane)
        w.write(stem=item.stem, image_name=item.source, image=image.array, instances=_instances(masks[sel]), meta=image.meta)
    w.finish([i.stem for i in items])
    with tifffile.TiffFile(tmp_path / "out" / "labels" / "ij.tif") as tif:
        labels = tif.asarray()
        assert labels.shape == stack.shape and labels.dtype == np.uint16
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.3) and tif.imagej_metadata["unit"] in ("micron", "um")
        assert tif.imagej_metadata["spacing"] == pytest.approx(1.5)
    assert sorted(np.unique(labels[0]).tolist()) == [0, 1, 2] and not labels[1].any()
    assert sorted(np.unique(labels[2]).tolist()) == [0, 3, 4]  # ids numbered through the stack
    np.testing.assert_array_equal(labels[2] == 4, masks[3])
    rois = roifile.roiread(tmp_path / "out" / "rois" / "ij.zip")
    assert [(r.name, r.position) for r in rois] == [("0000-cell-1", 1), ("0000-cell-2", 1), ("0002-cell-3", 3), ("0002-cell-4", 3)]
    np.testing.assert_array_equal(_fill(_roi_rings(rois[3]), (40, 48), "evenodd"), masks[3])
    rows = list(csv.DictReader(open(tmp_path / "out" / "measurements.csv")))
    assert [r["plane"] for r in rows] == ["0", "0", "2", "2"]
    assert float(rows[0]["area_um2"]) == pytest.approx(masks[0].sum() * 0.09)
    rec = json.loads((tmp_path / "out" / "ij_p0000.json").read_text())
    assert rec["pixel_size"]["source"] == "ImageJ unit + resolution tags" and rec["plane"]["count"] == 3


def test_physical_units_anisotropic_and_px_per_unit_override(tmp_path):
    _write_ome(tmp_path / "s.ome.tif")
    items = expand_planes(expand_inputs([str(tmp_path / "s.ome.tif")]), options=ReadOptions(planes=(0,)))
    image = load_image(items[0].path, plane=items[0].plane)
    m = np.zeros((1, 40, 50), bool)
    m[0, 10:20, 10:30] = True  # 10 rows x 20 columns: 20 x 0.5 um by 10 x 0.25 um
    w = _stack_writer(tmp_path, "csv")
    w.write(stem=items[0].stem, image_name=items[0].source, image=image.array, instances=_instances(m), meta=image.meta)
    d = json.loads(w.json_path(items[0].stem).read_text())["instances"][0]
    assert d["area_um2"] == pytest.approx(200 * 0.5 * 0.25)
    # OpenCV's contour through the boundary pixel centres: 19 columns and 9 rows of steps, twice
    assert d["perimeter_um"] == pytest.approx(2 * (19 * 0.5 + 9 * 0.25))
    w2 = OutputWriter(tmp_path / "o2", model_name="m", viz=(), formats="csv", px_per_unit=4.0, unit="mm")
    w2.write(stem="x", image_name="x", image=image.array, instances=_instances(m), meta=image.meta)
    rec = json.loads(w2.json_path("x").read_text())
    assert rec["pixel_size"]["source"] == "--px-per-unit" and rec["instances"][0]["area_mm2"] == pytest.approx(200 / 16)


# -- DICOM ---------------------------------------------------------------------------------------


def _dicom(path: Path, pixels: np.ndarray, **attrs) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = attrs.pop("transfer_syntax", ExplicitVRLittleEndian)
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, attrs.pop("photometric", "MONOCHROME2")
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    encoded = attrs.pop("encoded", None)
    for k, v in attrs.items():
        setattr(ds, k, v)
    if encoded is None:
        ds.PixelData = pixels.astype(np.int16).tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_modality_then_window_matches_the_standard_and_pydicom(tmp_path):
    raw = np.arange(-200, 1000, 3, dtype=np.int16)[:384].reshape(16, 24)
    path = _dicom(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400,
                  PixelSpacing=[0.7, 0.6])
    image = load_image(path)
    hu = raw.astype(np.float64) * 2 - 1024
    c, w = 40.0, 400.0
    # DICOM PS3.3 C.11.2.1.2.1, written out here independently
    expect = np.where(hu <= c - 0.5 - (w - 1) / 2, 0, np.where(hu > c - 0.5 + (w - 1) / 2, 255, ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255))
    np.testing.assert_array_equal(image.array[..., 0], np.round(expect).astype(np.uint8))
    # and pydicom's own implementation of the same function, on the same dataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    np.testing.assert_allclose(image.array[..., 0], (ref - ref.min()) / (ref.max() - ref.min()) * 255, atol=1.0)
    ps = image.meta.pixel_size
    assert (ps.x, ps.y, ps.unit, ps.source) == (0.6, 0.7, "mm", "DICOM PixelSpacing")
    override = load_image(path, options=ReadOptions(window=(500.0, 100.0)))
    np.testing.assert_array_equal(override.array[..., 0], window_to_uint8(hu, 500.0, 100.0))
    assert override.meta.notes["window"]["source"] == "--window"


def test_dicom_monochrome1_is_inverted_and_frames_are_planes(tmp_path):
    raw = np.stack([np.full((8, 10), v, np.int16) for v in (0, 100, 200)])
    mono2 = _dicom(tmp_path / "m2.dcm", raw, WindowCenter=100, WindowWidth=101)
    mono1 = _dicom(tmp_path / "m1.dcm", raw, WindowCenter=100, WindowWidth=101, photometric="MONOCHROME1")
    items = expand_planes(expand_inputs([str(mono1)]))
    assert [i.stem for i in items] == ["m1_p0000", "m1_p0001", "m1_p0002"]
    for item in items:
        a = load_image(mono2, plane=item.plane).array
        b = load_image(mono1, plane=item.plane).array
        np.testing.assert_array_equal(b, 255 - a)
    assert load_image(mono1, plane=items[0].plane).array[0, 0, 0] == 255  # the lowest value is white in MONOCHROME1


def test_compressed_dicom_without_its_decoder_names_the_package(tmp_path):
    from pydicom import uid
    from pydicom.pixels import get_decoder

    # the first compressed syntax this environment cannot decode (pyjpegls, a highdicom dependency, decodes JPEG-LS)
    candidates = (uid.JPEGLSLossless, uid.HTJ2KLossless, uid.JPEGLosslessSV1, uid.JPEGLossless)
    missing = next((u for u in candidates if not get_decoder(u).is_available), None)
    if missing is None:
        pytest.skip("every candidate compressed transfer syntax has a decoder installed here")
    path = _dicom(tmp_path / "c.dcm", np.zeros((8, 8), np.int16), transfer_syntax=missing, encoded=[b"\xff\xd8\xff\xf7" + b"\0" * 16])
    with pytest.raises(ImageLoadError, match=r"compressed DICOM \(.*\) and no decoder for it is installed; install one of: pip install "):
        load_image(path)


# -- NIfTI ---------------------------------------------------------------------------------------


def _nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vol = np.zeros((30, 20, 4), np.int16)
    vol[5:15, 3:9, 1:3] = 800
    affine = np.array([[0.8, 0, 0, -12.0], [0, 0.9, 0, 30.0], [0, 0, 2.5, 4.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return vol, affine


def test_nifti_slices_and_label_volume_with_the_input_affine(tmp_path):
    vol, affine = _nifti(tmp_path / "scan.nii.gz")
    items = expand_planes(expand_inputs([str(tmp_path)]))
    assert [i.stem for i in items] == [f"scan_p000{k}" for k in range(4)]
    w = _stack_writer(tmp_path, "nifti,label-tiff")
    for item in items:
        image = load_image(item.path, plane=item.plane)
        assert image.array.shape == (20, 30, 3)  # rows follow j, columns follow i
        ps = image.meta.pixel_size
        assert (ps.x, ps.y, ps.z, ps.unit) == (pytest.approx(0.8), pytest.approx(0.9), pytest.approx(2.5), "mm")
        fg = image.array[..., 0] > 128  # the 1..99 % percentile window puts the object at 255, the rest at 0
        inst = _instances(fg[None]) if fg.any() else Instances.empty(fg.shape)
        w.write(stem=item.stem, image_name=item.source, image=image.array, instances=inst, meta=image.meta)
    w.finish([i.stem for i in items])
    out = nib.load(str(tmp_path / "out" / "nifti" / "scan.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == vol.shape and out.header.get_xyzt_units()[0] == "mm"
    labels = np.asarray(out.dataobj)
    np.testing.assert_array_equal(labels > 0, vol > 0)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]  # one object per slice, numbered through the volume


def test_nifti_axis_and_4d_refusal(tmp_path):
    _nifti(tmp_path / "scan.nii")
    info = probe_stack(tmp_path / "scan.nii", options=ReadOptions(axis=0))
    assert (info.count, info.hw) == (30, (4, 20))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "t.nii"))
    with pytest.raises(ImageLoadError, match="expected a 3-D NIfTI volume"):
        load_image(tmp_path / "t.nii")


# -- 3-D stitching -------------------------------------------------------------------------------


def test_stitch_3d_joins_overlapping_objects_and_reports_volumes(tmp_path):
    src = tmp_path / "z.tif"
    tifffile.imwrite(src, np.zeros((3, 30, 30), np.uint8), imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "unit": "um", "spacing": 3.0})
    items = expand_planes(expand_inputs([str(src)]))
    a = np.zeros((30, 30), bool)
    a[5:15, 5:15] = True
    shifted = np.roll(a, 1, axis=1)  # IoU 90/110 with a
    far = np.zeros((30, 30), bool)
    far[20:25, 20:25] = True
    planes = [[a], [shifted, far], [far]]
    w = _stack_writer(tmp_path, "label-tiff", stitch_3d=0.5)
    for item, ms in zip(items, planes):
        image = load_image(item.path, plane=item.plane)
        w.write(stem=item.stem, image_name=item.source, image=image.array, instances=_instances(np.stack(ms)), meta=image.meta)
    w.finish([i.stem for i in items])
    labels = tifffile.imread(tmp_path / "out" / "labels" / "z.tif")
    assert labels[0][a].tolist() == [1] * 100 and set(labels[1][shifted].tolist()) == {1}
    assert set(labels[1][far].tolist()) == {2} and set(labels[2][far].tolist()) == {2}
    rows = list(csv.DictReader(open(tmp_path / "out" / "z.objects3d.csv")))
    assert [(r["object_id"], r["n_planes"], r["voxels"]) for r in rows] == [("1", "2", "200"), ("2", "2", "50")]
    assert float(rows[0]["volume_um3"]) == pytest.approx(200 * 0.5 * 0.5 * 3.0)


# -- end to end with the demo model --------------------------------------------------------------


@pytest.mark.slow
def test_cli_segments_every_plane_of_a_stack(tmp_path):
    from masklab.cli import main
    from masklab.data.shapes import random_scene

    scene = random_scene(np.random.default_rng(3), size=128).image
    stack = np.stack([scene, np.roll(scene, 2, axis=1)])  # ZYXS: two RGB planes
    tifffile.imwrite(tmp_path / "st.tif", stack, imagej=True, resolution=(4.0, 4.0), metadata={"axes": "ZYXS", "unit": "um"})
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "st.tif"), "--out", str(out), "--model", DEMO, "--device", "cpu", "--viz", "none",
                 "--save", "label-tiff,imagej-roi,csv", "--stitch-3d", "0.5", "--no-progress"])
    assert code == 0
    recs = [json.loads((out / f"st_p000{k}.json").read_text()) for k in range(2)]
    assert all(len(r["instances"]) >= 1 for r in recs)  # the demo model finds the shapes on both planes
    labels = tifffile.imread(out / "labels" / "st.tif")
    assert labels.shape == (2, 128, 128) and labels.max() >= 1
    # stitched: the shifted copy of an object carries its id on plane 1 (an object on both planes)
    objects = list(csv.DictReader(open(out / "st.objects3d.csv")))
    assert any(r["n_planes"] == "2" for r in objects)
    both = [int(r["object_id"]) for r in objects if r["n_planes"] == "2"]
    assert all((labels[0] == i).any() and (labels[1] == i).any() for i in both)
    rois = roifile.roiread(out / "rois" / "st.zip")
    assert len(rois) == sum(len(r["instances"]) for r in recs)
    assert recs[0]["instances"][0]["area_um2"] == pytest.approx(recs[0]["instances"][0]["area_px"] * 0.0625)


def test_dicom_seg_read_back_by_highdicom(tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom.uid import generate_uid

    raw = np.zeros((24, 32), np.int16)
    raw[4:12, 6:20] = 500
    path = _dicom(tmp_path / "ct.dcm", raw, RescaleSlope=1, RescaleIntercept=0, WindowCenter=250, WindowWidth=500,
                  PixelSpacing=[0.5, 0.5], SliceThickness=1.0, ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                  StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), FrameOfReferenceUID=generate_uid(),
                  PatientID="P1", PatientName="Test^Patient", PatientBirthDate="", PatientSex="O", StudyID="1", StudyDate="20260101",
                  StudyTime="000000", AccessionNumber="", ReferringPhysicianName="", Modality="CT", SeriesNumber=1, InstanceNumber=1)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(path)
    image = load_image(path)
    m = image.array[..., 0] > 128
    w = _stack_writer(tmp_path, "dicom-seg")
    w.write(stem="ct", image_name=str(path), image=image.array, instances=_instances(m[None]), meta=image.meta)
    w.finish(["ct"])
    seg = hd.seg.segread(tmp_path / "out" / "dicom-seg" / "ct.dcm")
    assert [d.segment_label for d in seg.SegmentSequence] == ["cell"]
    assert seg.get_source_image_uids()[0][2] == ds.SOPInstanceUID
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])[0, ..., 0], m)
