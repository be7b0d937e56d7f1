"""The model server: the gRPC services and the REST API over one registry, started and stopped."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading

import grpc
from absl import logging
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import export
from tfkd import fs
from tfkd.errors import ConfigError
from tfkd.serving.batching import BatchingParameters
from tfkd.serving.batching import BatchScheduler
from tfkd.serving.grpc_api import ModelServicer
from tfkd.serving.grpc_api import PredictionServicer
from tfkd.serving.monitoring import MonitoringConfig
from tfkd.serving.monitoring import ServerMetrics
from tfkd.serving.registry import ModelConfig
from tfkd.serving.registry import ModelRegistry
from tfkd.serving.rest import DEFAULT_REST_MAX_BODY_BYTES
from tfkd.serving.rest import DEFAULT_REST_MIN_BODY_BYTES_PER_S
from tfkd.serving.rest import RestServer
from tfkd.serving.signatures import DEFAULT_MAX_TENSOR_BYTES

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # Generous receive limit on the server side, as TF Serving's.


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server listens and what it accepts.

    Attributes:
      host: the address to bind; 127.0.0.1 (loopback only) unless told otherwise.
      port: the gRPC port; 0 picks a free one (see :attr:`ModelServer.port` after start).
      rest_api_port: the REST port; None: no REST API; 0: a free one.
      poll_seconds: how often to look for new versions under the base paths (TF Serving's
        ``--file_system_poll_wait_seconds``, default 1); 0 disables polling.
      max_workers: threads answering gRPC requests concurrently.
      ssl_server_cert, ssl_server_key: PEM bytes; both given: the gRPC port speaks TLS.
      ssl_custom_ca: PEM bytes; given with the above: clients must present a certificate it signed.
      interceptors: ``grpc.ServerInterceptor`` objects (e.g. checking an authorization header).
      max_tensor_bytes: the largest decoded input tensor of a Predict request, in bytes; a tensor
        whose declared shape exceeds it, or whose content does not match its shape, is refused with
        INVALID_ARGUMENT before anything is allocated (:func:`tfkd.serving.tensor_from_proto`).
      rest_max_body_bytes: the largest REST request body (413 above it).
      rest_timeout_s: seconds a REST request's line and headers may take from its first byte, and
        the longest silence of a client; later: HTTP 408 and the connection closed.
      rest_min_body_bytes_per_s: the least average rate of a REST body: a request must be in
        within ``rest_timeout_s`` plus its Content-Length at this rate (else 408), so a client that
        drips its body holds no server resource for long (:class:`tfkd.serving.rest.RestServer`).
      batching: :class:`~tfkd.serving.batching.BatchingParameters`: merge concurrent Predict
        requests (gRPC and REST) into batched model calls, as ``--enable_batching
        --batching_parameters_file``; None: every request calls the model itself.
      monitoring: :class:`~tfkd.serving.monitoring.MonitoringConfig`: with Prometheus enabled,
        GET on its path of the REST port answers the request metrics (``--monitoring_config_file``).
      allow_reload_config: answer ``ModelService.HandleReloadConfigRequest`` (on by default, as
        TF Serving, where any client that reaches the port may replace the served models: bind to
        loopback, put an authenticating proxy in front, or turn it off); off: PERMISSION_DENIED.
    """

    host: str = "127.0.0.1"
    port: int = 0
    rest_api_port: int | None = None
    poll_seconds: float = 1.0
    max_workers: int = 8
    ssl_server_cert: bytes | None = None
    ssl_server_key: bytes | None = None
    ssl_custom_ca: bytes | None = None
    interceptors: tuple = ()
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    rest_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES
    rest_timeout_s: float = 30.0
    rest_min_body_bytes_per_s: float = DEFAULT_REST_MIN_BODY_BYTES_PER_S
    batching: BatchingParameters | None = None
    monitoring: MonitoringConfig | None = None
    allow_reload_config: bool = True

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` for half a TLS pair, a non-positive limit,
        batching parameters out of range, or Prometheus metrics without a REST port to serve them
        on."""
        if bool(self.ssl_server_cert) != bool(self.ssl_server_key):
            raise ConfigError("ssl_server_cert and ssl_server_key: give both or neither")
        for name in ("max_tensor_bytes", "rest_max_body_bytes", "rest_timeout_s",
                     "rest_min_body_bytes_per_s", "max_workers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected > 0")
        if self.batching is not None:
            self.batching.validate()
        if self.metrics_path is not None and self.rest_api_port is None:
            raise ConfigError("monitoring: Prometheus metrics are served on the REST port; set "
                              "rest_api_port to a port number")

    @property
    def metrics_path(self) -> str | None:
        """The HTTP path of the Prometheus metrics, or None when they are not served."""
        enabled = self.monitoring is not None and self.monitoring.prometheus_enable
        return self.monitoring.prometheus_path if enabled else None


class ModelServer:
    """The gRPC (and optional REST) server: start, serve, poll base paths for new versions, stop.

    Usage::

        with ModelServer([ModelConfig("teacher", "/work/teacher")]) as server:
            teacher = tfkd.connect(server.target, "teacher")

    Args:
      models: the models to serve.
      config: the :class:`ServerConfig`; or its fields as keyword arguments (``poll_seconds=0``).

    Attributes:
      port, rest_api_port: the ports bound (a free one where the config says 0), after start.
      metrics: the :class:`~tfkd.serving.monitoring.ServerMetrics` of every request answered.
      batcher: the :class:`~tfkd.serving.batching.BatchScheduler` while started with batching
        (its ``calls`` and ``examples`` count the model calls made), else None.

    Raises:
      tfkd.errors.ConfigError: what :meth:`ServerConfig.validate` and
        :meth:`~tfkd.serving.registry.ModelRegistry.configure` raise; both a config and fields.
    """

    def __init__(self, models: list[ModelConfig], config: ServerConfig | None = None, **fields):
        if config is not None and fields:
            raise ConfigError(f"config and {sorted(fields)}: give the config or its fields")
        self.config = config or ServerConfig(**fields)
        self.config.validate()
        self.registry = ModelRegistry(models)
        self.port = self.config.port
        self.rest_api_port = self.config.rest_api_port
        self.metrics = ServerMetrics(
            known_models=lambda: [m.name for m in self.registry.model_configs()])
        self.batcher = None
        self._server = None
        self._http = None
        self._health = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC API, for clients."""
        return f"{self.host}:{self.port}"

    def start(self) -> "ModelServer":
        """Loads the models and starts answering.

        Raises:
          tfkd.errors.ConfigError: a port cannot be bound (in use, or not an address of this
            machine); nothing is left serving.
        """
        self.registry.refresh()
        for config in self.registry.model_configs():
            if not export.list_versions(config.base_path):
                logging.warning("Model %s: no numeric version directory under %s%s; serving "
                                "nothing for it until one appears", config.name, config.base_path,
                                "" if fs.isdir(config.base_path) else " (no such directory)")
        if self.config.batching is not None:
            self.batcher = BatchScheduler(
                self.config.batching,
                on_batch=lambda key, size: self.metrics.record_batch(key[0], key[2], size))
        try:
            self._start_grpc()
            if self.rest_api_port is not None:
                self._http = self._rest_server()
        except ConfigError:
            self.stop(0)
            raise
        if self._http is not None:
            self.rest_api_port = self._http.server_address[1]
            self._spawn(self._http.serve_forever, "tfkd-rest")
        if self.config.poll_seconds > 0:
            self._spawn(self._poll, "tfkd-version-poll")
        logging.info("Model server listening on %s (gRPC%s)", self.target,
                     f", REST on {self.rest_api_port}" if self._http else "")
        return self

    def _rest_server(self) -> RestServer:
        address = (self.config.host, self.rest_api_port)
        try:
            return RestServer(address, self.registry, self.config.rest_max_body_bytes,
                              self.config.rest_timeout_s, self.batcher, self.metrics,
                              self.config.metrics_path,
                              min_body_bytes_per_s=self.config.rest_min_body_bytes_per_s)
        except OSError as e:  # EADDRINUSE, EADDRNOTAVAIL, EACCES for a port below 1024.
            raise ConfigError(f"rest_api_port={self.rest_api_port}: cannot bind "
                              f"{address[0]}:{address[1]} ({e.strerror or e})") from None

    def _start_grpc(self) -> None:
        """Builds the gRPC server with the services, binds the port, starts it.

        Raises:
          RuntimeError: the port cannot be bound.
        """
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.config.max_workers),
            interceptors=self.config.interceptors,
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.registry, self.config.max_tensor_bytes, self.batcher,
                               self.metrics), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry, self.config.allow_reload_config), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"{self.config.host}:{self.port}"
        try:
            if self.config.ssl_server_cert:
                ca = self.config.ssl_custom_ca
                bound = self._server.add_secure_port(address, grpc.ssl_server_credentials(
                    [(self.config.ssl_server_key, self.config.ssl_server_cert)],
                    root_certificates=ca, require_client_auth=ca is not None))
            else:
                bound = self._server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises on a port in use.
            bound = 0
        if bound == 0:
            self._server.stop(0)
            raise ConfigError(f"port={self.port}: cannot bind {address} (in use, or not an "
                              "address of this machine)")
        self.port = bound
        self._server.start()
        for service in ("", "tensorflow.serving.PredictionService",
                        "tensorflow.serving.ModelService"):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self):
        while not self._stop.wait(self.config.poll_seconds):
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
        if self.batcher is not None:
            self.batcher.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
