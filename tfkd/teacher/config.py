"""How to reach and read a served model: :class:`ServingConfig` (any served classifier),
:class:`TeacherConfig` (the teacher: what its output means, the query budget), :class:`RetryPolicy`,
and the checks of an address (:func:`check_target`) and of the TLS and token files the transports
read (:func:`read_pem`, :func:`read_secret`)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import urllib.parse

from tfkd import errors
from tfkd.teacher import labels
from tfkd.teacher import protocol

GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The largest answer taken, in bytes: the gRPC channel's receive limit, and a REST answer's body
(:class:`tfkd.teacher.transports.rest.RestTransport`)."""
REQUEST_OVERHEAD_BYTES = 64 * 1024
"""Bytes of a request kept for what is not the images (the envelope: model spec, keys, shape);
``max_request_bytes`` must exceed it."""
INPUT_DTYPES = ("float32", "uint8")

ConfigError = errors.ConfigError


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (sleep ~ U(0, min(max, initial * multiplier^attempt))).

    Attributes:
      max_attempts: attempts per request, the first included.
      initial_backoff_s, max_backoff_s, multiplier: the backoff envelope, in seconds.
    """

    max_attempts: int = 10
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def validate(self) -> None:
        """Raises ConfigError naming the first field out of range (``teacher.retry.<field>``)."""
        errors.check_settings("retry.", self, [
            ("max_attempts", self.max_attempts >= 1, ">= 1 (1: no retry)"),
            ("initial_backoff_s", self.initial_backoff_s >= 0, ">= 0 seconds"),
            ("max_backoff_s", self.max_backoff_s >= self.initial_backoff_s,
             f">= initial_backoff_s={self.initial_backoff_s} seconds"),
            ("multiplier", self.multiplier >= 1, ">= 1"),
        ])

    def backoff(self, attempt: int, rng) -> float:
        """Seconds to wait before retry ``attempt`` + 1 (``rng``: a ``random.Random``)."""
        return rng.uniform(0.0, min(self.max_backoff_s,
                                    self.initial_backoff_s * self.multiplier ** attempt))


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """How to reach and read a served classifier.

    Attributes:
      target: ``host:port`` (or ``unix:path``) of TF Serving's gRPC API,
        ``http(s)://host:port[/prefix]`` of its REST API, ``.../v2`` of the Open Inference
        Protocol's, ``grpc+v2://host:port``, a Vertex AI endpoint (``https://...endpoints/E``,
        ``vertex://P/L/E``), or a registered transport's ``<scheme>://...``
        (:mod:`tfkd.teacher.transports`).
      model_name, version, version_label, signature_name: the model spec (version and version_label
        are exclusive; neither: the server's latest).
      input_key: the image input's name; default: the signature's only input.
      input_dtype: ``float32`` or ``uint8``; default: from the metadata.
      input_scale: the value pixel intensity 1.0 maps to (1 or 255); default: 255 for uint8, else 1.
      output_key: default ``probabilities`` if present, else the only output.
      timeout_s: per-request deadline, seconds (> 0: the whole exchange, each attempt).
      connect_timeout_s: how long to wait for the server, seconds (> 0).
      max_in_flight: Predict requests in flight at once.
      max_request_bytes: requests are split to stay under this many bytes (an integer above
        :data:`REQUEST_OVERHEAD_BYTES`).
      retry: the :class:`RetryPolicy` for UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED.
      tls_ca_file, tls_cert_file, tls_key_file, tls_server_name: a TLS channel (CA bundle, optional
        client certificate and key, optional name override) instead of an insecure one.
      auth_token_file, auth_token_env: where to read a secret sent as ``auth_header: auth_scheme
        <token>`` on every call (never printed or logged).
      auth_header, auth_scheme: the metadata key (HTTP header) and scheme of that secret.
    """

    target: str = ""
    model_name: str = "model"
    version: int | None = None
    version_label: str | None = None
    signature_name: str = "serving_default"
    input_key: str | None = None
    input_dtype: str | None = None
    input_scale: float | None = None
    output_key: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 30.0
    max_in_flight: int = 4
    max_request_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES
    retry: RetryPolicy = RetryPolicy()
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    auth_token_file: str | None = None
    auth_token_env: str | None = None
    auth_header: str = "authorization"
    auth_scheme: str = "Bearer"

    def validate(self, require_target: bool = True) -> None:
        """Raises :class:`tfkd.errors.ConfigError` (a ValueError) naming the first contradictory
        or out-of-range field (an empty ``target`` passes when not ``require_target``)."""
        if self.target or require_target:
            check_target(self.target)
        if self.version is not None and self.version_label:
            raise ConfigError(f"version={self.version} and version_label={self.version_label!r}: "
                              "give one")
        if self.input_dtype is not None and self.input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"input_dtype={self.input_dtype!r}: expected one of {INPUT_DTYPES}")
        if self.input_scale is not None and self.input_scale <= 0:
            raise ConfigError(f"input_scale={self.input_scale}: expected > 0 (1 or 255)")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight={self.max_in_flight}: expected >= 1")
        self._validate_limits()
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file: give both or neither")
        if self.auth_token_file and self.auth_token_env:
            raise ConfigError("auth_token_file and auth_token_env: give one, not both")
        self.retry.validate()

    def _validate_limits(self) -> None:
        """The deadlines (finite seconds > 0: a deadline of 0 fails every request, and each
        failure is a retry charged) and the request size (above the envelope's bytes)."""
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not 0 < value < math.inf):
                raise ConfigError(f"{name}={value!r}: expected a finite number of seconds > 0")
        value = self.max_request_bytes
        if not isinstance(value, numbers.Integral) or value <= REQUEST_OVERHEAD_BYTES:
            raise ConfigError(f"max_request_bytes={value!r}: expected an integer > "
                              f"{REQUEST_OVERHEAD_BYTES} (the bytes a request's envelope takes "
                              "beside the images)")


@dataclasses.dataclass(frozen=True)
class TeacherConfig(ServingConfig):
    """How to reach and read a served teacher: :class:`ServingConfig`'s fields, and

    Attributes:
      target: ``host:port`` (TF Serving's gRPC API), ``http(s)://host:port`` (its REST API),
        ``http(s)://host:port/v2`` (the Open Inference Protocol over REST), ``grpc+v2://host:port``
        (over gRPC), ``https://REGION-aiplatform.googleapis.com/v1/projects/P/locations/L/endpoints/E``
        or ``vertex://P/L/E`` (a Vertex AI endpoint), or a registered transport's
        ``<scheme>://...`` (:func:`tfkd.teacher.transports.register_transport`); "" lets the
        pipeline train and serve one locally (:func:`tfkd.pipeline.run`).
      output_kind: one of ``OUTPUT_KINDS``; default ``classes`` for an integer output of rank <= 1,
        else ``probabilities``.
      class_map: ``class_map[t]`` is the data's class for the teacher's class t (a teacher whose
        classes are another order or a subset of the data's); answers are mapped into the data's
        classes (probability of teacher classes sharing a data class summed). None: the same
        classes and order.
      label_only: expose only the teacher's argmax (one-hot), to emulate a decision-based API on a
        teacher that returns probabilities.
      query_budget: at most this many images in the :class:`QueryAccount`'s total (None: no cap);
        with no account given to :class:`TeacherClient`, an in-memory account of this client alone.
    """

    model_name: str = "teacher"
    output_kind: str | None = None
    class_map: tuple[int, ...] | None = None
    label_only: bool = False
    query_budget: int | None = None

    def validate(self, require_target: bool = True) -> None:
        """Raises :class:`tfkd.errors.ConfigError` (a ValueError) naming the first contradictory
        or out-of-range field (an empty ``target`` passes when not ``require_target``)."""
        super().validate(require_target)
        if self.output_kind is not None and self.output_kind not in labels.OUTPUT_KINDS:
            raise errors.ConfigError(f"output_kind={self.output_kind!r}: expected one of "
                                     f"{labels.OUTPUT_KINDS}")
        if self.query_budget is not None and self.query_budget < 0:
            raise errors.ConfigError(f"query_budget={self.query_budget}: expected >= 0")
        if self.class_map is not None and len(set(self.class_map)) != len(self.class_map):
            raise errors.ConfigError(f"class_map={','.join(map(str, self.class_map))}: expected "
                                     "a distinct data class for each teacher class (two teacher "
                                     "classes sent to one data class would make their answers "
                                     "indistinguishable)")


def is_rest(target: str) -> bool:
    """Whether ``target`` names TF Serving's REST API (``http://`` or ``https://``)."""
    return target.startswith(("http://", "https://"))


def check_target(target: str) -> str:
    """Checks a teacher's or model's address: a gRPC ``host:port`` with a port in 1..65535
    (``[v6]:port`` too) or ``unix:`` socket path, or TF Serving's REST API as
    ``http(s)://host[:port][/path prefix]``, or ``<scheme>://...`` for a transport registered with
    :func:`tfkd.teacher.transports.register_transport`. Returns it unchanged.

    Raises:
      tfkd.errors.ConfigError (a ValueError): naming the address and what is expected (so that
        a typo fails at once instead of waiting for the connection deadline).
    """
    if target.startswith("unix:") and len(target) > 5:
        return target
    if is_rest(target):
        try:
            url = urllib.parse.urlsplit(target)
            port = url.port
        except ValueError as e:
            raise ConfigError(f"target={target!r}: expected http(s)://host[:port] "
                              f"({e})") from None
        if not url.hostname or (port is not None and not 1 <= port <= 65535) or url.query:
            raise ConfigError(f"target={target!r}: expected "
                              "http(s)://host[:port][/path prefix]")
        return target
    if "://" in target:
        if protocol.scheme(target) in protocol.TRANSPORTS and target.partition("://")[2]:
            return target  # A registered transport's own address; it reads the rest.
        raise ConfigError(f"target={target!r}: expected host:port (gRPC), http(s)://host:port "
                          "(REST; .../v2 the Open Inference Protocol; .../endpoints/E Vertex AI) "
                          f"or a registered scheme {sorted(protocol.TRANSPORTS)}")
    host, _, port = (target or "").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"target={target!r}: expected host:port with a port in 1..65535, "
                          "or http(s)://host:port for a REST API")
    return target


def read_secret(path: str | None, env: str | None) -> str | None:
    """The token in the file ``path`` or the environment variable ``env`` (stripped), None when
    neither is set. Raises ConfigError naming the setting when it cannot be read or is empty."""
    if path:
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"auth_token_file={path!r}: cannot read it ({e.strerror})") from None
        if not token:
            raise ConfigError(f"auth_token_file={path!r}: the file is empty")
        return token
    if env:
        token = os.environ.get(env, "").strip()
        if not token:
            raise ConfigError(f"auth_token_env={env!r}: the environment variable is unset or empty")
        return token
    return None


def read_pem(path: str | None, what: str) -> bytes | None:
    """A TLS file's PEM bytes (None when unset). Raises ConfigError naming ``what`` and the path
    when it cannot be read or holds no PEM block (gRPC would only fail to connect, silently)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{what}={path!r}: cannot read it ({e.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what}={path!r}: not a PEM file (no '-----BEGIN' line)")
    return data
