"""Built-in datasets by name: IDX image sets, generated toy sets, Debian's word lists, and the user's .npz / .csv files,
image folders and text folders.

Every entry returns RawData (host arrays, before splitting and normalization). Generated sets
draw from `rng`, which the run's seed decides.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen

from .. import backend
from ..errors import DataError
from ..registry import NonNegativeFloat, datasets
from .download import fetch
from .files import read_idx, read_npz
from .images import DEFAULT_MAX_IMAGE_PIXELS, cached_pixels, scan_classes
from .rows import RowView, stratified_split
from .tables import labels_to_array, read_table
from .text import (
    DEFAULT_TEXT,
    DEFAULT_WORD_TEXT,
    TextOptions,
    Texts,
    WordTextOptions,
    table_texts,
    text_files,
    text_options,
)

np = backend.np

# Generated sets are for learning and tests: bounded so that a typo cannot exhaust memory.
SampleCount = Annotated[int, Gt(0), Le(10_000_000)]
SmallCount = Annotated[int, Gt(0), Le(10_000)]


@dataclass
class RawData:
    x_train: object
    y_train: object
    x_test: object = None
    y_test: object = None
    x_val: object = None  # a separately given validation split (data.val_path)
    y_val: object = None
    classes: int | None = None  # known number of classes (None: from the labels)
    class_names: list[str] | None = None
    normalize: str = "feature"  # what normalize: auto means here ('global' for images)
    feature_names: list[str] | None = None  # a table's input columns, found by name when predicting
    table_options: dict | None = None  # a table's missing / unknown_category policies (TableEncoding)
    text_options: dict | None = None  # text (x_* are Texts): the data.text options, and 'missing' (CSV text columns)


# ---------------------------------------------------------------- IDX image sets

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSource:
    base_url: str
    checksums: dict  # file name (.gz) -> (kind, hex digest)
    class_names: tuple[str, ...]


IDX_SOURCES = {
    # Content SHA-256s of the IDX payloads (independent of how the .gz was compressed).
    "fashion-mnist": IdxSource(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz":
                ("sha256", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            "train-labels-idx1-ubyte.gz":
                ("sha256", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            "t10k-images-idx3-ubyte.gz": ("sha256", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            "t10k-labels-idx1-ubyte.gz": ("sha256", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        },
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    # MNIST's publishers give MD5s of the .gz files; those are what a download is checked against.
    "mnist": IdxSource(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        tuple(str(d) for d in range(10)),
    ),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dltrain"


def search_dirs(name: str, path: str | None) -> list[Path]:
    """Where IDX files are looked for, in order."""
    dirs = []
    if path:
        dirs.append(Path(path).expanduser())
    if os.environ.get("DLTRAIN_DATA"):
        dirs.append(Path(os.environ["DLTRAIN_DATA"]) / name)
    dirs.append(cache_dir() / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(name: str, path: str | None, download: bool, mirror: str | None) -> RawData:
    source = IDX_SOURCES[name]
    searched = search_dirs(name, path)
    for directory in searched:
        found = [_find_idx(directory, stem) for stem in IDX_FILES]
        if all(found):
            break
    else:
        if path:  # an explicit path that lacks the files is a mistake, not a reason to download
            raise DataError(f"data.path {path}: expected the four {name} IDX files ({', '.join(IDX_FILES)}, "
                            f"optionally .gz) there")
        if not download:
            raise DataError(f"{name} not found in {', '.join(map(str, searched))} and data.download is false")
        found = _download_idx(name, source, mirror or source.base_url, cache_dir() / name)
    x_train, y_train, x_test, y_test = (read_idx(f) for f in found)
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{name}: {split} images {images.shape} and labels {labels.shape} do not match "
                            "(expected (N, rows, cols) and (N,))")
    return RawData(x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64),
                   classes=len(source.class_names), class_names=list(source.class_names), normalize="global")


def _download_idx(name: str, source: IdxSource, base_url: str, directory: Path) -> list[Path]:
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    hint = (f"To get the files by hand, download {', '.join(f + '.gz' for f in IDX_FILES)} from {base_url} "
            f"into {directory} (or set data.path to a folder that has them"
            + ("; on Debian or Ubuntu: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ")"))
    paths = []
    for stem in IDX_FILES:
        target = directory / f"{stem}.gz"
        if not target.is_file():
            fetch(base_url + target.name, target, source.checksums[target.name], hint)
        paths.append(target)
    return paths


@datasets.register("fashion-mnist")
def fashion_mnist(path: str | None = None, rng=None, download: bool = True, mirror: str | None = None) -> RawData:
    """Zalando's Fashion-MNIST: 28x28 grey images of 10 kinds of clothing; 60,000 train, 10,000 test."""
    return load_idx_dataset("fashion-mnist", path, download, mirror)


@datasets.register("mnist")
def mnist(path: str | None = None, rng=None, download: bool = True, mirror: str | None = None) -> RawData:
    """Handwritten digits: 28x28 grey images; 60,000 train, 10,000 test."""
    return load_idx_dataset("mnist", path, download, mirror)


# ---------------------------------------------------------------- generated sets


def _generated(make, rng, n_samples: int) -> RawData:
    """Train and test sets (a quarter the size) from the same generator."""
    x, y = make(rng, n_samples)
    x_test, y_test = make(rng, max(1, n_samples // 4))
    classes = int(max(y.max(), y_test.max())) + 1
    return RawData(x.astype(np.float32), y.astype(np.int64), x_test.astype(np.float32), y_test.astype(np.int64),
                   classes=classes, normalize="none")


@datasets.register("xor")
def xor(path: str | None = None, rng=None, n_samples: SampleCount = 400,
        noise: NonNegativeFloat = 0.15) -> RawData:
    """Points around the corners of the unit square; label 1 where exactly one coordinate is 1 (tutorial slide 36)."""
    def make(rng, n):
        corners = rng.integers(0, 2, size=(n, 2))
        return corners + rng.normal(0, noise, size=(n, 2)), corners[:, 0] ^ corners[:, 1]
    return _generated(make, rng, n_samples)


@datasets.register("spirals")
def spirals(path: str | None = None, rng=None, n_samples: SampleCount = 600, classes: SmallCount = 3,
            noise: NonNegativeFloat = 0.2, turns: NonNegativeFloat = 1.0) -> RawData:
    """Interleaved 2-D spiral arms, one class each: easy to overfit, impossible for a linear model."""
    def make(rng, n):
        labels = rng.integers(0, classes, size=n)
        radius = rng.uniform(0.05, 1.0, size=n)
        angle = 2 * math.pi * (turns * radius + labels / classes) + rng.normal(0, noise * 0.5, size=n)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1) * 2, labels
    return _generated(make, rng, n_samples)


@datasets.register("moons")
def moons(path: str | None = None, rng=None, n_samples: SampleCount = 400,
          noise: NonNegativeFloat = 0.1) -> RawData:
    """Two interleaving half circles."""
    def make(rng, n):
        labels = rng.integers(0, 2, size=n)
        t = rng.uniform(0, math.pi, size=n)
        x = np.where(labels == 0, np.cos(t), 1 - np.cos(t))
        y = np.where(labels == 0, np.sin(t), 0.5 - np.sin(t))
        return np.stack([x, y], axis=1) + rng.normal(0, noise, size=(n, 2)), labels
    return _generated(make, rng, n_samples)


@datasets.register("blobs")
def blobs(path: str | None = None, rng=None, n_samples: SampleCount = 500, classes: SmallCount = 3,
          features: SmallCount = 2, spread: NonNegativeFloat = 1.0) -> RawData:
    """Gaussian clusters, one per class, with centres fixed by the seed."""
    centres = rng.uniform(-5, 5, size=(classes, features))

    def make(rng, n):
        labels = rng.integers(0, classes, size=n)
        return centres[labels] + rng.normal(0, spread, size=(n, features)), labels
    return _generated(make, rng, n_samples)


# ---------------------------------------------------------------- the user's files


def _npz_arrays(path: Path, prefix: str = "") -> tuple:
    arrays = read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: expected arrays 'x' and 'y' in the .npz, found {', '.join(arrays) or 'none'}")
    test = (arrays.get("x_test"), arrays.get("y_test"))
    return arrays["x"], arrays["y"], test


@datasets.register("npz")
def npz(path: str | None = None, rng=None) -> RawData:
    """Your own arrays: an .npz file with 'x' (samples first) and 'y'; optional 'x_test' and 'y_test'."""
    if not path:
        raise DataError("data.path: the npz dataset needs the path of an .npz file")
    x, y, (x_test, y_test) = _npz_arrays(Path(path))
    return RawData(x, y, x_test, y_test)


@datasets.register("csv")
def csv(path: str | None = None, rng=None, label_column: str = "label", ignore_columns: list[str] | None = None,
        missing: Literal["error", "mean"] = "error", unknown_category: Literal["error", "zeros"] = "error",
        text_columns: list[str] | None = None, text: TextOptions = DEFAULT_TEXT) -> RawData:
    """Your own table: a .csv with a header row and a label column (numbers, or words: classes); feature columns of
    numbers are inputs, other columns categories (one-hot); ignore_columns (ids, notes) are left out. With
    text_columns, those columns are text, tokenized as data.text says, and no other feature column may be left;
    data.text other than its defaults without text_columns is refused (it would change nothing)."""
    if not path:
        raise DataError("data.path: the csv dataset needs the path of a .csv file")
    if not text_columns and text_options(text) != text_options(DEFAULT_TEXT):
        raise DataError("data.text: it says how text columns are tokenized, and needs data.text_columns naming them; "
                        "name the CSV's text columns in data.text_columns, or leave data.text out")
    cells, labels = read_table(Path(path), label_column, ignore_columns or [])
    y, class_names = labels_to_array(labels, cells.where, None)
    if text_columns:
        return RawData(table_texts(cells, text_columns, missing, path), y,
                       classes=len(class_names) if class_names else None, class_names=class_names, normalize="none",
                       text_options={**text_options(text), "missing": missing})
    return RawData(cells, y, classes=len(class_names) if class_names else None, class_names=class_names,
                   feature_names=cells.names, table_options={"missing": missing, "unknown_category": unknown_category})


ImageSide = Annotated[int, Gt(0), Le(4096)]


@datasets.register("image_folder")
def image_folder(path: str | None = None, rng=None, *, image_size: Annotated[list[ImageSide], MinLen(2), MaxLen(2)],
                 channels: Literal[1, 3] = 3, test_fraction: Annotated[float, Ge(0), Lt(1)] = 0.0,
                 max_image_pixels: Annotated[int, Gt(0)] = DEFAULT_MAX_IMAGE_PIXELS) -> RawData:
    """Your own images: one subfolder per class (or train/, val/, test/ folders of those), resized to image_size
    [height, width], decoded once into a cache; an image of more than max_image_pixels pixels is refused unread."""
    if not path:
        raise DataError("data.path: the image_folder dataset needs the folder of class subfolders")
    root, size = Path(path).expanduser(), tuple(image_size)
    split_roots = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    train_root = split_roots.get("train", root)
    files, labels, names = scan_classes(train_root)
    cache = cache_dir() / "images"

    def load(files, labels):
        pixels = cached_pixels(files, channels, size, cache, max_image_pixels)
        return RowView(pixels), np.asarray(labels, dtype=np.int64)

    x, y = load(files, labels)
    raw = RawData(x, y, classes=len(names), class_names=names, normalize="global")
    if "val" in split_roots:
        raw.x_val, raw.y_val = load(*scan_classes(split_roots["val"], names)[:2])
    if "test" in split_roots:
        raw.x_test, raw.y_test = load(*scan_classes(split_roots["test"], names)[:2])
    elif test_fraction > 0:
        train_rows, test_rows = stratified_split(y, test_fraction, rng, True)
        raw.x_train, raw.y_train, raw.x_test, raw.y_test = x.take(train_rows), y[train_rows], x.take(test_rows), \
            y[test_rows]
    return raw


@datasets.register("text_folder")
def text_folder(path: str | None = None, rng=None, test_fraction: Annotated[float, Ge(0), Lt(1)] = 0.0,
                text: TextOptions = DEFAULT_TEXT) -> RawData:
    """Your own texts: one subfolder per class holding one UTF-8 text file per example (or train/, val/, test/
    folders of those), tokenized as data.text says by a tokenizer fitted on the training split; token ids cached."""
    if not path:
        raise DataError("data.path: the text_folder dataset needs the folder of class subfolders")
    root = Path(path).expanduser()
    split_roots = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}

    def scan(folder, names=None):
        files, labels, names = scan_classes(folder, names, text_files, "text files", "no files")
        return Texts(files, [str(f) for f in files], True, source=str(root)), np.asarray(labels, np.int64), names

    x, y, names = scan(split_roots.get("train", root))
    raw = RawData(x, y, classes=len(names), class_names=names, normalize="none", text_options=text_options(text))
    if "val" in split_roots:
        raw.x_val, raw.y_val, _ = scan(split_roots["val"], names)
    if "test" in split_roots:
        raw.x_test, raw.y_test, _ = scan(split_roots["test"], names)
    elif test_fraction > 0:
        train_rows, test_rows = stratified_split(y, test_fraction, rng, True)
        raw.x_train, raw.y_train, raw.x_test, raw.y_test = x.take(train_rows), y[train_rows], x.take(test_rows), \
            y[test_rows]
    return raw


# language -> (its word list under /usr/share/dict, the Debian package that installs it)
WORDLISTS = {
    "english": ("american-english", "wamerican"),
    "german": ("ngerman", "wngerman"),
    "french": ("french", "wfrench"),
    "spanish": ("spanish", "wspanish"),
    "italian": ("italian", "witalian"),
    "portuguese": ("portuguese", "wportuguese"),
    "dutch": ("dutch", "wdutch"),
}
Language = Literal["english", "german", "french", "spanish", "italian", "portuguese", "dutch"]


def read_wordlist(path: Path, package: str, language: str, min_length: int) -> list[str]:
    """The words of one list, in its order, each once: lines that are letters alone (no apostrophe, hyphen, digit or
    space: English's possessives "Aaron's" are left out), NFC, at least min_length characters."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: the {language} word list is not installed (Debian, Ubuntu: apt-get install "
                        f"{package}); or leave {language} out of data.languages") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {language} word list ({exc.strerror or exc})") from None
    try:
        text = unicodedata.normalize("NFC", data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    words = dict.fromkeys(filter(str.isalpha, text.splitlines()))  # C loops: the lists hold 1.8 million lines
    return [word for word in words if len(word) >= min_length] if min_length > 1 else list(words)


@datasets.register("wordlists")
def wordlists(path: str | None = None, rng=None,
              languages: Annotated[list[Language], MinLen(2)] = tuple(WORDLISTS),
              words_per_language: Annotated[int, Gt(0), Le(1_000_000)] = 20_000,
              min_length: Annotated[int, Gt(0)] = 2, test_fraction: Annotated[float, Ge(0), Lt(1)] = 0.2,
              text: WordTextOptions = DEFAULT_WORD_TEXT) -> RawData:
    """Which language a single word is: the Debian word lists under /usr/share/dict (data.path: another folder),
    words_per_language drawn from each by the data seed; a word in more than one list (case ignored) is left out."""
    folder = Path(path or "/usr/share/dict").expanduser()
    languages = list(dict.fromkeys(languages))
    if len(languages) < 2:
        raise DataError(f"data.languages: {languages}: telling languages apart needs two or more")
    lists = {language: read_wordlist(folder / WORDLISTS[language][0], WORDLISTS[language][1], language, min_length)
             for language in languages}
    lowered = {language: set(map(str.lower, words)) for language, words in lists.items()}
    rows, labels, where = [], [], []
    for label, language in enumerate(languages):
        others = [lowered[other] for other in languages if other != language]
        words, picked = lists[language], []
        for i in rng.permutation(len(words)):  # the seed's order; ambiguous words passed over
            if not any(words[i].lower() in other for other in others):
                picked.append(i)
                if len(picked) == words_per_language:
                    break
        if not picked:
            raise DataError(f"{folder / WORDLISTS[language][0]}: no {language} word of at least {min_length} letters "
                            "that the other lists lack")
        picked.sort()
        rows += [(words[i],) for i in picked]
        labels += [label] * len(picked)
        source = str(folder / WORDLISTS[language][0])
        where += [f"{source}: {words[i]!r}" for i in picked]
    x, y = Texts(rows, where, False, source=str(folder)), np.asarray(labels, np.int64)
    raw = RawData(x, y, classes=len(languages), class_names=languages, normalize="none",
                  text_options=text_options(text, WordTextOptions))
    if test_fraction > 0:
        train_rows, test_rows = stratified_split(y, test_fraction, rng, True)
        raw.x_train, raw.y_train, raw.x_test, raw.y_test = x.take(train_rows), y[train_rows], x.take(test_rows), \
            y[test_rows]
    return raw


def read_extra_split(path: str, dataset: str, options: dict, class_names: list[str] | None = None) -> tuple:
    """(x, y) of a separately given validation or test file, in the dataset's file format (a table's word labels
    mapped to the training file's classes; its text columns as Texts)."""
    if dataset == "csv":
        cells, labels = read_table(Path(path), options.get("label_column", "label"),
                                   options.get("ignore_columns") or [])
        y = labels_to_array(labels, cells.where, class_names)[0]
        if options.get("text_columns"):
            return table_texts(cells, options["text_columns"], options.get("missing", "error"), path), y
        return cells, y
    x, y, _ = _npz_arrays(Path(path))
    return x, y
