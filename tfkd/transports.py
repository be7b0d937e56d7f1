"""The ways to reach a served classifier besides gRPC: TF Serving's REST API, and in-process.

All three transports are :class:`tfkd.client.ServingClient`: the same signature reading
(:class:`tfkd.client.ServingSignature`), encoding, request splitting, ``max_in_flight`` concurrency,
retries with backoff and per-attempt ``on_attempt`` hook, so that the teacher's query account,
ledger, budget and sharding (:class:`tfkd.teacher.TeacherClient`) are the same whatever answers.

* :class:`RestClient`: TF Serving's REST API (``tensorflow_model_server --rest_api_port``; a
  KServe v1 endpoint only when KServe runs TF Serving, since the client needs the metadata path;
  not a Vertex AI endpoint's ``projects/.../endpoints/E:predict``):
  ``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``
  and ``POST ...:predict`` with a columnar JSON body (``{"signature_name", "inputs"}``), answered
  ``{"outputs": ...}``. TLS (a CA bundle, optional client certificate, server-name override) and
  the bearer token as an ``Authorization`` header (a warning, once, when it would go over plain
  ``http://`` to a host other than this one). HTTP 429/503/504, timeouts and refused connections
  are retried as gRPC's RESOURCE_EXHAUSTED/UNAVAILABLE/DEADLINE_EXCEEDED are. ``timeout_s`` bounds
  each whole exchange (a peer that trickles its answer is cut off at it), an answer's body is read
  incrementally and refused beyond :data:`MAX_ANSWER_BYTES`, the version resolved at connect is
  pinned in the URL (``/versions/N``), and what is not a TF Serving answer (an HTML page, an error
  under HTTP 200, a redirect, a TLS or gRPC port) fails once with one line saying what it is.
* :class:`SavedModelClient`: a SavedModel version directory loaded in this process and run by the
  same code as tfkd's server (:mod:`tfkd.serving`): no network, for white-box methods and tests.

:func:`open_client` picks by the target's URL scheme (:data:`TRANSPORTS`, :func:`register_transport`):
``http(s)://`` REST, none gRPC; every target tfkd opens goes through it.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse

import grpc
import numpy as np
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from tfkd import client as client_lib

_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
               503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
JSON_BYTES_PER_VALUE = 24
"""The most bytes one pixel takes in a REST body (a float32 printed as its exact double,
``-0.0039215688593685627`` and a comma); requests are split to stay under ``max_request_bytes``."""
MAX_ANSWER_BYTES = client_lib.MAX_ANSWER_BYTES
"""The largest REST answer body read, in bytes: the gRPC channel's limit (64 MiB)."""
READ_BYTES = 64 * 1024
"""An answer's body is read this many bytes at a time (so a too-large one is never held whole)."""
DEADLINE_THREAD = "tfkd-rest-deadline"  # The name of the timer thread of an exchange in flight.
_WARNED_PLAINTEXT_TOKEN: set = set()  # Targets already warned of a token over plain http://.


class _HttpError(grpc.RpcError):
    """An HTTP failure in gRPC's terms, so that :meth:`ServingClient._call` retries it alike."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _HTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose whole exchange ends at ``deadline`` (a :class:`_Deadline`)."""

    def __init__(self, host, port, timeout, deadline):
        super().__init__(host, port, timeout=timeout)
        self._deadline = deadline

    def connect(self):
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose whole exchange (the handshake included) ends at ``deadline``,
    verifying the certificate against ``server_name`` when given (``tls_server_name``), as gRPC's
    ``ssl_target_name_override`` does."""

    def __init__(self, host, port, timeout, context, server_name, deadline):
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._deadline = deadline

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self._deadline.watch(sock)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name or self.host)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_line(value, limit: int = 300) -> str:
    """``value`` as text on one line (whitespace runs made one space), at most ``limit`` chars."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text[:limit].split())


def _not_http(line: str) -> str:
    """What a port that answered ``line`` instead of an HTTP/1.x status line speaks."""
    if line[3:5] == "\x04\x00":  # An HTTP/2 SETTINGS frame (type 4, no flags) after its length.
        return ("speaks HTTP/2 (a gRPC port?), not TF Serving's REST API: give a gRPC address as "
                "host:port, without http://")
    if line[:2] in ("\x15\x03", "\x16\x03"):  # A TLS alert or handshake record.
        return "speaks TLS: use https://"
    return "does not answer HTTP/1.x: not a REST API"


class _Deadline:
    """Shuts a connection's socket down once ``timeout`` seconds have passed since it was made:
    ``http.client`` times each read, so a peer sending a byte now and then would hold a call for
    ever; this bounds the whole exchange, as gRPC's deadline does."""

    def __init__(self, timeout: float):
        self.at = time.monotonic() + timeout
        self.expired = False
        self._timer = None

    def watch(self, sock) -> None:
        def expire():
            self.expired = True
            try:  # The plain socket's shutdown, under TLS too: the reader then sees the end.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), expire)
        self._timer.name = DEADLINE_THREAD
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class RestClient(client_lib.ServingClient):
    """A classifier served over TF Serving's REST API (``config.target``:
    ``http(s)://host:port[/prefix]``). See :class:`tfkd.client.ServingClient` for the arguments,
    the methods and the errors (HTTP statuses become the matching gRPC codes; ``timeout_s`` bounds
    each whole exchange; an answer over :data:`MAX_ANSWER_BYTES` is RESOURCE_EXHAUSTED, not
    retried)."""

    def _connect(self) -> None:
        url = urllib.parse.urlsplit(self.config.target)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._context = self._tls_context() if self._https else None
        self._headers = {"Content-Type": "application/json"}
        if self._token:
            self._headers[self.config.auth_header] = f"{self.config.auth_scheme} {self._token}"
            if (not self._https and not _is_loopback(self._host)
                    and self.config.target not in _WARNED_PLAINTEXT_TOKEN):
                _WARNED_PLAINTEXT_TOKEN.add(self.config.target)
                logging.warning("%s: the %s token goes over plain http:// to %s, another machine: "
                                "whoever is on the way can read it; use https://", self.name,
                                self.config.auth_header, self._host)

    def _tls_context(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.create_default_context()
        if config.tls_ca_file:
            context = ssl.create_default_context(cadata=client_lib._read_file(
                config.tls_ca_file, "tls_ca_file").decode("ascii", "replace"))
        if config.tls_cert_file:
            client_lib._read_file(config.tls_cert_file, "tls_cert_file")
            client_lib._read_file(config.tls_key_file, "tls_key_file")
            context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        return context

    def __repr__(self) -> str:  # Never shows the token.
        return f"RestClient({self.config.target!r}, {self.config.model_name!r})"

    def _model_path(self, version: int | None, label: str | None) -> str:
        path = f"{self._prefix}/v1/models/{urllib.parse.quote(self.config.model_name, safe='')}"
        if version is not None:
            return path + f"/versions/{version}"
        if label:
            return path + f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def _path(self, what: str) -> str:
        """``/v1/models/NAME[/versions/N|/labels/L]`` + ``what`` under the target's prefix: the
        version resolved at connect once there is one (REST answers do not name it)."""
        pinned = self._pinned_version
        return self._model_path(self.config.version if pinned is None else pinned,
                                self.config.version_label) + what

    def _served_version(self) -> int | None:
        try:
            answer = self._http(("GET", self._model_path(None, self.config.version_label)
                                 + "/metadata", None), self.config.timeout_s)
            return int(answer["model_spec"]["version"]) or None
        except (grpc.RpcError, client_lib.ServingClientError, KeyError, TypeError, ValueError):
            return None

    def _connection(self, timeout: float, deadline: "_Deadline") -> http.client.HTTPConnection:
        if self._https:
            return _HTTPSConnection(self._host, self._port, timeout, self._context,
                                    self.config.tls_server_name, deadline)
        return _HTTPConnection(self._host, self._port, timeout, deadline)

    def _http(self, request: tuple, timeout: float, metadata=None) -> dict:
        """One HTTP exchange ``(method, path, body)`` -> the JSON answer, all of it within
        ``timeout`` seconds. Raises :class:`_HttpError`, or :class:`ServingClientError` for what
        a retry cannot mend (an answer too large, a port of another protocol)."""
        method, path, body = request
        deadline = _Deadline(timeout)
        connection = self._connection(timeout, deadline)
        try:
            connection.request(method, path, body=body, headers=self._headers)
            response = connection.getresponse()
            raw = self._read_body(response, f"{method} {path}")
            status, location = response.status, response.getheader("Location")
        except (OSError, http.client.HTTPException) as e:
            raise self._exchange_error(e, deadline.expired, timeout) from None
        finally:
            deadline.cancel()
            connection.close()
        if deadline.expired:  # An answer without a length, cut at the deadline.
            raise self._late(timeout)
        return self._answer(status, raw, location)

    @staticmethod
    def _late(timeout: float) -> _HttpError:
        return _HttpError(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"no whole answer within {timeout:g} s (timeout_s)")

    def _read_body(self, response, what: str) -> bytes:
        """The answer's body, read :data:`READ_BYTES` at a time and refused (unread beyond) once
        it announces or has more than :data:`MAX_ANSWER_BYTES`."""
        limit = MAX_ANSWER_BYTES
        if response.length is not None and response.length > limit:
            raise self._too_large(what, f"announces {response.length} bytes (Content-Length)",
                                  limit)
        parts, size = [], 0
        while True:
            part = response.read(READ_BYTES)
            if not part:
                return b"".join(parts)
            parts.append(part)
            size += len(part)
            if size > limit:
                raise self._too_large(what, f"has more than {limit} bytes", limit)

    def _too_large(self, what: str, detail: str, limit: int) -> client_lib.ServingClientError:
        return client_lib.ServingClientError(
            f"{self.name}: {what} failed with RESOURCE_EXHAUSTED: the answer {detail}, over the "
            f"limit of {limit} bytes (the gRPC channel's); send fewer images a request "
            "(max_request_bytes)", grpc.StatusCode.RESOURCE_EXHAUSTED)

    def _exchange_error(self, e: Exception, expired: bool, timeout: float) -> Exception:
        """The error an exchange that failed with ``e`` raises: :class:`_HttpError` (retried as
        its code says) or, for a port of another protocol, :class:`ServingClientError`."""
        where = f"{self._host}:{self._port}"
        if expired or isinstance(e, TimeoutError):
            return self._late(timeout)
        if isinstance(e, ssl.SSLError):
            if "WRONG_VERSION_NUMBER" in str(e):
                return client_lib.ServingClientError(
                    f"{self.name}: https:// was asked for, but {where} answers in plaintext (no "
                    "TLS on that port): use http://", grpc.StatusCode.UNAVAILABLE)
            return _HttpError(grpc.StatusCode.UNAVAILABLE, f"TLS: {e.reason or e}")
        if (isinstance(e, http.client.BadStatusLine)
                and not isinstance(e, http.client.RemoteDisconnected)):
            return client_lib.ServingClientError(f"{self.name}: {where} {_not_http(e.line)}",
                                                 grpc.StatusCode.UNAVAILABLE)
        return _HttpError(grpc.StatusCode.UNAVAILABLE, f"{type(e).__name__}: {_one_line(e)} "
                                                       f"(http{'s' if self._https else ''}://{where})")

    @staticmethod
    def _answer(status: int, raw: bytes, location: str | None = None) -> dict:
        """A JSON object answered with HTTP 200. Raises :class:`_HttpError`: the status's code
        (with the error's text, or a redirect's Location), or INTERNAL for a 200 whose body is
        not JSON, not an object, or an error."""
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else {}
        except (ValueError, RecursionError):  # Not UTF-8, not JSON, or nested beyond reading.
            answer = None
        if status != 200:
            if 300 <= status < 400:
                message = (f"redirected to {location}; give that address as the target "
                           "(redirects are not followed)")
            else:
                message = _one_line(answer.get("error", "") if isinstance(answer, dict) else raw)
            raise _HttpError(_HTTP_CODES.get(status, grpc.StatusCode.INTERNAL),
                             f"HTTP {status}: {message}")
        if answer is None:
            raise _HttpError(grpc.StatusCode.INTERNAL,
                             f"HTTP 200: the answer is not JSON: {_one_line(raw, 200)}")
        if not isinstance(answer, dict):
            raise _HttpError(grpc.StatusCode.INTERNAL, "HTTP 200: the answer is not a JSON object")
        if "error" in answer:
            raise _HttpError(grpc.StatusCode.INTERNAL,
                             f"HTTP 200 with an error: {_one_line(answer['error'])}")
        return answer

    def _metadata(self) -> dict:
        return self._call(self._http, ("GET", self._path("/metadata"), None), "GET metadata")

    def _signature_def(self):
        answer = self._metadata()
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        try:
            fields = dict(answer["metadata"]["signature_def"])
            fields.pop("@type", None)  # tfkd's server writes the Any's type; TF Serving does not.
            json_format.ParseDict(fields, signature_map, ignore_unknown_fields=True)
            version = int(answer.get("model_spec", {}).get("version", 0))
        except (KeyError, TypeError, ValueError, json_format.ParseError) as e:
            raise client_lib.ServingClientError(f"{self.name}: the metadata answer is not TF "
                                                f"Serving's ({type(e).__name__}: {e})") from None
        fingerprint = answer["metadata"].get("saved_model_fingerprint")  # tfkd's server only.
        self._fingerprint = fingerprint.get("value") if isinstance(fingerprint, dict) else None
        return self._named_signature(signature_map), version

    def _origin(self) -> str:
        fingerprint = getattr(self, "_fingerprint", None)
        if isinstance(fingerprint, str) and fingerprint:
            return f"saved_model:{fingerprint}"
        return f"endpoint:{self.config.target}"

    @property
    def images_per_request(self) -> int:
        per_image = int(np.prod([d for d in self.signature.input_shape[1:] if d > 0] or [1]))
        return max(1, self.config.max_request_bytes // (per_image * JSON_BYTES_PER_VALUE))

    def predict_raw(self, encoded: np.ndarray, on_attempt=None) -> np.ndarray:
        body = json.dumps({"signature_name": self.config.signature_name,
                           "inputs": {self.signature.input_key: np.asarray(encoded).tolist()}})
        answer = self._pinned_call(self._http, ("POST", self._path(":predict"),
                                                body.encode("utf-8")), "POST predict",
                                   len(encoded), on_attempt)
        outputs = answer.get("outputs")
        if isinstance(outputs, dict):
            outputs = outputs.get(self.signature.output_key)
        if outputs is None:
            raise client_lib.ServingClientError(f"{self.name}: the answer has no output "
                                                f"{self.signature.output_key!r}")
        try:
            return np.asarray(outputs, dtype=self.signature.output_dtype.as_numpy_dtype)
        except (ValueError, TypeError, OverflowError) as e:  # Ragged rows, objects, strings.
            raise client_lib.ServingClientError(
                f"{self.name}: the output {self.signature.output_key!r} is not an array of "
                f"numbers ({type(e).__name__}: {_one_line(e)})") from None

    def close(self) -> None:
        pass  # One HTTP connection per request: nothing is held open.


class SavedModelClient(client_lib.ServingClient):
    """A SavedModel version directory loaded and run in this process by tfkd's server code
    (:class:`tfkd.serving.registry.Servable`, :func:`tfkd.serving.signatures.run_signature`): the
    answers a TF Serving server of that directory would give, without a network.

    Args:
      path: the version directory (``.../<model>/<version>/``; the version is its name when it is
        a number, else 1).
      config: the model spec fields are read as for a server (signature, input and output keys,
        dtype and scale); ``target`` is not used.
      role: as :class:`tfkd.client.ServingClient`.

    Raises:
      ServingClientError: the directory does not hold a SavedModel with the signature.
    """

    _needs_target = False

    def __init__(self, path: str, config: client_lib.ServingConfig | None = None,
                 role: str = "model"):
        self._saved_model = path
        base = config or client_lib.ServingConfig()
        name = os.path.basename(os.path.normpath(path))
        super().__init__(dataclasses.replace(base, target="",
                                             version=int(name) if name.isdigit() else None,
                                             version_label=None), role)

    @property
    def name(self) -> str:
        return f"{self.role} {self.config.model_name!r} at {self._saved_model} (in-process)"

    def __repr__(self) -> str:
        return f"SavedModelClient({self._saved_model!r})"

    def _connect(self) -> None:
        from tfkd.serving import registry
        try:
            self._servable = registry.Servable.load(self.config.model_name,
                                                    self.config.version or 1, self._saved_model)
        except Exception as e:  # noqa: BLE001 - whatever TensorFlow raises for a bad directory.
            raise client_lib.ServingClientError(
                f"{self.name}: not a loadable SavedModel ({type(e).__name__}: "
                f"{str(e)[:300]})", grpc.StatusCode.NOT_FOUND) from None

    def _signature_def(self):
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self._servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return self._named_signature(signature_map), self._servable.version

    def _origin(self) -> str:
        return f"saved_model:{self._servable.fingerprint}"

    def predict_raw(self, encoded: np.ndarray, on_attempt=None) -> np.ndarray:
        from tfkd.errors import ServingError
        from tfkd.serving import signatures
        if on_attempt is not None:
            on_attempt(len(encoded), False)
        with self._counter_lock:
            self.requests += 1
        try:
            outputs = signatures.run_signature(self._servable, self.config.signature_name,
                                               {self.signature.input_key: np.asarray(encoded)},
                                               [self.signature.output_key])
        except ServingError as e:
            raise client_lib.ServingClientError(f"{self.name}: Predict failed with "
                                                f"{e.code.name}: {e.message}", e.code) from None
        return outputs[self.signature.output_key]

    def close(self) -> None:
        pass


TRANSPORTS: dict = {}
"""URL scheme -> the client class (a :class:`tfkd.client.ServingClient` subclass, called as
``cls(config, role)``) for targets ``<scheme>://...``: ``http`` and ``https`` :class:`RestClient`;
a target without a scheme (``host:port``, ``unix:path``) is gRPC. :func:`register_transport` adds
one; :func:`open_client` is the one place a target is turned into a client."""


def register_transport(scheme: str, cls) -> None:
    """Makes ``<scheme>://...`` targets open with ``cls(config, role)`` wherever a target is
    opened (:func:`open_client`: the teacher, ``tfkd.connect``, :func:`tfkd.client.connect`, the
    Kubeflow teacher check, student measurement).

    Raises:
      ConfigError: ``scheme`` is not a URL scheme (letters, digits, ``+-.``, a letter first) or is
        already registered to another class.
    """
    if not (scheme[:1].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        raise client_lib.ConfigError(f"scheme={scheme!r}: expected a URL scheme (a letter, then "
                                     "letters, digits, '+', '-' or '.')")
    if TRANSPORTS.get(scheme, cls) is not cls:
        raise client_lib.ConfigError(f"scheme={scheme!r}: already registered to "
                                     f"{TRANSPORTS[scheme].__name__}")
    TRANSPORTS[scheme] = cls


def scheme(target: str) -> str:
    """The URL scheme of ``target`` (``"http"`` of ``http://host:8501``), "" for gRPC's
    ``host:port`` and ``unix:path``."""
    head, sep, _ = target.partition("://")
    return head.lower() if sep else ""


def open_client(config: client_lib.ServingConfig, role: str = "model",
                saved_model: str | None = None) -> client_lib.ServingClient:
    """The client ``config.target`` calls for, by its scheme (:data:`TRANSPORTS`):
    :class:`RestClient` for ``http(s)://``, else gRPC (:class:`tfkd.client.ServingClient`); with
    ``saved_model`` (a version directory) the in-process :class:`SavedModelClient` instead.

    Raises:
      ServingClientError, ConfigError: as the client's constructor.
    """
    if saved_model is not None:
        return SavedModelClient(saved_model, config, role)
    cls = TRANSPORTS.get(scheme(config.target), client_lib.ServingClient)
    return cls(config, role)


register_transport("http", RestClient)
register_transport("https", RestClient)
