"""Tensors of the Open Inference Protocol (KServe v2) as NumPy arrays, both ways: the JSON form ({"name", "shape",
"datatype", "data"}) and the binary tensor extension Triton's clients send by default (the JSON header first, its
length in the Inference-Header-Content-Length header, then each tensor's raw little-endian bytes; a BYTES element is
its 4-byte little-endian length and then its bytes).

Everything a client can get wrong raises RequestError with the HTTP status to answer and a message that names the
tensor and says what was expected and what was found."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from ..errors import RequestError

# the protocol's datatypes; BYTES holds strings (object arrays of bytes here)
DATATYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
             "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
             "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
             "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
             "BYTES": np.dtype(object)}
HEADER_LENGTH = "Inference-Header-Content-Length"


def datatype_of(array) -> str:
    if array.dtype == object:
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == array.dtype:
            return name
    raise TypeError(f"no protocol datatype for {array.dtype}")


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(the request's JSON object, the binary tensor bytes after it) of an inference request body."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise RequestError(400, f"{HEADER_LENGTH}: expected the length of the JSON header, a whole number from 0 "
                                    f"to the body's {len(body)} bytes; found {header_length!r}")
    try:
        request = json.loads(bytes(body[:size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError(400, f"expected a JSON object with 'inputs', found {type(request).__name__}")
    return request, memoryview(body)[size:]


def decode_inputs(request: dict, binary: memoryview) -> dict[str, np.ndarray]:
    """name -> array of each tensor of request["inputs"] (JSON data or binary bytes, in order)."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs': expected a non-empty list of tensors")
    arrays, offset = {}, 0
    for i, spec in enumerate(inputs):
        array, used = _decode(spec, f"inputs[{i}]", binary[offset:])
        offset += used
        if spec["name"] in arrays:
            raise RequestError(400, f"inputs[{i}]: input {spec['name']!r} given twice")
        arrays[spec["name"]] = array
    if offset != len(binary):
        raise RequestError(400, f"the binary part of the body has {len(binary)} bytes; the inputs' binary_data_size "
                                f"add up to {offset}")
    return arrays


def _decode(spec, where: str, binary: memoryview) -> tuple[np.ndarray, int]:
    if not isinstance(spec, dict):
        raise RequestError(400, f"{where}: expected a tensor object, found {type(spec).__name__}")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise RequestError(400, f"{where}: 'name': expected a string, found {name!r}")
    where = f"input {name!r}"
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
        raise RequestError(400, f"{where}: 'shape': expected a list of non-negative integers, found {shape!r}")
    if datatype not in DATATYPES:
        raise RequestError(400, f"{where}: 'datatype': expected one of {', '.join(DATATYPES)}, found {datatype!r}")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, f"{where}: 'parameters': expected an object, found {parameters!r}")
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise RequestError(400, f"{where}: both 'data' and parameters.binary_data_size given")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise RequestError(400, f"{where}: parameters.binary_data_size {size!r}: expected the tensor's byte "
                                    f"count, at most the {len(binary)} bytes left in the body")
        return _from_bytes(binary[:size], shape, datatype, count, where), size
    if "data" not in spec:
        raise RequestError(400, f"{where}: no 'data' (or parameters.binary_data_size)")
    return _from_json(spec["data"], shape, datatype, count, where), 0


def _from_json(data, shape: list, datatype: str, count: int, where: str) -> np.ndarray:
    values = list(_flattened(data, where))
    if len(values) != count:
        raise RequestError(400, f"{where}: shape {shape} holds {count} values; 'data' has {len(values)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise RequestError(400, f"{where}: datatype BYTES: expected strings in 'data'")
        array = np.empty(count, object)
        array[:] = [v.encode("utf-8") for v in values]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise RequestError(400, f"{where}: datatype BOOL: expected true or false in 'data'")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        found = next(v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool))
        raise RequestError(400, f"{where}: datatype {datatype}: expected numbers in 'data', found {found!r}")
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and any(isinstance(v, float) for v in values):
        raise RequestError(400, f"{where}: datatype {datatype}: expected integers in 'data', found a fraction")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(values, dtype=dtype) if dtype.kind != "f" else np.array(values, np.float64).astype(dtype)
    except (OverflowError, FloatingPointError, ValueError):
        raise RequestError(400, f"{where}: a value of 'data' does not fit datatype {datatype}") from None
    return array.reshape(shape)


def _flattened(data, where: str):
    """The values of a flat or nested (row-major) JSON list."""
    stack = [iter([data])]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if isinstance(value, dict) or value is None:
                raise RequestError(400, f"{where}: 'data': expected a list of values, found {json.dumps(value)}")
            yield value
        else:
            stack.pop()


def _from_bytes(raw: memoryview, shape: list, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise RequestError(400, f"{where}: BYTES data ends inside an element's 4-byte length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise RequestError(400, f"{where}: a BYTES element of {length} bytes runs past binary_data_size")
            items.append(bytes(raw[offset:offset + length]))
            offset += length
        if len(items) != count:
            raise RequestError(400, f"{where}: shape {shape} holds {count} values; the binary data has {len(items)}")
        array = np.empty(count, object)
        array[:] = items
        return array.reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise RequestError(400, f"{where}: shape {shape} of {datatype} is {count * dtype.itemsize} bytes; "
                                f"binary_data_size is {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=True).reshape(shape)


def requested_outputs(request: dict, available: list[str],
                      ranked: dict[str, int] | None = None) -> tuple[list[str], set[str], dict[str, int]]:
    """(the output names to answer with, in order, those to send as binary data, and {name: k} of those asked for
    as their top k classes: the classification extension, parameters.classification = k, offered for the outputs
    `ranked` names with their number of classes). Without "outputs" all of them, binary when the request's
    parameters.binary_data_output says so (what Triton's client asks)."""
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, f"'parameters': expected an object, found {parameters!r}")
    every_binary = parameters.get("binary_data_output") is True
    wanted = request.get("outputs")
    if wanted is None:
        return list(available), set(available) if every_binary else set(), {}
    if not isinstance(wanted, list):
        raise RequestError(400, f"'outputs': expected a list of requested outputs, found {wanted!r}")
    names, binary, top = [], set(), {}
    ranked = ranked or {}
    for i, spec in enumerate(wanted):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in available:
            raise RequestError(400, f"outputs[{i}]: unknown output {name!r}; this model has {', '.join(available)}")
        output_parameters = spec.get("parameters") or {}
        if not isinstance(output_parameters, dict):
            raise RequestError(400, f"outputs[{i}]: 'parameters': expected an object, found {output_parameters!r}")
        count = output_parameters.get("classification")
        if count is not None:
            if name not in ranked:
                offered = f"; ask it of {', '.join(map(repr, ranked))}" if ranked else " by this model"
                raise RequestError(400, f"outputs[{i}]: parameters.classification: {name!r} holds no class scores "
                                        f"to rank{offered}")
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= ranked[name]:
                raise RequestError(400, f"outputs[{i}]: parameters.classification: expected a number of classes "
                                        f"from 1 to {ranked[name]}, found {count!r}")
            top[name] = count
        names.append(name)
        if output_parameters.get("binary_data", every_binary) is True:
            binary.add(name)
    return names, binary, top


def encode_response(head: dict, outputs: dict[str, np.ndarray], binary: set[str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of an inference response: `head` (model_name, id...) plus each output,
    as JSON data or, for the names in `binary`, as raw bytes after the JSON."""
    tensors, chunks = [], []
    for name, array in outputs.items():
        tensor = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if name in binary:
            raw = _to_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = ([v.decode("utf-8", "replace") for v in array.reshape(-1)] if array.dtype == object
                              else array.reshape(-1).tolist())
        tensors.append(tensor)
    header = json.dumps({**head, "outputs": tensors}).encode("utf-8")
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
