"""Open Inference Protocol tensors over REST: JSON, and JSON followed by binary sections.

:func:`decode_rest` checks a body into a ``serving.tensors.Request``, raising ``ClientError`` naming
the field for anything malformed: unknown keys, a datatype that does not exist, a shape whose product
is not the element count (or that is not one-dimensional: every tensor here is ``[n]``), elements of
the wrong type, binary sections that are truncated or of the wrong size, a bad
``Inference-Header-Content-Length``. :func:`encode_rest` writes an answer: JSON with optional fields
omitted (never ``null``), binary outputs when asked (per output ``binary_data`` or the request's
``binary_data_output``). :func:`binary_request` and :func:`read_rest_response` are the client's side
(the transformer's shards, the benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import numpy as np
import orjson

from serving.contract import short
from serving.errors import ClientError
from serving.tensors import (
    MAX_ID,
    MAX_NAME,
    Input,
    Output,
    Request,
    check_count,
    check_datatype,
    check_name,
    check_shape,
    check_unique,
    check_values,
    from_bytes,
    plain_parameters,
    raw_values,
    to_bytes,
)

REQUEST_KEYS = ("id", "parameters", "inputs", "outputs", "model_name", "model_version")  # KServe's client sends
# the last two
INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
OUTPUT_KEYS = ("name", "parameters")
HEADER_LENGTH = "inference-header-content-length"


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
    check_unique(inputs, "input")
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
    name = check_name(item.get("name"), where)
    where = f"input {name!r}"
    datatype = check_datatype(item.get("datatype"), where)
    shape = check_shape(item.get("shape"), where)
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
        check_count(where, shape, len(data))
        return Input(name, datatype, shape, check_values(data, datatype, where), parameters), offset
    if size is None:
        raise ClientError(f"{where}: has no data (and no binary_data_size)")
    if type(size) is not int or size < 0:
        raise ClientError(f"{where}: binary_data_size must be a byte count, got {short(size)}")
    if offset + size > len(raw):
        raise ClientError(f"{where}: binary_data_size {size} runs past the end of the body "
                          f"({len(raw) - offset} bytes left)")
    data = raw_values(raw[offset: offset + size], datatype, count, where)
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
        name = check_name(item.get("name"), f"outputs[{i}]")
        params = _parameters(item.get("parameters"), f"output {name!r} parameters")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ClientError(f"output {name!r}: parameter binary_data must be true or false")
        outputs.append(Output(name, binary, params))
    check_unique(outputs, "output")
    return outputs


def _known_keys(doc: dict[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in doc if k not in known]
    if unknown:
        raise ClientError(f"{where}: unknown key {short(unknown[0])}; the keys are {', '.join(known)}")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(f"{where}: expected an object, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, bool | int | float | str):
            raise ClientError(f"{where}: {short(k)} must be a boolean, number or string")
    return value


def encode_rest(response: Any, request: Request) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a REST answer: JSON, or JSON + binary sections when any output is binary."""
    binary_default = request.binary_outputs
    wanted = {o.name: o.binary for o in request.outputs}
    outputs, raws = [], []
    for out in response.outputs:
        values = out.data
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = dict(plain_parameters(out.parameters))
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
    params = plain_parameters(response.parameters)
    if params:
        doc["parameters"] = params
    doc["outputs"] = outputs
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return body, {"content-type": "application/json"}
    return body + b"".join(raws), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(body))}


def _jsonable(values: Any) -> list[Any]:
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in items]


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
