"""GeoTIFF in (rasterio, by windows when over the pixel cap), GeoPackage and GeoJSON out, read back with
geopandas/pyogrio (the GIS side's own readers) and the label GeoTIFF with rasterio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")
pytest.importorskip("pyogrio")
pyproj = pytest.importorskip("pyproj")

from masklab.io.formats.writer import OutputWriter  # noqa: E402
from masklab.io.images import load_image, probe_stack  # noqa: E402
from masklab.io.inputs import expand_inputs  # noqa: E402
from masklab.io.stacks import expand_planes  # noqa: E402
from masklab.structures.instances import Instances  # noqa: E402

# a transverse Mercator with no EPSG code (segment-geospatial #12 crashed on such CRSs)
CUSTOM_CRS = "+proj=tmerc +lat_0=0 +lon_0=12.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs"
PIXEL_M = 0.5


def _raster(path: Path, image: np.ndarray, *, crs=CUSTOM_CRS, nodata=None) -> Path:
    from affine import Affine

    h, w = image.shape[:2]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs,
                       transform=Affine(PIXEL_M, 0, 640000.0, 0, -PIXEL_M, 5300000.0), nodata=nodata) as dst:
        dst.write(np.moveaxis(image, 2, 0))
    return path


def _bright_objects(image: np.ndarray) -> Instances:
    """A stand-in segmenter: every 4-connected bright region is an object (exact, so areas can be checked)."""
    import cv2

    n, lab = cv2.connectedComponents((image[..., 0] > 128).astype(np.uint8), connectivity=4)
    masks = np.stack([lab == k for k in range(1, n)]) if n > 1 else np.zeros((0, *image.shape[:2]), bool)
    return Instances.from_masks(masks, class_ids=[1] * len(masks), labels=["roof"] * len(masks), scores=[0.9] * len(masks))


def _scene(h: int, w: int) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    img = np.full((h, w, 3), 30, np.uint8)
    # with 160-pixel windows (cores of 120, overlaps of 20) the 2nd object straddles two core edges and the
    # 3rd one more: each lies whole in the window whose core holds its centroid
    boxes = [(slice(10, 40), slice(10, 50)), (slice(100, 135), slice(110, 135)), (slice(180, 215), slice(230, 250)),
             (slice(150, 175), slice(20, 60))]
    for ys, xs in boxes:
        img[ys, xs] = 220
    img[20:30, 20:30] = 30  # a hole in the first object
    return img, boxes


def _segment_all(tmp_path: Path, raster: Path, formats: str, *, max_pixels: int | None = None) -> Path:
    items = expand_planes(expand_inputs([str(raster)]), max_pixels=max_pixels)
    w = OutputWriter(tmp_path / "out", model_name="threshold", viz=(), formats=formats)
    for item in items:
        image = load_image(item.path, plane=item.plane, max_pixels=max_pixels)
        w.write(stem=item.stem, image_name=item.source, image=image.array, instances=_bright_objects(image.array), meta=image.meta)
    w.finish([i.stem for i in items])
    return tmp_path / "out"


def test_gpkg_keeps_the_raster_crs_and_areas_equal_pixel_counts(tmp_path):
    img, _ = _scene(230, 300)
    raster = _raster(tmp_path / "ortho.tif", img)
    out = _segment_all(tmp_path, raster, "gpkg,geojson,csv")
    gdf = gpd.read_file(out / "geo" / "ortho.gpkg", engine="pyogrio")
    with rasterio.open(raster) as ds:
        raster_crs = pyproj.CRS.from_wkt(ds.crs.to_wkt())
    assert gdf.crs.equals(raster_crs) and gdf.crs.to_epsg() is None  # the CRS itself, no guessed EPSG code
    expect = _bright_objects(img)
    assert len(gdf) == len(expect) == 4
    pixel_area = PIXEL_M * PIXEL_M
    for row, count in zip(gdf.sort_values("id").itertuples(), expect.areas()):
        assert row.geometry.area == pytest.approx(count * pixel_area, rel=0.01)
        assert row.area_m2 == pytest.approx(count * pixel_area, rel=0.01)
    holed = gdf.sort_values("area_m2").iloc[-1].geometry
    assert len(holed.interiors) == 1  # the hole survives
    # the JSON records the physical pixel size from the transform, and the CSV uses it
    rec = json.loads((out / "ortho.json").read_text())
    assert rec["pixel_size"]["unit"] == "m" and rec["pixel_size"]["x"] == PIXEL_M


def test_geojson_is_wgs84_rfc7946(tmp_path):
    img, _ = _scene(230, 300)
    raster = _raster(tmp_path / "ortho.tif", img)
    out = _segment_all(tmp_path, raster, "geojson")
    doc = json.loads((out / "geo" / "ortho.geojson").read_text())
    assert "crs" not in doc
    gdf = gpd.read_file(out / "geo" / "ortho.geojson", engine="pyogrio")
    assert gdf.crs.to_epsg() == 4326
    lon, lat = gdf.geometry.iloc[0].exterior.coords[0]
    to_wgs = pyproj.Transformer.from_crs(CUSTOM_CRS, 4326, always_xy=True)
    lon0, lat0 = to_wgs.transform(640000.0, 5300000.0)
    assert abs(lon - lon0) < 0.01 and abs(lat - lat0) < 0.01  # longitude first, near the raster's corner
    assert all(g.exterior.is_ccw for g in gdf.geometry)  # RFC 7946: outer rings counter-clockwise
    back = gdf.to_crs(CUSTOM_CRS)
    expect = sorted(_bright_objects(img).areas() * PIXEL_M**2)
    np.testing.assert_allclose(sorted(back.geometry.area), expect, rtol=0.01)


def test_geographic_crs_areas_in_metres(tmp_path):
    from affine import Affine

    img, _ = _scene(230, 300)
    path = tmp_path / "wgs.tif"
    deg = 1e-5
    with rasterio.open(path, "w", driver="GTiff", width=300, height=230, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=Affine(deg, 0, 10.0, 0, -deg, 45.0)) as dst:
        dst.write(np.moveaxis(img, 2, 0))
    out = _segment_all(tmp_path, path, "gpkg")
    gdf = gpd.read_file(out / "geo" / "wgs.gpkg", engine="pyogrio").sort_values("id")
    geod = pyproj.Geod(ellps="WGS84")
    for row in gdf.itertuples():
        area, _ = geod.geometry_area_perimeter(row.geometry)
        assert row.area_m2 == pytest.approx(abs(area), rel=0.01)  # UTM area vs geodesic area


def test_windows_over_the_pixel_cap_write_each_object_once(tmp_path):
    img, boxes = _scene(230, 300)
    raster = _raster(tmp_path / "big.tif", img)
    cap = 160 * 160  # 69,000 pixels over a 25,600 cap: six windows of <= 160 x 160
    info = probe_stack(raster, max_pixels=cap)
    assert info.kind == "geotiff" and info.count == 6 and all(w[2] * w[3] <= cap for w, _ in info.windows)
    out = _segment_all(tmp_path, raster, "gpkg,label-tiff", max_pixels=cap)
    gdf = gpd.read_file(out / "geo" / "big.gpkg", engine="pyogrio")
    counts = sorted(int((img[ys, xs, 0] > 128).sum()) for ys, xs in boxes)
    assert len(gdf) == len(boxes)  # objects in the overlaps are written once
    np.testing.assert_allclose(sorted(gdf.geometry.area / PIXEL_M**2), counts)  # and whole
    assert set(gdf["window"]) == {0, 1, 3, 5}  # windows row by row: the cores holding each centroid
    with rasterio.open(raster) as src, rasterio.open(out / "labels" / "big.tif") as ds:
        labels = ds.read(1)
        assert ds.crs == src.crs and ds.transform == src.transform
    np.testing.assert_array_equal(labels > 0, img[..., 0] > 128)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3, 4]


def test_nodata_is_masked_and_band_choice(tmp_path):
    img, _ = _scene(60, 80)
    img[:, :10] = 0
    raster = _raster(tmp_path / "nd.tif", img, nodata=0)
    image = load_image(raster)
    assert image.meta.kind == "geotiff" and image.meta.notes["nodata_pixels"] == 60 * 10
    with pytest.raises(Exception, match="out of range: the raster has 3 band"):
        from masklab.io.planes import ReadOptions

        load_image(raster, options=ReadOptions(channels=(3,)))


def test_geo_formats_skip_images_without_crs(tmp_path):
    from PIL import Image

    Image.fromarray(_scene(60, 80)[0]).save(tmp_path / "plain.png")
    with pytest.warns(UserWarning, match="not written: gpkg"):
        _segment_all(tmp_path, tmp_path / "plain.png", "gpkg")
