"""Prometheus metrics as ``tensorflow_model_server --monitoring_config_file`` exposes them: on the
REST port, at the path the ``MonitoringConfig`` names, in TF Serving's metric names
(``/tensorflow/serving/...`` with ``/`` written ``:``, as its Prometheus exporter does):

* ``:tensorflow:serving:request_count`` (labels ``model_name``, ``status``: the gRPC status name,
  ``OK``, ``NOT_FOUND``...) : requests answered, a counter (exposed untyped: the client library
  would rename a typed counter ``..._total``, and TF Serving's name has no suffix);
* ``:tensorflow:serving:request_latency`` (labels ``model_name``, ``API``: ``Predict``,
  ``Classify``, ``GetModelMetadata``; ``entrypoint``: ``GRPC`` or ``REST``): a histogram of request
  wall time in microseconds, TF Serving's buckets (10 us x 1.8^k, 33 buckets).

* ``:tensorflow:serving:batching:processed_batch_size_v2`` (labels ``model_name``, ``op_name``:
  the signature, ``batch_size``): model calls made by request batching, by size (TF's batching
  ops count the same thing under this name).

Only the models the server is configured to serve get a ``model_name`` label of their own; requests
for any other name (unauthenticated clients may send millions of distinct names, each otherwise a new
series held forever) are counted under the one label :data:`UNSERVED_MODEL`.

The request metrics also carry ``model_version`` (the version that answered; empty when none was
resolved), a label TF Serving does not have, so that counts and latency can be read per version; sum
it away to get TF Serving's series. The exposition is ``prometheus_client``'s, from a registry per server.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import grpc
import prometheus_client
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from prometheus_client.core import Metric

from tfkd import fs
from tfkd.errors import ConfigError

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
PROCESSED_BATCH_SIZE = ":tensorflow:serving:batching:processed_batch_size_v2"
UNSERVED_MODEL = "_unserved"
"""The ``model_name`` label of requests for a model the server does not serve."""
# TF Serving's latency buckets: monitoring::Buckets::Exponential(10, 1.8, 33), in microseconds.
LATENCY_BUCKETS_US = tuple(10 * 1.8 ** k for k in range(33))


def _monitoring_message_class():
    """TF Serving's ``MonitoringConfig`` (tensorflow_serving/config/monitoring_config.proto), built
    here because the pip package does not ship it."""
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="tfkd/serving/monitoring_config.proto",
                                              package="tensorflow.serving", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    config = file.message_type.add(name="MonitoringConfig")
    config.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                     type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfigProto = _monitoring_message_class()
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default path.


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """Where Prometheus metrics are served (TF Serving's ``MonitoringConfig`` text proto).

    Attributes:
      prometheus_enable: serve them (on the REST port; the server needs ``rest_api_port``).
      prometheus_path: the HTTP path, starting with ``/`` (TF Serving's default when empty).
    """

    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_METRICS_PATH

    @classmethod
    def from_text(cls, text: str, source: str = "monitoring config") -> "MonitoringConfig":
        """Parses a ``MonitoringConfig`` text proto (``prometheus_config { enable: true path: ...
        }``).

        Raises:
          tfkd.errors.ConfigError: a malformed text proto, or a path not starting with ``/``
            (naming ``source``).
        """
        proto = MonitoringConfigProto()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as e:
            raise ConfigError(f"{source}: not a MonitoringConfig text proto "
                              f"({' '.join(str(e).split())})") from None
        path = proto.prometheus_config.path or DEFAULT_METRICS_PATH
        if not path.startswith("/"):
            raise ConfigError(f"{source}: prometheus_config.path={path!r}, expected a path "
                              "starting with '/'")
        return cls(prometheus_enable=proto.prometheus_config.enable, prometheus_path=path)

    @classmethod
    def from_file(cls, path: str) -> "MonitoringConfig":
        """:meth:`from_text` of the file at ``path`` (local or any ``tf.io.gfile`` scheme); its
        messages name the setting (:attr:`tfkd.serving.ServerConfig.monitoring`) and the path."""
        return cls.from_text(fs.read_text(path), f"monitoring: {path!r}")


class _ExactCounter:
    """A prometheus_client collector of one counter under TF Serving's exact metric name."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, *labels: str) -> None:
        with self._lock:
            self._counts[labels] = self._counts.get(labels, 0) + 1

    def collect(self):
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            counts = dict(self._counts)
        for labels, count in sorted(counts.items()):
            metric.add_sample(self.name, dict(zip(self.labelnames, labels)), count)
        yield metric


class ServerMetrics:
    """The metrics of one server: a ``prometheus_client`` registry of its own.

    Usage::

        with metrics.request("teacher", "Predict", "GRPC") as record:
            servable = ...          # record.version = servable.version once resolved
        # counted with the status of the ServingError raised inside, or OK

    Attributes:
      registry: the ``prometheus_client.CollectorRegistry`` to expose.
    """

    def __init__(self, known_models=None):
        """``known_models()``: the names the server serves (others are counted as
        :data:`UNSERVED_MODEL`); None labels every name as sent."""
        self._known_models = known_models
        self.registry = prometheus_client.CollectorRegistry()
        self._counts = _ExactCounter(REQUEST_COUNT, "The total number of requests.",
                                     ("model_name", "model_version", "status"))
        self._batches = _ExactCounter(
            PROCESSED_BATCH_SIZE, "Tracks the batch size on processing by model_name and op name "
            "(if available).", ("model_name", "op_name", "batch_size"))
        for collector in (self._counts, self._batches):
            self.registry.register(collector)
        self._latency = prometheus_client.Histogram(
            REQUEST_LATENCY, "Distribution of wall time (in microseconds) for Tensorflow Serving "
            "request.", ["model_name", "model_version", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_US, registry=self.registry)

    def request(self, model_name: str, api: str, entrypoint: str) -> "_Recording":
        """A context manager that counts one request and times it (see the class docstring)."""
        return _Recording(self, model_name, api, entrypoint)

    def record(self, model_name: str, model_version: str, api: str, entrypoint: str, status: str,
               seconds: float) -> None:
        """Counts one answered request and its wall time in ``seconds``."""
        if self._known_models is not None and model_name not in self._known_models():
            model_name, model_version = UNSERVED_MODEL, ""
        self._counts.add(model_name, model_version, status)
        self._latency.labels(model_name, model_version, api, entrypoint).observe(seconds * 1e6)

    def record_batch(self, model_name: str, signature_name: str, batch_size: int) -> None:
        """Counts one batched model call of ``batch_size`` examples (``op_name``: the signature)."""
        self._batches.add(model_name, signature_name, str(batch_size))

    def exposition(self) -> tuple[bytes, str]:
        """(the Prometheus text exposition, its Content-Type)."""
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST


class _Recording:
    def __init__(self, metrics: ServerMetrics, model_name: str, api: str, entrypoint: str):
        self.metrics, self.model_name, self.api, self.entrypoint = metrics, model_name, api, entrypoint
        self.version = ""

    def __enter__(self) -> "_Recording":
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        code = getattr(exc, "code", None)
        status = ("OK" if exc is None else code.name if isinstance(code, grpc.StatusCode)
                  else "INTERNAL")
        self.metrics.record(self.model_name, str(self.version), self.api, self.entrypoint, status,
                            time.perf_counter() - self.start)
