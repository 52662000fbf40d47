"""Open Inference Protocol tensors over gRPC: ``ModelInferRequest`` checked as strictly as REST
(``serving.rest_tensors``; the shared checks are ``serving.tensors``), answers with every output in
``raw_output_contents``."""

from __future__ import annotations

from math import prod
from typing import Any

from serving import tensors
from serving.errors import ClientError
from serving.tensors import Input, Output, Request


def decode_grpc(message: Any) -> Request:
    """A ``ModelInferRequest`` (contents or ``raw_input_contents``), checked as strictly as REST."""
    from kserve.protocol.infer_type import to_http_parameters

    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ClientError(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    if len(message.id) > tensors.MAX_ID:
        raise ClientError(f"id must be at most {tensors.MAX_ID} characters")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        name = tensors.check_name(tensor.name, f"inputs[{i}]")
        where = f"input {name!r}"
        datatype = tensors.check_datatype(tensor.datatype, where)
        shape = tensors.check_shape(list(tensor.shape), where)
        count = prod(shape)
        if raw:
            if tensor.HasField("contents"):
                raise ClientError(f"{where}: contents must be empty when raw_input_contents is used")
            data = tensors.raw_values(raw[i], datatype, count, where)
        else:
            data = _contents(tensor, datatype, where)
            tensors.check_count(where, shape, len(data))
        params = to_http_parameters(tensor.parameters) if tensor.parameters else {}
        inputs.append(Input(name, datatype, shape, data, params))
    tensors.check_unique(inputs, "input")
    outputs = []
    for i, out in enumerate(message.outputs):
        params = to_http_parameters(out.parameters) if out.parameters else {}
        outputs.append(Output(tensors.check_name(out.name, f"outputs[{i}]"), None, params))
    tensors.check_unique(outputs, "output")
    parameters = to_http_parameters(message.parameters) if message.parameters else {}
    return Request(inputs, outputs, message.id or None, parameters, message.model_version or None, True)


def encode_grpc(response: Any) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.infer_type import to_grpc_parameters

    outputs, raws = [], []
    for out in response.outputs:
        tensor = pb.ModelInferResponse.InferOutputTensor(name=out.name, datatype=out.datatype, shape=list(out.shape))
        params = tensors.plain_parameters(out.parameters)
        if params:
            for k, v in to_grpc_parameters(params).items():
                tensor.parameters[k].CopyFrom(v)
        outputs.append(tensor)
        raws.append(tensors.to_bytes(out.data, out.datatype))
    message = pb.ModelInferResponse(model_name=response.model_name, id=response.id or "", outputs=outputs,
                                    raw_output_contents=raws)
    if response.model_version is not None:
        message.model_version = str(response.model_version)
    params = tensors.plain_parameters(response.parameters)
    if params:
        for k, v in to_grpc_parameters(params).items():
            message.parameters[k].CopyFrom(v)
    return message



def _contents(tensor: Any, datatype: str, where: str) -> list[Any]:
    if datatype not in tensors.GRPC_FIELDS:
        raise ClientError(f"{where}: datatype {datatype} can only be sent as raw_input_contents")
    wanted = tensors.GRPC_FIELDS[datatype]
    contents = tensor.contents
    for f, value in contents.ListFields():
        if f.name != wanted and len(value):
            raise ClientError(f"{where}: datatype {datatype} data goes in {wanted}, not {f.name}")
    return list(getattr(contents, wanted))
