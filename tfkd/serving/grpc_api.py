"""The gRPC services: ``tensorflow.serving.PredictionService`` and ``ModelService``, on the
official servicer base classes of ``tensorflow_serving.apis``."""

from __future__ import annotations

import grpc
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd.errors import ConfigError
from tfkd.errors import ServingError
from tfkd.serving.config import model_configs_from_proto
from tfkd.serving.monitoring import ServerMetrics
from tfkd.serving.registry import DEFAULT_SIGNATURE
from tfkd.serving.registry import ModelRegistry
from tfkd.serving.registry import Servable
from tfkd.serving.signatures import DEFAULT_MAX_TENSOR_BYTES
from tfkd.serving.signatures import run_classify
from tfkd.serving.signatures import run_signature
from tfkd.serving.signatures import serialized_examples
from tfkd.serving.signatures import tensor_from_proto


def _set_model_spec(target, servable: Servable, signature_name: str | None) -> None:
    target.name = servable.name
    target.version.value = servable.version
    if signature_name is not None:
        target.signature_name = signature_name


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict, Classify and GetModelMetadata.

    Regress and MultiInference answer UNIMPLEMENTED (the base class's behaviour).

    Args:
      registry: the models served.
      max_tensor_bytes: the largest decoded input tensor of a Predict request.
      batcher: a :class:`tfkd.serving.batching.BatchScheduler` merging concurrent Predict calls;
        None: each request calls the model itself.
      metrics: a :class:`tfkd.serving.monitoring.ServerMetrics` counting and timing requests.
    """

    def __init__(self, registry: ModelRegistry, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 batcher=None, metrics: ServerMetrics | None = None):
        self._registry = registry
        self._max_tensor_bytes = max_tensor_bytes
        self._batcher = batcher
        self._metrics = metrics or ServerMetrics()

    def Predict(self, request, context):
        try:
            with self._metrics.request(request.model_spec.name, "Predict", "GRPC") as record:
                servable = self._registry.resolve(request.model_spec)
                record.version = servable.version
                signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
                inputs = {alias: tensor_from_proto(alias, proto, self._max_tensor_bytes)
                          for alias, proto in request.inputs.items()}
                outputs = run_signature(servable, signature_name, inputs,
                                        list(request.output_filter), self._batcher)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = predict_pb2.PredictResponse()
        _set_model_spec(response.model_spec, servable, signature_name)
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def Classify(self, request, context):
        try:
            with self._metrics.request(request.model_spec.name, "Classify", "GRPC") as record:
                servable = self._registry.resolve(request.model_spec)
                record.version = servable.version
                signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
                classes, scores = run_classify(servable, signature_name,
                                               serialized_examples(request.input))
        except ServingError as e:
            context.abort(e.code, e.message)
        response = classification_pb2.ClassificationResponse()
        _set_model_spec(response.model_spec, servable, signature_name)
        response.result.CopyFrom(classification_result(classes, scores))
        return response

    def GetModelMetadata(self, request, context):
        try:
            with self._metrics.request(request.model_spec.name, "GetModelMetadata",
                                       "GRPC") as record:
                fields = list(request.metadata_field)
                if not fields:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "GetModelMetadataRequest must specify at least one "
                                       "metadata_field")
                for field in fields:
                    if field not in METADATA_FIELDS:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"Metadata field {field[:100]} is not supported")
                servable = self._registry.resolve(request.model_spec)
                record.version = servable.version
        except ServingError as e:
            context.abort(e.code, e.message)
        return metadata_response(servable, fields)


def classification_result(classes, scores):
    """A ``ClassificationResult``: per example, one ``Class`` (label, score) per column of
    ``classes`` (bytes [n, K]) and ``scores`` (float [n, K]); either may be None."""
    result = classification_pb2.ClassificationResult()
    n, k = (classes if classes is not None else scores).shape[:2]
    for i in range(n):
        row = result.classifications.add()
        for j in range(k):
            label = row.classes.add()
            if classes is not None:
                label.label = classes[i, j].decode("utf-8", "replace")
            if scores is not None:
                label.score = float(scores[i, j])
    return result


METADATA_FIELDS = ("signature_def", "saved_model_fingerprint")
"""GetModelMetadata fields answered: TF Serving's ``signature_def``, and tfkd's
``saved_model_fingerprint`` (a ``google.protobuf.StringValue``: :attr:`Servable.fingerprint`),
which TF Serving refuses with INVALID_ARGUMENT like any unknown field."""


def metadata_response(servable: Servable, fields=("signature_def",)):
    """The ``GetModelMetadataResponse`` of a servable: the ``fields`` of :data:`METADATA_FIELDS`."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _set_model_spec(response.model_spec, servable, None)
    if "signature_def" in fields:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
    if "saved_model_fingerprint" in fields:
        response.metadata["saved_model_fingerprint"].Pack(
            wrappers_pb2.StringValue(value=servable.fingerprint))
    return response


def status_response(servables: list[Servable]):
    """A ``GetModelStatusResponse``: each loaded version AVAILABLE with status OK."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for servable in servables:
        status = response.model_version_status.add()
        status.version = servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, registry: ModelRegistry, allow_reload_config: bool = True):
        self._registry = registry
        self._allow_reload_config = allow_reload_config

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            if spec.HasField("version") or spec.version_label:
                servables = [self._registry.resolve(spec)]
            else:
                servables = self._registry.versions(spec.name)
        except ServingError as e:
            context.abort(e.code, e.message)
        return status_response(servables)

    def HandleReloadConfigRequest(self, request, context):
        if not self._allow_reload_config:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "HandleReloadConfigRequest is disabled "
                          "on this server (its allow_reload_config setting is off)")
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self._registry.configure(model_configs_from_proto(request.config))
        except ConfigError as e:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(e)
            return response
        self._registry.refresh()
        return response

