import gzip
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import load_config
from dltrain.data import datasets, prepare
from dltrain.data.download import content_sha256
from dltrain.data.files import read_idx
from dltrain.data.splits import normalization_stats, stratified_split
from dltrain.errors import DataError
from dltrain.training.model import build_for


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def make_idx_set(directory: Path, n_train=60, n_test=20, compress=True) -> dict:
    """A tiny MNIST-shaped dataset in IDX files; returns {file name: bytes written}."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for stem, array in arrays.items():
        name = stem + (".gz" if compress else "")
        data = gzip.compress(idx_bytes(array)) if compress else idx_bytes(array)
        (directory / name).write_bytes(data)
        written[name] = data
    return written


def test_idx_round_trip(tmp_path):
    make_idx_set(tmp_path)
    images = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8


def test_truncated_idx_is_refused_with_sizes(tmp_path):
    make_idx_set(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"header says shape \(60, 28, 28\) \(47056 bytes\) but the file has 47046"):
        read_idx(path)


def _bomb(path: Path, extra: int) -> Path:
    """A gzipped IDX file whose header says (60, 28, 28) but whose payload runs on for `extra` zero bytes more."""
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (60, 28, 28))
    compressor = gzip.GzipFile(path, "wb", compresslevel=9)
    with compressor:
        compressor.write(header)
        zeros = bytes(1 << 22)
        for _ in range((60 * 28 * 28 + extra) // len(zeros)):
            compressor.write(zeros)
        compressor.write(bytes((60 * 28 * 28 + extra) % len(zeros)))
    return path


def test_a_decompression_bomb_is_refused_after_what_its_header_promises(tmp_path, monkeypatch):
    """256 MiB of zeros behind a (60, 28, 28) header (a quarter of a MB compressed): refused after inflating no
    more than the header promises plus one byte; the download checksum stops there too."""
    import gzip
    import resource

    path = _bomb(tmp_path / "train-images-idx3-ubyte.gz", 1 << 28)
    assert path.stat().st_size < 2 << 20
    inflated, read = [], gzip.GzipFile.read

    def counting_read(self, size=-1):
        data = read(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"header says shape \(60, 28, 28\) \(47056 bytes\) but the file has more"):
        read_idx(path)
    assert sum(inflated) == 4 + 3 * 4 + 47040 + 1
    inflated.clear()
    with pytest.raises(DataError, match="inflates to more than its IDX header says"):
        content_sha256(path, gzipped=True)
    assert sum(inflated) == 4 + 3 * 4 + 47040 + 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: no gigabyte buffer
    exact = _bomb(tmp_path / "exact.gz", 0)
    assert read_idx(exact).shape == (60, 28, 28)
    assert content_sha256(exact, gzipped=True) == content_sha256(_plain(exact, tmp_path / "plain"), gzipped=False)


def _plain(path: Path, target: Path) -> Path:
    target.write_bytes(gzip.decompress(path.read_bytes()))
    return target


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


@pytest.fixture
def isolated_data_dirs(tmp_path, monkeypatch):
    """Point the cache and $DLTRAIN_DATA at empty temporary folders."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DLTRAIN_DATA", raising=False)
    return tmp_path


def test_dltrain_data_environment_variable_is_searched(isolated_data_dirs, monkeypatch):
    make_idx_set(isolated_data_dirs / "data" / "mnist")
    monkeypatch.setenv("DLTRAIN_DATA", str(isolated_data_dirs / "data"))
    raw = datasets.mnist(rng=None, download=False)
    assert raw.x_train.shape == (60, 1, 28, 28) and raw.classes == 10


def test_explicit_path_without_files_is_an_error(isolated_data_dirs):
    with pytest.raises(DataError, match="data.path .*: expected the four mnist IDX files"):
        datasets.mnist(path=str(isolated_data_dirs), rng=None)


class _Server:
    """A local HTTP server on 127.0.0.1 serving a dict of path -> bytes."""

    def __init__(self, files: dict):
        handler_files = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = handler_files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
    files = make_idx_set(tmp_path / "source")
    checksums = {name: ("sha256", content_sha256(tmp_path / "source" / name, gzipped=True)) for name in files}
    monkeypatch.setitem(datasets.IDX_SOURCES, "mnist",
                        datasets.IdxSource("unused", checksums, tuple(str(d) for d in range(10))))
    server = _Server(files)
    yield server, files
    server.close()


def test_download_into_the_cache_with_checksums(isolated_data_dirs, served_mnist):
    server, files = served_mnist
    raw = datasets.mnist(rng=None, mirror=server.url)
    cached = isolated_data_dirs / "cache" / "dltrain" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(files)
    assert raw.x_test.shape == (20, 1, 28, 28)


def test_corrupt_download_leaves_nothing_and_says_how_to_fix(isolated_data_dirs, served_mnist):
    server, files = served_mnist
    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError) as info:
        datasets.mnist(rng=None, mirror=server.url)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz is corrupt: its sha256 is" in message
    assert "To get the files by hand, download" in message
    cached = isolated_data_dirs / "cache" / "dltrain" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in [p.name for p in cached.iterdir()]
    assert not [p for p in cached.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_unreachable_server(isolated_data_dirs, served_mnist):
    server, _ = served_mnist
    with pytest.raises(DataError, match=r"cannot download .*: HTTP 404 Not Found. To get the files by hand"):
        datasets.mnist(rng=None, mirror=server.url + "missing/")


def test_stratified_split_is_deterministic_and_keeps_class_balance():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    a = stratified_split(labels, 0.1, np.random.default_rng(3), classification=True)
    b = stratified_split(labels, 0.1, np.random.default_rng(3), classification=True)
    np.testing.assert_array_equal(a[1], b[1])
    assert np.bincount(labels[a[1]]).tolist() == [10, 5, 3, 2]
    assert len(np.intersect1d(a[0], a[1])) == 0 and len(a[0]) + len(a[1]) == len(labels)


def test_normalization_statistics_come_from_the_training_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(200, 4))
    x[:, 3] = 7.0  # a constant feature
    y = rng.integers(0, 2, 200)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:10] + 100, y_test=y[:10])
    splits = prepare({"name": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.25, "normalize": "feature"},
                     "classification", 0, "cpu")
    train = splits.train.x
    np.testing.assert_allclose(train[:, :3].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train[:, :3].std(axis=0), 1, atol=1e-4)
    assert (train[:, 3] == 0).all()
    assert splits.test.x[:, :3].mean() > 20  # test data is scaled with train's statistics, not its own
    assert len(splits.train) == 150 and len(splits.val) == 50


def test_global_normalization_uses_one_mean_and_std():
    stats = normalization_stats(np.arange(12.0).reshape(3, 1, 2, 2), "global")
    assert stats["mean"].shape == (1, 1, 1) and stats["mean"].item() == 5.5


@pytest.mark.parametrize("x, y, message", [
    (np.full((10, 2), np.nan), np.zeros(10, int), r"train inputs contain NaN or Inf \(first at index \(0, 0\)\)"),
    (np.zeros((10, 2)), np.zeros(9, int), "train: 10 inputs but 9 labels"),
    (np.zeros((10, 2)), np.full(10, 0.5), "train labels: expected integer classes, got 0.5 at index 0"),
    (np.zeros((10, 2)), -np.ones(10, int), "train labels: expected classes >= 0, got -1"),
    (np.zeros((0, 2)), np.zeros(0, int), "train split is empty"),
])
def test_bad_data_is_refused_before_training(tmp_path, x, y, message):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=message):
        prepare({"name": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.0}, "classification", 0, "cpu")


def test_pickled_npz_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.savez(tmp_path / "evil.npz", x=np.array([Exploit()], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="holds Python objects"):
        datasets.npz(path=str(tmp_path / "evil.npz"), rng=None)
    assert not marker.exists()


def test_csv_with_a_label_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,1\n")
    raw = datasets.csv(path=str(tmp_path / "d.csv"), rng=None)
    assert raw.x_train.values == [["1", "2"], ["3", "4"], ["5", "6"]]  # text: encoded after the split
    np.testing.assert_array_equal(raw.y_train, [0, 1, 1])
    assert raw.feature_names == ["a", "b"] and raw.class_names is None
    splits = prepare({"name": "csv", "path": str(tmp_path / "d.csv"), "val_fraction": 0.0, "normalize": "none"},
                     "classification", 0, "cpu")
    np.testing.assert_array_equal(splits.train.x, [[1, 2], [3, 4], [5, 6]])


def test_csv_errors_name_the_line(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    with pytest.raises(DataError, match=r"d.csv:3: expected 3 columns as in the header, got 2"):
        datasets.csv(path=str(tmp_path / "d.csv"), rng=None)
    with pytest.raises(DataError, match=r"d.csv:1: no label column 'y' in the header; columns: a, b, label"):
        datasets.csv(path=str(tmp_path / "d.csv"), rng=None, label_column="y")


def test_labels_beyond_the_known_classes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, 3]))
    splits = prepare({"name": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.0}, "classification", 0,
                     "cpu")
    assert splits.classes == 4


def test_statistics_of_an_empty_split_are_the_identity():
    """No division by zero: an empty training split is refused later with its own message."""
    from dltrain.data.splits import normalization_stats

    for mode in ("feature", "global"):
        stats = normalization_stats(np.zeros((0, 2), np.float32), mode)
        assert stats["mean"].tolist() == [0.0] and stats["std"].tolist() == [1.0]


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def token_set(tmp_path, top=20, n=200, length=6):
    """Integer token ids in [0, top) whose class is whether token 1 appears in the sequence."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, top, (n, length))
    np.savez(tmp_path / "tokens.npz", x=x, y=(x == 1).any(axis=1).astype(np.int64))
    return tmp_path / "tokens.npz"


def token_config(tmp_path, data=None, vocab_size=20):
    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps({
        "seed": 0, "data": {"name": "npz", "path": str(tmp_path / "tokens.npz"), **(data or {})},
        "model": [{"sequential": [{"embedding": {"vocab_size": vocab_size, "units": 4}}, "flatten"]},
                  {"linear": {"units": 2}}],
        "training": {"epochs": 1, "batch_size": 32}}))
    return path


def test_normalize_auto_leaves_the_token_ids_of_an_embedding_as_they_are(tmp_path):
    """Was: standardized to -2..2 by normalize: auto, and training died at its first step ("indices must be in
    [0, 19], got values from -2 to 2") while `dltrain check` called the config valid."""
    token_set(tmp_path)
    config = token_config(tmp_path, {"val_fraction": 0.0})
    assert invoke("check", config).exit_code == 0
    np.testing.assert_array_equal(build_for(load_config(config)).splits.train.x,
                                  np.load(tmp_path / "tokens.npz")["x"])
    result = invoke("train", config, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output


def test_an_explicit_standardization_of_token_ids_is_refused_with_what_to_set(tmp_path):
    token_set(tmp_path)
    config = token_config(tmp_path, {"normalize": "feature"})
    for command in ("check", "train"):
        result = invoke(command, config, *(["--run-dir", tmp_path / "run"] if command == "train" else []))
        assert result.exit_code == 2
        assert result.stderr == (
            f"error: {config}:1: data.normalize: 'feature' standardizes the inputs, but model[0].sequential.layers[0]"
            f".embedding takes them as token ids (integers in [0, 19]); set data.normalize: none (or auto, which "
            f"leaves an embedding's inputs as they are)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("data, vocab_size, expected", [
    ({}, 10, "{path}: train inputs: model[0].sequential.layers[0].embedding takes token ids, integers in [0, 9]; got "
             "values from 0 to 19: set model[0].sequential.layers[0].embedding.vocab_size to at least 20"),
    ({"name": "spirals", "path": None, "classes": 2}, 20,
     "train inputs: model[0].sequential.layers[0].embedding takes token ids, integers in [0, 19]; got {value} at "
     "index {index}: an embedding's inputs are whole numbers"),
])
def test_check_refuses_inputs_an_embedding_cannot_take(tmp_path, data, vocab_size, expected):
    token_set(tmp_path)
    config = token_config(tmp_path, data, vocab_size)
    result = invoke("check", config)
    assert result.exit_code == 2
    if "{value}" in expected:  # spirals' first coordinate: a fraction
        cfg = load_config(config)
        splits = prepare(cfg.data, "classification", cfg.seed, "cpu", token_ids=True)
        expected = expected.format(value=f"{float(splits.train.x[0, 0]):g}", index=(0, 0))
    assert result.stderr == f"error: {expected.format(path=tmp_path / 'tokens.npz')}\n"


@pytest.mark.parametrize("mode", ["global", "feature"])
@pytest.mark.parametrize("device", ["cpu", "stand-in-gpu"])
def test_8_bit_inputs_stay_bytes_and_each_batch_is_normalized_to_the_bit(tmp_path, request, mode, device):
    """A split of uint8 images is kept as its bytes (a quarter of a float32 copy); every batch read from it, by index
    or by slice, is bit for bit what normalizing the whole split in float64 and rounding to float32 gives."""
    from dltrain import backend
    from dltrain.data.splits import NormalizedRows

    if device == "stand-in-gpu":
        request.getfixturevalue("fake_gpu")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 1, 6, 5), dtype=np.uint8)
    x[:, 0, 0, 0] = 3  # per feature: one constant pixel (its std becomes 1)
    y = np.arange(120) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])
    splits = prepare({"name": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.25, "normalize": mode},
                     "classification", 0, "gpu" if device != "cpu" else "cpu")
    train = splits.train.x
    assert isinstance(train, NormalizedRows) and train.rows.dtype == np.uint8 and train.rows.nbytes == 90 * 30
    assert (train.table is not None) == (mode == "global")
    raw = backend.to_numpy(train.rows)
    stats = {key: np.asarray(value, np.float64) for key, value in splits.normalization.items()}
    expected = ((raw.astype(np.float64) - stats["mean"]) / stats["std"]).astype(np.float32)
    order = rng.permutation(90)[:32]
    index = backend.to_device(order, "gpu") if device != "cpu" else order
    for batch, want in ((train[index], expected[order]), (train[5:37], expected[5:37])):
        assert backend.device_of(batch) == ("cpu" if device == "cpu" else "gpu")
        got = backend.to_numpy(batch)
        assert got.dtype == np.float32 and got.shape == want.shape and np.array_equal(got, want)
    assert train.shape == (90, 1, 6, 5) and len(train) == 90 and splits.test.x[:10].shape == (10, 1, 6, 5)
