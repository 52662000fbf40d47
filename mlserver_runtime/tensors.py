"""MLServer's V2 types to the codec's tensors and back (``predictor.codec`` decodes both servers' requests).

MLServer has already turned JSON, gRPC ``*_contents`` and gRPC ``raw_input_contents`` into a ``data`` list;
:class:`Tensor` checks it as the KServe predictor's own REST and gRPC decoders do (``serving.tensors``: a
one-dimensional shape, a flat list of as many values of the datatype), with the same messages, and gives it
the shape of KServe's ``InferInput`` that the codec reads. So a request decodes to the same
:class:`~predictor.codec.Rows`, or is refused with the same 400, on either server.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver.types import RequestInput, ResponseOutput

from predictor.codec import OUTPUT_TYPES
from serving.errors import ClientError
from serving.tensors import check_count, check_shape, check_unique, check_values


class Tensor:
    """One V2 input as ``predictor.codec.TensorInput``: ``name``, ``datatype``, ``shape``, ``data``, ``as_numpy``."""

    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, request_input: RequestInput) -> None:
        self.name = request_input.name
        self.datatype = request_input.datatype
        where = f"input {self.name!r}"
        self.shape = check_shape(list(request_input.shape), where)
        data = getattr(request_input.data, "root", request_input.data)
        if not isinstance(data, list):
            raise ClientError(f"{where}: data must be a list, got {type(data).__name__}")
        if data and isinstance(data[0], list):
            raise ClientError(f"{where}: data must be a flat list (row-major), not nested lists")
        check_count(where, self.shape, len(data))
        self.data: list[Any] = check_values(data, self.datatype, where, allow_bytes=True)

    def as_numpy(self) -> np.ndarray:
        return np.asarray(self.data).reshape(self.shape)


def tensors(inputs: list[RequestInput]) -> list[Tensor]:
    """The request's inputs, each checked; no name given twice."""
    checked = [Tensor(i) for i in inputs]
    check_unique(checked, "input")  # type: ignore[arg-type]  # reads .name only
    return checked


def outputs(names: tuple[str, ...], values: dict[str, np.ndarray], rows: int) -> list[ResponseOutput]:
    """The named outputs, each of shape [rows] with the datatype the contract gives it."""
    return [ResponseOutput(name=name, shape=[rows], datatype=OUTPUT_TYPES[name], data=values[name].tolist())
            for name in names]
