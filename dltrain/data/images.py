"""Images as users keep them: a folder with one subfolder per class, decoded once into a cache.

    DIR/cat/001.png DIR/dog/a/b.jpg ...            classes are the subfolder names, sorted
    DIR/train/<class>/... DIR/val/... DIR/test/...  or the splits themselves

Pillow decodes whatever it reads (PNG, JPEG, BMP, GIF (first frame), TIFF, WebP); each image is converted to the
channels asked for (1: Pillow's "L", 3: "RGB", alpha dropped) and resized to image_size with the bilinear filter
(Pillow's Resampling.BILINEAR, as Keras's image_dataset_from_directory), then stored as uint8 (channels, height,
width) in a .npy file under the cache directory, keyed by the files' paths, sizes and modification times: a second
run maps that file instead of decoding again, and training reads it batch by batch (memory-mapped).

An image's width and height are read from its header before anything is decoded: one of more than max_pixels pixels
(data.max_image_pixels, predict's --max-image-pixels) is refused with a DataError naming it, as a decompression bomb
would be (an 875 KB PNG can hold 30,000 x 30,000 pixels). That limit replaces Pillow's own check and its warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from .. import backend
from ..errors import DataError
from ..limits import DEFAULT_MAX_IMAGE_PIXELS

np = backend.np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1  # change when the decoded bytes for the same files would change


def _pillow():
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:  # pragma: no cover (a dependency; only a broken install lacks it)
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def image_files(folder: Path) -> list[Path]:
    """Every image below `folder` (recursively), in sorted path order; other files are ignored."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@contextlib.contextmanager
def _own_size_check(Image):
    """Pillow's decompression-bomb check off (its warning and its error at twice its limit): dltrain checks each
    image's size against its own limit, which a user can raise."""
    pillows = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = pillows


def decode_image(path: Path, channels: int, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 limit_option: str = "data.max_image_pixels", name: str | None = None):
    """uint8 array (channels, height, width) of one image, converted and resized; DataError naming it otherwise
    (an image of more than `max_pixels` pixels, refused before decoding, names `limit_option`, which raises it).
    `path` may be a binary file object (an upload): `name` is then what messages call it."""
    Image = _pillow()
    shown = path if name is None else name
    try:
        with _own_size_check(Image), Image.open(path) as image:  # open reads the header; convert decodes
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"{shown}: {width} x {height} pixels ({width * height:,}) is over the limit of "
                                f"{max_pixels:,} pixels (a guard against decompression bombs); raise {limit_option} "
                                "to read it")
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{shown}: image file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's UnidentifiedImageError is an OSError
        raise DataError(f"{shown}: not a readable image ({exc})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _cache_key(files: list[Path], channels: int, size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, channels, list(size)]).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cached_pixels(files: list[Path], channels: int, size: tuple[int, int], cache: Path,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """The decoded images of `files`, as a read-only memory map of the cache file (decoding them first if the cache
    has no file for exactly these files, sizes and modification times). Written atomically. The pixel limit is no
    part of the cache's key: it refuses images, never changes their bytes."""
    target = cache / f"{_cache_key(files, channels, size)}.npy"
    if target.is_file():
        try:
            pixels = np.load(target, mmap_mode="r")
            if pixels.shape == (len(files), channels, *size) and pixels.dtype == np.uint8:
                return pixels
        except (OSError, ValueError):
            pass  # a damaged cache file is decoded again
    cache.mkdir(parents=True, exist_ok=True)
    temporary = cache / f".{target.stem}.{os.getpid()}.tmp.npy"
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(files), channels, *size))
        for i, path in enumerate(files):
            out[i] = decode_image(path, channels, size, max_pixels)
        out.flush()
        del out
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return np.load(target, mmap_mode="r")


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_classes(root: Path, class_names: list[str] | None = None, list_files=image_files, what: str = "images",
                 none_found: str = f"no {', '.join(IMAGE_SUFFIXES)} files") -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a folder with one subfolder per class (`list_files` finds a class's files;
    `what` and `none_found` word the errors). Given `class_names` (the training split's), a split's folders must be
    among them."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one subfolder of {what} per class)")
    found = class_folders(root)
    if class_names is None:
        if not found:
            raise DataError(f"{root}: no class folders (expected one subfolder of {what} per class)")
        if len(found) == 1:
            raise DataError(f"{root}: only one class folder ({found[0]}); classification needs two or more")
        class_names = found
    else:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} are not among the training classes "
                            f"({', '.join(class_names)})")
    files, labels = [], []
    for name in found:
        members = list_files(root / name)
        if not members:
            raise DataError(f"{root / name}: empty class folder ({none_found})")
        files += members
        labels += [class_names.index(name)] * len(members)
    return files, labels, class_names
