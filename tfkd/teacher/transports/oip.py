"""What the Open Inference Protocol's two transports share (KServe's "v2 protocol", spoken by
KServe's runtimes, NVIDIA Triton and Seldon MLServer): its datatypes, a model's metadata read as a
TF Serving signature, its versions, and a tensor of an answer.

The protocol (https://github.com/kserve/open-inference-protocol) names a model's tensors with a
``datatype`` (``FP32``, ``UINT8``, ``INT64``, ...) and a ``shape`` (-1: any size) and its versions
as strings; tfkd reads that metadata as the one-signature ``SignatureDefMap`` the other transports
give (:class:`tfkd.teacher.protocol.Metadata`), so the client reads every protocol the same way.
Used by :mod:`~tfkd.teacher.transports.oip_rest` and :mod:`~tfkd.teacher.transports.oip_grpc`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2

from tfkd import errors

DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
"""The protocol's numeric datatypes and their numpy dtypes (``BYTES`` is not an image or a score)."""


def datatype(dtype) -> str:
    """The protocol's datatype name of a numpy dtype (``float32`` -> ``FP32``). Raises
    :class:`tfkd.errors.TransportError` for one it has no name for."""
    for name, numpy_dtype in DATATYPES.items():
        if np.dtype(numpy_dtype) == np.dtype(dtype):
            return name
    raise errors.TransportError(None, f"no Open Inference Protocol datatype for {np.dtype(dtype)}")


def numpy_dtype(name: str, what: str) -> np.dtype:
    """The numpy dtype of the protocol's datatype ``name`` (of the tensor ``what``). Raises
    :class:`tfkd.errors.TransportError` naming the tensor for a datatype tfkd cannot read."""
    if name not in DATATYPES:
        raise errors.TransportError(None, f"{what} has datatype {name!r}; tfkd reads "
                                          f"{sorted(DATATYPES)}")
    return np.dtype(DATATYPES[name])


def signature_map(signature_name: str, inputs, outputs) -> get_model_metadata_pb2.SignatureDefMap:
    """A one-signature ``SignatureDefMap`` named ``signature_name`` from the protocol's tensor
    metadata: ``inputs``/``outputs`` sequences of ``(name, datatype, shape)`` (shape a sequence of
    ints, -1 for any size). Raises :class:`tfkd.errors.TransportError` for an unknown datatype."""
    signature_map_ = get_model_metadata_pb2.SignatureDefMap()
    signature = signature_map_.signature_def[signature_name]
    for tensors, where, kind in ((inputs, signature.inputs, "input"),
                                 (outputs, signature.outputs, "output")):
        for name, type_name, shape in tensors:
            info = where[name]
            info.name = name
            dtype = numpy_dtype(type_name, f"{kind} {name!r}")
            info.dtype = tf.dtypes.as_dtype(dtype).as_datatype_enum
            for size in shape:
                info.tensor_shape.dim.add(size=int(size))
    return signature_map_


def resolved_version(requested: int | None, versions) -> int:
    """The version every later request names: ``requested`` when given, else the highest of the
    server's ``versions`` (strings) when they are all whole numbers, else 0 (the server's own
    choice on every request; its answers are then not checked against a pinned version)."""
    if requested is not None:
        return requested
    numbers = [int(v) for v in versions or () if str(v).isdigit()]
    return max(numbers) if numbers and len(numbers) == len(versions) else 0


def answered_version(model_version) -> int | None:
    """An answer's ``model_version`` as a version number (None: not given or not a number)."""
    return int(model_version) if str(model_version or "").isdigit() else None


def origin(protocol_name: str, address: str, platform: str) -> str:
    """The teacher's origin (:attr:`tfkd.teacher.protocol.ServingSignature.origin`): the endpoint
    and the platform the server reports (``tensorflow_savedmodel``, ``onnxruntime_onnx``, ...)."""
    return f"{protocol_name}:{address}" + (f"|platform={platform}" if platform else "")


def tensor(values: np.ndarray, type_name: str, shape, what: str) -> np.ndarray:
    """An answer's tensor ``what`` as numpy: flat ``values`` of the datatype ``type_name`` reshaped
    to ``shape``. Raises :class:`tfkd.errors.TransportError` when they do not fit."""
    dtype = numpy_dtype(type_name, what)
    try:
        return np.asarray(values, dtype=dtype).reshape([int(d) for d in shape])
    except (ValueError, TypeError, OverflowError) as e:
        raise errors.TransportError(None, f"{what} is not a {type_name} tensor of shape "
                                          f"{list(shape)} ({type(e).__name__}: {e})") from None
