"""Open Inference Protocol tensors: the checked request every wire form decodes to, and what the forms share.

A decoder turns a request into a checked :class:`Request` (inputs as flat Python lists: BYTES as
``str`` or ``bytes``, numbers as ``int``/``float``/``bool``), raising ``ClientError`` naming the
field for anything malformed. This module holds what every wire form needs: the datatypes, the
binary form of a tensor (little-endian numbers, length-prefixed BYTES), the checks of a name,
datatype, shape and element count, and the hand-over to KServe (:func:`to_kserve`). One codec per
wire form: ``serving.rest_tensors`` (REST JSON and the binary extension), ``serving.grpc_tensors``
(gRPC ``ModelInferRequest``/``ModelInferResponse``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from serving.contract import short
from serving.errors import ClientError

DTYPES = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
          "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
DATATYPES = (*DTYPES, "BYTES")
GRPC_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents", "BYTES": "bytes_contents"}
MAX_NAME = 64
MAX_ID = 256


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


def raw_values(blob: bytes, datatype: str, count: int, where: str) -> list[Any]:
    """The elements of a binary input section, checked against the shape's ``count``."""
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


def plain_parameters(params: Any) -> dict[str, Any]:
    """Parameters as a plain dict (KServe's gRPC ``InferParameter`` values converted)."""
    if not params:
        return {}
    if isinstance(params, dict) and all(not hasattr(v, "WhichOneof") for v in params.values()):
        return dict(params)
    from kserve.protocol.infer_type import to_http_parameters

    return to_http_parameters(params)


def check_name(value: Any, where: str) -> str:
    """A tensor name: printable, 1 to ``MAX_NAME`` characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise ClientError(f"{where}: name must be a printable string of 1 to {MAX_NAME} characters, "
                          f"got {short(value)}")
    return value


def check_datatype(value: Any, where: str) -> str:
    """One of the V2 datatypes."""
    if value not in DATATYPES:
        raise ClientError(f"{where}: datatype {short(value)} is not a V2 datatype ({', '.join(DATATYPES)})")
    return value


def check_shape(value: Any, where: str) -> list[int]:
    """A one-dimensional shape ``[n]`` (every tensor here is a column)."""
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise ClientError(f"{where}: shape must be a list of non-negative integers, got {short(value)}")
    if len(value) != 1:
        raise ClientError(f"{where}: shape must be one-dimensional [n], got {value}")
    return value


def check_count(where: str, shape: list[int], count: int) -> None:
    """The shape holds as many elements as were sent."""
    if prod(shape) != count:
        raise ClientError(f"{where}: shape {shape} holds {prod(shape)} elements but {count} were sent")


def check_values(data: list[Any], datatype: str, where: str, allow_bytes: bool = False) -> list[Any]:
    """Every element a value of ``datatype`` (BYTES: strings, or also ``bytes`` where gRPC gave them)."""
    if datatype == "BYTES":
        ok = all(type(v) is str for v in data) or (allow_bytes and all(type(v) in (str, bytes) for v in data))
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
        bad = next((i, v) for i, v in enumerate(data) if not _fits(v, datatype, allow_bytes))
        raise ClientError(f"{where}: element {bad[0]} {short(bad[1])} is not a {datatype} value")
    return data


def _fits(v: Any, datatype: str, allow_bytes: bool) -> bool:
    if datatype == "BYTES":
        return type(v) is str or (allow_bytes and type(v) is bytes)
    if datatype == "BOOL":
        return type(v) is bool
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(DTYPES[datatype])
        return type(v) is int and info.min <= v <= info.max
    return type(v) in (int, float)


def check_unique(items: Sequence[Input | Output], what: str) -> None:
    """No name given twice."""
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
