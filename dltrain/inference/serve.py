"""`dltrain serve MODEL...`: trained models behind the Open Inference Protocol (KServe v2), as Triton, KServe,
MLServer and TorchServe speak it, so that a client written for any of them works unchanged; and a route for people.

    GET  /v2                                 server metadata: name, version, extensions
    GET  /v2/health/live                     200 while the server runs
    GET  /v2/health/ready                    200 once every model is loaded and has answered once (503 before)
    GET  /v2/models/{name}                   model metadata: inputs and outputs, datatypes, shapes (-1: the batch)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer             tensors in and out, as JSON or with the binary tensor extension
    POST /v2/models/{name}/predict           image files (multipart), table rows (JSON records) or texts; answers
                                             as `dltrain predict` gives them (class names, probabilities, top k)

A model takes raw inputs, as its training data was given (pixels 0-255, a table's cells, texts): it normalizes,
encodes and tokenizes them inside, exactly as `dltrain predict` does, through the same Predictor (loading.py) and
answers (answers.py). Concurrent requests to a model are gathered into one forward pass of up to max_batch_size
samples (those that arrived while the model was busy, and those arriving within max_delay_ms when it is above 0),
and the outputs split back to their requests.

A client's mistake (an unknown model, a malformed body, a wrong name, shape or datatype, an image that does not
decode, a body over the size limit, a missing token) gets a 4xx and {"error": "..."} naming what was wrong, and the
next request is served; anything else is a 500 whose traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.images import decode_image
from ..data.inputs import image_format, squeezed
from ..data.tables import Cells
from ..data.text import missing_texts
from ..errors import DltrainError, RequestError
from .answers import binary_names, binary_probabilities, class_probabilities, rows_of, to_target_units
from .loading import Predictor
from .tensors import HEADER_LENGTH, decode_inputs, encode_response, requested_outputs, split_body

log = logging.getLogger("dltrain.serve")

LARGE = 1 << 16  # a request body (bytes) or response (values) above this is parsed or encoded in a thread
OPEN_ROUTES = ("/v2/health/live", "/v2/health/ready")  # probes need no token (they tell nothing about the models)


@dataclass
class Settings:
    max_batch_size: int = 64  # samples in one forward pass; 1 turns gathering off
    max_delay_ms: float = 0.0  # how long the first request of a batch waits for others (0: those already queued)
    max_body_bytes: int = 64 << 20  # larger request bodies get 413
    max_image_pixels: int = 89_478_485
    token: str | None = None  # required as "Authorization: Bearer TOKEN" on every route but the probes


@dataclass
class ServedModel:
    """One model as the protocol describes it, and how its raw inputs become the network's."""

    name: str
    predictor: Predictor
    kind: str = field(init=False)  # "array", "table" or "text"
    inputs: list[dict] = field(init=False)  # the metadata's tensors
    outputs: list[dict] = field(init=False)

    def __post_init__(self):
        p = self.predictor
        if p.tokenizer is not None:
            self.kind = "text"
            columns = p.tokenizer.columns or ["text"]
            self.inputs = [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in columns]
        elif p.encoding is not None:
            self.kind = "table"
            self.inputs = [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in p.feature_names]
        else:
            self.kind = "array"
            self.inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, *p.input_shape]}]
        width = p.data.get("target_width") or p.data.get("classes") or 1
        if p.task == "classification":
            self.outputs = [{"name": "probabilities", "datatype": "FP64", "shape": [-1, len(p.class_names)]},
                            {"name": "prediction", "datatype": "INT64", "shape": [-1]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}]
        elif p.task == "binary":
            self.outputs = [{"name": "probability", "datatype": "FP64", "shape": [-1, width]},
                            {"name": "prediction", "datatype": "INT64", "shape": [-1, width]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1, width]}]
        else:
            self.outputs = [{"name": "prediction", "datatype": "FP64", "shape": [-1, width]}]

    @property
    def ranked(self) -> dict[str, int]:
        """The outputs the classification extension ranks, with their number of classes."""
        if self.predictor.task != "classification":
            return {}
        return {"probabilities": len(self.predictor.class_names)}

    def top_classes(self, probabilities: np.ndarray, count: int) -> np.ndarray:
        """The classification extension's answer, as Triton gives it: (n, count) BYTES of 'score:index:label', the
        classes by decreasing probability (ties: the lower index first)."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
        names = self.predictor.class_names
        return _bytes([f"{probabilities[row, c]:.6f}:{c}:{names[c]}" for row in range(len(order))
                       for c in order[row]]).reshape(len(order), count)

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": "dltrain", "inputs": self.inputs,
                "outputs": self.outputs}

    # ------------------------------------------------------------ raw inputs -> the network's
    def network_inputs(self, arrays: dict[str, np.ndarray]):
        """The (n, *input_shape) array the predictor runs, from the request's tensors by name."""
        expected = [spec["name"] for spec in self.inputs]
        unknown = [name for name in arrays if name not in expected]
        missing = [name for name in expected if name not in arrays]
        if unknown or missing:
            raise RequestError(400, f"model {self.name!r} takes the inputs {', '.join(expected)}"
                                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                                    + (f"; missing: {', '.join(missing)}" if missing else ""))
        if self.kind == "array":
            return self._array(arrays["input"])
        columns = [self._column(name, arrays[name]) for name in expected]
        if len({len(c) for c in columns}) > 1:
            raise RequestError(400, f"the inputs {', '.join(expected)} must have one value per row each; found "
                                    f"{', '.join(str(len(c)) for c in columns)}")
        rows = [tuple(column[i] for column in columns) for i in range(len(columns[0]))]
        return self.encode_rows(rows, [f"row {i}" for i in range(len(rows))])

    def _array(self, x: np.ndarray):
        shape = tuple(self.predictor.input_shape)
        if x.dtype == object or x.dtype == np.bool_:
            raise RequestError(400, f"input 'input': datatype {'BYTES' if x.dtype == object else 'BOOL'}: expected "
                                    f"numbers (FP32, FP64, FP16, UINT8 or another integer type)")
        if x.ndim < 1 or (tuple(x.shape[1:]) != shape and squeezed(x.shape[1:]) != squeezed(shape)):
            raise RequestError(400, f"input 'input': expected shape [-1, {', '.join(map(str, shape))}] (a batch of "
                                    f"inputs of shape {list(shape)}), found {list(x.shape)}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise RequestError(400, f"input 'input': expected finite numbers, found {x[index]} at index {list(index)}")
        return x.reshape(len(x), *shape)

    def _column(self, name: str, values: np.ndarray) -> list[str]:
        if values.ndim != 1 and not (values.ndim == 2 and values.shape[1] == 1):
            raise RequestError(400, f"input {name!r}: expected shape [-1] (one value per row), found "
                                    f"{list(values.shape)}")
        flat = values.reshape(-1)
        if values.dtype == object:
            try:
                return [v.decode("utf-8") for v in flat]
            except UnicodeDecodeError:
                raise RequestError(400, f"input {name!r}: BYTES values must be UTF-8 text") from None
        if self.kind == "text":
            raise RequestError(400, f"input {name!r}: expected BYTES (texts), found numbers")
        return [repr(v.item()) if values.dtype.kind == "f" else str(v.item()) for v in flat]  # cells, as in a CSV

    def encode_rows(self, rows: list[tuple], where: list[str]):
        """A table's cells or texts (one tuple per row, in the order of the inputs) as the network's inputs."""
        p = self.predictor
        if self.kind == "text" and not p.tokenizer.columns:  # one text each, as predict reads a file or a line
            blank = next((w for row, w in zip(rows, where) if not row[0].strip()), None)
            if blank is not None:
                raise RequestError(400, f"{blank}: an empty text (nothing but white space)")
        try:
            if self.kind == "table":  # cells stripped, as predict reads a CSV
                cells = [[value.strip() for value in row] for row in rows]
                return p.encoding.transform(Cells(cells, p.feature_names, where))
            texts = rows
            if p.tokenizer.columns:  # trained on a CSV's text columns: missing texts as its data.missing says
                texts = [missing_texts(tuple(t.strip() for t in row), p.tokenizer.columns, p.tokenizer.missing, w)
                         for row, w in zip(rows, where)]
            return p.tokenizer.encode(texts).reshape(len(texts), *p.input_shape)
        except DltrainError as exc:  # the data's own messages (a category never seen, a missing text)
            raise RequestError(400, str(exc)) from None

    def decode_images(self, files: list[tuple[str, bytes]], max_pixels: int):
        """Uploaded image files (name, bytes) as a (n, *input_shape) uint8 batch, converted as predict converts."""
        if self.kind != "array":
            trained_on = "texts" if self.kind == "text" else "a table"
            raise RequestError(400, f"model {self.name!r} was trained on {trained_on}, not images")
        try:
            channels, hw = image_format(tuple(self.predictor.input_shape), self.name)
        except DltrainError as exc:
            raise RequestError(400, str(exc)) from None
        pixels = []
        for name, content in files:
            try:
                pixels.append(decode_image(io.BytesIO(content), channels, hw, max_pixels, "--max-image-pixels",
                                           name=name))
            except DltrainError as exc:
                raise RequestError(400, str(exc)) from None
        return np.stack(pixels).reshape(len(files), *self.predictor.input_shape)

    # ------------------------------------------------------------ the network's outputs -> answers
    def output_tensors(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        p = self.predictor
        if p.task == "classification":
            probs, order = class_probabilities(p, outputs)
            best = order[:, 0].astype(np.int64)
            return {"probabilities": probs, "prediction": best, "label": _bytes([p.class_names[c] for c in best])}
        if p.task == "binary":
            probs, predicted = binary_probabilities(outputs)
            names = binary_names(p)
            labels = _bytes([names[v] for v in predicted.reshape(-1)]).reshape(predicted.shape)
            return {"probability": probs, "prediction": predicted, "label": labels}
        return {"prediction": to_target_units(outputs, p.data)}


def _bytes(texts: list[str]) -> np.ndarray:
    array = np.empty(len(texts), object)
    array[:] = [t.encode("utf-8") for t in texts]
    return array


class Batcher:
    """Gathers the requests of one model into forward passes: the first waits up to max_delay for others, up to
    max_batch_size samples (a larger request runs alone); requests of another dtype or per-sample shape go into
    their own pass, so that each input reaches the network as it was sent. All passes run on one thread (the
    compiled CPU kernels and the GPU take one caller at a time), off the event loop."""

    def __init__(self, run, max_batch_size: int, max_delay_ms: float, executor: ThreadPoolExecutor):
        self.run, self.max_batch_size, self.max_delay = run, max_batch_size, max_delay_ms / 1000
        self.executor = executor
        self.queue: asyncio.Queue = asyncio.Queue()
        self.passes = 0  # forward passes run
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._gather())

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None  # a request that would have made the last pass too large: the next one's first
        while True:
            batch = [carried if carried is not None else await self.queue.get()]
            carried = None
            size, deadline = len(batch[0][0]), loop.time() + self.max_delay
            while size < self.max_batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                if size + len(item[0]) > self.max_batch_size:
                    carried = item
                    break
                batch.append(item)
                size += len(item[0])
            for group in _same_kind(batch):
                await self._run(group)

    async def _run(self, group: list) -> None:
        group = [(x, future) for x, future in group if not future.cancelled()]  # its client went away
        if not group:
            return
        xs = [x for x, _ in group]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run, xs[0] if len(xs) == 1 else np.concatenate(xs))
            self.passes += 1
        except asyncio.CancelledError:  # the server is stopping
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (handed to each waiting request, which answers for it)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for x, future in group:
            if not future.done():
                future.set_result(outputs[start:start + len(x)])
            start += len(x)


def _same_kind(batch: list) -> list[list]:
    groups: dict = {}
    for x, future in batch:
        groups.setdefault((x.dtype.str, x.shape[1:]), []).append((x, future))
    return list(groups.values())


def create_app(models: list[ServedModel], settings: Settings):
    """The ASGI application (FastAPI) serving `models`."""
    by_name = {model.name: model for model in models}
    state = {"ready": False, "batchers": {}}
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dltrain-inference")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        for model in models:
            batcher = Batcher(model.predictor.run, settings.max_batch_size, settings.max_delay_ms, executor)
            batcher.start()
            state["batchers"][model.name] = batcher
        for model in models:  # the first call loads the compiled kernels: before the first request, not in it
            await loop.run_in_executor(executor, _warm_up, model)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            for batcher in state["batchers"].values():
                batcher.task.cancel()
            executor.shutdown(wait=True)

    app = FastAPI(title="dltrain serve", version=__version__, lifespan=lifespan,
                  description="Trained dltrain models over the Open Inference Protocol (KServe v2).")

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # an unknown route (404) or verb (405)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request, exc: RequestValidationError):  # a query parameter of the wrong type
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(400, problems)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if settings.token is not None and request.url.path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                return error(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                             {"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error(413, f"a request body may hold at most {settings.max_body_bytes:,} bytes; this one says "
                              f"Content-Length {length}")
        try:
            return await call_next(request)
        except Exception:  # not a client's mistake (those are answered inside): logged here, once, with its traceback
            log.exception("%s %s failed", request.method, request.url.path)
            return error(500, "internal error (logged on the server)")

    def model_named(name: str) -> ServedModel:
        model = by_name.get(name)
        if model is None:
            raise RequestError(404, f"unknown model {name!r}; served: {', '.join(by_name)}")
        return model

    async def body_of(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise RequestError(413, f"a request body may hold at most {settings.max_body_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def off_the_loop(work, size: int):
        """work(), in a thread when `size` (bytes or values) makes it long enough to hold up the event loop, which
        meanwhile accepts connections and answers the health probes; small requests skip the thread's cost."""
        return await asyncio.to_thread(work) if size > LARGE else work()

    async def run_model(model: ServedModel, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            raise RequestError(400, "no rows to predict: the inputs' first dimension is 0")
        try:
            outputs = await state["batchers"][model.name](x)
        except DltrainError as exc:  # the data's own check (an image model given other shapes, ...)
            raise RequestError(400, str(exc)) from None
        rows = np.flatnonzero(~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1))
        if len(rows):  # finite inputs far outside the training data can overflow; JSON has no NaN or Infinity
            raise RequestError(422, f"the model's output for row {int(rows[0])} is not finite ({len(rows)} of "
                                    f"{len(outputs)} rows): its inputs lie far outside the data it was trained on")
        return outputs

    @app.get("/v2")
    async def server_metadata():
        return {"name": "dltrain", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        return model_named(name).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        model_named(name)
        return JSONResponse({"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        """Tensors in, tensors out (the protocol's inference request and response)."""
        model = model_named(name)
        body = await body_of(request)

        def parse():
            payload, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            wanted = requested_outputs(payload, [spec["name"] for spec in model.outputs], model.ranked)
            return payload, wanted, model.network_inputs(decode_inputs(payload, binary))

        payload, (names, as_binary, top), x = await off_the_loop(parse, len(body))
        raw = await run_model(model, x)
        head = {"model_name": name, "model_version": "1"}
        if "id" in payload:
            head["id"] = payload["id"]

        def answer():
            outputs = model.output_tensors(raw)
            for output, count in top.items():
                outputs[output] = model.top_classes(outputs[output], count)
            return encode_response(head, {n: outputs[n] for n in names}, as_binary)

        content, header_length = await off_the_loop(answer, raw.size * max(1, len(names)))
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(header_length)})

    @app.post("/v2/models/{name}/predict")
    async def predict(name: str, request: Request, top_k: int = 1, probabilities: bool = False):
        """For people: image files as a multipart upload (any field name), table rows as JSON records
        ({"records": [{column: value}]}), or texts ({"texts": [...]}, or a text/plain body of one text a line).
        Answers as `dltrain predict` writes them, one object per input."""
        model = model_named(name)
        if top_k < 1 or (model.predictor.task == "classification" and top_k > len(model.predictor.class_names)):
            raise RequestError(400, f"top_k {top_k}: expected 1 to the model's "
                                    f"{len(model.predictor.class_names or [1])} classes")
        body = await body_of(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        ids, x = await _people_inputs(model, request, body, kind, settings)
        outputs = await run_model(model, x)
        return {"model_name": name, "predictions": rows_of(model.predictor, outputs, ids, {}, top_k, probabilities)}

    return app


async def _people_inputs(model: ServedModel, request, body: bytes, kind: str, settings: Settings):
    """(ids, network inputs) of a /predict request."""
    if kind == "multipart/form-data":
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=10_000, max_fields=1000)
        except Exception as exc:  # noqa: BLE001 (python-multipart's parse errors)
            raise RequestError(400, f"malformed multipart body: {exc}") from None
        files = [(value.filename or key, await value.read()) for key, value in form.multi_items()
                 if hasattr(value, "read")]
        if not files:
            raise RequestError(400, "a multipart upload with no files: send images as file fields")
        return [name for name, _ in files], model.decode_images(files, settings.max_image_pixels)
    if kind == "text/plain":
        if model.kind != "text":
            raise RequestError(400, f"model {model.name!r} was not trained on text; a text/plain body is for text "
                                    f"models")
        try:
            lines = [line for line in body.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise RequestError(400, "a text/plain body must be UTF-8") from None
        if not lines:
            raise RequestError(400, "a text/plain body with no texts (one text a line)")
        ids = [f"line {i + 1}" for i in range(len(lines))]
        return ids, _texts(model, [(line,) for line in lines], ids)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(payload, dict) or not ({"records", "texts"} & set(payload)):
        raise RequestError(400, "expected a multipart upload of images, a JSON object with 'records' (table rows) "
                                "or 'texts', or a text/plain body")
    if "texts" in payload:
        texts = payload["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError(400, "'texts': expected a non-empty list of strings")
        ids = [f"texts[{i}]" for i in range(len(texts))]
        return ids, _texts(model, [(t,) for t in texts], ids)
    records = payload["records"]
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise RequestError(400, "'records': expected a non-empty list of objects, one per row")
    columns = [spec["name"] for spec in model.inputs]
    if model.kind == "array":
        raise RequestError(400, f"model {model.name!r} takes arrays or images, not table records")
    rows = []
    for i, record in enumerate(records):
        absent = [c for c in columns if c not in record]
        if absent:
            raise RequestError(400, f"records[{i}]: missing {', '.join(map(repr, absent))}; the model reads "
                                    f"{', '.join(columns)}")
        values = [record[c] for c in columns]
        bad = next((v for v in values if not isinstance(v, (str, int, float)) or isinstance(v, bool)), None)
        if bad is not None:
            raise RequestError(400, f"records[{i}]: expected a text or a number per column, found {bad!r}")
        rows.append(tuple(v if isinstance(v, str) else repr(v) for v in values))
    ids = [f"records[{i}]" for i in range(len(rows))]
    return ids, model.encode_rows(rows, ids)


def _texts(model: ServedModel, rows: list[tuple], ids: list[str]) -> np.ndarray:
    if model.kind != "text":
        raise RequestError(400, f"model {model.name!r} was not trained on text")
    if len(model.inputs) > 1:
        raise RequestError(400, f"model {model.name!r} reads {len(model.inputs)} text columns "
                                f"({', '.join(s['name'] for s in model.inputs)}): send 'records' with them")
    return model.encode_rows(rows, ids)


def _warm_up(model: ServedModel) -> None:
    """One forward pass of a zero input, so that loading the kernels is not the first request's cost."""
    p = model.predictor
    p.run(np.zeros((1, *p.input_shape), np.int32 if model.kind == "text" else np.float32))


def model_names(paths) -> list[str]:
    """A served name per model: the run directory's name, or the checkpoint's or .onnx file's stem; a name two
    models would share gets its parent folder's name before it."""
    from pathlib import Path  # noqa: PLC0415

    paths = [Path(p) for p in paths]
    names = [p.name if p.is_dir() else p.stem for p in paths]
    for i, path in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = f"{path.resolve().parent.name}-{names[i]}"
    return [_route_safe(name) for name in names]


def _route_safe(name: str) -> str:
    """A name usable in a URL path segment as it is."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".") or "model"
