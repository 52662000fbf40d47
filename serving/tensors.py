"""Open Inference Protocol tensors in and out: REST JSON, the REST binary extension and gRPC.

One decoder per wire form turns a request into a checked :class:`Request` (inputs as flat Python
lists: BYTES as ``str`` or ``bytes``, numbers as ``int``/``float``/``bool``), raising
``ClientError`` naming the field for anything malformed: unknown keys, a datatype that does not
exist, a shape whose product is not the element count (or that is not one-dimensional: every
tensor here is ``[n]``), elements of the wrong type, binary sections that are truncated or of the
wrong size, a bad ``Inference-Header-Content-Length``. One encoder per wire form writes a response:
JSON with optional fields omitted (never ``null``), binary outputs when asked (per output
``binary_data`` or the request's ``binary_data_output``), gRPC always as ``raw_output_contents``
(what Triton does and ``tritonclient.grpc`` reads; the gRPC forms are in ``serving.grpc_tensors``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import orjson

from serving.contract import short
from serving.errors import ClientError

DTYPES = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
          "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
DATATYPES = (*DTYPES, "BYTES")
GRPC_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents", "BYTES": "bytes_contents"}
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs", "model_name", "model_version")  # KServe's client sends
# the last two
INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
OUTPUT_KEYS = ("name", "parameters")
MAX_NAME = 64
MAX_ID = 256
HEADER_LENGTH = "inference-header-content-length"


@dataclass
class Input:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    """A checked V2 request."""

    inputs: list[Input]
    outputs: list[Output]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    from_grpc: bool = False

    @property
    def binary_outputs(self) -> bool:
        return self.parameters.get("binary_data_output") is True


# ---- REST -------------------------------------------------------------------------------------
def decode_rest(body: bytes, header_length: str | None) -> Request:
    """A REST V2 body: JSON, or JSON followed by binary tensor data (``Inference-Header-Content-Length``)."""
    raw = b""
    if header_length is not None:
        text = header_length.strip()
        if not text.isdigit() or len(text) > 12:
            raise ClientError(f"header Inference-Header-Content-Length must be a byte count, got {short(text)}")
        n = int(text)
        if n > len(body):
            raise ClientError(f"header Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
        body, raw = body[:n], body[n:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"request body is not JSON: {str(exc)[:120]}") from None
    return from_json(doc, raw)


def from_json(doc: Any, raw: bytes = b"") -> Request:
    if not isinstance(doc, dict):
        raise ClientError(f"request body must be a JSON object with 'inputs', got {type(doc).__name__}")
    _known_keys(doc, REQUEST_KEYS, "request")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID):
        raise ClientError(f"id must be a string of at most {MAX_ID} characters, got {short(request_id)}")
    parameters = _parameters(doc.get("parameters"), "parameters")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list):
        raise ClientError("inputs: expected a list of tensors {name, datatype, shape, data}"
                          + ("" if inputs_doc is None else f", got {type(inputs_doc).__name__}"))
    inputs, offset = [], 0
    for i, item in enumerate(inputs_doc):
        tensor, offset = _json_input(item, i, raw, offset)
        inputs.append(tensor)
    if offset != len(raw):
        raise ClientError(f"binary tensor data is {len(raw)} bytes but the inputs' binary_data_size add up to {offset}")
    _unique(inputs, "input")
    outputs = _json_outputs(doc.get("outputs"))
    version = doc.get("model_version")
    if version is not None and (not isinstance(version, str) or len(version) > MAX_NAME):
        raise ClientError(f"model_version must be a string, got {short(version)}")
    return Request(inputs, outputs, request_id or None, parameters, version or None)


def _json_input(item: Any, i: int, raw: bytes, offset: int) -> tuple[Input, int]:
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise ClientError(f"{where}: expected a tensor object, got {type(item).__name__}")
    _known_keys(item, INPUT_KEYS, where)
    name = _name(item.get("name"), where)
    where = f"input {name!r}"
    datatype = _datatype(item.get("datatype"), where)
    shape = _shape(item.get("shape"), where)
    parameters = _parameters(item.get("parameters"), f"{where} parameters")
    count = prod(shape)
    size = parameters.get("binary_data_size")
    if "data" in item:
        if size is not None:
            raise ClientError(f"{where}: give either data or binary_data_size, not both")
        data = item["data"]
        if not isinstance(data, list):
            raise ClientError(f"{where}: data must be a list, got {type(data).__name__}")
        if data and isinstance(data[0], list):
            raise ClientError(f"{where}: data must be a flat list (row-major), not nested lists")
        _check_count(where, shape, len(data))
        return Input(name, datatype, shape, _json_values(data, datatype, where), parameters), offset
    if size is None:
        raise ClientError(f"{where}: has no data (and no binary_data_size)")
    if type(size) is not int or size < 0:
        raise ClientError(f"{where}: binary_data_size must be a byte count, got {short(size)}")
    if offset + size > len(raw):
        raise ClientError(f"{where}: binary_data_size {size} runs past the end of the body "
                          f"({len(raw) - offset} bytes left)")
    data = _raw_values(raw[offset: offset + size], datatype, count, where)
    return Input(name, datatype, shape, data, parameters), offset + size


def _json_outputs(doc: Any) -> list[Output]:
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise ClientError(f"outputs: expected a list of {{name}} objects, got {type(doc).__name__}")
    outputs = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise ClientError(f"outputs[{i}]: expected an object with a name, got {type(item).__name__}")
        _known_keys(item, OUTPUT_KEYS, f"outputs[{i}]")
        name = _name(item.get("name"), f"outputs[{i}]")
        params = _parameters(item.get("parameters"), f"output {name!r} parameters")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ClientError(f"output {name!r}: parameter binary_data must be true or false")
        outputs.append(Output(name, binary, params))
    _unique(outputs, "output")
    return outputs


def encode_rest(response: Any, request: Request) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a REST answer: JSON, or JSON + binary sections when any output is binary."""
    binary_default = request.binary_outputs
    wanted = {o.name: o.binary for o in request.outputs}
    outputs, raws = [], []
    for out in response.outputs:
        values = out.data
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = dict(_plain(out.parameters))
        binary = wanted.get(out.name)
        if binary if binary is not None else binary_default:
            blob = to_bytes(values, out.datatype)
            params["binary_data_size"] = len(blob)
            raws.append(blob)
        else:
            entry["data"] = (np.ascontiguousarray(values) if isinstance(values, np.ndarray) and out.datatype != "BYTES"
                             else _jsonable(values))
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        doc["model_version"] = str(response.model_version)
    if response.id:
        doc["id"] = response.id
    params = _plain(response.parameters)
    if params:
        doc["parameters"] = params
    doc["outputs"] = outputs
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return body, {"content-type": "application/json"}
    return body + b"".join(raws), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(body))}


# ---- values -----------------------------------------------------------------------------------
def to_bytes(values: Any, datatype: str) -> bytes:
    """The binary form of a tensor: little-endian numbers, or length-prefixed BYTES elements."""
    if datatype == "BYTES":
        parts, seen = [], {}  # repeated values (codes, store ids, dates) are packed once
        for v in (values.tolist() if isinstance(values, np.ndarray) else values):
            packed = seen.get(v)
            if packed is None:
                b = v if isinstance(v, bytes) else str(v).encode("utf-8")
                packed = struct.pack("<I", len(b)) + b
                if len(seen) < 4096:
                    seen[v] = packed
            parts.append(packed)
        return b"".join(parts)
    return np.ascontiguousarray(np.asarray(values, dtype=DTYPES[datatype])).tobytes()


def from_bytes(blob: bytes, datatype: str) -> np.ndarray:
    """The array of a binary tensor (numbers without a copy; BYTES as an object array of ``str``)."""
    if datatype == "BYTES":
        return np.array([b.decode("utf-8", "replace") for b in bytes_elements(blob)], dtype=object)
    size = np.dtype(DTYPES[datatype]).itemsize
    if len(blob) % size:
        raise ClientError(f"binary {datatype} data of {len(blob)} bytes is not a whole number of elements")
    return np.frombuffer(blob, dtype=DTYPES[datatype])


def binary_request(inputs: Sequence[tuple[str, str, list[int], bytes]], outputs: Sequence[str],
                   request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A REST V2 request body with every input and output binary (name, datatype, shape, bytes per input),
    and its headers: what a client of the binary tensor extension sends."""
    doc: dict[str, Any] = {
        "inputs": [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}
                   for name, datatype, shape, blob in inputs],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}
    if request_id:
        doc["id"] = request_id
    head = orjson.dumps(doc)
    return head + b"".join(blob for *_, blob in inputs), {"content-type": "application/octet-stream",
                                                           HEADER_LENGTH: str(len(head))}


def read_rest_response(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A REST V2 answer (JSON, or JSON + binary sections): its JSON document and each output as an array."""
    size = int(header_length) if header_length else len(body)
    doc = orjson.loads(body[:size])
    arrays, offset = {}, size
    for out in doc.get("outputs", []):
        length = (out.get("parameters") or {}).get("binary_data_size")
        if length is None:
            arrays[out["name"]] = np.asarray(out["data"], dtype=object if out["datatype"] == "BYTES" else None)
            continue
        if offset + length > len(body):
            raise ClientError(f"output {out['name']!r}: binary section runs past the end of the answer")
        arrays[out["name"]] = from_bytes(body[offset: offset + length], out["datatype"])
        offset += length
    return doc, arrays


def bytes_elements(blob: bytes, limit: int | None = None, where: str = "BYTES tensor") -> list[bytes]:
    """The elements of a length-prefixed BYTES tensor (at most ``limit + 1`` are read)."""
    out, offset, n = [], 0, len(blob)
    unpack = struct.unpack_from
    while offset < n:
        if offset + 4 > n:
            raise ClientError(f"{where}: binary BYTES data is truncated (a length prefix is cut)")
        (length,) = unpack("<I", blob, offset)
        offset += 4
        if offset + length > n:
            raise ClientError(f"{where}: binary BYTES element {len(out)} claims {length} bytes, "
                              f"{n - offset} are left")
        out.append(blob[offset: offset + length])
        offset += length
        if limit is not None and len(out) > limit:
            break
    return out


def _raw_values(blob: bytes, datatype: str, count: int, where: str) -> list[Any]:
    if datatype == "BYTES":
        out = bytes_elements(blob, count, where)
        if len(out) != count:
            raise ClientError(f"{where}: binary data holds {len(out)}{'+' if len(out) > count else ''} elements, "
                              f"the shape says {count}")
        return out
    size = np.dtype(DTYPES[datatype]).itemsize
    if len(blob) != count * size:
        raise ClientError(f"{where}: binary data is {len(blob)} bytes; shape and datatype {datatype} "
                          f"need {count * size}")
    return np.frombuffer(blob, dtype=DTYPES[datatype]).tolist()


def _json_values(data: list[Any], datatype: str, where: str) -> list[Any]:
    if datatype == "BYTES":
        ok = all(type(v) is str for v in data)
    elif datatype == "BOOL":
        ok = all(type(v) is bool for v in data)
    elif datatype.startswith(("INT", "UINT")):
        ok = all(type(v) is int for v in data)
        if ok and data:
            info = np.iinfo(DTYPES[datatype])
            ok = info.min <= min(data) and max(data) <= info.max
    else:
        ok = all(type(v) in (int, float) for v in data)
    if not ok:
        bad = next((i, v) for i, v in enumerate(data) if not _fits(v, datatype))
        raise ClientError(f"{where}: element {bad[0]} {short(bad[1])} is not a {datatype} value")
    return data


def _fits(v: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return type(v) is str
    if datatype == "BOOL":
        return type(v) is bool
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(DTYPES[datatype])
        return type(v) is int and info.min <= v <= info.max
    return type(v) in (int, float)


def _jsonable(values: Any) -> list[Any]:
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in items]


def _plain(params: Any) -> dict[str, Any]:
    if not params:
        return {}
    if isinstance(params, dict) and all(not hasattr(v, "WhichOneof") for v in params.values()):
        return dict(params)
    from kserve.protocol.infer_type import to_http_parameters

    return to_http_parameters(params)


# ---- checks -----------------------------------------------------------------------------------
def _known_keys(doc: dict[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in doc if k not in known]
    if unknown:
        raise ClientError(f"{where}: unknown key {short(unknown[0])}; the keys are {', '.join(known)}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise ClientError(f"{where}: name must be a printable string of 1 to {MAX_NAME} characters, "
                          f"got {short(value)}")
    return value


def _datatype(value: Any, where: str) -> str:
    if value not in DATATYPES:
        raise ClientError(f"{where}: datatype {short(value)} is not a V2 datatype ({', '.join(DATATYPES)})")
    return value


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise ClientError(f"{where}: shape must be a list of non-negative integers, got {short(value)}")
    if len(value) != 1:
        raise ClientError(f"{where}: shape must be one-dimensional [n], got {value}")
    return value


def _check_count(where: str, shape: list[int], count: int) -> None:
    if prod(shape) != count:
        raise ClientError(f"{where}: shape {shape} holds {prod(shape)} elements but {count} were sent")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(f"{where}: expected an object, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, bool | int | float | str):
            raise ClientError(f"{where}: {short(k)} must be a boolean, number or string")
    return value


def _unique(items: Sequence[Input | Output], what: str) -> None:
    seen = set()
    for item in items:
        if item.name in seen:
            raise ClientError(f"{what} {item.name!r} is given twice")
        seen.add(item.name)


def to_kserve(request: Request, model_name: str) -> Any:
    """The request as KServe's ``InferRequest`` (what ``kserve.Model`` code reads)."""
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    inputs = [InferInput(t.name, t.shape, t.datatype, t.data, t.parameters or None) for t in request.inputs]
    outputs = [RequestedOutput(o.name, {**o.parameters, **({} if o.binary is None else {"binary_data": o.binary})})
               for o in request.outputs] or None
    return InferRequest(model_name, inputs, request_id=request.id, from_grpc=request.from_grpc,
                        parameters=dict(request.parameters), request_outputs=outputs,
                        model_version=request.model_version)
