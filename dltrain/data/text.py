"""Text as users keep it: one file per example in class folders (text_folder), text columns of a CSV, word lists.

Text becomes token ids by a tokenizer fitted on the training split alone (after the validation split is held out,
and after a drawn test split), and stored as JSON-ready state in the checkpoint, so eval and predict tokenize with
it and never fit again. Every text is first put in Unicode normal form NFC and, with `lowercase`, lower-cased
(str.lower); then

    char       each character is a token; runs of white space (spaces, tabs, line breaks) are one space, and white
               space at the start and the end is dropped
    word       a token is a longest run of word characters: letters, digits and the underscore (Python's \\w, the
               characters c for which c.isalnum() or c == "_") and combining marks (Unicode category M, so that an
               accent NFC cannot compose, or a vowel sign of Devanagari, stays in its word); every other character
               that is not white space is a token of its own (punctuation, symbols, emoji): "Don't stop!" ->
               don ' t stop !
    bpe        the words of `word`, cut into pieces by Hugging Face tokenizers' byte-pair encoding (models.BPE),
    wordpiece  or WordPiece (models.WordPiece, continuation pieces written ##piece), trained on the training split
               (pip install 'dltrain[text]')

Only a text's first `max_length` tokens reach the model, and only they are read, normalized, split and counted: a
text is taken a segment at a time, each segment ending just after a white-space character (normalizing and
lower-casing never reach across white space, so the segments' tokens are the whole text's), and a text file is read
a block at a time until its first max_length tokens are had (for bpe and wordpiece: words, each at least one id),
never beyond `max_bytes` bytes: a longer file whose first max_length tokens do not end within them is refused.

Ids: 0 is padding, 1 is unknown (a token the training split did not keep), then with several CSV text columns one
marker per column ([column:NAME]), then the vocabulary, learned from the tokens within each training text's first
max_length (what the model sees): for char and word, the tokens that occur at least `min_count` times, most
frequent first, ties in code-point order of the token, cut so that the vocabulary (reserved ids included) holds at
most `max_vocab` ids; for bpe and wordpiece, what Hugging Face's trainer learns with vocab_size = max_vocab and
min_frequency = min_count, the reserved tokens given as its special tokens so that they take the same ids, from an
alphabet of the most frequent characters (ties in code-point order) that leaves room for them. Fitting is
deterministic: the same texts and options give the same bytes of state in every process. (Hugging Face's WordPiece
trainer is not by itself: it numbers the ##c pieces of single characters in hash-map order and breaks ties between
equally frequent pairs by those numbers, so that even the set of tokens changes from fit to fit. Here those pieces
are given to it, in the alphabet's order, with the special tokens, and the learned vocabulary is numbered afresh:
reserved tokens first, then in code-point order.)

The fitted state is checked as soon as it is fitted: a checkpoint keeps it in its safetensors header, JSON inside
JSON, where it may take at most STATE_BYTES (50 MB; safetensors refuses headers over 100 MB). Measured for the worst
case: a char token takes at most 20 bytes there (an astral character: \\ud83d\\ude42, its backslashes escaped again),
so every char vocabulary fits (all 1,114,112 code points: 22 MB); a word token of n characters takes n + 6 bytes
when ASCII, at most 14 n + 6; bpe and wordpiece tokens of ASCII letters about 40 and 18 bytes (Hugging Face's JSON
inside ours: its vocabulary and, for bpe, its merges). A word vocabulary of a million ASCII words of 8 letters takes
14 MB; one whose tokens are long or astral may not fit, and fitting it is refused with a message saying to lower
max_vocab. (No cap on max_vocab alone could promise a fit: a word token's length has no bound.)

A text's ids are cut after `max_length` tokens and right-padded with 0 to max_length: int32 arrays (N, max_length)
in the cache, which reach the model as floating-point values of the default dtype (float32 unless set otherwise), as
every input does; exact for every id (max_vocab <= 10,000,000 < 2^24).
With several CSV text columns each column is cut at max_length on its own and follows its marker: [column:title]
title ids [column:review] review ids, padded to columns x (max_length + 1).

The fitted tokenizer and each split's ids are cached under the cache directory's text/ folder (JSON and .npy, each
written to a temporary file and renamed into place, as the decoded images are), named by a hash of the options, of
what else decides the tokens (Unicode's tables: unicodedata.unidata_version; dltrain's version; for bpe and
wordpiece the version of Hugging Face tokenizers) and of what the texts are: for files their paths, sizes and
modification times, for texts held in memory (CSV cells, words) the texts themselves. A cache file is made under an
exclusive lock (flock) on a lock file beside it: of two processes (two runs, MPI ranks on one machine) wanting the
same file, one fits or tokenizes and the other waits and reads what it wrote. The ids' file is allocated in full
before it is written (posix_fallocate), so a full disk fails at once and cleanly, never part-way through a memory
map. A cache folder that cannot be used (XDG_CACHE_HOME naming a file, no permission, no space) is an error saying
so. A second run reads the files instead of tokenizing, and training reads the ids memory-mapped, so a corpus larger
than memory trains.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le

from .. import backend
from ..errors import CheckpointError, DataError
from .tables import Cells, is_missing

np = backend.np

PADDING_ID, UNKNOWN_ID = 0, 1
PADDING, UNKNOWN = "<pad>", "<unk>"
TOKENIZERS = ("char", "word", "bpe", "wordpiece")
STATE_FORMAT = 1
CACHE_VERSION = 2  # change when the ids of the same texts and options would change (2: counted within max_length)
CHUNK = 1024  # texts tokenized and written at a time
SEGMENT = 1 << 16  # characters of a text normalized and split at a time
BLOCK = 1 << 16  # bytes of a text file read at a time
DEFAULT_MAX_BYTES = 4 << 20  # 4 MiB: how far a text file may be read for its first max_length tokens
STATE_BYTES = 50_000_000  # the most a fitted state may take in a checkpoint's safetensors header (its limit: 100 MB)
INSTALL = "pip install 'dltrain[text]'"

# The limits of data.text, in one place: the dataclass's annotations, which both the config's validation and
# text_options() (options given by code) check.
MaxLength = Annotated[int, Gt(0), Le(1_000_000)]
MaxVocab = Annotated[int, Ge(3), Le(10_000_000)]  # below 2^24: every id is exact as a float32
MaxBytes = Annotated[int, Gt(0), Le(1 << 30)]


@dataclass(frozen=True)
class TextOptions:
    """How text becomes token ids (data.text)."""

    tokenizer: Literal["char", "word", "bpe", "wordpiece"] = "word"
    max_length: MaxLength = 256  # tokens kept per text; also the padded width
    max_vocab: MaxVocab = 20_000  # ids at most, padding and unknown included
    min_count: Annotated[int, Gt(0)] = 1  # a token kept in the vocabulary occurs this often in the training split
    lowercase: bool = True
    max_bytes: MaxBytes = DEFAULT_MAX_BYTES  # a text file is read at most this far for its first max_length tokens

    def __repr__(self) -> str:  # as `dltrain datasets` shows the default: as YAML writes it
        return "{" + ", ".join(f"{f.name}: {json.dumps(getattr(self, f.name))}" for f in fields(self)) + "}"


@dataclass(frozen=True, repr=False)
class WordTextOptions(TextOptions):
    """data.text of the wordlists data set: characters, case kept (a German noun's capital says German)."""

    tokenizer: Literal["char", "word", "bpe", "wordpiece"] = "char"
    max_length: MaxLength = 24
    lowercase: bool = False


DEFAULT_TEXT, DEFAULT_WORD_TEXT = TextOptions(), WordTextOptions()  # frozen: one instance is every default


def text_options(value, kind: type[TextOptions] = TextOptions) -> dict:
    """data.text as a plain mapping, whether the validated config gave the dataclass or code gave a dict (then
    checked against the dataclass's own annotations, as the config is: DataError naming the key path)."""
    from ..config.schema import Validator  # noqa: PLC0415 (the config imports the data sets)

    if isinstance(value, TextOptions):
        kind, value = type(value), asdict(value)
    validator = Validator("data", {}, {})
    options = validator.section(value, kind, ("data", "text"))
    if validator.problems:
        raise DataError(validator.problems[0][1])
    return asdict(options)


# ---------------------------------------------------------------- splitting into tokens

_SPACE = re.compile(r"\s+")
_ONE_SPACE = re.compile(r"\s")
_UP_TO_LAST_SPACE = re.compile(r"[\s\S]*\s")  # matched from a start: up to the last white space before an end
_OTHER = re.compile(r"[^\w\s]")  # neither a word character nor white space


class _WordPattern:
    """\\w or a combining mark, repeated; or one character that is neither a word character nor white space. The
    combining marks (Unicode category M) are neither \\w nor white space, so they are found among a text's other
    characters: the class holds the marks met so far (a text's matches depend only on the marks it holds), and no
    process scans all 1.1 million code points."""

    def __init__(self):
        self.seen: frozenset[str] = frozenset()  # characters neither \w nor white space, already classified
        self.marks: list[str] = []
        self.pattern = self._compiled()
        self.lock = threading.Lock()

    def _compiled(self) -> re.Pattern:
        return re.compile(r"(?:[\w" + "".join(map(re.escape, self.marks)) + r"])+|[^\w\s]")

    def findall(self, text: str) -> list[str]:
        others = set(_OTHER.findall(text))
        if not others <= self.seen:
            with self.lock:
                new = others - self.seen
                marks = sorted(c for c in new if unicodedata.category(c)[0] == "M")
                if marks:
                    self.marks = self.marks + marks
                    self.pattern = self._compiled()
                self.seen = self.seen | new
        return self.pattern.findall(text)


_WORDS = _WordPattern()


def normalized(text: str, lowercase: bool) -> str:
    text = unicodedata.normalize("NFC", text)
    return text.lower() if lowercase else text


def char_tokens(text: str) -> list[str]:
    return list(_SPACE.sub(" ", text).strip())


def word_tokens(text: str) -> list[str]:
    return _WORDS.findall(text)


def segments(text: str, size: int = SEGMENT) -> Iterator[str]:
    """`text` in pieces of about `size` characters, each but the last ending just after a white-space character
    (a piece without one runs on to the next): NFC and str.lower never reach across white space (no white-space
    character composes with what follows it, or is cased, or is skipped by the final-sigma rule), so normalizing
    and splitting each piece alone gives the whole text's tokens."""
    start, n = 0, len(text)
    while start < n:
        end = start + size
        if end >= n:
            yield text[start:]
            return
        found = _UP_TO_LAST_SPACE.match(text, start, end)
        if found is None:
            found = _ONE_SPACE.search(text, end)
        cut = found.end() if found is not None else n
        yield text[start:cut]
        start = cut


@dataclass(frozen=True)
class Head:
    """What of a text is read, normalized and split: enough for its first max_length tokens (for bpe and wordpiece
    words: each gives at least one id); a text file no further than max_bytes."""

    kind: str
    max_length: int
    lowercase: bool
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def of(cls, options: dict) -> Head:
        return cls(options["tokenizer"], options["max_length"], options["lowercase"],
                   options.get("max_bytes", DEFAULT_MAX_BYTES))

    def split(self, segment: str) -> list[str]:
        """One segment's tokens (characters for char, else words), its white space at the ends kept as one space
        for char."""
        segment = normalized(segment, self.lowercase)
        return list(_SPACE.sub(" ", segment)) if self.kind == "char" else word_tokens(segment)

    def count(self, segment: str) -> int:
        """How many tokens a segment ending in white space holds at least (char: not the space joining it to the
        next)."""
        segment = normalized(segment, self.lowercase)
        return len(char_tokens(segment)) if self.kind == "char" else len(word_tokens(segment))

    def pieces(self, text: str) -> list[str]:
        """The text's tokens (characters for char, else words), split a segment at a time: all of them, or when it
        has more than max_length, its first max_length and at least one more."""
        out: list[str] = []
        for segment in segments(text):
            tokens = self.split(segment)
            if self.kind == "char" and tokens and tokens[0] == " " and (not out or out[-1] == " "):
                del tokens[0]  # white space at the start, or a run across two segments: one space
            out += tokens
            if len(out) > self.max_length:
                return out
        if self.kind == "char" and out and out[-1] == " ":
            out.pop()
        return out


# ---------------------------------------------------------------- reading


def _read(fd: int, size: int) -> bytes:
    """One read of a text file (a test spies on it to count the bytes read)."""
    return os.read(fd, size)


def read_text_file(path: Path, head: Head | None = None) -> str:
    """A UTF-8 text file (a byte-order mark dropped): all of it, or with `head` enough of it for the first
    head.max_length tokens (it ends just after a white-space character), read a block at a time and never beyond
    head.max_bytes bytes. DataError naming it when it is missing, empty, only white space, not UTF-8 (with the first
    bad byte and its offset), or too long for max_bytes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise DataError(f"{path}: text file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _read_head(fd, path, head)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _read_head(fd: int, path: Path, head: Head | None) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    kept: list[str] = []  # decoded text up to the last white space read, its tokens counted
    rest = ""  # decoded text after it
    counted = read = 0  # tokens counted (at most the text's), bytes read
    started = False  # whether the first character is decoded (a byte-order mark there is dropped)
    while True:
        size = BLOCK if head is None else min(BLOCK, head.max_bytes - read)
        raw = _read(fd, size if size > 0 else 1)  # at max_bytes, one more byte says whether the file goes on
        if size <= 0 and raw:
            raise DataError(f"{path}: text file of {os.fstat(fd).st_size} bytes whose first {head.max_length} "
                            f"tokens do not end within its first {head.max_bytes} bytes (data.text.max_bytes); "
                            "raise data.text.max_bytes or lower data.text.max_length")
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:  # exc.object: the bytes held back from the last read, then these
            offset = read - (len(exc.object) - len(raw)) + exc.start
            raise DataError(_not_utf8(str(path), exc.object[exc.start], offset, exc.reason)) from None
        read += len(raw)
        if text and not started:
            started, text = True, text.removeprefix("\ufeff")
        if not raw:
            break
        if head is None:
            kept.append(text)
            continue
        rest += text
        found = _UP_TO_LAST_SPACE.match(rest)
        if found is None:
            continue
        segment, rest = rest[:found.end()], rest[found.end():]
        kept.append(segment)
        counted += head.count(segment)
        if counted > head.max_length:  # more tokens than are kept: each kept one is whole
            return "".join(kept)
    text = "".join(kept) + rest
    if not text:  # no bytes, or a byte-order mark alone
        raise DataError(f"{path}: empty text file (0 bytes)")
    if not text.strip():
        raise DataError(f"{path}: text file holds only white space")
    return text


def _not_utf8(where: str, byte: int, offset: int, reason: str) -> str:
    return f"{where}: not UTF-8 text: byte 0x{byte:02x} at offset {offset} ({reason}); save it as UTF-8"


def decode_text(data: bytes, where: str, what: str = "text") -> str:
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if len(data) == skip:
        raise DataError(f"{where}: empty {what} (0 bytes)")
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        raise DataError(_not_utf8(where, data[offset], offset, exc.reason)) from None
    if not text.strip():
        raise DataError(f"{where}: {what} holds only white space")
    return text


def text_files(folder: Path) -> list[Path]:
    """Every file below `folder` (recursively), in sorted path order, leaving out hidden ones (a name beginning with
    '.', such as .DS_Store, or inside such a folder)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class Texts:
    """A split's texts, read when needed: rows of one text each (a file, a word) or of one text per CSV text column.
    `rows` are file paths (read on demand: a corpus need not fit in memory) or tuples of strings; `where` names
    each row in errors (its path, or FILE:LINE)."""

    def __init__(self, rows: list, where: list[str], files: bool, columns: list[str] | None = None,
                 source: str = ""):
        self.rows, self.where, self.files, self.columns, self.source = rows, where, files, columns, source

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows),)

    def take(self, indices) -> Texts:
        return Texts([self.rows[i] for i in indices], [self.where[i] for i in indices], self.files, self.columns,
                     self.source)

    def row(self, i: int, head: Head | None = None) -> tuple[str, ...]:
        """Row i's texts; a file read only as far as `head` needs."""
        return (read_text_file(self.rows[i], head),) if self.files else self.rows[i]

    def chunks(self, size: int = CHUNK, head: Head | None = None) -> Iterator[list[tuple[str, ...]]]:
        for start in range(0, len(self.rows), size):
            yield [self.row(i, head) for i in range(start, min(start + size, len(self.rows)))]

    def identity(self) -> bytes:
        """What the texts are, for cache keys: files by path, size and modification time (as the image cache);
        texts held in memory by their content."""
        digest = hashlib.sha256(b"files" if self.files else b"texts")
        if self.files:
            for path in self.rows:
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
                digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(errors="surrogateescape"))
        else:
            for row in self.rows:
                digest.update("\0".join(row).encode(errors="surrogatepass") + b"\n\1")
        return digest.digest()


def table_texts(cells: Cells, text_columns: list[str], missing: str, path) -> Texts:
    """A CSV's text columns as Texts; any other feature column is refused (a text model's input is one sequence of
    token ids); a missing text is an error naming FILE:LINE and column, or with missing: mean an empty text."""
    names = cells.names
    absent = [name for name in text_columns if name not in names]
    if absent:
        raise DataError(f"{path}:1: data.text_columns names {', '.join(map(repr, absent))}, not among the feature "
                        f"columns; columns: {', '.join(names)}")
    if len(set(text_columns)) != len(text_columns):
        raise DataError(f"data.text_columns: {text_columns} names a column twice")
    others = [name for name in names if name not in text_columns]
    if others:
        raise DataError(f"{path}:1: column(s) {', '.join(map(repr, others))} beside data.text_columns: a text model's "
                        "input is one sequence of token ids, which cannot hold numbers or one-hot categories; list "
                        "them in data.text_columns (their values then read as words: a category, a rating) or in "
                        "data.ignore_columns")
    position = [names.index(name) for name in text_columns]
    rows = [missing_texts(tuple(values[j] for j in position), text_columns, missing, where)
            for values, where in zip(cells.values, cells.where)]
    return Texts(rows, cells.where, False, list(text_columns), str(path))


def missing_texts(texts: tuple[str, ...], columns: list[str], missing: str, where: str) -> tuple[str, ...]:
    """A CSV row's texts with missing ones ('', NA, N/A, NaN, null, None) refused or, with missing: mean, empty."""
    if not any(map(is_missing, texts)):
        return texts
    if missing == "error":
        column = columns[next(j for j, text in enumerate(texts) if is_missing(text))]
        raise DataError(f"{where}: text column {column!r} has a missing value; data.missing: mean reads a missing text "
                        "as an empty one")
    return tuple("" if is_missing(text) else text for text in texts)


# ---------------------------------------------------------------- tokenizers


def _huggingface():
    try:
        import tokenizers  # noqa: PLC0415
    except ImportError:
        raise DataError(f"the bpe and wordpiece tokenizers need Hugging Face tokenizers: {INSTALL}") from None
    return tokenizers


OPTION_KEYS = ("tokenizer", "max_length", "max_vocab", "min_count", "lowercase")  # in every state; max_bytes too


class Tokenizer:
    """Texts -> token ids (N, width) int32, right-padded with 0; fitted on the training split (`fit`), or rebuilt
    from its stored state (`from_state`)."""

    def __init__(self, options: dict, columns: list[str] | None, missing: str, tokens: list[str] | None = None,
                 huggingface: str | None = None):
        self.options, self.columns, self.missing = options, columns, missing
        self.kind, self.max_length, self.lowercase = options["tokenizer"], options["max_length"], options["lowercase"]
        self.head = Head.of(options)
        self.tokens, self.huggingface = tokens, huggingface
        if huggingface is not None:
            self._hf = _huggingface().Tokenizer.from_str(huggingface)
            self.vocab_size = self._hf.get_vocab_size()
        else:
            self._index = {token: i for i, token in enumerate(tokens)}
            self.vocab_size = len(tokens)
        self.markers = marker_ids(columns)

    @property
    def width(self) -> int:
        """Ids per row: max_length, or with several text columns each column's max_length and its marker."""
        return self.max_length if not self.markers else len(self.markers) * (self.max_length + 1)

    def pieces(self, text: str) -> list[str]:
        """The text's tokens before they become ids (char: characters; otherwise words), as far as max_length
        needs."""
        return self.head.pieces(text)

    def ids(self, texts: list[str]) -> list[list[int]]:
        if self.huggingface is not None:
            encoded = self._hf.encode_batch([self.pieces(t) for t in texts], is_pretokenized=True,
                                            add_special_tokens=False)
            return [e.ids for e in encoded]
        index = self._index
        return [[index.get(token, UNKNOWN_ID) for token in self.pieces(t)] for t in texts]

    def encode(self, rows: list[tuple[str, ...]]):
        """int32 (len(rows), width): each row's texts, cut after max_length ids each, right-padded with 0."""
        out = np.zeros((len(rows), self.width), np.int32)
        n = self.max_length
        columns = len(self.markers) or 1
        per_column = [self.ids([row[j] for row in rows]) for j in range(columns)]
        for i in range(len(rows)):
            if not self.markers:
                ids = per_column[0][i][:n]
            else:
                ids = [id_ for j, marker in enumerate(self.markers) for id_ in [marker, *per_column[j][i][:n]]]
            out[i, :len(ids)] = ids
        return out

    def state(self) -> dict:
        state = {"format": STATE_FORMAT, **self.options, "columns": self.columns, "missing": self.missing,
                 "vocab_size": self.vocab_size}
        if self.huggingface is not None:
            state["huggingface"] = self.huggingface
        else:
            state["tokens"] = self.tokens
        return state

    @classmethod
    def from_state(cls, state: dict, where: str = "checkpoint") -> Tokenizer:
        problem = state_problem(state)
        if problem:
            raise CheckpointError(f"{where}: its data.text is damaged ({problem})")
        options = {key: state[key] for key in OPTION_KEYS}
        options["max_bytes"] = state.get("max_bytes", DEFAULT_MAX_BYTES)
        try:
            tokenizer = cls(options, state["columns"], state["missing"], state.get("tokens"), state.get("huggingface"))
        except DataError:
            raise
        except Exception as exc:  # Hugging Face's own error for JSON it cannot read
            raise CheckpointError(f"{where}: its data.text.huggingface is not a tokenizer ({exc})") from None
        reserved = reserved_tokens(state["columns"])
        if tokenizer.huggingface is not None:
            found = [tokenizer._hf.token_to_id(token) for token in reserved]
            if found != list(range(len(reserved))) or tokenizer.vocab_size != state["vocab_size"]:
                raise CheckpointError(f"{where}: its data.text.huggingface does not give {', '.join(reserved)} the ids "
                                      f"0..{len(reserved) - 1} or does not hold vocab_size ids")
        return tokenizer

    @classmethod
    def fit(cls, texts: Texts, options: dict, missing: str = "error") -> Tokenizer:
        """Learn the vocabulary from the tokens within max_length of the training split's texts (read once, a chunk
        at a time, files only as far as those tokens); DataError when it is empty or its state would not fit in a
        checkpoint."""
        columns = texts.columns
        reserved = reserved_tokens(columns)
        tokenizer = options["tokenizer"]
        room = options["max_vocab"] - len(reserved)
        if room < 1:
            raise DataError(f"data.text.max_vocab {options['max_vocab']}: the {len(reserved)} reserved ids (padding, "
                            "unknown, one marker per text column) leave no room for tokens")
        source = texts.source or "data"
        empty = DataError(f"{source}: no token occurs at least {options['min_count']} time(s) in the "
                          f"{len(texts)} training text(s), so the vocabulary is empty; lower data.text.min_count")
        head = Head.of(options)
        counts = Counter()
        for chunk in texts.chunks(head=head):
            for row in chunk:
                for text in row:
                    counts.update(head.pieces(text)[:head.max_length])
        if tokenizer in ("bpe", "wordpiece"):
            hf = _fit_huggingface(counts, options, reserved, room)
            if hf.get_vocab_size() <= len(reserved):
                raise empty
            fitted = cls(options, columns, missing, huggingface=hf.to_str())
        else:
            kept = sorted((item for item in counts.items() if item[1] >= options["min_count"]),
                          key=lambda item: (-item[1], item[0]))[:room]
            if not kept:
                raise empty
            fitted = cls(options, columns, missing, tokens=reserved + [token for token, _ in kept])
        size = state_bytes(fitted.state())
        if size > STATE_BYTES:
            raise DataError(f"{source}: the fitted {tokenizer} tokenizer's {fitted.vocab_size} tokens take {size} "
                            f"bytes in a checkpoint's header, more than the {STATE_BYTES} they may (safetensors reads "
                            f"headers of at most 100 MB); lower data.text.max_vocab (now {options['max_vocab']})")
        return fitted


def state_bytes(state: dict) -> int:
    """What a tokenizer's state takes in a checkpoint's safetensors header: JSON (json.dumps, non-ASCII escaped) in
    the metadata's JSON string, its quotes and backslashes escaped again."""
    return len(json.dumps(json.dumps(state))) - 2


def reserved_tokens(columns: list[str] | None) -> list[str]:
    """Padding, unknown, and with several text columns one marker per column."""
    return [PADDING, UNKNOWN, *(f"[column:{name}]" for name in columns or [] if len(columns) > 1)]


def marker_ids(columns: list[str] | None) -> list[int]:
    return list(range(2, 2 + len(columns))) if columns and len(columns) > 1 else []


CONTINUING = "##"  # WordPiece's mark of a piece that continues a word


def _fit_huggingface(counts: Counter, options: dict, reserved: list[str], room: int):
    """A bpe or wordpiece tokenizer trained on the word counts, deterministically (see the module's docstring)."""
    tokenizers = _huggingface()
    wordpiece = options["tokenizer"] == "wordpiece"
    letters, inner = Counter(), set()  # each character's count; those that occur after a word's first character
    for word, n in counts.items():
        for c in word:
            letters[c] += n
        if wordpiece:
            inner.update(word[1:])
    alphabet, continuing = [], []  # the most frequent characters (and their ##c pieces) that fit in the room
    for c, _ in sorted(letters.items(), key=lambda item: (-item[1], item[0])):
        cost = 1 + (wordpiece and c in inner)
        if cost > room:
            break
        room -= cost
        alphabet.append(c)
        if wordpiece and c in inner:
            continuing.append(CONTINUING + c)
    model = tokenizers.models.WordPiece(unk_token=UNKNOWN) if wordpiece else tokenizers.models.BPE(unk_token=UNKNOWN)
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()  # the words come split already (word_tokens)
    trainer = (tokenizers.trainers.WordPieceTrainer if wordpiece else tokenizers.trainers.BpeTrainer)(
        vocab_size=options["max_vocab"], min_frequency=options["min_count"], special_tokens=reserved + continuing,
        initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False)

    def words():  # each word as often as it was counted (no word holds white space)
        for word, n in counts.items():
            at_once = max(1, BLOCK // (len(word) + 1))
            for start in range(0, n, at_once):
                yield " ".join([word] * min(at_once, n - start))

    hf.train_from_iterator(words(), trainer)
    if not wordpiece:
        return hf
    # The ##c pieces were special tokens only for training; the vocabulary is numbered afresh: reserved first.
    vocabulary = hf.get_vocab(with_added_tokens=False)
    order = reserved + sorted(set(vocabulary) - set(reserved))
    rebuilt = tokenizers.Tokenizer(tokenizers.models.WordPiece(
        {token: i for i, token in enumerate(order)}, unk_token=UNKNOWN, continuing_subword_prefix=CONTINUING,
        max_input_chars_per_word=100))
    rebuilt.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    rebuilt.add_special_tokens(reserved)
    return rebuilt


def state_problem(state) -> str | None:
    """What is wrong with a stored tokenizer state (a checkpoint's data.text), or None."""
    if state is None:
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"expected a tokenizer state of format {STATE_FORMAT}"
    if state.get("tokenizer") not in TOKENIZERS:
        return f"tokenizer should be one of {', '.join(TOKENIZERS)}, got {state.get('tokenizer')!r}"
    for key in ("max_length", "max_vocab", "min_count", "vocab_size", "max_bytes"):
        if key == "max_bytes" and key not in state:
            continue  # written before max_bytes existed: the default
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 1:
            return f"{key} should be a positive integer, got {state.get(key)!r}"
    if not isinstance(state.get("lowercase"), bool) or state.get("missing") not in ("error", "mean"):
        return "lowercase should be true or false, missing error or mean"
    columns = state.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        return f"columns should be a list of names or null, got {columns!r}"
    reserved = reserved_tokens(columns)
    if state["tokenizer"] in ("bpe", "wordpiece"):
        if not isinstance(state.get("huggingface"), str):
            return "huggingface should be the tokenizer's JSON text"
    else:
        tokens = state.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or len(set(tokens)) != len(
                tokens):
            return "tokens should be a list of distinct strings"
        if tokens[:len(reserved)] != reserved or len(tokens) != state["vocab_size"]:
            return f"tokens should begin with {', '.join(reserved)} and hold vocab_size ({state['vocab_size']}) tokens"
    return None


# ---------------------------------------------------------------- the cache


def environment(kind: str) -> list[str]:
    """What besides the options and the texts decides the tokens: Unicode's tables (NFC, str.lower, \\w and the
    combining marks), dltrain's version, and for bpe and wordpiece Hugging Face tokenizers' version."""
    from .. import __version__  # noqa: PLC0415 (read when asked)

    found = [unicodedata.unidata_version, __version__]
    if kind in ("bpe", "wordpiece"):
        found.append(_huggingface().__version__)
    return found


def _key(*parts) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, *parts[:-1]], sort_keys=True).encode())
    digest.update(parts[-1])
    return digest.hexdigest()[:32]


def _cache_error(folder: Path, exc: OSError) -> DataError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return DataError(f"{folder}: cannot use this folder for the text cache ({exc.strerror or exc}); "
                     + ("free some space there or " if full else "")
                     + "set XDG_CACHE_HOME to a folder that can be written")


def _usable(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(cache, exc) from None


@contextlib.contextmanager
def _locked(target: Path):
    """An exclusive lock (flock) on a lock file beside `target`, released on leaving (or when the process dies):
    of two processes wanting the same cache file, one makes it while the other waits, then reads it. Where the file
    system cannot lock, on without it: the files are still whole (renamed into place) and fits are deterministic."""
    try:  # O_NOFOLLOW: a lock file planted as a symbolic link must not make us create its target
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise _cache_error(target.parent, exc) from None
    try:
        with contextlib.suppress(OSError):  # ENOLCK: a file system without locks
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _atomic(target: Path, write) -> None:
    """write(temporary path) then rename it into place: readers see a whole file or none. A failure to write (a
    full disk) is one DataError naming the cache folder, and leaves no temporary file."""
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        write(temporary)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise _cache_error(target.parent, exc) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _reserve(path: Path) -> None:
    """Allocate all of a file's blocks now (posix_fallocate): pages of a memory map written on a full disk would
    kill the process (SIGBUS) part-way; this fails at once with ENOSPC instead. A file system that cannot allocate
    ahead is written as it is."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _cached_state(target: Path) -> Tokenizer | None:
    if target.is_file():
        try:
            return Tokenizer.from_state(json.loads(target.read_text(encoding="utf-8")), str(target))
        except (OSError, ValueError, CheckpointError):
            pass  # a damaged cache file is fitted again
    return None


def fitted(texts: Texts, options: dict, missing: str, cache: Path) -> Tokenizer:
    """The tokenizer fitted on `texts` (the training split), from the cache when these texts were fitted with these
    options (and this environment) before; fitted and written under the cache file's lock otherwise."""
    _usable(cache)
    key = _key("fit", environment(options["tokenizer"]), options, texts.columns, missing, texts.identity())
    target = cache / f"{key}.json"
    tokenizer = _cached_state(target)
    if tokenizer is not None:
        return tokenizer
    with _locked(target):
        tokenizer = _cached_state(target)  # another process may have fitted it while this one waited
        if tokenizer is None:
            tokenizer = Tokenizer.fit(texts, options, missing)
            state = json.dumps(tokenizer.state())
            _atomic(target, lambda path: path.write_text(state, encoding="utf-8"))
    return tokenizer


def _cached_ids(target: Path, shape: tuple):
    if target.is_file():
        try:
            ids = np.load(target, mmap_mode="r")
            if ids.shape == shape and ids.dtype == np.int32:
                return ids
        except (OSError, ValueError):
            pass  # a damaged cache file is written again
    return None


def cached_ids(tokenizer: Tokenizer, texts: Texts, cache: Path):
    """The token ids of `texts` as a read-only memory map (N, width) int32 of the cache file, tokenizing them first
    (a chunk at a time, written straight into the file, allocated in full first) when the cache has none for these
    texts and this tokenizer."""
    _usable(cache)
    state = json.dumps(tokenizer.state(), sort_keys=True).encode()
    key = _key("ids", environment(tokenizer.kind), hashlib.sha256(state).hexdigest(), texts.identity())
    target = cache / f"{key}.npy"
    shape = (len(texts), tokenizer.width)
    ids = _cached_ids(target, shape)
    if ids is not None:
        return ids

    def write(path):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=shape)
        _reserve(path)
        start = 0
        for chunk in texts.chunks(head=tokenizer.head):
            out[start:start + len(chunk)] = tokenizer.encode(chunk)
            start += len(chunk)
        out.flush()
        del out

    with _locked(target):
        if _cached_ids(target, shape) is None:
            _atomic(target, write)
    return np.load(target, mmap_mode="r")
