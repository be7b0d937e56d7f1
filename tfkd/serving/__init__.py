"""A TensorFlow-Serving-compatible gRPC model server, built on the official servicers.

``tensorflow_model_server`` cannot be installed on every machine tfkd runs on (it is neither on PyPI nor
in Debian), so tfkd carries this stand-in. It implements, with the request and response protos and
servicer base classes of ``tensorflow_serving.apis``:

* ``PredictionService.Predict`` (model spec name, version or version label, signature name,
  ``output_filter``) and ``PredictionService.GetModelMetadata`` (``signature_def``);
* ``ModelService.GetModelStatus`` and ``ModelService.HandleReloadConfigRequest``;
* the gRPC health service (``grpc.health.v1.Health``), and
* the REST API (``/v1/models/NAME[/versions/N|/labels/L][/metadata|:predict]``, ``instances`` and
  ``inputs`` bodies) on its own port.

It serves the versions each model's version policy asks for (``latest`` N, ``all``, ``specific``, as
in a ``models.config``), with version labels; polls the base paths for new versions like TF Serving's
file-system source (``file_system_poll_wait_seconds``); answers concurrent requests from a thread
pool; and answers errors with TF Serving's status codes and messages: an unknown model or version ->
NOT_FOUND, a bad input key or tensor -> INVALID_ARGUMENT, an unknown signature -> FAILED_PRECONDITION.
Optionally over TLS (server certificate and key, and a CA to require client certificates). It honours
the configs tfkd writes beside an export: request batching with TF Serving's batching parameters
(:mod:`~tfkd.serving.batching`), and Prometheus request metrics in TF Serving's names at the path of a
``monitoring.config`` (:mod:`~tfkd.serving.monitoring`).

Clients (:class:`tfkd.teacher.client.ServingClient`) work unchanged against the real server.

Modules, each readable on its own: :class:`tfkd.errors.ServingError` (the status-coded error),
:mod:`~tfkd.serving.registry` (servables, version policies, the registry),
:mod:`~tfkd.serving.signatures` (request tensors and signature runs, validated),
:mod:`~tfkd.serving.grpc_api` (the servicers), :mod:`~tfkd.serving.rest` (the REST API),
:mod:`~tfkd.serving.config` (``models.config`` read and written), :mod:`~tfkd.serving.server`
(:class:`ModelServer`), :mod:`~tfkd.serving.batching`, :mod:`~tfkd.serving.monitoring`.
"""

from tfkd.errors import ServingError
from tfkd.serving.batching import BatchingParameters
from tfkd.serving.config import model_configs_from_proto
from tfkd.serving.config import model_configs_to_proto
from tfkd.serving.config import parse_model_config_file
from tfkd.serving.config import write_model_config_file
from tfkd.serving.monitoring import MonitoringConfig
from tfkd.serving.registry import DEFAULT_SIGNATURE
from tfkd.serving.registry import ModelConfig
from tfkd.serving.registry import ModelRegistry
from tfkd.serving.registry import Servable
from tfkd.serving.rest import DEFAULT_REST_MAX_BODY_BYTES
from tfkd.serving.server import ModelServer
from tfkd.serving.server import ServerConfig
from tfkd.serving.signatures import DEFAULT_MAX_TENSOR_BYTES
from tfkd.serving.signatures import run_signature
from tfkd.serving.signatures import tensor_from_proto

__all__ = [
    "BatchingParameters", "DEFAULT_MAX_TENSOR_BYTES", "DEFAULT_REST_MAX_BODY_BYTES",
    "DEFAULT_SIGNATURE", "ModelConfig", "ModelRegistry", "ModelServer", "MonitoringConfig",
    "Servable", "ServerConfig", "ServingError", "model_configs_from_proto", "model_configs_to_proto",
    "parse_model_config_file", "run_signature", "tensor_from_proto", "write_model_config_file",
]
