"""Downloading data files into the cache: progress bar, checksum, nothing left behind on failure."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from .files import idx_type, np, read_at_most


def content_sha256(path: Path, gzipped: bool) -> str:
    """SHA-256 of a file's content, gunzipped first (so that recompressed copies still match). The content is an IDX
    file (every download checked this way is): no more than its header promises plus one byte is read, so a file
    that inflates far beyond it (a decompression bomb) is refused at once."""
    digest = hashlib.sha256()
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        magic = read_at_most(f, 4)
        dtype, ndim = idx_type(magic, path)
        dims = read_at_most(f, 4 * ndim)
        digest.update(magic + dims)
        left = int(np.prod([int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(len(dims) // 4)],
                           dtype=object)) * dtype.itemsize + 1
        while chunk := f.read(min(1 << 20, left)):
            digest.update(chunk)
            left -= len(chunk)
            if left == 0:
                raise DataError(f"{path}: inflates to more than its IDX header says (a corrupt or hostile file)")
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 (matches the publisher's checksum; not a security boundary alone)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_of(path: Path, kind: str, gzipped: bool) -> str:
    """'sha256' (of the content, gunzipped) or 'md5' (of the file as published)."""
    return content_sha256(path, gzipped) if kind == "sha256" else file_md5(path)


def fetch(url: str, destination: Path, checksum: tuple[str, str], manual_hint: str, timeout: float = 30.0) -> None:
    """Download `url` to `destination` atomically, verifying its checksum (kind, hex digest).

    The bytes go to a temporary file beside the destination, which is renamed only after the
    checksum matches; on any failure the temporary file is removed and DataError says how to
    get the file by hand.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _stream(url, out, destination.name, timeout)
            except DataError as exc:
                raise DataError(f"{exc}. {manual_hint}") from None
            out.flush()
            os.fsync(out.fileno())
        try:
            actual = checksum_of(tmp, checksum[0], gzipped=destination.suffix == ".gz")
        except (OSError, EOFError, gzip.BadGzipFile, DataError) as exc:
            raise DataError(f"downloaded {url} is not a valid file ({exc}). {manual_hint}") from None
        if actual != checksum[1]:
            raise DataError(f"downloaded {url} is corrupt: its {checksum[0]} is {actual}, expected {checksum[1]}. "
                            f"{manual_hint}")
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream(url: str, out, label: str, timeout: float) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn  # noqa: PLC0415

    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) URLs from the registry)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with Progress(TextColumn(f"downloading {label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      transient=True) as progress:
            task = progress.add_task("download", total=total)
            while True:
                try:
                    chunk = response.read(1 << 16)
                except OSError as exc:
                    raise DataError(f"download of {url} failed: {exc}") from None
                if not chunk:
                    break
                out.write(chunk)
                progress.advance(task, len(chunk))
