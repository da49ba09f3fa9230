"""``masklab segment INPUT... [--out DIR]``: per-image JSON + overlay, ``summary.csv``, ``run.json``;
videos give per-frame JSON Lines and an annotated video. Prints one line per image (what it found, how
long it took) unless ``-q``, then where the results are; ``--out`` defaults to a new ``runs/segment-<n>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from masklab.cli.options import add_model_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images (files, folders, globs, stdin lists, URLs) and videos",
        description=(
            "Segment images and videos. Writes DIR/<name>.json and DIR/<name>.png per image, DIR/summary.csv and "
            "DIR/run.json; per video DIR/<name>.jsonl and DIR/<name>.annotated.mp4. Prints one line per image "
            "(e.g. 'photo.jpg: 2 person, 1 dog (0.41 s)'; -q: none) and where the results went."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders, glob patterns, videos; '-' reads more inputs from stdin, one per line",
    )
    p.add_argument("--out", "-o", default=None, metavar="DIR",
                   help="output folder (default: a new folder runs/segment-<n>, n = 1, 2, ...)")
    p.add_argument("-r", "--recursive", action="store_true", help="scan folders recursively")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-image lines and no progress bar (errors and "
                   "the final lines still print)")
    add_model_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument(
        "--viz",
        default="instance",
        help="overlay style(s): instance, semantic, splash, blur, outline; several, e.g. instance,semantic, "
        "give one side-by-side picture; 'none' for no overlay (default: instance)",
    )
    g.add_argument(
        "--save",
        default="json",
        metavar="FORMATS",
        help="comma-separated: json (always written), coco (run's coco_results.json), png-masks (id + class label "
        "maps), labelme, yolo (YOLO-seg + classes.txt), csv (measurements.csv); per input file (stacks put back "
        "together): label-tiff (instance ids, pixel size kept; Fiji/napari), imagej-roi (Fiji ROI Manager zip), "
        "nifti (label volume with the scan's affine; 3D Slicer), dicom-seg (DICOM Segmentation), geojson (WGS84), "
        "gpkg (raster CRS; QGIS) (default: json)",
    )
    g.add_argument("--px-per-unit", type=float, default=None, metavar="PX", help="calibration for measurements.csv: pixels per unit of length (adds area_<unit>2, perimeter_<unit>)")
    g.add_argument("--unit", default="mm", help="unit name for --px-per-unit (default: mm)")
    g.add_argument("--polygon-tolerance", type=float, default=1.0, metavar="PX", help="polygon simplification for labelme/yolo, in pixels; 0 = exact contours (default: 1.0)")
    g.add_argument("--overlay-full-size", action="store_true",
                   help="draw overlays of huge images at full size (default: images over 4096 px are drawn at 4096 px)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_science_arguments(p)
    g = p.add_argument_group("inputs and limits")
    g.add_argument("--allow-urls", action="store_true", help="accept http(s):// inputs (downloaded with the limits below)")
    g.add_argument("--url-max-mb", type=float, default=50.0, help="largest download per URL in MB (default: 50)")
    g.add_argument("--url-timeout", type=float, default=30.0, help="seconds allowed per download (default: 30)")
    g.add_argument("--max-pixels", type=int, default=None, help="refuse images over this many pixels (default: $MASKLAB_MAX_PIXELS or 100000000)")
    g = p.add_argument_group("throughput and resume")
    g.add_argument("--batch-size", type=int, default=1, help="images per inference call (helps on a GPU; default: 1)")
    g.add_argument("--workers", type=int, default=None, help="decode threads and writer threads, each (default: CPUs, at most 4)")
    g.add_argument(
        "--skip-existing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip images whose outputs already exist (default: on when DIR/run.json has the same settings)",
    )
    g = p.add_argument_group("cluster (Ray; pip install \"masklab[ray]\")")
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="local: this process (default); ray: a Ray Data actor pool, local or on a cluster")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster (e.g. auto, HEAD:6379); default: start a private local Ray")
    g.add_argument("--num-workers", type=int, default=None, metavar="N", help="model actors (default: one per GPU, else one per 4 CPUs)")
    g.add_argument("--no-json", dest="json", action="store_false", help="ray: no per-image JSON files (the Parquet tables DIR/instances, DIR/images hold the records)")
    g = p.add_argument_group("video")
    g.add_argument("--source", default=None, metavar="VIDEO|INDEX", help="a video file, or a camera index such as 0")
    g.add_argument("--every", type=int, default=1, metavar="N", help="process every N-th frame (default: 1)")
    g.add_argument("--start", type=float, default=0.0, metavar="SEC", help="start at this time in seconds (default: 0)")
    g.add_argument("--end", type=float, default=None, metavar="SEC", help="stop at this time in seconds (default: the end)")
    _add_tracking_arguments(p)
    p.set_defaults(run=run)


def _add_science_arguments(p) -> None:
    g = p.add_argument_group("stacks, DICOM, NIfTI, GeoTIFF (pip install \"masklab[formats]\")")
    g.add_argument("--planes", default=None, metavar="LIST", help="planes of stacks to segment, 0-based, e.g. 0,3-5 (default: all)")
    g.add_argument("--channels", default=None, metavar="C[,C,C]",
                   help="channels (TIFF) or bands (GeoTIFF), 0-based: one = grey, up to 3 = R,G,B (default: the file's RGB, or channels 0-2)")
    g.add_argument("--window", default=None, metavar="CENTER,WIDTH",
                   help="intensity window for DICOM and NIfTI, in the file's units after rescale (e.g. 40,400 for CT soft tissue; "
                   "default: the DICOM file's first window, NIfTI's 1-99 %% percentiles)")
    g.add_argument("--axis", default=None, metavar="0|1|2",
                   help="NIfTI voxel axis the volume is sliced across (i, j, k = 0, 1, 2; default: 2)")
    g.add_argument("--stitch-3d", type=float, default=None, metavar="IOU",
                   help="join objects on neighbouring planes that overlap by IoU >= this into one 3-D object id "
                   "(label-tiff, imagej-roi, nifti ids; DIR/<name>.objects3d.csv with volumes)")


def _read_options(args):
    """The ReadOptions of --planes/--channels/--window/--axis (bad values fail here)."""
    from masklab.io.planes import ReadOptions, parse_axis, parse_channels, parse_planes, parse_window

    return ReadOptions(planes=parse_planes(args.planes), channels=parse_channels(args.channels),
                       window=parse_window(args.window), axis=parse_axis(args.axis))


def _add_tracking_arguments(p) -> None:
    g = p.add_argument_group("tracking and counting (videos, cameras, folders of frames; pip install \"masklab[track]\")")
    g.add_argument("--track", action="store_true", help="track objects across frames: each instance gets a track_id; writes "
                   "DIR/<name>.mot.txt, <name>.counts.json, <name>.events.jsonl; a folder INPUT is read as a video (frames in name order)")
    g.add_argument("--track-buffer", type=int, default=30, metavar="N", help="processed frames a lost track keeps its id (default: 30)")
    g.add_argument("--count-line", "--line", dest="count_lines", action="append", default=[], metavar="X1,Y1,X2,Y2[:NAME]",
                   help="count tracks crossing this line (repeatable); 'in' = from the left of the arrow X1,Y1->X2,Y2 to its right, on screen")
    g.add_argument("--zone", dest="zones", action="append", default=[], metavar="X1,Y1,X2,Y2,X3,Y3,...[:NAME]",
                   help="a polygon zone (repeatable): entries, exits, occupancy and dwell time per track")
    g.add_argument("--trails", type=int, default=20, metavar="N", help="trail length in frames on the annotated video; 0 = none (default: 20)")
    g.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (default: 30)")


def _check_args(args) -> None:
    from masklab.errors import UsageError

    if not args.inputs and args.source is None:
        raise UsageError("nothing to segment: give INPUT paths, '-' for stdin, or --source VIDEO|INDEX")
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--every", args.every, 1),
        ("--workers", args.workers, 1),
        ("--max-pixels", args.max_pixels, 1),
        ("--max-detections", args.max_detections, 1),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, found {value}")
    if args.url_max_mb <= 0 or args.url_timeout <= 0:
        raise UsageError("--url-max-mb and --url-timeout must be > 0")
    if not args.track and (args.count_lines or args.zones):
        raise UsageError("--count-line and --zone count tracks: add --track")
    for flag, value in (("--track-buffer", args.track_buffer), ("--trails", args.trails)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0, found {value}")


def _tracking_options(args):
    """The TrackingOptions of --track and its flags (None without --track); bad lines fail here."""
    if not args.track:
        return None
    from masklab.tracking import TrackerSettings, TrackingOptions, parse_line, parse_zone

    return TrackingOptions(
        tracker=TrackerSettings(buffer_frames=args.track_buffer),
        lines=tuple(parse_line(t, index=i) for i, t in enumerate(args.count_lines)),
        zones=tuple(parse_zone(t, index=i) for i, t in enumerate(args.zones)),
        trail=args.trails,
    )


def _inputs(args) -> tuple[list[str | int], list]:
    """The videos (paths, camera indices) and the image items the command names."""
    from masklab.errors import UsageError
    from masklab.io.inputs import expand_inputs
    from masklab.runs import expand_sources, is_video_path

    videos: list[str | int] = []
    if args.source is not None:
        videos.append(int(args.source) if args.source.isdigit() else args.source)
    image_args = []
    for raw in args.inputs:
        sequence = args.track and raw != "-" and Path(raw).is_dir()  # with --track, a folder of frames is a video
        (videos if sequence or (raw != "-" and is_video_path(raw)) else image_args).append(raw)
    if args.engine == "ray" and videos:
        raise UsageError(f"videos run on the local engine; drop --engine ray for {videos[0]}")
    # ray: also lists storage URIs (s3://, gs://, file://...) through pyarrow.fs
    expand = expand_sources if args.engine == "ray" else expand_inputs
    items = expand(image_args, recursive=args.recursive, allow_urls=args.allow_urls) if image_args else []
    return videos, items


def _writer_options(args) -> dict:
    """The OutputWriter options (:data:`masklab.runs.ledger.OUTPUT_OPTIONS`), checked: a bad style,
    format or unit fails before the model loads."""
    from masklab.io.formats.measurements import check_unit
    from masklab.io.formats.writer import FORMATS, parse_list
    from masklab.visualize import STYLES

    check_unit(args.px_per_unit, args.unit)
    options = {
        "viz": list(parse_list(args.viz, known=STYLES, what="visualisation style")),
        "formats": list(parse_list(args.save, known=FORMATS, what="output format")),
        "px_per_unit": args.px_per_unit,
        "unit": args.unit,
        "polygon_tolerance": args.polygon_tolerance,
    }
    if getattr(args, "overlay_full_size", False):  # only when asked: earlier runs' settings stay the same
        options["overlay_max_side"] = 0
    if getattr(args, "stitch_3d", None) is not None:
        options["stitch_3d"] = args.stitch_3d
    return options


def _report(summary, n: int, out: str, runtime=None) -> int:
    """The run's lines on stderr (counts, rate, which runtime, skipped, each failure, where the results are);
    returns its exit code."""
    rate = summary.images_per_s
    done = f"segmented {summary.processed}/{n} images in {summary.seconds:.1f} s"
    done += f" ({rate:.2f} images/s" + (f", {runtime.name} {runtime.precision})" if runtime is not None else ")") if rate else ""
    if summary.skipped:
        done += f"; {summary.skipped} already done, skipped (same settings)"
    print(done, file=sys.stderr)
    for r in summary.failures:
        print(f"  failed: {r.error}", file=sys.stderr)
    if summary.disk_full:
        print(f"disk full: {summary.disk_full} images could not be written to {out}; free space and rerun the same "
              "command (finished images are skipped)", file=sys.stderr)
    print(f"results in {out}", file=sys.stderr)
    return summary.exit_code


def image_line(r) -> str:
    """One image's line: ``photo.jpg: 2 circle, 1 square (0.41 s)``; most frequent class first."""
    if r.error is not None:
        return f"{r.item.label}: failed: {r.error}"
    counts = sorted(r.counts.items(), key=lambda kv: -kv[1])  # stable: ties keep the highest score's first
    what = ", ".join(f"{n} {label}" for label, n in counts) or "no objects"
    return f"{r.item.label}: {what}" + (" (done by an earlier run)" if r.skipped else f" ({r.seconds:.2f} s)")


def _print_image_line(r) -> None:
    from tqdm import tqdm

    tqdm.write(image_line(r), file=sys.stderr)  # above the progress bar, which stays at the bottom


def new_run_dir(base: str | Path = "runs", prefix: str = "segment") -> Path:
    """``base/<prefix>-<n>`` for the smallest n >= 1 not yet used (ultralytics' ``runs/segment/predictN``)."""
    base = Path(base)
    taken = {p.name for p in base.glob(f"{prefix}-*")} if base.is_dir() else set()
    n = 1
    while f"{prefix}-{n}" in taken:
        n += 1
    return base / f"{prefix}-{n}"


def _no_images(args) -> str:
    """The empty-input message: which folders held no image files, and the -r hint where it applies."""
    from masklab.io.images import IMAGE_SUFFIXES

    folders = [raw for raw in args.inputs if raw != "-" and Path(raw).is_dir()]
    where = ", ".join(folders) if folders else ", ".join(args.inputs)
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    msg = f"no images found in {where} (image files end in {kinds})"
    if folders and not args.recursive:
        sub = any(q.is_dir() for f in folders for q in Path(f).iterdir())
        msg += ("; its subfolders were not searched: add -r to include them" if sub
                else "; add -r to also search subfolders")
    return msg


def _segment_images(args, items, seg, writer_kwargs: dict, progress: bool | None) -> int:
    from masklab.io.formats.writer import OutputWriter
    from masklab.io.inputs import UrlLimits
    from masklab.io.planes import ReadOptions
    from masklab.io.stacks import expand_planes
    from masklab.runs import run_segment

    read = _read_options(args)
    items = expand_planes(items, options=read, max_pixels=args.max_pixels)
    # only when set: earlier runs' settings fingerprints stay the same
    read_settings = {"read": read.to_json()} if read != ReadOptions() else {}
    summary = run_segment(
        items,
        args.out,
        seg,
        viz=tuple(writer_kwargs["viz"]) or None,
        # categories: the class list of yolo, the categories of coco
        writer=OutputWriter(args.out, model_name=seg.spec.name, categories=seg.spec.categories, **writer_kwargs),
        extra_settings={**writer_kwargs, **read_settings},
        read_options=read,
        progress=progress,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_existing=args.skip_existing,
        on_result=None if args.quiet else _print_image_line,
        max_pixels=args.max_pixels,
        url_limits=UrlLimits(max_bytes=int(args.url_max_mb * 2**20), timeout_s=args.url_timeout),
    )
    return _report(summary, len(items), args.out, runtime=seg.runtime)


def _segment_videos(args, videos, seg, viz: tuple[str, ...] | None, progress: bool | None, tracking=None) -> int:
    from masklab.errors import ImageLoadError
    from masklab.runs import segment_video

    code = 0
    for source in videos:
        try:
            vs = segment_video(source, args.out, seg, viz=viz, every=args.every, start_s=args.start, end_s=args.end,
                               progress=progress, tracking=tracking, fps=args.fps)
        except ImageLoadError as e:
            print(f"  failed: {str(e).splitlines()[0]}", file=sys.stderr)
            code = 1
            continue
        fps = f" ({vs.frames_per_s:.2f} frames/s)" if vs.frames_per_s else ""
        print(f"video {vs.source}: {vs.frames_processed} frames in {vs.seconds:.1f} s{fps} -> {vs.jsonl}", file=sys.stderr)
    return code


def run(args) -> int:
    from masklab import Segmenter
    from masklab.inference.threads import configure_threads
    from masklab.runs.ray.command import check_ray_args, segment_on_ray
    from masklab.settings import InferenceSettings

    _check_args(args)
    check_ray_args(args)
    settings = InferenceSettings.from_args(args)  # validated here; loads nothing
    tracking = _tracking_options(args)
    videos, items = _inputs(args)
    if tracking is not None and not videos:
        from masklab.errors import UsageError

        raise UsageError("--track needs a video, a camera (--source) or a folder of frames")
    if not items and not videos:
        from masklab.errors import UsageError

        raise UsageError(_no_images(args))
    writer_kwargs = _writer_options(args)
    _read_options(args)  # bad --planes/--channels/--window/--axis: fail before the model loads
    if args.out is None:
        args.out = str(new_run_dir())
    progress = False if (args.no_progress or args.quiet) else None
    if args.engine == "ray":  # the actors build the model; this process builds none
        summary = segment_on_ray(args, items, settings, writer_kwargs=writer_kwargs, progress=progress)
        for r in [] if args.quiet else summary.results:
            print(image_line(r), file=sys.stderr)
        return _report(summary, len(items), args.out)
    from masklab.runs.ledger import check_writable

    check_writable(args.out)  # before the model loads: an unwritable --out is a usage error naming it
    configure_threads()
    seg = Segmenter(settings=settings)
    code = _segment_images(args, items, seg, writer_kwargs, progress) if items else 0
    code = max(code, _segment_videos(args, videos, seg, tuple(writer_kwargs["viz"]) or None, progress, tracking))
    if videos and not items:
        print(f"results in {args.out}", file=sys.stderr)
    return code
