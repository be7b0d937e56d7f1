"""A TensorFlow-Serving-compatible gRPC model server, built on the official servicers.

``tensorflow_model_server`` cannot be installed on every machine tfkd runs on (it is neither on PyPI nor
in Debian), so tfkd carries this stand-in. It implements, with the request and response protos and
servicer base classes of ``tensorflow_serving.apis``:

* ``PredictionService.Predict`` (model spec name, version or version label, signature name,
  ``output_filter``) and ``PredictionService.GetModelMetadata`` (``signature_def``);
* ``ModelService.GetModelStatus``.

It serves, for each model, the newest numeric version directory under the model's base path (TF
Serving's default ``latest`` version policy), polls the base paths for new versions like TF Serving's
file-system source (``file_system_poll_wait_seconds``), and answers errors with TF Serving's status
codes and messages: an unknown model or version -> NOT_FOUND, a bad input key or tensor ->
INVALID_ARGUMENT, an unknown signature -> FAILED_PRECONDITION.

Clients (``tfkd.teacher.TeacherClient``) work unchanged against the real server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfkd import export

DEFAULT_SIGNATURE = "serving_default"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # Generous receive limit on the server side, as TF Serving's.


class ServingError(Exception):
    """An error answered to a client with a gRPC status code, as TF Serving answers it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class Servable:
    """One loaded version of one model.

    Attributes:
      name: model name.
      version: numeric version (the directory name).
      path: the version directory.
      signature_defs: SignatureDef protos by signature key, as stored in ``saved_model.pb``.
      loaded: the object returned by ``tf.saved_model.load``.
    """

    name: str
    version: int
    path: str
    signature_defs: dict
    loaded: object

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        meta_graph = next((m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags),
                          proto.meta_graphs[0])
        signature_defs = {k: v for k, v in meta_graph.signature_def.items()
                          if not k.startswith("__")}
        loaded = tf.saved_model.load(path, tags=["serve"])
        return cls(name, version, path, signature_defs, loaded)


@dataclasses.dataclass
class ModelConfig:
    """One entry of a ``models.config`` (TF Serving's ``ModelServerConfig.model_config_list``)."""

    name: str
    base_path: str
    version_labels: dict = dataclasses.field(default_factory=dict)


def parse_model_config_file(path: str) -> list[ModelConfig]:
    """Parses a TF Serving ``models.config`` text proto into :class:`ModelConfig` entries.

    Raises:
      ValueError: the file is not a ``ModelServerConfig`` with a ``model_config_list``.
    """
    with open(path) as f:
        text = f.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"model_config_file={path!r}: not a ModelServerConfig text proto: {e}") from e
    if not config.HasField("model_config_list"):
        raise ValueError(f"model_config_file={path!r}: expected a model_config_list")
    base = os.path.dirname(os.path.abspath(path))
    return [ModelConfig(name=c.name,
                        base_path=c.base_path if os.path.isabs(c.base_path)
                        else os.path.join(base, c.base_path),
                        version_labels=dict(c.version_labels))
            for c in config.model_config_list.config]


class ModelRegistry:
    """The servables of every configured model, thread-safe, refreshed from the base paths."""

    def __init__(self, models: list[ModelConfig]):
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate model names in {names}")
        self._configs = {m.name: m for m in models}
        self._servables: dict[str, dict[int, Servable]] = {m.name: {} for m in models}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Loads the newest version of each model if it is not loaded yet (policy ``latest``)."""
        for name, config in self._configs.items():
            versions = export.list_versions(config.base_path)
            if not versions:
                continue
            newest = versions[-1]
            with self._lock:
                if newest in self._servables[name]:
                    continue
            path = os.path.join(config.base_path, str(newest))
            try:
                servable = Servable.load(name, newest, path)
            except Exception as e:  # A bad version must not take the server down.
                logging.error("Failed to load servable %s version %d from %s: %s", name, newest, path, e)
                continue
            with self._lock:
                self._servables[name] = {newest: servable}
            logging.info("Serving %s version %d from %s", name, newest, path)

    def resolve(self, model_spec) -> Servable:
        """The servable a request's ``ModelSpec`` asks for.

        Raises:
          ServingError: NOT_FOUND for an unknown model, version or label, as TF Serving words it.
        """
        name = model_spec.name
        with self._lock:
            versions = self._servables.get(name)
            if name not in self._configs or not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            if model_spec.HasField("version"):
                version = model_spec.version.value
                if version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({name}, {version})")
                return versions[version]
            if model_spec.version_label:
                label = model_spec.version_label
                version = self._configs[name].version_labels.get(label)
                if version is None or version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {label}")
                return versions[version]
            return versions[max(versions)]

    def versions(self, name: str) -> list[Servable]:
        with self._lock:
            if name not in self._configs or not self._servables.get(name):
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            return [self._servables[name][v] for v in sorted(self._servables[name])]


def _set_model_spec(target, servable: Servable, signature_name: str | None) -> None:
    target.name = servable.name
    target.version.value = servable.version
    if signature_name is not None:
        target.signature_name = signature_name


def _check_input(alias: str, value: np.ndarray, info) -> None:
    expected = tf.dtypes.as_dtype(info.dtype)
    if value.dtype != expected.as_numpy_dtype:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expects arg[0] ({alias}) to be {expected.name} but "
                           f"{tf.dtypes.as_dtype(value.dtype).name} is provided")
    if not info.tensor_shape.unknown_rank:
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != value.ndim or any(d >= 0 and d != s for d, s in zip(dims, value.shape)):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input tensor {alias}: shape {list(value.shape)} does not match the "
                               f"signature's {dims} (-1 is any size)")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata.

    Classify, Regress and MultiInference answer UNIMPLEMENTED (the base class's behaviour).
    """

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def Predict(self, request, context):
        try:
            return self._predict(request)
        except ServingError as e:
            context.abort(e.code, e.message)

    def _predict(self, request):
        servable = self._registry.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        if len(request.inputs) != len(signature.inputs):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(request.inputs)}!="
                f"{len(signature.inputs)} len([{','.join(sorted(request.inputs))}]) != "
                f"len([{','.join(sorted(signature.inputs))}])")
        feeds = {}
        for alias, proto in request.inputs.items():
            if alias not in signature.inputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                    f"the set {{{', '.join(sorted(signature.inputs))}}}.")
            try:
                value = tf.make_ndarray(proto)
            except Exception:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")
            _check_input(alias, value, signature.inputs[alias])
            feeds[alias] = tf.constant(value)
        aliases = list(request.output_filter) or list(signature.outputs)
        for alias in aliases:
            if alias not in signature.outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                    f"the set {{{', '.join(sorted(signature.outputs))}}}.")
        if len(set(aliases)) != len(aliases):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"duplicate output tensor alias in output_filter: {aliases}")
        function = servable.loaded.signatures[signature_name]
        try:
            outputs = function(**feeds)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0])
        response = predict_pb2.PredictResponse()
        _set_model_spec(response.model_spec, servable, signature_name)
        for alias in aliases:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
        return response

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != "signature_def":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            servable = self._registry.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _set_model_spec(response.model_spec, servable, None)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        except ServingError as e:
            context.abort(e.code, e.message)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService.GetModelStatus``: every loaded version is AVAILABLE."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            if spec.HasField("version") or spec.version_label:
                servables = [self._registry.resolve(spec)]
            else:
                servables = self._registry.versions(spec.name)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for servable in servables:
            status = response.model_version_status.add()
            status.version = servable.version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


class ModelServer:
    """The gRPC server: start, serve, poll base paths for new versions, stop.

    Usage::

        with ModelServer([ModelConfig("teacher", "/work/teacher")]) as server:
            client = TeacherClient(server.target, "teacher")

    Args:
      models: the models to serve.
      host: the address to bind; 127.0.0.1 (loopback only) unless told otherwise.
      port: the port; 0 picks a free one (see :attr:`port` after :meth:`start`).
      poll_seconds: how often to look for new versions under the base paths (TF Serving's
        ``--file_system_poll_wait_seconds``, default 1); 0 disables polling.
      max_workers: threads answering requests concurrently.
    """

    def __init__(self, models: list[ModelConfig], host: str = "127.0.0.1", port: int = 0,
                 poll_seconds: float = 1.0, max_workers: int = 8):
        self.registry = ModelRegistry(models)
        self.host = host
        self.port = port
        self.poll_seconds = poll_seconds
        self._max_workers = max_workers
        self._server = None
        self._stop = threading.Event()
        self._poller = None

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def start(self) -> "ModelServer":
        """Loads the models and starts answering.

        Raises:
          RuntimeError: the port cannot be bound.
        """
        self.registry.refresh()
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._max_workers),
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.registry), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry), self._server)
        bound = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise RuntimeError(f"port={self.port}: cannot bind {self.host}:{self.port}")
        self.port = bound
        self._server.start()
        if self.poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, name="tfkd-version-poll", daemon=True)
            self._poller.start()
        logging.info("Model server listening on %s", self.target)
        return self

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            self.registry.refresh()

    def wait(self) -> None:
        """Blocks until the server is stopped."""
        self._server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
