"""The image loader on a generated corpus: every mode, EXIF orientation, broken files, bombs, allowlist.

``build_corpus(folder)`` is also used by tests/test_batch.py for the one-CLI-run-over-everything test.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_scene
from PIL import Image, ImageFile

from masklab.errors import ImageLoadError
from masklab.io.images import load_image, sniff_format

# Pillow's Image.transpose op that *stores* an upright image under EXIF orientation k (the inverse of
# what a viewer applies). 2, 3, 4, 5 and 7 are their own inverse; 6 and 8 swap.
STORE_OP = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
UPRIGHT_HW = (112, 160)  # multiples of 16 so JPEG blocks line up after rotation


def upright() -> np.ndarray:
    return make_scene(*UPRIGHT_HW, seed=7)


def save_oriented(path: Path, rgb: np.ndarray, orientation: int, fmt: str, **kw) -> None:
    """Save ``rgb`` so that a viewer applying EXIF ``orientation`` shows exactly ``rgb``."""
    img = Image.fromarray(rgb)
    if orientation != 1:
        img = img.transpose(STORE_OP[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format=fmt, exif=exif, **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG declaring width x height RGB pixels (30 GB decoded) in a few dozen bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def build_corpus(folder: Path) -> tuple[dict[str, np.ndarray | None], dict[str, str]]:
    """Write the corpus into ``folder``.

    Returns (good, bad): ``good`` maps file name -> the RGB uint8 array the loader must return (None
    where only the shape is checked); ``bad`` maps name -> a word its one-line error must contain.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rgb = upright()
    good: dict[str, np.ndarray | None] = {}
    for k in range(1, 9):
        save_oriented(folder / f"exif_{k}.jpg", rgb, k, "JPEG", quality=95)
        good[f"exif_{k}.jpg"] = None
    gray = rgb[..., 1]
    Image.fromarray(gray).save(folder / "gray.png")
    good["gray.png"] = np.stack([gray] * 3, -1)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(folder / "palette.png")
    good["palette.png"] = np.asarray(pal.convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:20, :, 3] = 0  # fully transparent band -> neutral grey
    Image.fromarray(rgba).save(folder / "rgba.png")
    expected = rgb.copy()
    expected[:20] = 128
    good["rgba.png"] = expected
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(folder / "cmyk.tif")
    good["cmyk.tif"] = rgb
    cmyk.save(folder / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = None
    ramp16 = np.linspace(0, 65535, 96 * 128).reshape(96, 128).astype(np.uint16)
    Image.fromarray(ramp16).save(folder / "gray16.png")
    Image.fromarray(ramp16).save(folder / "gray16.tif")
    ramp8 = np.round(ramp16 * (255 / 65535)).astype(np.uint8)
    good["gray16.png"] = good["gray16.tif"] = np.stack([ramp8] * 3, -1)
    frames = [Image.fromarray(np.full((64, 80, 3), c, np.uint8)) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good["anim.gif"] = np.asarray(frames[0].convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB"))
    # A phone's multi-picture JPEG (MPO): the main picture first, a second frame after it.
    Image.fromarray(rgb).save(folder / "phone.jpg", format="MPO", save_all=True, append_images=[frames[1]], quality=95)
    good["phone.jpg"] = None
    Image.fromarray(rgb).save(folder / "lossless.webp", lossless=True)
    good["lossless.webp"] = rgb
    Image.fromarray(rgb).save(folder / "plain.bmp")
    good["plain.bmp"] = rgb
    tiny = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(tiny).save(folder / "tiny.png")
    good["tiny.png"] = tiny
    wide = make_scene(60, 1200, seed=4)[18:42]
    Image.fromarray(wide).save(folder / "wide.png")
    good["wide.png"] = wide

    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=90)
    png = _encode(Image.fromarray(rgb), "PNG")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC (bytes 29..32)
    bad = {
        "empty.jpg": (b"", "empty"),
        "text.png": (b"hello, this is not an image\n", "text"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 3], "truncated"),
        "garbage.jpg": (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not an allowed"),
        "garbage_after_magic.jpg": (b"\xff\xd8\xff" + bytes(range(256)) * 8, "JPEG"),
        "bad_crc.png": (bytes(bad_crc), "corrupt"),
        "bomb.png": (bomb_png(), "cap"),
        "eps_named.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "EPS"),
        "psd_named.jpg": (b"8BPS\x00\x01" + b"\x00" * 200, "PSD"),
        "ico_named.bmp": (b"\x00\x00\x01\x00\x01\x00\x10\x10" + b"\x00" * 300, "ICO"),
    }
    reasons = {}
    for name, (data, word) in bad.items():
        (folder / name).write_bytes(data)
        reasons[name] = word
    (folder / "folder.jpg").mkdir()
    reasons["folder.jpg"] = "directory"
    return good, reasons


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    good, bad = build_corpus(folder)
    return folder, good, bad


def test_every_good_file_loads_as_expected(corpus):
    folder, good, _ = corpus
    for name, expected in good.items():
        img = load_image(folder / name)
        assert img.array.dtype == np.uint8 and img.array.ndim == 3 and img.array.shape[2] == 3, name
        if expected is not None:
            assert img.array.shape == expected.shape, name
            diff = np.abs(img.array.astype(int) - expected.astype(int))
            assert diff.max() <= 1, f"{name}: max difference {diff.max()}"  # 1: rounding in mode conversions


def test_exif_orientations_give_upright_pixels(corpus):
    folder, _, _ = corpus
    ref = load_image(folder / "exif_1.jpg").array.astype(int)
    assert ref.shape[:2] == UPRIGHT_HW
    for k in range(2, 9):
        raw = np.asarray(Image.open(folder / f"exif_{k}.jpg"))  # as stored, no orientation applied
        arr = load_image(folder / f"exif_{k}.jpg").array
        assert arr.shape[:2] == UPRIGHT_HW, k
        if k >= 5:
            assert raw.shape[:2] == UPRIGHT_HW[::-1]  # stored sideways
        # JPEG re-encoding of the rotated pixels differs by a few levels; a wrong orientation differs by ~50.
        assert np.abs(arr.astype(int) - ref).mean() < 3, k
        assert (
            np.abs(raw.astype(int)[: UPRIGHT_HW[0], : UPRIGHT_HW[1]] - ref[: raw.shape[0], : raw.shape[1]]).mean() > 10
        )


def test_exif_applies_to_bytes_and_pil_inputs(tmp_path):
    save_oriented(tmp_path / "r.png", upright(), 6, "PNG")
    data = (tmp_path / "r.png").read_bytes()
    np.testing.assert_array_equal(load_image(data).array, upright())
    np.testing.assert_array_equal(load_image(Image.open(tmp_path / "r.png")).array, upright())


def test_lossy_files_keep_colours(corpus):
    folder, _, _ = corpus
    assert Image.open(folder / "phone.jpg").format == "MPO"
    # Lossy JPEGs of a noisy scene: colours within a few levels on average (the MPO writer uses quality
    # 75: 15); inverted CMYK would be off by ~100, and the MPO's second frame is a 64x80 green block.
    for name, tol in (("cmyk.jpg", 6), ("phone.jpg", 15)):
        arr = load_image(folder / name).array.astype(int)
        assert arr.shape == upright().shape and np.abs(arr - upright().astype(int)).mean() < tol, name


def test_sixteen_bit_and_float_are_scaled_not_clipped(tmp_path):
    ramp = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    assert load_image(tmp_path / "r.png").array[0, :, 0].tolist() == [0, 1, 128, 255]
    f01 = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(f01).save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif").array[0, :, 0].tolist() == [0, 128, 255]
    wide_range = np.array([[-10.0, 0.0, 30.0]], np.float32)  # outside [0, 1]: stretched min..max
    Image.fromarray(wide_range).save(tmp_path / "g.tif")
    assert load_image(tmp_path / "g.tif").array[0, :, 0].tolist() == [0, 64, 255]


def test_multiframe_tiff_first_page(tmp_path):
    pages = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert (load_image(tmp_path / "m.tif").array == 10).all()


def test_every_bad_file_gives_a_one_line_reason(corpus):
    folder, _, bad = corpus
    for name, word in bad.items():
        with pytest.raises(ImageLoadError) as e:
            load_image(folder / name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and word.lower() in msg.lower(), msg
    # Process-wide Pillow settings untouched.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False and Image.MAX_IMAGE_PIXELS == 89478485


def test_non_allowlisted_bytes_never_reach_pillow(corpus, monkeypatch):
    folder, _, _ = corpus
    calls = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append(a) or real_open(*a, **k))
    for name in ("eps_named.png", "psd_named.jpg", "ico_named.bmp", "text.png", "garbage.jpg", "empty.jpg"):
        with pytest.raises(ImageLoadError):
            load_image(folder / name)
    assert calls == []
    load_image(folder / "gray.png")
    assert len(calls) == 1  # the patch does see real opens


@pytest.mark.parametrize("side", [100_000, 12_000])  # over Pillow's own hard limit; under it but over our 100 MP cap
def test_bomb_is_refused_without_allocating(side):
    data = bomb_png(side, side)
    tracemalloc.start()
    with pytest.raises(ImageLoadError, match="over the pixel cap|is over the cap"):
        load_image(data, name="bomb.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the declared image is >= 432 MB; 2 MB of bookkeeping means no pixel was decoded (no timing asserted:
    # speed belongs in benchmarks)
    assert peak < 2_000_000, peak


_BOUNDED = """
import resource, sys
from masklab.io.images import load_image
from masklab.errors import ImageLoadError
vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
try:
    load_image(open(sys.argv[1], 'rb').read(), name='bomb.png')
except ImageLoadError as e:
    print(e)
"""


def test_bomb_under_an_address_space_limit(tmp_path):
    """tracemalloc does not see Pillow's C allocations; an address-space limit does: decoding the
    12000x12000 bomb would need 432 MB and fail with MemoryError ('out of memory'), refusing it from
    the header needs almost nothing."""
    import subprocess
    import sys

    (tmp_path / "bomb.png").write_bytes(bomb_png(12_000, 12_000))
    r = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(tmp_path / "bomb.png")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "is over the cap of 100,000,000" in r.stdout, r.stdout


def test_pixel_cap_argument_and_environment(tmp_path, monkeypatch):
    Image.fromarray(make_scene(100, 100)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=10_000).size_hw == (100, 100)
    with pytest.raises(ImageLoadError, match="100x100 = 10,000 pixels is over the cap of 9,999"):
        load_image(tmp_path / "a.png", max_pixels=9_999)
    monkeypatch.setenv("MASKLAB_MAX_PIXELS", "5000")
    with pytest.raises(ImageLoadError, match="MASKLAB_MAX_PIXELS"):
        load_image(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=20_000).size_hw == (100, 100)  # argument wins


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xff\xd8\xff\xe0", ("JPEG",)),
        (b"\x89PNG\r\n\x1a\n", ("PNG",)),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ("WEBP",)),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"II*\x00", ("TIFF",)),
        (b"%!PS-Adobe", None),
        (b"", None),
    ],
)
def test_sniff_format(head, expected):
    assert sniff_format(head) == expected


def test_saved_pngs_read_back_with_the_same_pixels(tmp_path):
    """atomic_save_image's OpenCV encoder (RGB and grey uint8, views included) and its Pillow path (16-bit,
    extra options) write PNGs that Pillow reads back pixel for pixel, in the right mode."""
    from masklab.io.atomic import atomic_save_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cases = {
        "rgb": (rgb, "RGB"),
        "rgb_view": (rgb[5:30:2, ::-1], "RGB"),  # strided and reversed: not contiguous
        "grey": (rng.integers(0, 256, (41, 29), dtype=np.uint8), "L"),
        "ids16": (rng.integers(0, 60000, (9, 11), dtype=np.uint16), None),  # Pillow: 16-bit ids
    }
    for name, (array, mode) in cases.items():
        path = atomic_save_image(tmp_path / f"{name}.png", array)
        with Image.open(path) as im:
            assert im.format == "PNG" and (mode is None or im.mode == mode), (name, im.mode)
            np.testing.assert_array_equal(np.asarray(im), array, err_msg=name)
    with_dpi = atomic_save_image(tmp_path / "dpi.png", rgb, dpi=(300, 300))  # an option: Pillow writes it
    with Image.open(with_dpi) as im:
        assert round(im.info["dpi"][0]) == 300
        np.testing.assert_array_equal(np.asarray(im), rgb)
