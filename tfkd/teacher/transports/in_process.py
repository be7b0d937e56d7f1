"""A SavedModel version directory as a :class:`tfkd.teacher.protocol.Transport`: loaded and run in
this process by the same code as tfkd's server (:class:`tfkd.serving.registry.Servable`,
:func:`tfkd.serving.signatures.run_signature`), so it gives the answers a TF Serving server of that
directory would give, without a network: for white-box methods and tests."""

from __future__ import annotations

import os

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol


class InProcessTransport:
    """The SavedModel version directory ``path`` (``.../<model>/<version>/``; the version is its
    name when it is a number, else 1) answering in this process. ``config``'s model spec fields are
    read as a server reads them (the signature, input and output keys, dtype and scale); its
    ``target`` is not used. See :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.TransportError: NOT_FOUND, the directory does not hold a loadable SavedModel.
    """

    metadata_call = "GetModelMetadata"
    predict_call = "Predict"
    envelope_bytes = config_lib.REQUEST_OVERHEAD_BYTES

    def __init__(self, config: config_lib.ServingConfig, path: str):
        # tfkd's library reaches tfkd.serving only here, where a run asks for it.
        from tfkd.serving import registry
        from tfkd.serving import signatures

        self.config = config
        self.path = path
        self.address = f"{path} (in-process)"
        self._run_signature = signatures.run_signature
        name = os.path.basename(os.path.normpath(path))
        try:
            self._servable = registry.Servable.load(config.model_name,
                                                    int(name) if name.isdigit() else 1, path)
        except Exception as e:  # noqa: BLE001 - whatever TensorFlow raises for a bad directory.
            raise errors.TransportError(
                grpc.StatusCode.NOT_FOUND, f"not a loadable SavedModel at {path} "
                f"({type(e).__name__}: {str(e)[:300]})", retryable=False) from None

    def __repr__(self) -> str:
        return f"InProcessTransport({self.path!r})"

    def image_bytes(self, signature: protocol.ServingSignature) -> int:
        """As a gRPC request's: the image's values times the input dtype's size."""
        values = int(np.prod([d for d in signature.input_shape[1:] if d > 0] or [1]))
        return values * np.dtype(signature.input_dtype).itemsize

    def metadata(self, version: int | None) -> protocol.Metadata:
        """The directory's signature defs, version and fingerprint (``version`` is not used)."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self._servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return protocol.Metadata(signature_map, self._servable.version,
                                 self._servable.fingerprint)

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """The signature run on ``encoded``; what the server would refuse is refused (not
        retried) with its code."""
        try:
            outputs = self._run_signature(self._servable, signature.signature_name,
                                          {signature.input_key: np.asarray(encoded)},
                                          [signature.output_key])
        except errors.ServingError as e:
            raise errors.TransportError(e.code, e.message, retryable=False) from None
        return protocol.Answer(outputs.get(signature.output_key))

    def close(self) -> None:
        """Nothing to release (the SavedModel goes with the transport)."""
