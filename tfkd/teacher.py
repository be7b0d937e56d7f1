"""The black-box teacher: a TF Serving gRPC client, soft labels, and the query ledger.

The distillation code reaches the teacher only through :class:`TeacherClient`. It speaks the TF
Serving API (``PredictionService.GetModelMetadata`` and ``Predict``) and so works unchanged against
``tensorflow_model_server`` and tfkd's own :mod:`tfkd.serving`.

Every image sent is counted (:attr:`TeacherClient.queries`): the number of teacher queries is a
first-class figure of every run. With a :class:`QueryLedger`, every answer is persisted as soon as it
arrives, keyed by a content hash of the image and the teacher's identity, and never asked again.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import uuid

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
OUTPUT_KINDS = ("probabilities", "logits", "classes")


class TeacherError(RuntimeError):
    """The teacher could not be reached, or broke its contract; the message names teacher and output."""


@dataclasses.dataclass(frozen=True)
class TeacherSignature:
    """What ``GetModelMetadata`` says of the teacher's signature.

    Attributes:
      model_name, version, signature_name: the servable answering (version as resolved by the server).
      input_key: the input alias; ``input_dtype``: its numpy dtype; ``input_shape``: its shape with
        -1 for unknown dimensions (batch first).
      output_key: the output alias read; ``output_kind``: one of ``OUTPUT_KINDS``;
      num_classes: width of the output (None for class ids without a known width).
    """

    model_name: str
    version: int
    signature_name: str
    input_key: str
    input_dtype: np.dtype
    input_shape: tuple
    output_key: str
    output_kind: str
    num_classes: int | None

    @property
    def identity(self) -> str:
        """The key under which answers are stored in the ledger."""
        return (f"{self.model_name}/{self.version}/{self.signature_name}/{self.input_key}->"
                f"{self.output_key}:{self.output_kind}")


def _shape(info) -> tuple:
    if info.tensor_shape.unknown_rank:
        return ()
    return tuple(int(d.size) for d in info.tensor_shape.dim)


def to_soft_labels(raw: np.ndarray, output_kind: str, num_classes: int | None,
                   teacher: str = "teacher", output_key: str = "output") -> np.ndarray:
    """Turns a teacher answer into soft labels, checking the contract.

    Args:
      raw: probabilities float [b, K] (rows sum to 1), logits float [b, K], or class ids int [b].
      output_kind: one of ``OUTPUT_KINDS``.
      num_classes: K; required for class ids.
      teacher, output_key: named in error messages.

    Returns:
      float32 [b, K] rows summing to 1 (softmax of logits; one-hot of class ids).

    Raises:
      TeacherError: wrong shape, non-finite values, probabilities off the simplex, or a class id out
        of range.
    """
    where = f"teacher {teacher!r}, output {output_key!r} ({output_kind})"
    if output_kind == "classes":
        ids = np.asarray(raw).reshape(-1)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TeacherError(f"{where}: expected integer class ids, got dtype {ids.dtype}")
        if num_classes is None or ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise TeacherError(f"{where}: class id out of range [0, {num_classes}): "
                               f"min {ids.min() if ids.size else None}, max {ids.max() if ids.size else None}")
        return np.eye(num_classes, dtype=np.float32)[ids]
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or (num_classes is not None and raw.shape[1] != num_classes):
        raise TeacherError(f"{where}: expected shape [batch, {num_classes}], got {list(raw.shape)}")
    if not np.all(np.isfinite(raw)):
        raise TeacherError(f"{where}: {int(np.sum(~np.isfinite(raw)))} non-finite values")
    if output_kind == "logits":
        return tf.nn.softmax(raw, axis=-1).numpy()
    if output_kind != "probabilities":
        raise ValueError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
    sums = raw.sum(axis=1)
    if raw.min() < -1e-6 or np.max(np.abs(sums - 1.0)) > 1e-3:
        raise TeacherError(f"{where}: not probabilities (min {raw.min():.4g}, row sums in "
                           f"[{sums.min():.4g}, {sums.max():.4g}])")
    return np.clip(raw, 0.0, 1.0) / np.clip(raw, 0.0, 1.0).sum(axis=1, keepdims=True)


class QueryLedger:
    """Persisted teacher answers, keyed by content hash of the image bytes and the teacher's identity.

    Each answered request becomes one ``.npz`` file (``keys`` [b] of 40-hex SHA-1, ``soft_labels``
    float32 [b, K]) in ``directory``, written atomically as soon as the answer arrives; a crash loses
    at most the request in flight.
    """

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._answers: dict[str, np.ndarray] = {}
        for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
            with np.load(path) as f:
                for key, row in zip(f["keys"], f["soft_labels"]):
                    self._answers[str(key)] = row

    def __len__(self) -> int:
        return len(self._answers)

    @staticmethod
    def keys(images: np.ndarray, identity: str) -> list[str]:
        """SHA-1 of (teacher identity, image dtype and shape, image bytes) for each image."""
        images = np.ascontiguousarray(images)
        prefix = f"{identity}|{images.dtype.str}|{images.shape[1:]}|".encode()
        return [hashlib.sha1(prefix + image.tobytes()).hexdigest() for image in images]

    def get(self, key: str) -> np.ndarray | None:
        return self._answers.get(key)

    def put(self, keys: list[str], soft_labels: np.ndarray) -> None:
        path = os.path.join(self.directory, f"{uuid.uuid4().hex}.npz")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys), soft_labels=soft_labels.astype(np.float32))
        os.replace(tmp, path)
        for key, row in zip(keys, soft_labels):
            self._answers[key] = row


class TeacherClient:
    """A classifier served over the TF Serving gRPC API, seen as a black box.

    Args:
      target: ``host:port`` of the server.
      model_name: the model spec's name.
      version: pin a numeric version (default: the server's latest).
      signature_name: the signature (default ``serving_default``).
      output_key: the output alias to read; default ``probabilities`` if the signature has it, else
        its only output.
      output_kind: how to read it, one of ``OUTPUT_KINDS``; default: ``classes`` for integer outputs
        of rank 1, else ``probabilities``.
      timeout_s: per-request deadline in seconds.
      max_request_bytes: requests are split to stay under this (gRPC's default 4 MiB limit).
      connect_timeout_s: how long to wait for the server at start.
      ledger: optional :class:`QueryLedger`; answers found there are not asked again.

    Raises:
      TeacherError: the server is unreachable within ``connect_timeout_s`` (the message names the
        address), or the signature has no input or output usable as the contract requires.
      grpc.RpcError: the server answered an error (NOT_FOUND for an unknown model, ...).
    """

    def __init__(self, target: str, model_name: str, version: int | None = None,
                 signature_name: str = "serving_default", output_key: str | None = None,
                 output_kind: str | None = None, timeout_s: float = 60.0,
                 max_request_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                 connect_timeout_s: float = 30.0, ledger: QueryLedger | None = None):
        self.target = target
        self.model_name = model_name
        self.version = version
        self.signature_name = signature_name
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self.ledger = ledger
        self.queries = 0  # Images sent to the teacher.
        self.requests = 0  # Predict RPCs sent.
        self.ledger_hits = 0  # Images answered from the ledger.
        self._channel = grpc.insecure_channel(target)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise TeacherError(f"teacher {model_name!r} at {target}: unreachable "
                               f"(no connection within {connect_timeout_s:g} s)") from None
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.signature = self._read_signature(output_key, output_kind)

    def _model_spec(self, spec) -> None:
        spec.name = self.model_name
        spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = self.version

    def _read_signature(self, output_key, output_kind) -> TeacherSignature:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        request.model_spec.ClearField("signature_name")
        response = self._stub.GetModelMetadata(request, timeout=self.timeout_s)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        name = f"teacher {self.model_name!r} at {self.target}"
        if self.signature_name not in signature_map.signature_def:
            raise TeacherError(f"{name}: no signature {self.signature_name!r}; it has "
                               f"{sorted(signature_map.signature_def)}")
        signature = signature_map.signature_def[self.signature_name]
        if len(signature.inputs) != 1:
            raise TeacherError(f"{name}: expected a signature with one image input, got "
                               f"{sorted(signature.inputs)}")
        (input_key, input_info), = signature.inputs.items()
        if output_key is None:
            if "probabilities" in signature.outputs:
                output_key = "probabilities"
            elif len(signature.outputs) == 1:
                output_key = next(iter(signature.outputs))
            else:
                raise TeacherError(f"{name}: several outputs {sorted(signature.outputs)}; name the "
                                   "one to read (output_key)")
        if output_key not in signature.outputs:
            raise TeacherError(f"{name}: output_key={output_key!r} not in outputs "
                               f"{sorted(signature.outputs)}")
        output_info = signature.outputs[output_key]
        output_dtype = tf.dtypes.as_dtype(output_info.dtype)
        output_shape = _shape(output_info)
        if output_kind is None:
            output_kind = "classes" if output_dtype.is_integer and len(output_shape) == 1 else "probabilities"
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind={output_kind!r}: expected one of {OUTPUT_KINDS}")
        num_classes = output_shape[1] if len(output_shape) == 2 and output_shape[1] > 0 else None
        return TeacherSignature(
            model_name=self.model_name, version=int(response.model_spec.version.value),
            signature_name=self.signature_name, input_key=input_key,
            input_dtype=tf.dtypes.as_dtype(input_info.dtype).as_numpy_dtype,
            input_shape=_shape(input_info), output_key=output_key, output_kind=output_kind,
            num_classes=num_classes)

    @property
    def images_per_request(self) -> int:
        """Images per Predict request so that the request stays under ``max_request_bytes``."""
        per_image = int(np.prod([d for d in self.signature.input_shape[1:] if d > 0] or [1]))
        per_image *= np.dtype(self.signature.input_dtype).itemsize
        return max(1, (self.max_request_bytes - 64 * 1024) // per_image)

    def predict_raw(self, images: np.ndarray) -> np.ndarray:
        """One Predict request; returns the raw output array. Counts ``len(images)`` queries.

        Raises:
          grpc.RpcError: the server's error (INVALID_ARGUMENT for a bad tensor, ...).
        """
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.inputs[self.signature.input_key].CopyFrom(
            tf.make_tensor_proto(np.ascontiguousarray(images, dtype=self.signature.input_dtype)))
        request.output_filter.append(self.signature.output_key)
        self.queries += len(images)
        self.requests += 1
        response = self._stub.Predict(request, timeout=self.timeout_s)
        return tf.make_ndarray(response.outputs[self.signature.output_key])

    def soft_labels(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """Labels images with the teacher's soft labels, in requests under the message limit.

        Args:
          images: float32 [n, H, W, C] in [0, 1] (cast to the signature's input dtype).
          progress: show a Keras progress bar.

        Returns:
          float32 [n, K], rows summing to 1.

        Raises:
          ValueError: images of the wrong rank or shape for the signature.
          TeacherError: an answer breaking the contract.
          grpc.RpcError: the server's error.
        """
        images = np.asarray(images)
        expected = self.signature.input_shape
        if expected and (images.ndim != len(expected) or
                         any(e > 0 and e != s for e, s in zip(expected[1:], images.shape[1:]))):
            raise ValueError(f"images: expected shape {list(expected)} (-1: any) for teacher "
                             f"{self.model_name!r}, got {list(images.shape)}")
        n = len(images)
        keys = (QueryLedger.keys(images, self.signature.identity) if self.ledger is not None else None)
        result: list[np.ndarray | None] = [None] * n
        missing = np.arange(n)
        if keys is not None:
            cached = [self.ledger.get(k) for k in keys]
            missing = np.array([i for i, row in enumerate(cached) if row is None], dtype=np.int64)
            for i, row in enumerate(cached):
                result[i] = row
            self.ledger_hits += n - len(missing)
        step = self.images_per_request
        bar = None
        if progress and len(missing):
            import keras
            bar = keras.utils.Progbar(len(missing), unit_name="image")
        for start in range(0, len(missing), step):
            idx = missing[start:start + step]
            raw = self.predict_raw(images[idx])
            rows = to_soft_labels(raw, self.signature.output_kind, self.signature.num_classes,
                                  self.model_name, self.signature.output_key)
            if len(rows) != len(idx):
                raise TeacherError(f"teacher {self.model_name!r}: answered {len(rows)} rows for "
                                   f"{len(idx)} images")
            if self.ledger is not None:
                self.ledger.put([keys[i] for i in idx], rows)
            for i, row in zip(idx, rows):
                result[i] = row
            if bar is not None:
                bar.add(len(idx))
        if n == 0:
            return np.zeros((0, self.signature.num_classes or 0), np.float32)
        return np.stack(result).astype(np.float32)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
