"""`dltrain serve`: the real server in a subprocess on a free port, talked to through tritonclient.http (the Open
Inference Protocol's own client, which nobody here wrote) and httpx. Its answers are `dltrain predict`'s."""

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.data.images import decode_image
from dltrain.errors import RequestError
from dltrain.inference.loading import load_predictor
from dltrain.inference.serve import Batcher
from dltrain.inference.tensors import decode_inputs, encode_response, requested_outputs, split_body

httpx = pytest.importorskip("httpx")
tritonclient_http = pytest.importorskip("tritonclient.http")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
datasets = pytest.importorskip("sklearn.datasets")

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
DIGITS = [str(d) for d in range(10)]


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three trained models: sklearn's digits as a folder of PNG images (a small CNN, and its ONNX export), iris as
    a CSV table with a categorical column, and one-line texts in class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve")
    digits = datasets.load_digits()
    pixels = (digits.images * 255 / 16).round().astype(np.uint8)
    for i in range(400):
        split = "test" if i % 5 == 0 else "train"
        folder = root / "digits" / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(folder / f"{i:04d}.png")
    iris = datasets.load_iris()
    with open(root / "iris.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "garden", "species"])
        for i, (row, label) in enumerate(zip(iris.data, iris.target)):
            writer.writerow([*map(str, row), ["north", "south"][i % 2], iris.target_names[label]])
    words = {"pos": ["good", "great", "fine", "lovely", "nice"], "neg": ["bad", "awful", "poor", "dull", "sad"]}
    rng = np.random.default_rng(0)
    for name, vocabulary in words.items():
        folder = root / "texts" / name
        folder.mkdir(parents=True)
        for i in range(30):
            (folder / f"{i:02d}.txt").write_text(" ".join(rng.choice(vocabulary, 4)) + "\n", encoding="utf-8")
    configs = {
        "digits": {"data": {"name": "image_folder", "path": str(root / "digits"), "image_size": [8, 8],
                            "channels": 1},
                   "model": [{"conv2d": {"filters": 6, "kernel_size": 3, "padding": 1}}, "relu", "flatten",
                             {"linear": {"units": 10}}]},
        "iris": {"data": {"name": "csv", "path": str(root / "iris.csv"), "label_column": "species",
                          "val_fraction": 0.2},
                 "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 3}}]},
        "reviews": {"data": {"name": "text_folder", "path": str(root / "texts"), "text": {"max_length": 6}},
                    "model": [{"embedding": {"units": 8}}, {"gru": {"units": 8}}, {"linear": {"units": 2}}]},
    }
    out = {}
    for name, config in configs.items():
        path = root / f"{name}.yaml"
        path.write_text(json.dumps({"seed": 0, **config, "optimizer": {"name": "adam", "lr": 0.02},
                                    "training": {"epochs": 3, "batch_size": 32}}))
        result = invoke("train", path, "--run-dir", root / "runs" / name, "--quiet")
        assert result.exit_code == 0, result.output
        out[name] = root / "runs" / name
    result = invoke("export", out["digits"], "--out", root / "digits_onnx.onnx")
    assert result.exit_code == 0, result.output
    out["digits_onnx"] = root / "digits_onnx.onnx"
    out["images"] = sorted((root / "digits" / "test").rglob("*.png"))
    out["root"] = root
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dltrain serve` in a subprocess; its log collected; stopped with SIGTERM."""

    def __init__(self, *args, env=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = []
        self.process = subprocess.Popen([sys.executable, "-m", "dltrain", "serve", *map(str, args), "--port",
                                         str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {})})
        threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.log)
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not get ready:\n" + "".join(self.log))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def server(runs):
    """Every model at once, each request its own forward pass (--max-batch-size 1): answers equal predict's."""
    started = Server(runs["digits"], runs["digits_onnx"], runs["iris"], runs["reviews"], "--max-batch-size", "1")
    yield started
    assert started.stop() == 0, "".join(started.log)


def predicted(run, *inputs, options=("--probabilities",), stdin=None) -> list[dict]:
    result = invoke("predict", run, *inputs, "--format", "jsonl", *options, input=stdin)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def decoded(files) -> np.ndarray:
    return np.stack([decode_image(f, 1, (8, 8)) for f in files])


# ---------------------------------------------------------------- the protocol through Triton's client


def test_health_metadata_and_readiness_through_the_triton_client(server):
    client = tritonclient_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "dltrain"
    for name in ("digits", "digits_onnx", "iris", "reviews"):
        assert client.is_model_ready(name)
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]},
                                   {"name": "prediction", "datatype": "INT64", "shape": [-1]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    iris = client.get_model_metadata("iris")
    assert [spec["name"] for spec in iris["inputs"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width",
                                                         "garden"]
    assert client.get_model_metadata("reviews")["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(Exception, match="unknown model 'nope'; served: digits, digits_onnx, iris, reviews"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_answers_equal_predict_to_the_last_bit(server, runs, binary):
    """The test images as one request (binary tensors, as Triton's client sends them by default, or JSON): the
    probabilities are predict's on the same images to the last bit (predict's batch and the request hold the same
    images: a float32 network's last bits depend on which images share a forward pass), the class and its name too."""
    client = tritonclient_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    files = runs["images"]
    pixels = decoded(files)
    tensor = tritonclient_http.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
               for name in ("probabilities", "prediction", "label")]
    result = client.infer("digits", [tensor], outputs=outputs, request_id="batch-1")
    assert result.get_response()["id"] == "batch-1"
    probabilities = result.as_numpy("probabilities")
    rows = predicted(runs["digits"], *files)
    assert probabilities.dtype == np.float64 and probabilities.shape == (len(files), 10)
    want = np.array([[row[f"probability_{d}"] for d in DIGITS] for row in rows])
    np.testing.assert_array_equal(probabilities, want)
    assert [DIGITS[i] for i in result.as_numpy("prediction")] == [row["prediction"] for row in rows]
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == [row["prediction"] for row in rows]
    assert np.mean([row["prediction"] == f.parent.name for row, f in zip(rows, files)]) > 0.7  # it learned


@pytest.mark.parametrize("binary", [True, False])
def test_the_classification_extension_ranks_classes_as_triton_does(server, runs, binary):
    """tritonclient's class_count=k asks for the top k classes of an output as 'score:index:label' (Triton's
    classification extension), highest first; the scores are the probabilities the plain output holds."""
    client = tritonclient_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    files = runs["images"][:12]
    tensor = tritonclient_http.InferInput("input", [12, 1, 8, 8], "UINT8")
    tensor.set_data_from_numpy(decoded(files), binary_data=binary)
    plain = client.infer("digits", [tensor]).as_numpy("probabilities")
    ranked = client.infer("digits", [tensor], outputs=[tritonclient_http.InferRequestedOutput(
        "probabilities", binary_data=binary, class_count=3)]).as_numpy("probabilities")
    assert ranked.shape == (12, 3)
    for row, entries in zip(plain, ranked):
        top = np.argsort(-row, kind="stable")[:3]
        assert [entry.decode() if isinstance(entry, bytes) else entry for entry in entries] == [
            f"{row[c]:.6f}:{c}:{DIGITS[c]}" for c in top]
    assert "classification" in client.get_server_metadata()["extensions"]


def test_onnx_model_answers_within_1e_6_of_predict(server, runs):
    client = tritonclient_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    files = runs["images"][:20]
    tensor = tritonclient_http.InferInput("input", [20, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(decoded(files).astype(np.float32))
    result = client.infer("digits_onnx", [tensor])  # no outputs named: all of them, binary
    want = predicted(runs["digits"], *files, options=("--probabilities", "--no-tta"))
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               [[row[f"probability_{d}"] for d in DIGITS] for row in want], rtol=0, atol=1e-6)


def test_table_and_text_models_take_their_raw_columns(server, runs):
    client = tritonclient_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    with open(runs["root"] / "iris.csv") as f:
        table = list(csv.DictReader(f))[:12]
    inputs = []
    for name in ("sepal_length", "sepal_width", "petal_length", "petal_width", "garden"):
        tensor = tritonclient_http.InferInput(name, [12], "BYTES")
        tensor.set_data_from_numpy(np.array([row[name].encode() for row in table], dtype=object))
        inputs.append(tensor)
    result = client.infer("iris", inputs)
    csv_file = runs["root"] / "iris_head.csv"
    with open(csv_file, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    rows = predicted(runs["iris"], csv_file)
    names = ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                  [[row[f"probability_{n}"] for n in names] for row in rows])
    texts = ["good great nice fine", "awful bad dull sad", "lovely poor good"]
    tensor = tritonclient_http.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    result = client.infer("reviews", [tensor])
    rows = predicted(runs["reviews"], "-", stdin="\n".join(texts) + "\n")
    np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                  [[row["probability_neg"], row["probability_pos"]] for row in rows])
    assert [v.decode() for v in result.as_numpy("label")][:2] == ["pos", "neg"]


# ---------------------------------------------------------------- the route for people


def test_predict_route_answers_as_predict_writes(server, runs):
    files = runs["images"][:7]
    upload = [("files", (f.name, f.read_bytes(), "image/png")) for f in files]
    answer = httpx.post(f"{server.url}/v2/models/digits/predict", files=upload,
                        params={"top_k": 3, "probabilities": "true"}, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()["predictions"]
    want = predicted(runs["digits"], *files, options=("--probabilities", "--top-k", "3"))
    for row, expected in zip(got, want, strict=True):
        assert row["input"] == Path(expected["input"]).name
        assert {k: v for k, v in row.items() if k != "input"} == {k: v for k, v in expected.items() if k != "input"}
    records = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "garden": "north"},
               {"sepal_length": "6.7", "sepal_width": "3.0", "petal_length": "5.2", "petal_width": "2.3",
                "garden": "south"}]
    answer = httpx.post(f"{server.url}/v2/models/iris/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [row["prediction"] for row in answer.json()["predictions"]] == ["setosa", "virginica"]
    answer = httpx.post(f"{server.url}/v2/models/reviews/predict", content="good nice\nbad awful\n",
                        headers={"content-type": "text/plain"}, timeout=30)
    assert [row["prediction"] for row in answer.json()["predictions"]] == ["pos", "neg"]


# ---------------------------------------------------------------- bad input never takes the server down


def _image_request(shape=(1, 1, 8, 8), datatype="FP32", name="input", data=None):
    count = int(np.prod(shape))
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "data": data if data is not None else [0.0] * count}]}


BAD_REQUESTS = [
    ("digits", {"json": _image_request(shape=(1, 64))}, 400,
     "input 'input': expected shape [-1, 1, 8, 8] (a batch of inputs of shape [1, 8, 8]), found [1, 64]"),
    ("digits", {"json": _image_request(datatype="BYTES", data=["x"] * 64)}, 400,
     "input 'input': datatype BYTES: expected numbers (FP32, FP64, FP16, UINT8 or another integer type)"),
    ("digits", {"json": _image_request(datatype="FP99")}, 400,
     "input 'input': 'datatype': expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, "
     "FP16, FP32, FP64, BYTES, found 'FP99'"),
    ("digits", {"json": _image_request(name="pixels")}, 400,
     "model 'digits' takes the inputs input; unknown: pixels; missing: input"),
    ("digits", {"json": _image_request(data=[0.0] * 63)}, 400, "input 'input': shape [1, 1, 8, 8] holds 64 values; "
                                                              "'data' has 63"),
    ("digits", {"json": _image_request(data=["a"] * 64)}, 400,
     "input 'input': datatype FP32: expected numbers in 'data', found 'a'"),
    ("digits", {"json": {"inputs": []}}, 400, "'inputs': expected a non-empty list of tensors"),
    ("digits", {"content": json.dumps(_image_request(data=[0.0] * 5 + [float("nan")] + [0.0] * 58)).encode()}, 400,
     "input 'input': expected finite numbers, found nan at index [0, 0, 0, 5]"),
    ("digits", {"json": _image_request(shape=(2, 1, 8, 8), datatype="FP64", data=[0.0] * 64 + [1.0e300] * 64)}, 422,
     "the model's output for row 1 is not finite (1 of 2 rows): its inputs lie far outside the data it was trained "
     "on"),
    ("digits", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, 400,
     "malformed JSON body: Expecting value: line 1 column 13 (char 12)"),
    ("digits", {"json": [1, 2]}, 400, "expected a JSON object with 'inputs', found list"),
    ("digits", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400,
     "Inference-Header-Content-Length: expected the length of the JSON header, a whole number from 0 to the body's "
     "2 bytes; found '99'"),
    ("nope", {"json": _image_request()}, 404, "unknown model 'nope'; served: digits, digits_onnx, iris, reviews"),
    ("digits", {"json": {**_image_request(), "outputs": [{"name": "logits"}]}}, 400,
     "outputs[0]: unknown output 'logits'; this model has probabilities, prediction, label"),
    ("digits", {"json": {**_image_request(), "outputs": [{"name": "probabilities",
                                                          "parameters": {"classification": 11}}]}}, 400,
     "outputs[0]: parameters.classification: expected a number of classes from 1 to 10, found 11"),
    ("digits", {"json": {**_image_request(), "outputs": [{"name": "label", "parameters": {"classification": 2}}]}},
     400, "outputs[0]: parameters.classification: 'label' holds no class scores to rank; ask it of 'probabilities'"),
    ("reviews", {"json": {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}}, 400,
     "input 'text': expected BYTES (texts), found numbers"),
    ("iris", {"json": {"inputs": [{"name": n, "shape": [1], "datatype": "BYTES", "data": ["x"]}
                                  for n in ("sepal_length", "sepal_width", "petal_length", "petal_width", "garden")]}},
     400, None),
]


@pytest.mark.parametrize("model, request_kwargs, status, message", BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_naming_the_mistake_and_the_next_is_served(server, model, request_kwargs, status,
                                                                            message):
    answer = httpx.post(f"{server.url}/v2/models/{model}/infer", timeout=30, **request_kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    if message is not None:
        assert answer.json()["error"] == message
    else:
        assert "'x'" in answer.json()["error"] and "sepal_length" in answer.json()["error"]
    good = httpx.post(f"{server.url}/v2/models/digits/infer", json=_image_request(), timeout=30)
    assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 10]


def test_bad_uploads_and_routes_get_their_own_4xx(server):
    answer = httpx.post(f"{server.url}/v2/models/digits/predict", timeout=30,
                        files=[("files", ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"))])
    assert answer.status_code == 400 and answer.json()["error"].startswith("broken.png: not a readable image (")
    answer = httpx.post(f"{server.url}/v2/models/digits/predict", json={"records": [{"a": 1}]}, timeout=30)
    assert answer.json() == {"error": "model 'digits' takes arrays or images, not table records"}
    assert httpx.get(f"{server.url}/v3/whatever", timeout=30).json() == {"error": "no route /v3/whatever"}
    answer = httpx.get(f"{server.url}/v2/models/digits/infer", timeout=30)
    assert answer.status_code == 405 and answer.json() == {"error": "GET is not allowed on /v2/models/digits/infer"}
    assert httpx.get(f"{server.url}/v2/health/live", timeout=30).json() == {"live": True}


@pytest.mark.slow
def test_64_clients_2000_requests_none_lost_each_answer_its_own(runs):
    """Batching on: concurrent requests share forward passes; every answer is its request's (its id, and the
    probabilities of its own image within float rounding of a pass of that image alone)."""
    started = Server(runs["digits"], "--max-batch-size", "64", "--max-delay-ms", "5")
    try:
        pixels = decoded(runs["images"])
        alone = load_predictor(runs["digits"]).run
        expected = np.concatenate([alone(pixels[i:i + 1]) for i in range(len(pixels))])
        expected = np.exp(expected - expected.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)

        def client(c):  # one of 64 clients, each with its own connection, sending requests c, c + 64, ...
            answers = []
            with httpx.Client(timeout=60) as session:
                for k in range(c, 2000, 64):
                    i = k % len(pixels)
                    body = {"id": f"r{k}", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8",
                                                       "data": pixels[i].reshape(-1).tolist()}],
                            "outputs": [{"name": "probabilities"}]}
                    answers.append((k, i, session.post(f"{started.url}/v2/models/digits/infer", json=body)))
            return answers

        with ThreadPoolExecutor(64) as pool:
            answers = [answer for answers in pool.map(client, range(64)) for answer in answers]
        assert len(answers) == 2000
        for k, i, answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"] == f"r{k}"
            np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected[i], rtol=0, atol=1e-6)
    finally:
        assert started.stop() == 0, "".join(started.log)


def test_sigterm_lets_the_requests_in_flight_finish_then_exits_0(runs):
    started = Server(runs["digits"], "--max-batch-size", "1")
    pixels = np.repeat(decoded(runs["images"][:1]), 20000, axis=0)  # a JSON body of 1.3 M values to read
    body = {"inputs": [{"name": "input", "shape": list(pixels.shape), "datatype": "UINT8",
                        "data": pixels.reshape(-1).tolist()}], "outputs": [{"name": "prediction"}]}
    payload = json.dumps(body).encode()

    def send(_):
        return httpx.post(f"{started.url}/v2/models/digits/infer", content=payload, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, k) for k in range(8)]
        time.sleep(0.5)  # the requests are in (the first ones running, the rest waiting for the model)
        assert not all(f.done() for f in futures)
        started.process.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 8
    assert all(len(a.json()["outputs"][0]["data"]) == 20000 for a in answers)
    assert started.process.wait(60) == 0, "".join(started.log)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started.url}/v2/health/live", timeout=5)


def test_beyond_this_machine_a_token_is_asked_for_and_checked(runs, tmp_path):
    result = invoke("serve", runs["digits"], "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --host 0.0.0.0 serves every machine that can reach this one: give "
                                     "--token-file FILE (clients then send 'Authorization: Bearer TOKEN') or "
                                     "--no-auth to serve without a token")
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    started = Server(runs["digits"], "--token-file", token, "--max-body-mb", "0.01")
    try:
        assert httpx.get(f"{started.url}/v2/health/ready", timeout=10).status_code == 200  # probes stay open
        answer = httpx.get(f"{started.url}/v2/models/digits", timeout=10)
        assert answer.status_code == 401 and answer.json() == {
            "error": "missing or wrong token: send the header 'Authorization: Bearer TOKEN'"}
        wrong = httpx.get(f"{started.url}/v2/models/digits", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(f"{started.url}/v2/models/digits", headers=auth, timeout=10).json()["name"] == "digits"
        big = _image_request(shape=(200, 1, 8, 8))
        answer = httpx.post(f"{started.url}/v2/models/digits/infer", json=big, headers=auth, timeout=10)
        assert answer.status_code == 413
        assert answer.json()["error"].startswith("a request body may hold at most 10,485 bytes; this one says "
                                                 "Content-Length ")
        assert httpx.post(f"{started.url}/v2/models/digits/infer", json=_image_request(), headers=auth,
                          timeout=10).status_code == 200
    finally:
        assert started.stop() == 0, "".join(started.log)


# ---------------------------------------------------------------- the protocol's tensors, without a server


def test_binary_tensors_round_trip_and_their_sizes_are_checked():
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4)
    words = np.array([b"ab", b"", "caf\u00e9".encode()], dtype=object)
    head = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}},
                       {"name": "w", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 19}}]}
    header = json.dumps(head).encode()
    raw = pixels.tobytes() + b"".join(len(w).to_bytes(4, "little") + w for w in words)
    request, binary = split_body(header + raw, str(len(header)))
    arrays = decode_inputs(request, binary)
    np.testing.assert_array_equal(arrays["x"], pixels)
    assert list(arrays["w"]) == list(words)
    body, length = encode_response({"model_name": "m"}, {"x": pixels, "w": words}, {"x", "w"})
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 48}
    assert body[length:] == raw
    head["inputs"][0]["parameters"]["binary_data_size"] = 44
    header = json.dumps(head).encode()
    with pytest.raises(RequestError, match=r"input 'x': shape \[3, 4\] of FP32 is 48 bytes; binary_data_size is 44"):
        decode_inputs(*split_body(header + raw, str(len(header))))
    assert requested_outputs({"parameters": {"binary_data_output": True}}, ["a", "b"]) == (["a", "b"], {"a", "b"},
                                                                                           {})
    assert requested_outputs({"outputs": [{"name": "b"}]}, ["a", "b"]) == (["b"], set(), {})
    assert requested_outputs({"outputs": [{"name": "b", "parameters": {"classification": 2}}]}, ["a", "b"],
                             {"b": 3}) == (["b"], set(), {"b": 2})
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}
    np.testing.assert_array_equal(decode_inputs(nested, memoryview(b""))["x"], [[1, 2], [3, 4]])
    nested["inputs"][0]["data"] = [[1, 2], [3, 4.5]]
    with pytest.raises(RequestError, match="datatype INT64: expected integers in 'data', found a fraction"):
        decode_inputs(nested, memoryview(b""))


def test_json_outputs_are_exact():
    """float64 outputs written as JSON numbers read back to the same bits (repr), so JSON answers equal predict."""
    values = np.array([[0.1, 1 / 3, 2.0 ** -40, 1 - 1e-16]])
    body, length = encode_response({}, {"p": values}, set())
    assert length is None
    assert json.loads(body)["outputs"][0]["data"] == values.reshape(-1).tolist()
    assert np.array_equal(np.array(json.loads(body)["outputs"][0]["data"]), values.reshape(-1))


def test_the_batcher_gathers_concurrent_requests_into_one_pass_and_splits_the_outputs_back():
    """64 requests waiting together are one forward pass (at most max_batch_size samples); each gets its own rows;
    requests of another dtype get a pass of their own; a failing pass fails each of its requests, not the batcher."""
    import asyncio

    calls = []

    def run(x):
        calls.append(x.copy())
        if (x < 0).any():
            raise ValueError("a negative input")
        return x.reshape(len(x), -1).astype(np.float64) * 2

    async def scenario():
        from concurrent.futures import ThreadPoolExecutor as Pool

        batcher = Batcher(run, max_batch_size=64, max_delay_ms=50, executor=Pool(1))
        batcher.start()
        requests = [np.full((1, 3), k, np.float32) for k in range(64)] + [np.full((2, 3), 7, np.int64)]
        answers = await asyncio.gather(*(batcher(x) for x in requests))
        for x, answer in zip(requests, answers, strict=True):
            np.testing.assert_array_equal(answer, x.reshape(len(x), -1) * 2)
        assert batcher.passes == 2 and [len(c) for c in calls] == [64, 2]  # float32 rows; the int64 request alone
        assert calls[1].dtype == np.int64
        failed = await asyncio.gather(batcher(np.full((1, 3), -1.0)), batcher(np.ones((1, 3))),
                                      return_exceptions=True)
        assert all(isinstance(f, ValueError) for f in failed)  # one pass of both: both told
        assert (await batcher(np.ones((1, 3))))[0, 0] == 2  # the batcher goes on
        big = await asyncio.gather(*(batcher(np.ones((40, 3))) for _ in range(3)))
        assert [len(b) for b in big] == [40, 40, 40] and [len(c) for c in calls[-3:]] == [40, 40, 40]  # <= 64 each
        await batcher(np.ones((100, 3)))
        assert len(calls[-1]) == 100  # a request of more than max_batch_size runs alone, whole
        batcher.task.cancel()

    asyncio.run(scenario())


def test_a_server_fault_is_one_500_logged_once_with_its_traceback_and_large_bodies_are_parsed_off_the_loop(
        runs, caplog, monkeypatch):
    """In process (Starlette's TestClient runs the app's lifespan): a fault that is not the client's is a 500 with
    no detail, its traceback in the log once; the next request is served. A body above LARGE is parsed in a thread
    and answers as a small one does."""
    from starlette.testclient import TestClient

    from dltrain.inference import serve

    model = serve.ServedModel("digits", load_predictor(runs["digits"]))
    app = serve.create_app([model], serve.Settings(max_batch_size=1))
    threads = []
    original = serve.decode_inputs
    monkeypatch.setattr(serve, "decode_inputs", lambda *a: (threads.append(threading.current_thread()),
                                                            original(*a))[1])
    with TestClient(app) as client:
        small = client.post("/v2/models/digits/infer", json=_image_request())
        assert small.status_code == 200
        many = _image_request(shape=(300, 1, 8, 8), data=[1.0] * 300 * 64)
        assert len(json.dumps(many)) > serve.LARGE
        large = client.post("/v2/models/digits/infer", json=many)
        assert large.status_code == 200
        one = client.post("/v2/models/digits/infer", json=_image_request(data=[1.0] * 64)).json()
        np.testing.assert_allclose(np.array(large.json()["outputs"][0]["data"]).reshape(300, 10),  # float32's last
                                   np.tile(one["outputs"][0]["data"], (300, 1)), rtol=1e-5)   # bits: the batch
        assert threads[0] is threads[2] and threads[1] is not threads[0]  # small ones on the loop, the large not
        monkeypatch.setattr(model, "output_tensors", lambda outputs: 1 / 0)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            failed = client.post("/v2/models/digits/infer", json=_image_request())
        assert failed.status_code == 500 and failed.json() == {"error": "internal error (logged on the server)"}
        faults = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(faults) == 1 and faults[0].getMessage() == "POST /v2/models/digits/infer failed"
        assert faults[0].exc_info[0] is ZeroDivisionError
        monkeypatch.undo()
        assert client.post("/v2/models/digits/infer", json=_image_request()).status_code == 200
