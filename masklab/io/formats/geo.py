"""GIS vector outputs of georeferenced rasters: GeoPackage in the raster's CRS, GeoJSON in WGS84.

Per raster (all its windows together):

- ``geo/<stem>.gpkg`` (layer ``<stem>``): one feature per object, a Polygon or MultiPolygon with holes
  in the raster's own CRS — the CRS object itself (its WKT through pyproj), never a guessed EPSG code,
  so a CRS without one (segment-geospatial #12) is kept as it is. QGIS opens it aligned with the raster.
- ``geo/<stem>.geojson``: the same features reprojected to WGS84 longitude/latitude with pyproj (RFC
  7946: no ``crs`` member, outer rings counter-clockwise, holes clockwise).

Polygons follow the pixel edges (:mod:`masklab.io.formats.outlines`) mapped through the raster's affine
transform, so a polygon's area in the raster CRS is exactly its pixel count x the pixel area.
Attributes: ``id`` (as in the label outputs), ``label``, ``score``, ``area_m2`` (in the raster's CRS
when it is projected, scaled by its unit to metres; in the UTM zone pyproj picks for the data when the
CRS is geographic), ``image`` (the raster's path as given) and ``window`` (the window number).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from masklab.io.atomic import atomic_write_json, temp_file_beside
from masklab.io.formats.outlines import pixel_polygons
from masklab.optional import require
from masklab.structures.instances import Instances

__all__ = ["raster_georef", "features_of", "write_geo", "open_label_raster"]


def raster_georef(source: str | Path):
    """``(affine transform, pyproj CRS)`` of a raster, or None when it has no CRS."""
    rasterio = require("rasterio")
    pyproj = require("pyproj")
    with rasterio.open(source) as ds:
        if ds.crs is None:
            return None
        return ds.transform, pyproj.CRS.from_wkt(ds.crs.to_wkt())


def features_of(instances: Instances, *, ids: Iterable[int], transform, offset_xy: tuple[int, int], window: int, image: str) -> list[dict[str, Any]]:
    """One feature dict (shapely geometry in the raster CRS + attributes) per object with pixels."""
    shapely = require("shapely")
    from shapely.geometry import MultiPolygon, Polygon

    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def world(ring: np.ndarray) -> np.ndarray:
        x, y = ring[:, 0], ring[:, 1]
        return np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)

    out = []
    for k, oid in zip(range(len(instances)), ids):
        bitmap, x0, y0 = instances.mask_crop(k)
        parts = pixel_polygons(bitmap, offset_xy=(offset_xy[0] + x0, offset_xy[1] + y0))
        if not parts:
            continue
        polys = [Polygon(world(p.exterior), [world(h) for h in p.holes]) for p in parts]
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        out.append({"geometry": geom, "id": int(oid), "label": instances.labels[k], "score": round(float(instances.scores[k]), 6),
                    "image": image, "window": window})
    return out


def _areas_m2(gdf) -> np.ndarray:
    crs = gdf.crs
    if crs.is_projected:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return np.asarray(gdf.geometry.area) * factor**2
    return np.asarray(gdf.to_crs(gdf.estimate_utm_crs()).geometry.area)


def write_geo(folder: Path, stem: str, features: list[dict[str, Any]], *, crs, formats: Iterable[str]) -> list[Path]:
    """Write ``<stem>.gpkg`` and/or ``<stem>.geojson`` into ``folder`` (atomically); returns the paths."""
    gpd = require("geopandas")
    formats = set(formats)
    columns = ["id", "label", "score", "image", "window"]
    gdf = gpd.GeoDataFrame({k: [ft[k] for ft in features] for k in columns}, geometry=[ft["geometry"] for ft in features], crs=crs)
    gdf["area_m2"] = _areas_m2(gdf) if len(gdf) else np.zeros(0)
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    if "gpkg" in formats:
        path = folder / f"{stem}.gpkg"
        fd, tmp = temp_file_beside(path, suffix=".gpkg")
        os.close(fd)
        Path(tmp).unlink()  # GDAL refuses to create a GeoPackage over an existing (empty) file
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # pyogrio's note on an empty layer's geometry type
                gdf.to_file(tmp, driver="GPKG", layer=stem, engine="pyogrio", geometry_type="Unknown" if not len(gdf) else None)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    if "geojson" in formats:
        written.append(atomic_write_json(folder / f"{stem}.geojson", _geojson(gdf)))
    return written


def _geojson(gdf) -> dict[str, Any]:
    """RFC 7946 FeatureCollection in WGS84 (lon, lat), outer rings counter-clockwise."""
    from shapely.geometry import MultiPolygon, mapping
    from shapely.geometry.polygon import orient

    wgs = gdf.to_crs("EPSG:4326") if len(gdf) else gdf
    feats = []
    for row in wgs.itertuples(index=False):
        geom = row.geometry
        geom = orient(geom, 1.0) if geom.geom_type == "Polygon" else MultiPolygon([orient(p, 1.0) for p in geom.geoms]) if geom.geom_type == "MultiPolygon" else geom
        props = {"id": row.id, "label": row.label, "score": row.score, "area_m2": round(float(row.area_m2), 4), "image": row.image,
                 "window": row.window}
        feats.append({"type": "Feature", "geometry": json.loads(json.dumps(mapping(geom))), "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def open_label_raster(path: Path, source: str | Path):
    """``(dataset open for writing, temp path)``: a uint32 single-band GeoTIFF with ``source``'s size, CRS
    and transform (tiled, deflate), all 0; move the temp file to ``path`` after closing it."""
    rasterio = require("rasterio")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".tif")
    os.close(fd)
    with rasterio.open(source) as src:
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint32",
                   "crs": src.crs, "transform": src.transform, "tiled": True, "blockxsize": 256, "blockysize": 256,
                   "compress": "deflate", "nodata": None}
    return rasterio.open(tmp, "w+", **profile), tmp
