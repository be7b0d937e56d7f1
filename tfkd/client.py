"""A model-agnostic client of the TF Serving gRPC API: any served image classifier, any signature.

:class:`ServingClient` is the transport that both the black-box teacher (:mod:`tfkd.teacher`) and the
evaluation of exported students use. It speaks ``PredictionService.GetModelMetadata`` and
``Predict`` with the protos of ``tensorflow_serving.apis``, so it works unchanged against
``tensorflow_model_server`` and tfkd's own :mod:`tfkd.serving`.

* The contract is read, not assumed: input and output names, dtypes and shapes come from
  ``GetModelMetadata`` (:class:`ServingSignature`) and can be overridden (:class:`ServingConfig`):
  float32 or uint8 input with a scale (the value that pixel intensity 1.0 maps to), images with or
  without a channel axis.
* Requests stay under gRPC's 4 MB default, several are in flight at once, each has a deadline;
  answers are capped at :data:`MAX_ANSWER_BYTES`; UNAVAILABLE, DEADLINE_EXCEEDED and
  RESOURCE_EXHAUSTED are retried with exponential backoff and full jitter, other errors stop with
  the server's message (:class:`ServingClientError`).
* The version the server resolves at connect (``signature.version``) is pinned in every later
  request and checked in every answer: a version deployed under a run, or the pinned one taken
  away, stops the run with one line instead of mixing two models' answers under one identity.
* TLS channels and per-call metadata (an ``authorization`` header read from a file or an
  environment variable, never printed or logged).

What a query costs (accounting, budget, ledger) is not this module's business: the caller is told of
every attempt before it is sent (``on_attempt``) and may refuse it by raising.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import numbers
import os
import random
import threading
import time
from typing import Callable

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import errors

GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The largest answer taken, in bytes: the gRPC channel's receive limit, and a REST answer's body
(:class:`tfkd.transports.RestClient`)."""
REQUEST_OVERHEAD_BYTES = 64 * 1024
"""Bytes of a request kept for what is not the images (the envelope: model spec, keys, shape);
``max_request_bytes`` must exceed it."""
SPLIT_FLOOR = 1024
"""A labelling call is split over the requests in flight down to this many images a request, not
below (smaller requests pay more for the transport than concurrency gives back)."""
INPUT_DTYPES = ("float32", "uint8")
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.RESOURCE_EXHAUSTED)


ServingClientError = errors.ServingClientError
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

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff_s,
                                    self.initial_backoff_s * self.multiplier ** attempt))


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """How to reach and read a served classifier.

    Attributes:
      target: ``host:port`` (or ``unix:path``) of the gRPC API.
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
class ServingSignature:
    """A served signature as read (metadata plus overrides).

    Attributes:
      model_name, version, signature_name: the servable answering (version as resolved by the server
        at connect, and pinned in every later request).
      input_key; input_dtype: numpy dtype; input_shape: with -1 for unknown dimensions, batch first
        (rank 4: NHWC; rank 3: no channel axis; () if the metadata does not say); input_scale: the
        value of pixel intensity 1.0.
      output_key; output_dtype: a ``tf.DType``; output_shape: as ``input_shape``.
      origin: what answers, beyond its name and version: ``saved_model:<fingerprint>`` where the
        server gives the SavedModel's fingerprint (tfkd's server: the ``saved_model_fingerprint``
        metadata field), else ``endpoint:<target>`` (TF Serving, which has no such field). Two
        servers that both serve "teacher" version 1 are then told apart.
    """

    model_name: str
    version: int
    signature_name: str
    input_key: str
    input_dtype: np.dtype
    input_shape: tuple
    input_scale: float
    output_key: str
    output_dtype: tf.DType
    output_shape: tuple
    origin: str = ""


def is_rest(target: str) -> bool:
    """Whether ``target`` names TF Serving's REST API (``http://`` or ``https://``)."""
    return target.startswith(("http://", "https://"))


def check_target(target: str) -> str:
    """Checks a teacher's or model's address: a gRPC ``host:port`` with a port in 1..65535
    (``[v6]:port`` too) or ``unix:`` socket path, or TF Serving's REST API as
    ``http(s)://host[:port][/path prefix]``, or ``<scheme>://...`` for a transport registered with
    :func:`tfkd.transports.register_transport`. Returns it unchanged.

    Raises:
      tfkd.errors.ConfigError (a ValueError): naming the address and what is expected (so that
        a typo fails at once instead of waiting for the connection deadline).
    """
    if target.startswith("unix:") and len(target) > 5:
        return target
    if is_rest(target):
        import urllib.parse
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
        from tfkd import transports
        if transports.scheme(target) in transports.TRANSPORTS and target.partition("://")[2]:
            return target  # A registered transport's own address; it reads the rest.
        raise ConfigError(f"target={target!r}: expected host:port (gRPC), http(s)://host:port "
                          f"(REST) or a registered scheme {sorted(transports.TRANSPORTS)}")
    host, _, port = (target or "").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"target={target!r}: expected host:port with a port in 1..65535, "
                          "or http(s)://host:port for a REST API")
    return target


def _read_secret(path: str | None, env: str | None) -> str | None:
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


def _read_file(path: str | None, what: str) -> bytes | None:
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


def diagnose_connection(config: "ServingConfig", timeout_s: float = 5.0) -> str:
    """Why a gRPC channel to ``config.target`` did not become ready, in words: the host is unknown,
    nothing listens, the port speaks HTTP/1.x (a REST port), TLS where plaintext was expected or
    the reverse, a certificate the CA does not sign. Probes with one TCP connection (and one TLS
    handshake when TLS is configured); never raises."""
    import socket
    import ssl

    host, _, port = config.target.rpartition(":")
    if config.target.startswith("unix:") or not port.isdigit():
        return "no connection"
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except socket.gaierror as e:
        return f"the host {host!r} is not known ({e.strerror})"
    except ConnectionRefusedError:
        return "connection refused: nothing listens on that port"
    except TimeoutError:
        return f"no TCP connection within {timeout_s:g} s (the host is down or a firewall drops it)"
    except OSError as e:
        return f"no TCP connection ({e.strerror})"
    with sock:
        sock.settimeout(timeout_s)
        try:
            if config.tls_ca_file:
                return _diagnose_tls(sock, config, host)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: tfkd\r\nConnection: close\r\n\r\n")
            head = sock.recv(16)
        except (OSError, ssl.SSLError) as e:
            return f"the connection failed during the probe ({e})"
    if head.startswith(b"HTTP/1."):
        return ("the port answers HTTP/1.x, not gRPC: a REST port? (TF Serving serves gRPC on "
                "--port, 8500 by default, and REST on --rest_api_port, 8501)")
    if head[:1] in (b"\x15", b"\x16") or _speaks_tls(host, int(port), timeout_s):
        return "the server speaks TLS: give its CA (tls_ca_file)"
    return "the port accepts TCP connections but no gRPC (HTTP/2) connection was made"


def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TLS handshake (certificate not verified: a probe, nothing is sent) completes."""
    import socket
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as sock:
            context.wrap_socket(sock).close()
        return True
    except (OSError, ssl.SSLError):
        return False


def _diagnose_tls(sock, config: "ServingConfig", host: str) -> str:
    import ssl

    context = ssl.create_default_context(cadata=_read_file(config.tls_ca_file, "tls_ca_file")
                                         .decode("ascii", "replace"))
    if config.tls_cert_file and config.tls_key_file:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    try:
        context.wrap_socket(sock, server_hostname=config.tls_server_name or host).close()
    except ssl.SSLCertVerificationError as e:
        return (f"TLS: the server's certificate is not trusted by tls_ca_file="
                f"{config.tls_ca_file!r} ({e.verify_message})")
    except ssl.SSLError as e:
        if "WRONG_VERSION_NUMBER" in str(e) or "RECORD_LAYER" in str(e).upper():
            return "TLS was asked for, but the server answers in plaintext (no TLS on that port)"
        return f"the TLS handshake failed ({e.reason or e})"
    return "the TLS handshake succeeds but no gRPC (HTTP/2) connection was made"


def _shape(info) -> tuple:
    if info.tensor_shape.unknown_rank:
        return ()
    return tuple(int(d.size) for d in info.tensor_shape.dim)


def _open_channel(config: ServingConfig) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
    if not (config.tls_ca_file or config.tls_cert_file or config.tls_key_file):
        return grpc.insecure_channel(config.target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_file(config.tls_ca_file, "tls_ca_file"),
        private_key=_read_file(config.tls_key_file, "tls_key_file"),
        certificate_chain=_read_file(config.tls_cert_file, "tls_cert_file"))
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.secure_channel(config.target, credentials, options=options)


class ServingClient:
    """A classifier served over the TF Serving gRPC API.

    Args:
      config: the :class:`ServingConfig`.
      role: how the model is named in messages ("teacher", "student", "model").

    The version the server resolves at connect (:attr:`ServingSignature.version`) is pinned: every
    later request names it, and an answer from another version, or NOT_FOUND once it is no longer
    served (a new version deployed under the run), stops the call with one line
    (:class:`ServingClientError`, not retried) rather than mixing two models' answers.

    Raises:
      ServingClientError: the server is unreachable within ``connect_timeout_s`` (the message names
        the address); it answered an error (``code`` set: NOT_FOUND for an unknown model, ...); or
        the signature has no input or output usable as images in, one tensor out.
      ConfigError: contradictory or unreadable settings (both version and label, a missing TLS
        file, an unreadable token file).
    """

    _needs_target = True  # An in-process transport (tfkd.transports.SavedModelClient) has none.

    def __init__(self, config: ServingConfig, role: str = "model"):
        config.validate(require_target=self._needs_target)
        self.config = config
        self.role = role
        self.requests = 0  # Predict requests sent, retries included.
        self.retries = 0  # Attempts after a retryable error.
        self._counter_lock = threading.Lock()
        self._rng = random.Random()
        self._pinned_version: int | None = None  # Set once the server has resolved it.
        self._token = _read_secret(config.auth_token_file, config.auth_token_env)
        self._call_metadata = (((config.auth_header.lower(),
                                 f"{config.auth_scheme} {self._token}".strip()),)
                               if self._token else None)
        self._connect()
        try:
            self.signature = self._read_signature()
        except BaseException:
            self.close()
            raise
        logging.debug("Connected to %s: %s%s", self.name, self.signature,
                      " (authorization metadata set)" if self._token else "")

    def _connect(self) -> None:
        """Opens the transport: a gRPC channel, ready within ``connect_timeout_s``.

        Raises:
          ServingClientError: UNAVAILABLE, naming the address and why (:func:`diagnose_connection`).
        """
        self._channel = _open_channel(self.config)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.config.connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ServingClientError(f"{self.name}: unreachable (no connection within "
                                     f"{self.config.connect_timeout_s:g} s: "
                                     f"{diagnose_connection(self.config)})",
                                     grpc.StatusCode.UNAVAILABLE) from None
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    @property
    def name(self) -> str:
        return f"{self.role} {self.config.model_name!r} at {self.config.target}"

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"ServingClient({self.config.target!r}, {self.config.model_name!r})"

    def _model_spec(self, spec, with_signature: bool = True) -> None:
        """Fills a ModelSpec: the name, the signature, and the version resolved at connect, else
        (while connecting) the configured version or label (none: the server's latest)."""
        spec.name = self.config.model_name
        if with_signature:
            spec.signature_name = self.config.signature_name
        if self._pinned_version is not None:
            spec.version.value = self._pinned_version
        elif self.config.version is not None:
            spec.version.value = self.config.version
        elif self.config.version_label:
            spec.version_label = self.config.version_label

    def _call(self, method, request, what: str, before_retry=None):
        """One RPC with retries on the retryable codes; other errors raise
        :class:`ServingClientError`. ``before_retry()`` runs before each retry is sent."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.config.timeout_s, metadata=self._call_metadata)
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRYABLE_CODES and attempt + 1 < self.config.retry.max_attempts:
                    delay = self.config.retry.backoff(attempt, self._rng)
                    logging.warning("%s: %s %s (%s); retry %d/%d in %.2f s", self.name, what,
                                    code.name, (e.details() or "")[:200], attempt + 1,
                                    self.config.retry.max_attempts - 1, delay)
                    with self._counter_lock:
                        self.retries += 1
                    attempt += 1
                    time.sleep(delay)
                    if before_retry is not None:
                        before_retry()
                    continue
                raise ServingClientError(f"{self.name}: {what} failed with {code.name}: "
                                         f"{e.details()}" + (f" (after {attempt + 1} attempts)"
                                                             if attempt else ""), code) from None

    def _counted_call(self, method, request, what: str, n: int, on_attempt=None):
        """:meth:`_call` of a request of ``n`` images: ``on_attempt(n, retry)`` and the request
        count before every attempt, the first and each retry."""
        def attempt(retry: bool):
            if on_attempt is not None:
                on_attempt(n, retry)
            with self._counter_lock:
                self.requests += 1

        attempt(False)
        return self._call(method, request, what, before_retry=lambda: attempt(True))

    def _pinned_call(self, method, request, what: str, n: int, on_attempt=None):
        """:meth:`_counted_call` of a request that names the pinned version: NOT_FOUND then means
        the version is no longer served, and says so (with the version served now)."""
        try:
            return self._counted_call(method, request, what, n, on_attempt)
        except ServingClientError as e:
            if e.code != grpc.StatusCode.NOT_FOUND or self._pinned_version is None:
                raise
            served = self._served_version()
            now = (f"version {served} was deployed under the run? rerun to label with it"
                   if served not in (None, self._pinned_version) else
                   "the server names no other version now; rerun once it serves one")
            raise ServingClientError(
                f"{self.role} {self.config.model_name!r} version {self._pinned_version} is no "
                f"longer served at {self.config.target} ({what}: NOT_FOUND); {now}",
                grpc.StatusCode.NOT_FOUND) from None

    def _served_version(self) -> int | None:
        """The version the server resolves now for the configured label, else its latest (one
        metadata request, not retried), or None when it cannot say."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.config.model_name
        if self.config.version_label:
            request.model_spec.version_label = self.config.version_label
        try:
            response = self._stub.GetModelMetadata(request, timeout=self.config.timeout_s,
                                                   metadata=self._call_metadata)
        except grpc.RpcError:
            return None
        return int(response.model_spec.version.value) or None

    def _signature_def(self):
        """(the SignatureDef asked for, the version the server resolved)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, with_signature=False)
        response = self._call(self._stub.GetModelMetadata, request, "GetModelMetadata")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return self._named_signature(signature_map), int(response.model_spec.version.value)

    def _named_signature(self, signature_map):
        """The SignatureDef ``signature_name`` of a SignatureDefMap. Raises ServingClientError."""
        name = self.config.signature_name
        if name not in signature_map.signature_def:
            raise ServingClientError(f"{self.name}: no signature {name!r}; it has "
                                     f"{sorted(signature_map.signature_def)}")
        return signature_map.signature_def[name]

    def _pick(self, tensors, key: str | None, what: str, preferred: str | None = None) -> str:
        """The input or output alias to use: ``key`` if given, else ``preferred``, else the only one."""
        setting = f"teacher.{what}_key" if self.role == "teacher" else f"{what}_key"
        if key is None:
            if preferred is not None and preferred in tensors:
                return preferred
            if len(tensors) != 1:
                raise ServingClientError(f"{self.name}: several {what}s {sorted(tensors)}; name the "
                                         f"one to use ({setting})")
            return next(iter(tensors))
        if key not in tensors:
            raise ServingClientError(f"{self.name}: {what}_key={key!r} not in {what}s "
                                     f"{sorted(tensors)}")
        return key

    def _read_signature(self) -> ServingSignature:
        signature, version = self._signature_def()
        self._pinned_version = version or None  # 0: the server does not say; nothing to pin.
        config = self.config
        input_key = self._pick(signature.inputs, config.input_key, "input")
        output_key = self._pick(signature.outputs, config.output_key, "output", "probabilities")
        input_info, output_info = signature.inputs[input_key], signature.outputs[output_key]
        served_dtype = tf.dtypes.as_dtype(input_info.dtype)
        dtype = np.dtype(config.input_dtype or served_dtype.as_numpy_dtype)
        if dtype.name not in INPUT_DTYPES:
            raise ServingClientError(f"{self.name}: input {input_key!r} is {dtype.name}; tfkd sends "
                                     f"{INPUT_DTYPES} images")
        scale = float(config.input_scale) if config.input_scale else (255.0 if dtype == np.uint8
                                                                      else 1.0)
        input_shape = _shape(input_info)
        if input_shape and len(input_shape) not in (3, 4):
            raise ServingClientError(f"{self.name}: input {input_key!r} has shape "
                                     f"{list(input_shape)}; expected images [batch, H, W] or "
                                     "[batch, H, W, C]")
        return ServingSignature(
            model_name=config.model_name, version=version, signature_name=config.signature_name,
            input_key=input_key, input_dtype=dtype, input_shape=input_shape, input_scale=scale,
            output_key=output_key, output_dtype=tf.dtypes.as_dtype(output_info.dtype),
            output_shape=_shape(output_info), origin=self._origin())

    def _origin(self) -> str:
        """:attr:`ServingSignature.origin`: the served SavedModel's fingerprint where the server
        answers the ``saved_model_fingerprint`` metadata field, else the endpoint's address."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["saved_model_fingerprint"])
        self._model_spec(request.model_spec, with_signature=False)
        try:
            response = self._call(self._stub.GetModelMetadata, request, "GetModelMetadata")
            value = wrappers_pb2.StringValue()
            if response.metadata["saved_model_fingerprint"].Unpack(value) and value.value:
                return f"saved_model:{value.value}"
        except ServingClientError as e:  # TF Serving: INVALID_ARGUMENT, an unknown field.
            logging.debug("%s: no SavedModel fingerprint in its metadata (%s); the endpoint "
                          "identifies it", self.name, e)
        return f"endpoint:{self.config.target}"

    @property
    def images_per_request(self) -> int:
        """Images per Predict request so that the request stays under ``max_request_bytes``."""
        per_image = int(np.prod([d for d in self.signature.input_shape[1:] if d > 0] or [1]))
        per_image *= np.dtype(self.signature.input_dtype).itemsize
        return max(1, (self.config.max_request_bytes - REQUEST_OVERHEAD_BYTES) // per_image)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [n, H, W, C] in [0, 1] -> the signature's input (dtype, scale, layout).

        Raises:
          ConfigError: images that do not fit the signature's shape, naming both.
        """
        images = np.asarray(images)
        expected = self.signature.input_shape
        if images.ndim != 4:
            raise ConfigError(f"images: expected float32 [n, H, W, C] in [0, 1], got shape "
                             f"{list(images.shape)}")
        if len(expected) == 3:  # The model takes [batch, H, W]: drop a single channel.
            if images.shape[-1] != 1:
                raise ConfigError(f"images: {self.name} takes [batch, H, W] (one channel), got "
                                 f"{list(images.shape)}")
            images = images[..., 0]
        if expected and any(e > 0 and e != s for e, s in zip(expected[1:], images.shape[1:])):
            raise ConfigError(f"images: expected shape {list(expected)} (-1: any) for {self.name}, "
                             f"got {list(images.shape)}")
        scale = np.float32(self.signature.input_scale)
        if self.signature.input_dtype == np.uint8:
            return np.round(np.clip(images.astype(np.float32) * scale, 0, 255)).astype(np.uint8)
        encoded = np.asarray(images, dtype=self.signature.input_dtype)  # No copy when it fits.
        return encoded * scale if scale != 1 else encoded

    def predict_raw(self, encoded: np.ndarray,
                    on_attempt: Callable[[int, bool], None] | None = None) -> np.ndarray:
        """One Predict request of already-encoded images, retried as the policy says.

        Args:
          encoded: the signature's input, [b, ...] (see :meth:`encode`).
          on_attempt: called as ``on_attempt(b, retry)`` before every attempt is sent (the first
            with ``retry=False``); an exception it raises stops the request unsent.

        Returns:
          the raw output array of ``output_key``.

        Raises:
          ServingClientError: the server's error; an answer without the output; an answer from
            another version than the pinned one (FAILED_PRECONDITION) or the pinned version no
            longer served (NOT_FOUND), neither retried.
        """
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.inputs[self.signature.input_key].CopyFrom(tf.make_tensor_proto(encoded))
        request.output_filter.append(self.signature.output_key)
        response = self._pinned_call(self._stub.Predict, request, "Predict", len(encoded),
                                     on_attempt)
        answered = (response.model_spec.version.value
                    if response.model_spec.HasField("version") else None)
        if None not in (answered, self._pinned_version) and answered != self._pinned_version:
            raise ServingClientError(
                f"{self.role} {self.config.model_name!r} at {self.config.target}: answered by "
                f"version {answered}, but this run labels with version {self._pinned_version} "
                f"(resolved at connect); was version {answered} deployed under the run? rerun "
                "to label with it", grpc.StatusCode.FAILED_PRECONDITION)
        if self.signature.output_key not in response.outputs:
            raise ServingClientError(f"{self.name}: the answer has no output "
                                     f"{self.signature.output_key!r}")
        return tf.make_ndarray(response.outputs[self.signature.output_key])

    def predict(self, encoded: np.ndarray, rows: np.ndarray | None = None,
                convert: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                on_attempt: Callable[[int, bool], None] | None = None,
                progress: bool = False) -> np.ndarray:
        """Predicts ``encoded[rows]`` split evenly over ``max_in_flight`` concurrent requests, each
        under the message limit (:attr:`images_per_request`) and of at least :data:`SPLIT_FLOOR`
        images, as one ``tensor_content`` buffer (rows sliced without a copy when contiguous).

        Args:
          encoded: the signature's input for n images (see :meth:`encode`).
          rows: int64 indices into ``encoded`` to send (default: all), ascending.
          convert: ``convert(idx, raw) -> float32 [len(idx), K]`` checks and converts each answer as
            it arrives (the teacher persists it there); default: the raw output as float32.
          on_attempt: see :meth:`predict_raw`.
          progress: show a Keras progress bar.

        Returns:
          float32 [len(rows), K], in the order of ``rows``.

        Raises:
          ServingClientError, and what ``convert`` or ``on_attempt`` raise (requests not yet sent
          are cancelled).
        """
        rows = np.arange(len(encoded)) if rows is None else np.asarray(rows, np.int64)
        # Split evenly over the requests in flight (each under the message limit, none below
        # SPLIT_FLOOR images): one large batch becomes concurrent requests.
        step = min(self.images_per_request,
                   max(SPLIT_FLOOR, -(-len(rows) // self.config.max_in_flight)))
        chunks = [rows[s:s + step] for s in range(0, len(rows), step)]
        convert = convert or (lambda idx, raw: np.asarray(raw, np.float32))
        bar = None
        if progress and len(rows):
            import keras
            bar = keras.utils.Progbar(len(rows), unit_name="image")

        def one(position: int):
            idx = chunks[position]
            contiguous = idx[-1] - idx[0] + 1 == len(idx)  # A slice is a view: no copy.
            raw = self.predict_raw(encoded[idx[0]:idx[-1] + 1] if contiguous else encoded[idx],
                                   on_attempt)
            answer = convert(idx, raw)
            if len(answer) != len(idx):
                raise ServingClientError(f"{self.name}: answered {len(answer)} rows for "
                                         f"{len(idx)} images")
            return position, answer

        answers: list = [None] * len(chunks)
        with concurrent.futures.ThreadPoolExecutor(self.config.max_in_flight) as pool:
            futures = [pool.submit(one, p) for p in range(len(chunks))]
            try:
                for future in concurrent.futures.as_completed(futures):
                    position, answers[position] = future.result()
                    if bar is not None:
                        bar.add(len(chunks[position]))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return np.concatenate(answers) if answers else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(target: str, model_name: str = "model", role: str = "model",
            **fields) -> ServingClient:
    """The client of the model ``model_name`` at ``target``, opened by the transport its scheme
    names (:func:`tfkd.transports.open_client`: ``http(s)://`` REST, ``host:port`` gRPC) with
    ``ServingConfig(target=target, model_name=model_name, **fields)``; ``role`` names it in
    messages. Raises as :class:`ServingClient`."""
    from tfkd import transports
    return transports.open_client(ServingConfig(target=target, model_name=model_name, **fields),
                                  role)


def top1(client: ServingClient, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """A served classifier's top-1 classes int64 [n] for float32 images [n, H, W, C] in [0, 1].

    The output read is per-class scores [n, K] (probabilities or logits: the argmax is the
    prediction) or, for an integer output, the class ids [n] themselves.
    """
    answers = client.predict(client.encode(images), progress=progress)
    if client.signature.output_dtype.is_integer:
        return answers.reshape(-1).astype(np.int64)
    return answers.argmax(axis=1).astype(np.int64)


def accuracy(client: ServingClient, images: np.ndarray, labels: np.ndarray,
             progress: bool = False) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of a served classifier on labelled images
    (:func:`top1`; labels int [n] in [0, K))."""
    return float(np.mean(top1(client, images, progress) == np.asarray(labels).reshape(-1)))
