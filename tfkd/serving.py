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
Optionally over TLS (server certificate and key, and a CA to require client certificates).

Clients (``tfkd.teacher.TeacherClient``) work unchanged against the real server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from google.protobuf import text_format
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2
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
    warmup_requests: int = 0

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
        servable = cls(name, version, path, signature_defs, loaded)
        servable.warmup()
        return servable

    def warmup(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` (Predict records), as TF Serving does.

        Returns:
          the number of requests replayed.

        Raises:
          ServingError: a warmup request fails (the version is then not served).
        """
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, export.WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            run_signature(self, request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs,
                          list(request.output_filter))
            count += 1
        self.warmup_requests = count
        logging.info("Servable %s version %d: %d warmup requests replayed", self.name,
                     self.version, count)
        return count


@dataclasses.dataclass
class ModelConfig:
    """One entry of a ``models.config`` (TF Serving's ``ModelServerConfig.model_config_list``).

    Attributes:
      name: the model name clients put in the model spec.
      base_path: directory of numeric version directories.
      version_policy: ``latest`` (the ``num_versions`` newest), ``all``, or ``specific``
        (``versions``), as TF Serving's ``ServableVersionPolicy``.
      version_labels: label -> version, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = 1
    versions: tuple = ()
    version_labels: dict = dataclasses.field(default_factory=dict)

    def wanted(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of ``available`` (ascending)."""
        if self.version_policy == "all":
            return sorted(available)
        if self.version_policy == "specific":
            return sorted(v for v in available if v in set(self.versions))
        return sorted(available)[-max(1, self.num_versions):]


def model_configs_from_proto(config, base_dir: str = ".") -> list[ModelConfig]:
    """:class:`ModelConfig` entries of a ``ModelServerConfig`` proto (relative paths from base_dir).

    Raises:
      ValueError: no ``model_config_list``.
    """
    if not config.HasField("model_config_list"):
        raise ValueError("expected a ModelServerConfig with a model_config_list")
    models = []
    for c in config.model_config_list.config:
        policy = c.model_version_policy
        choice = policy.WhichOneof("policy_choice") or "latest"
        models.append(ModelConfig(
            name=c.name,
            base_path=c.base_path if os.path.isabs(c.base_path) else os.path.join(base_dir, c.base_path),
            version_policy=choice,
            num_versions=(policy.latest.num_versions or 1) if choice == "latest" else 1,
            versions=tuple(policy.specific.versions) if choice == "specific" else (),
            version_labels=dict(c.version_labels)))
    return models


def parse_model_config_file(path: str) -> list[ModelConfig]:
    """Parses a TF Serving ``models.config`` text proto into :class:`ModelConfig` entries.

    Relative base paths are taken from the file's directory.

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
    try:
        return model_configs_from_proto(config, os.path.dirname(os.path.abspath(path)))
    except ValueError as e:
        raise ValueError(f"model_config_file={path!r}: {e}") from None


class ModelRegistry:
    """The servables of every configured model, thread-safe, refreshed from the base paths."""

    def __init__(self, models: list[ModelConfig]):
        self._lock = threading.Lock()
        self._configs: dict[str, ModelConfig] = {}
        self._servables: dict[str, dict[int, Servable]] = {}
        self.configure(models)

    def configure(self, models: list[ModelConfig]) -> None:
        """Replaces the set of models (``HandleReloadConfigRequest``); call :meth:`refresh` after.

        Raises:
          ValueError: duplicate names, or an unknown version policy.
        """
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate model names in {names}")
        for m in models:
            if m.version_policy not in ("latest", "all", "specific"):
                raise ValueError(f"model {m.name!r}: version_policy={m.version_policy!r}: expected "
                                 "latest, all or specific")
        with self._lock:
            self._configs = {m.name: m for m in models}
            self._servables = {m.name: self._servables.get(m.name, {}) for m in models}

    @property
    def model_names(self) -> list[str]:
        with self._lock:
            return list(self._configs)

    def model_configs(self) -> list[ModelConfig]:
        """The models configured (whether or not a version is loaded)."""
        with self._lock:
            return list(self._configs.values())

    def refresh(self) -> None:
        """Loads the versions each policy wants and unloads the others."""
        with self._lock:
            configs = list(self._configs.values())
        for config in configs:
            wanted = config.wanted(export.list_versions(config.base_path))
            with self._lock:
                loaded = dict(self._servables.get(config.name, {}))
            for version in wanted:
                if version in loaded:
                    continue
                path = os.path.join(config.base_path, str(version))
                try:
                    loaded[version] = Servable.load(config.name, version, path)
                except Exception as e:  # A bad version must not take the server down.
                    logging.error("Failed to load servable %s version %d from %s: %s",
                                  config.name, version, path, e)
                    continue
                logging.info("Serving %s version %d from %s", config.name, version, path)
            if not wanted:  # Keep serving what we have while a base path is briefly empty.
                continue
            with self._lock:
                if config.name in self._configs:
                    self._servables[config.name] = {v: loaded[v] for v in wanted if v in loaded}

    def resolve(self, model_spec) -> Servable:
        """The servable a request's ``ModelSpec`` asks for.

        Raises:
          ServingError: NOT_FOUND for an unknown model, version or label, as TF Serving words it.
        """
        name = model_spec.name
        with self._lock:
            versions = self._servables.get(name)
            if name not in self._configs or not versions:
                if model_spec.HasField("version"):
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({name}, "
                                       f"{model_spec.version.value})")
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
                if version is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {label}")
                if version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({name}, {version})")
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


# TensorProto's typed value field per dtype, and how many entries one element takes there.
_VALUE_FIELDS = {
    tf.float32: ("float_val", 1), tf.float64: ("double_val", 1), tf.int32: ("int_val", 1),
    tf.int16: ("int_val", 1), tf.int8: ("int_val", 1), tf.uint8: ("int_val", 1),
    tf.uint16: ("int_val", 1), tf.int64: ("int64_val", 1), tf.bool: ("bool_val", 1),
    tf.string: ("string_val", 1), tf.float16: ("half_val", 1), tf.bfloat16: ("half_val", 1),
    tf.uint32: ("uint32_val", 1), tf.uint64: ("uint64_val", 1),
    tf.complex64: ("scomplex_val", 2), tf.complex128: ("dcomplex_val", 2),
}
DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024


def tensor_from_proto(alias: str, proto, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:
    """Decodes a request's TensorProto after checking its declared size, before allocating it.

    A tensor's content (``tensor_content`` bytes, or the typed ``*_val`` field) must hold exactly the
    number of values its shape declares, and the decoded tensor must fit in ``max_bytes``: a request
    of a few bytes that declares a huge shape is refused, not allocated.

    Args:
      alias: the input's name, for messages.
      proto: a ``tensorflow.TensorProto``.
      max_bytes: the largest decoded tensor accepted, in bytes.

    Returns:
      the numpy array (``tf.make_ndarray``).

    Raises:
      ServingError: INVALID_ARGUMENT naming the alias, the declared shape and what was carried.
    """
    def refuse(why: str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}: {why}")

    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        refuse(f"unknown dtype enum {proto.dtype}")
    if proto.tensor_shape.unknown_rank:
        refuse("the shape has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        refuse(f"shape {dims} has a negative dimension")
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow.
    itemsize = 1 if dtype == tf.string else dtype.size
    if count * itemsize > max_bytes:
        refuse(f"shape {dims} declares {count * itemsize:,} bytes, over the server's limit of "
               f"{max_bytes:,} bytes per tensor")
    if proto.tensor_content:
        if dtype == tf.string:
            refuse("a string tensor cannot use tensor_content")
        carried = len(proto.tensor_content)
        if carried != count * itemsize:
            refuse(f"shape {dims} declares {count} values ({count * itemsize} bytes) but "
                   f"tensor_content holds {carried} bytes")
    else:
        field, per_value = _VALUE_FIELDS.get(dtype, (None, 1))
        if field is None:
            refuse(f"dtype {dtype.name} is not supported")
        carried = len(getattr(proto, field))
        if carried != count * per_value:
            refuse(f"shape {dims} declares {count} values but {field} holds "
                   f"{carried // per_value}")
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # A malformed proto that passed the size checks.
        refuse(f"{type(e).__name__}: {str(e)[:200]}")


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


def run_signature(servable: Servable, signature_name: str, inputs: dict,
                  output_filter: list[str]) -> dict[str, np.ndarray]:
    """Runs one signature of a servable, validating as TF Serving's Predict does.

    Args:
      inputs: alias -> numpy array (or, for the REST API, a nested list converted here).
      output_filter: aliases to return; empty: all outputs.

    Returns:
      alias -> numpy array.

    Raises:
      ServingError: FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for bad inputs.
    """
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if len(inputs) != len(signature.inputs):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(inputs)}!={len(signature.inputs)} "
            f"len([{','.join(sorted(inputs))}]) != len([{','.join(sorted(signature.inputs))}])")
    feeds = {}
    for alias, value in inputs.items():
        if alias not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{', '.join(sorted(signature.inputs))}}}.")
        info = signature.inputs[alias]
        if not isinstance(value, np.ndarray):  # REST: JSON lists, typed by the signature.
            try:
                value = np.asarray(value, dtype=tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
            except (TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias} ({e})") from None
        _check_input(alias, value, info)
        if value.ndim and value.shape[0] == 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input tensor {alias}: the batch is empty (shape "
                               f"{list(value.shape)}); send at least one example")
        feeds[alias] = value
    aliases = list(output_filter) or list(signature.outputs)
    for alias in aliases:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{', '.join(sorted(signature.outputs))}}}.")
    if len(set(aliases)) != len(aliases):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"duplicate output tensor alias in output_filter: {aliases}")
    try:
        outputs = servable.loaded.signatures[signature_name](**feeds)
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0]) from None
    return {alias: outputs[alias].numpy() for alias in aliases}


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata.

    Classify, Regress and MultiInference answer UNIMPLEMENTED (the base class's behaviour).
    """

    def __init__(self, registry: ModelRegistry, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
        self._registry = registry
        self._max_tensor_bytes = max_tensor_bytes

    def Predict(self, request, context):
        try:
            servable = self._registry.resolve(request.model_spec)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            inputs = {alias: tensor_from_proto(alias, proto, self._max_tensor_bytes)
                      for alias, proto in request.inputs.items()}
            outputs = run_signature(servable, signature_name, inputs, list(request.output_filter))
        except ServingError as e:
            context.abort(e.code, e.message)
        response = predict_pb2.PredictResponse()
        _set_model_spec(response.model_spec, servable, signature_name)
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
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
        except ServingError as e:
            context.abort(e.code, e.message)
        return metadata_response(servable)


def metadata_response(servable: Servable):
    """The ``GetModelMetadataResponse`` of a servable (its ``signature_def`` map)."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _set_model_spec(response.model_spec, servable, None)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
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
        return status_response(servables)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self._registry.configure(model_configs_from_proto(request.config))
        except ValueError as e:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(e)
            return response
        self._registry.refresh()
        return response


_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|"
                        r"/labels/(?P<label>[^/:]+))?(?P<what>/metadata|:predict)?/?$")
_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.FAILED_PRECONDITION: 400}


DEFAULT_REST_MAX_BODY_BYTES = 32 * 1024 * 1024


class _HTTPError(Exception):
    """A malformed HTTP request: answered with ``status`` and a JSON error, then the connection is
    closed (what is left of the body is not read)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _rest_handler(registry: ModelRegistry, max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
                  timeout_s: float = 30.0):
    class Handler(http.server.BaseHTTPRequestHandler):
        """TF Serving's REST API: model status, metadata and predict (row and columnar formats).

        Every malformed request gets a 4xx JSON ``{"error": ...}``: a body over ``max_body_bytes``
        (413), a missing or bad Content-Length (411/400), a body that is not UTF-8 JSON or not an
        object, or a body shorter than its Content-Length within ``timeout_s`` (408)."""

        protocol_version = "HTTP/1.1"
        timeout = timeout_s  # Socket timeout: a client that stops sending cannot hold a thread.

        def log_message(self, fmt, *args):  # Route to absl, not stderr.
            logging.debug("REST %s", fmt % args)

        def _send(self, code: int, body: dict, close: bool = False):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            """The request body as a JSON object (dict)."""
            raw_length = self.headers.get("Content-Length")
            if raw_length is None:
                raise _HTTPError(411, "Content-Length is required for a request body")
            try:
                length = int(raw_length)
            except ValueError:
                raise _HTTPError(400, f"Content-Length: expected an integer, got {raw_length!r}")
            if length < 0:
                raise _HTTPError(400, f"Content-Length: expected >= 0, got {length}")
            if length > max_body_bytes:
                raise _HTTPError(413, f"request body of {length:,} bytes is over the limit of "
                                      f"{max_body_bytes:,} bytes")
            try:
                raw = self.rfile.read(length)
            except OSError:  # socket.timeout included.
                raise _HTTPError(408, f"request body: {length} bytes announced, not received "
                                      f"within {timeout_s:g} s")
            if len(raw) != length:
                raise _HTTPError(400, f"request body: {length} bytes announced, {len(raw)} received")
            try:
                body = json.loads(raw.decode("utf-8") if raw else "{}")
            except UnicodeDecodeError as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON Parse error: the body is not UTF-8 ({e.reason} at byte "
                                   f"{e.start})") from None
            except json.JSONDecodeError as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from None
            if not isinstance(body, dict):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON Value: the body must be an object, got "
                                   f"{type(body).__name__}")
            return body

        def _spec(self, match):
            spec = predict_pb2.PredictRequest().model_spec
            spec.name = match["name"]
            if match["version"]:
                spec.version.value = int(match["version"])
            if match["label"]:
                spec.version_label = match["label"]
            return spec

        def _route(self, method: str):
            match = _REST_PATH.match(self.path.split("?")[0])
            if match is None or (method == "POST") != (match["what"] == ":predict"):
                return self._send(404, {"error": f"Malformed request: {method} {self.path}"})
            spec = self._spec(match)
            try:
                if match["what"] == "/metadata":
                    response = metadata_response(registry.resolve(spec))
                    return self._send(200, json_format.MessageToDict(
                        response, preserving_proto_field_name=True))
                if match["what"] is None:
                    servables = ([registry.resolve(spec)] if match["version"] or match["label"]
                                 else registry.versions(spec.name))
                    return self._send(200, json_format.MessageToDict(
                        status_response(servables), preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True))
                return self._predict(spec)
            except ServingError as e:
                return self._send(_HTTP_STATUS.get(e.code, 500), {"error": e.message})
            except _HTTPError as e:
                return self._send(e.status, {"error": e.message}, close=True)
            except Exception as e:  # A bug of ours: one line in the log, a JSON 500 to the client.
                logging.error("REST %s %s: %s: %s", method, self.path, type(e).__name__, e)
                return self._send(500, {"error": f"internal error: {type(e).__name__}"}, close=True)

        def _predict(self, spec):
            body = self._body()
            if not isinstance(body.get("signature_name", ""), str):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "'signature_name' must be a string")
            servable = registry.resolve(spec)
            signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
            signature = servable.signature_defs.get(signature_name)
            if ("instances" in body) == ("inputs" in body):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Missing 'inputs' or 'instances' key" if "instances" not in body
                                   else "Both 'instances' and 'inputs' keys are present")
            row = "instances" in body
            data = body["instances"] if row else body["inputs"]
            if row and (not isinstance(data, list) or not data):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"'instances' must be a non-empty list, got "
                                   f"{type(data).__name__}{'' if data else ' (empty)'}")
            if not row and not isinstance(data, (list, dict)):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"'inputs' must be a list or an object, got {type(data).__name__}")
            names = sorted(signature.inputs) if signature is not None else []
            if row:  # A list of examples: values, or dicts of named values.
                if isinstance(data[0], dict):
                    if not all(isinstance(e, dict) and e.keys() == data[0].keys() for e in data):
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "'instances': every example must be an object with the "
                                           "same keys")
                    inputs = {k: [example[k] for example in data] for k in data[0]}
                else:
                    inputs = {names[0] if len(names) == 1 else "": data}
            else:
                inputs = data if isinstance(data, dict) else {names[0] if len(names) == 1 else "": data}
            outputs = run_signature(servable, signature_name, inputs, [])
            if row:
                if len(outputs) == 1:
                    predictions = next(iter(outputs.values())).tolist()
                else:
                    n = len(next(iter(outputs.values())))
                    predictions = [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]
                return self._send(200, {"predictions": predictions})
            result = {k: v.tolist() for k, v in outputs.items()}
            return self._send(200, {"outputs": next(iter(result.values())) if len(result) == 1
                                    else result})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

    return Handler


class ModelServer:
    """The gRPC (and optional REST) server: start, serve, poll base paths for new versions, stop.

    Usage::

        with ModelServer([ModelConfig("teacher", "/work/teacher")]) as server:
            client = TeacherClient(server.target, "teacher")

    Args:
      models: the models to serve.
      host: the address to bind; 127.0.0.1 (loopback only) unless told otherwise.
      port: the gRPC port; 0 picks a free one (see :attr:`port` after :meth:`start`).
      rest_api_port: the REST port; None: no REST API; 0: a free one (:attr:`rest_api_port`).
      poll_seconds: how often to look for new versions under the base paths (TF Serving's
        ``--file_system_poll_wait_seconds``, default 1); 0 disables polling.
      max_workers: threads answering gRPC requests concurrently.
      ssl_server_cert, ssl_server_key: PEM bytes; both given: the gRPC port speaks TLS.
      ssl_custom_ca: PEM bytes; given with the above: clients must present a certificate it signed.
      interceptors: ``grpc.ServerInterceptor`` objects (e.g. checking an authorization header).
      max_tensor_bytes: the largest decoded input tensor of a Predict request, in bytes; a tensor
        whose declared shape exceeds it, or whose content does not match its shape, is refused with
        INVALID_ARGUMENT before anything is allocated (:func:`tensor_from_proto`).
      rest_max_body_bytes: the largest REST request body (413 above it).
      rest_timeout_s: a REST client that stops sending is answered 408 after this many seconds.

    Raises:
      ValueError: TLS half given, or a non-positive limit.
    """

    def __init__(self, models: list[ModelConfig], host: str = "127.0.0.1", port: int = 0,
                 rest_api_port: int | None = None, poll_seconds: float = 1.0, max_workers: int = 8,
                 ssl_server_cert: bytes | None = None, ssl_server_key: bytes | None = None,
                 ssl_custom_ca: bytes | None = None, interceptors=(),
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 rest_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
                 rest_timeout_s: float = 30.0):
        if bool(ssl_server_cert) != bool(ssl_server_key):
            raise ValueError("ssl_server_cert and ssl_server_key: give both or neither")
        for name, value in (("max_tensor_bytes", max_tensor_bytes),
                            ("rest_max_body_bytes", rest_max_body_bytes),
                            ("rest_timeout_s", rest_timeout_s)):
            if value <= 0:
                raise ValueError(f"{name}={value}: expected > 0")
        self.max_tensor_bytes = max_tensor_bytes
        self.rest_max_body_bytes = rest_max_body_bytes
        self.rest_timeout_s = rest_timeout_s
        self.registry = ModelRegistry(models)
        self.host = host
        self.port = port
        self.rest_api_port = rest_api_port
        self.poll_seconds = poll_seconds
        self._max_workers = max_workers
        self._tls = (ssl_server_cert, ssl_server_key, ssl_custom_ca) if ssl_server_cert else None
        self._interceptors = tuple(interceptors)
        self._server = None
        self._http = None
        self._health = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC API, for clients."""
        return f"{self.host}:{self.port}"

    def start(self) -> "ModelServer":
        """Loads the models and starts answering.

        Raises:
          RuntimeError: a port cannot be bound.
        """
        self.registry.refresh()
        for config in self.registry.model_configs():
            if not export.list_versions(config.base_path):
                logging.warning("Model %s: no numeric version directory under %s%s; serving "
                                "nothing for it until one appears", config.name, config.base_path,
                                "" if os.path.isdir(config.base_path) else " (no such directory)")
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._max_workers),
            interceptors=self._interceptors,
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.registry, self.max_tensor_bytes), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"{self.host}:{self.port}"
        if self._tls:
            cert, key, ca = self._tls
            credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                      require_client_auth=ca is not None)
            add_port = lambda: self._server.add_secure_port(address, credentials)  # noqa: E731
        else:
            add_port = lambda: self._server.add_insecure_port(address)  # noqa: E731
        try:
            bound = add_port()
        except RuntimeError:  # grpcio raises on a port in use.
            bound = 0
        if bound == 0:
            self._server.stop(0)
            raise RuntimeError(f"port={self.port}: cannot bind {address} (in use, or not an "
                               "address of this machine)")
        self.port = bound
        self._server.start()
        for service in ("", "tensorflow.serving.PredictionService",
                        "tensorflow.serving.ModelService"):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.rest_api_port is not None:
            self._http = http.server.ThreadingHTTPServer((self.host, self.rest_api_port),
                                                         _rest_handler(self.registry,
                                                                       self.rest_max_body_bytes,
                                                                       self.rest_timeout_s))
            self._http.daemon_threads = True
            self.rest_api_port = self._http.server_address[1]
            self._spawn(self._http.serve_forever, "tfkd-rest")
        if self.poll_seconds > 0:
            self._spawn(self._poll, "tfkd-version-poll")
        logging.info("Model server listening on %s (gRPC%s)", self.target,
                     f", REST on {self.rest_api_port}" if self._http else "")
        return self

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            self.registry.refresh()

    def wait(self) -> None:
        """Blocks until the server is stopped."""
        self._server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
