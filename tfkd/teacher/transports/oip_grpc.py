"""The Open Inference Protocol over gRPC as a :class:`tfkd.teacher.protocol.Transport` (KServe's
v2 runtimes, NVIDIA Triton, Seldon MLServer): a target ``grpc+v2://host:port``.

``inference.GRPCInferenceService/ModelMetadata`` is the model's metadata (tensors, versions,
platform; read as a TF Serving signature by :mod:`~tfkd.teacher.transports.oip`) and
``ModelInfer`` sends a batch as one typed tensor whose values travel as raw little-endian bytes
(``raw_input_contents``); the answer's output is read from ``raw_output_contents`` or, from a
server that fills them, the typed ``contents``. The channel, TLS, token and deadline are
:mod:`~tfkd.teacher.transports.grpc`'s.

The protocol's messages are built at import from their field numbers in KServe's
``grpc_predict_v2.proto`` (:data:`MESSAGES`, only the fields tfkd reads or writes; other fields of
an answer are kept as unknown fields), in a descriptor pool of tfkd's own: no generated code tied to
one protobuf release, and no clash with a ``kserve`` or ``tritonclient`` imported beside it.
"""

from __future__ import annotations

import sys

import grpc
import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol
from tfkd.teacher.transports import grpc as grpc_transport
from tfkd.teacher.transports import oip

SCHEME = "grpc+v2"
SERVICE = "inference.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
MESSAGES = {  # message -> [(field, number, type, repeated, message type)], as grpc_predict_v2.proto.
    "ModelMetadataRequest": [("name", 1, _F.TYPE_STRING, False, None),
                             ("version", 2, _F.TYPE_STRING, False, None)],
    "TensorMetadata": [("name", 1, _F.TYPE_STRING, False, None),
                       ("datatype", 2, _F.TYPE_STRING, False, None),
                       ("shape", 3, _F.TYPE_INT64, True, None)],
    "ModelMetadataResponse": [("name", 1, _F.TYPE_STRING, False, None),
                              ("versions", 2, _F.TYPE_STRING, True, None),
                              ("platform", 3, _F.TYPE_STRING, False, None),
                              ("inputs", 4, _F.TYPE_MESSAGE, True, "TensorMetadata"),
                              ("outputs", 5, _F.TYPE_MESSAGE, True, "TensorMetadata")],
    "InferTensorContents": [("bool_contents", 1, _F.TYPE_BOOL, True, None),
                            ("int_contents", 2, _F.TYPE_INT32, True, None),
                            ("int64_contents", 3, _F.TYPE_INT64, True, None),
                            ("uint_contents", 4, _F.TYPE_UINT32, True, None),
                            ("uint64_contents", 5, _F.TYPE_UINT64, True, None),
                            ("fp32_contents", 6, _F.TYPE_FLOAT, True, None),
                            ("fp64_contents", 7, _F.TYPE_DOUBLE, True, None)],
    "InferTensor": [("name", 1, _F.TYPE_STRING, False, None),  # InferInputTensor, InferOutputTensor.
                    ("datatype", 2, _F.TYPE_STRING, False, None),
                    ("shape", 3, _F.TYPE_INT64, True, None),
                    ("contents", 5, _F.TYPE_MESSAGE, False, "InferTensorContents")],
    "InferRequestedOutputTensor": [("name", 1, _F.TYPE_STRING, False, None)],
    "ModelInferRequest": [("model_name", 1, _F.TYPE_STRING, False, None),
                          ("model_version", 2, _F.TYPE_STRING, False, None),
                          ("inputs", 5, _F.TYPE_MESSAGE, True, "InferTensor"),
                          ("outputs", 6, _F.TYPE_MESSAGE, True, "InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, _F.TYPE_BYTES, True, None)],
    "ModelInferResponse": [("model_name", 1, _F.TYPE_STRING, False, None),
                           ("model_version", 2, _F.TYPE_STRING, False, None),
                           ("outputs", 5, _F.TYPE_MESSAGE, True, "InferTensor"),
                           ("raw_output_contents", 6, _F.TYPE_BYTES, True, None)],
}
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents"}
"""Which typed ``contents`` field holds a datatype's values (FP16 travels only as raw bytes)."""


def _messages() -> dict:
    """The message classes of :data:`MESSAGES`, in a descriptor pool of their own."""
    file = descriptor_pb2.FileDescriptorProto(name="tfkd_oip_grpc_predict_v2.proto",
                                              package="inference", syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            message.field.add(name=field, number=number, type=kind,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
                              type_name=f".inference.{type_name}" if type_name else None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
            for name in MESSAGES}


_M = _messages()


def address(target: str) -> str:
    """The ``host:port`` of a ``grpc+v2://host:port`` target. Raises
    :class:`tfkd.errors.ConfigError` for another form."""
    rest = target.partition("://")[2]
    host, _, port = rest.rpartition(":")
    if not host or "/" in rest or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise errors.ConfigError(f"target={target!r}: expected {SCHEME}://host:port (the Open "
                                 "Inference Protocol over gRPC) with a port in 1..65535")
    return rest


class OipGrpcTransport:
    """A classifier served over the Open Inference Protocol's gRPC API (``config.target``:
    ``grpc+v2://host:port``). See :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.TransportError: UNAVAILABLE when no channel is ready within
        ``connect_timeout_s``, naming why.
      tfkd.errors.ConfigError: a target of another form, ``version_label`` (the protocol has
        none), an unreadable TLS file or token.
    """

    metadata_call = "ModelMetadata"
    predict_call = "ModelInfer"
    envelope_bytes = config_lib.REQUEST_OVERHEAD_BYTES

    def __init__(self, config: config_lib.ServingConfig):
        if config.version_label:
            raise errors.ConfigError(f"version_label={config.version_label!r}: the Open Inference "
                                     "Protocol has versions, not labels; give version")
        self.config = config
        self.address = config.target
        token = config_lib.read_secret(config.auth_token_file, config.auth_token_env)
        self._call_metadata = (((config.auth_header.lower(),
                                 f"{config.auth_scheme} {token}".strip()),) if token else None)
        self._channel = grpc_transport.ready_channel(config, address(config.target))
        self._calls = {
            "ModelMetadata": self._method("ModelMetadata", "ModelMetadataRequest",
                                          "ModelMetadataResponse"),
            "ModelInfer": self._method("ModelInfer", "ModelInferRequest", "ModelInferResponse")}

    def _method(self, name: str, request: str, response: str):
        return self._channel.unary_unary(f"/{SERVICE}/{name}",
                                         request_serializer=_M[request].SerializeToString,
                                         response_deserializer=_M[response].FromString)

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"OipGrpcTransport({self.config.target!r}, {self.config.model_name!r})"

    def image_bytes(self, signature: protocol.ServingSignature) -> int:
        """The bytes of one image's raw contents: its values times the input dtype's size."""
        values = int(np.prod([d for d in signature.input_shape[1:] if d > 0] or [1]))
        return values * np.dtype(signature.input_dtype).itemsize

    def _rpc(self, name: str, request):
        try:
            return self._calls[name](request, timeout=self.config.timeout_s,
                                     metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise errors.TransportError(e.code(), e.details()) from None

    def metadata(self, version: int | None) -> protocol.Metadata:
        """``ModelMetadata``: the tensors as one signature, the version to pin, the platform."""
        request = _M["ModelMetadataRequest"](name=self.config.model_name,
                                             version="" if version is None else str(version))
        response = self._rpc("ModelMetadata", request)
        tensors = [[(t.name, t.datatype, tuple(t.shape)) for t in kind]
                   for kind in (response.inputs, response.outputs)]
        return protocol.Metadata(oip.signature_map(self.config.signature_name, *tensors),
                                 oip.resolved_version(version, list(response.versions)),
                                 origin=oip.origin("oip-grpc", self.address, response.platform))

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """``ModelInfer`` of ``encoded`` as raw little-endian bytes; the output asked for."""
        encoded = np.ascontiguousarray(encoded)
        request = _M["ModelInferRequest"](
            model_name=self.config.model_name,
            model_version="" if version is None else str(version))
        request.inputs.add(name=signature.input_key, datatype=oip.datatype(encoded.dtype),
                           shape=list(encoded.shape))
        request.outputs.add(name=signature.output_key)
        request.raw_input_contents.append(_little_endian(encoded).tobytes())
        response = self._rpc("ModelInfer", request)
        answered = oip.answered_version(response.model_version)
        for position, output in enumerate(response.outputs):
            if output.name == signature.output_key:
                return protocol.Answer(_values(response, position, output), answered)
        return protocol.Answer(None, answered)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


def _little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` with little-endian bytes, as the protocol's raw contents are."""
    return array if sys.byteorder == "little" else array.astype(array.dtype.newbyteorder("<"))


def _values(response, position: int, output) -> np.ndarray:
    """The values of ``response.outputs[position]``: its raw contents where the server sent raw
    contents (one buffer per output, in order), else its typed ``contents``."""
    what = f"the output {output.name!r}"
    dtype = oip.numpy_dtype(output.datatype, what)
    if response.raw_output_contents:
        if position >= len(response.raw_output_contents):
            raise errors.TransportError(None, f"{what} has no raw contents "
                                              f"({len(response.raw_output_contents)} buffers)")
        values = np.frombuffer(response.raw_output_contents[position],
                               dtype=dtype.newbyteorder("<"))
    else:
        values = list(getattr(output.contents, CONTENTS.get(output.datatype, "fp32_contents")))
    return oip.tensor(values, output.datatype, output.shape, what)
