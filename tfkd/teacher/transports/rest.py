"""TF Serving's REST API as a :class:`tfkd.teacher.protocol.Transport` (``tensorflow_model_server
--rest_api_port``; a KServe v1 endpoint only when KServe runs TF Serving, since the transport needs the
metadata path), and the HTTP exchange the other HTTP transports share (the Open Inference Protocol's
:mod:`~tfkd.teacher.transports.oip_rest`, Vertex AI's :mod:`~tfkd.teacher.transports.vertex`).

``GET /v1/models/NAME[/versions/N|/labels/L]/metadata`` and ``POST ...:predict`` with a columnar JSON
body (``{"signature_name", "inputs"}``), answered ``{"outputs": ...}``. TLS (a CA bundle, optional
client certificate, server-name override) and the bearer token as an ``Authorization`` header (a
warning, once, when it would go over plain ``http://`` to a host other than this one). HTTP statuses
are given the matching gRPC codes (429/503/504, timeouts and refused connections are the codes the
client retries); ``timeout_s`` bounds each whole exchange (a peer that trickles its answer is cut off
at it), an answer's body is read incrementally and refused beyond :data:`MAX_ANSWER_BYTES`, and what
is not a TF Serving answer (an HTML page, an error under HTTP 200, a redirect, a TLS or gRPC port)
fails once with one line saying what it is. Failures are :class:`tfkd.errors.TransportError`.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
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

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol

_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
               503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
JSON_BYTES_PER_VALUE = 24
"""The most bytes one pixel takes in a REST body (a float32 printed as its exact double,
``-0.0039215688593685627`` and a comma); requests are split to stay under ``max_request_bytes``."""
MAX_ANSWER_BYTES = config_lib.MAX_ANSWER_BYTES
"""The largest REST answer body read, in bytes: the gRPC channel's limit (64 MiB)."""
READ_BYTES = 64 * 1024
"""An answer's body is read this many bytes at a time (so a too-large one is never held whole)."""
DEADLINE_THREAD = "tfkd-rest-deadline"  # The name of the timer thread of an exchange in flight.
_WARNED_PLAINTEXT_TOKEN: set = set()  # Targets already warned of a token over plain http://.


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


def _late(timeout: float) -> errors.TransportError:
    return errors.TransportError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"no whole answer within {timeout:g} s (timeout_s)")


class RestTransport:
    """A classifier served over TF Serving's REST API (``config.target``:
    ``http(s)://host:port[/prefix]``); one HTTP connection per exchange. See
    :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.ConfigError: an unreadable TLS file or token.
    """

    metadata_call = "GET metadata"
    predict_call = "POST predict"
    envelope_bytes = 0  # JSON_BYTES_PER_VALUE bounds a value's text, separators included.

    def __init__(self, config: config_lib.ServingConfig):
        self.config = config
        self.address = config.target
        url = urllib.parse.urlsplit(config.target)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._context = self._tls_context() if self._https else None
        self._headers = {"Content-Type": "application/json"}
        token = config_lib.read_secret(config.auth_token_file, config.auth_token_env)
        if token:
            self._headers[config.auth_header] = f"{config.auth_scheme} {token}"
            if (not self._https and not _is_loopback(self._host)
                    and config.target not in _WARNED_PLAINTEXT_TOKEN):
                _WARNED_PLAINTEXT_TOKEN.add(config.target)
                logging.warning("%s: the %s token goes over plain http:// to %s, another machine: "
                                "whoever is on the way can read it; use https://", config.target,
                                config.auth_header, self._host)

    def _tls_context(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.create_default_context()
        if config.tls_ca_file:
            context = ssl.create_default_context(cadata=config_lib.read_pem(
                config.tls_ca_file, "tls_ca_file").decode("ascii", "replace"))
        if config.tls_cert_file:
            config_lib.read_pem(config.tls_cert_file, "tls_cert_file")
            config_lib.read_pem(config.tls_key_file, "tls_key_file")
            context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        return context

    def __repr__(self) -> str:  # Never shows the token.
        return f"RestTransport({self.config.target!r}, {self.config.model_name!r})"

    def image_bytes(self, signature: protocol.ServingSignature) -> int:
        """The most bytes of one image's JSON text (:data:`JSON_BYTES_PER_VALUE` a value)."""
        values = int(np.prod([d for d in signature.input_shape[1:] if d > 0] or [1]))
        return values * JSON_BYTES_PER_VALUE

    def _path(self, version: int | None) -> str:
        """``/v1/models/NAME[/versions/N|/labels/L]`` under the target's prefix: ``version``, else
        the configured label (REST answers do not name the version)."""
        path = f"{self._prefix}/v1/models/{urllib.parse.quote(self.config.model_name, safe='')}"
        if version is not None:
            return path + f"/versions/{version}"
        if self.config.version_label:
            return path + f"/labels/{urllib.parse.quote(self.config.version_label, safe='')}"
        return path

    def _connection(self, timeout: float, deadline: _Deadline) -> http.client.HTTPConnection:
        if self._https:
            return _HTTPSConnection(self._host, self._port, timeout, self._context,
                                    self.config.tls_server_name, deadline)
        return _HTTPConnection(self._host, self._port, timeout, deadline)

    def _http(self, method: str, path: str, body: bytes | None) -> dict:
        """One HTTP exchange -> the JSON answer, all of it within ``timeout_s``. Raises
        :class:`tfkd.errors.TransportError` (not retryable for what a retry cannot mend: an answer
        too large, a port of another protocol)."""
        timeout = self.config.timeout_s
        deadline = _Deadline(timeout)
        connection = self._connection(timeout, deadline)
        try:
            connection.request(method, path, body=body, headers=self._headers)
            response = connection.getresponse()
            raw = _read_body(response)
            status, location = response.status, response.getheader("Location")
        except (OSError, http.client.HTTPException) as e:
            raise self._exchange_error(e, deadline.expired, timeout) from None
        finally:
            deadline.cancel()
            connection.close()
        if deadline.expired:  # An answer without a length, cut at the deadline.
            raise _late(timeout)
        return _answer(status, raw, location)

    def _exchange_error(self, e: Exception, expired: bool, timeout: float) -> Exception:
        """The error an exchange that failed with ``e`` raises: retried as its code says or, for a
        port of another protocol, not retried."""
        where = f"{self._host}:{self._port}"
        if expired or isinstance(e, TimeoutError):
            return _late(timeout)
        if isinstance(e, ssl.SSLError):
            if "WRONG_VERSION_NUMBER" in str(e):
                return errors.TransportError(
                    grpc.StatusCode.UNAVAILABLE, f"https:// was asked for, but {where} answers in "
                    "plaintext (no TLS on that port): use http://", retryable=False)
            return errors.TransportError(grpc.StatusCode.UNAVAILABLE, f"TLS: {e.reason or e}")
        if (isinstance(e, http.client.BadStatusLine)
                and not isinstance(e, http.client.RemoteDisconnected)):
            return errors.TransportError(grpc.StatusCode.UNAVAILABLE,
                                         f"{where} {_not_http(e.line)}", retryable=False)
        return errors.TransportError(grpc.StatusCode.UNAVAILABLE,
                                     f"{type(e).__name__}: {_one_line(e)} "
                                     f"(http{'s' if self._https else ''}://{where})")

    def metadata(self, version: int | None) -> protocol.Metadata:
        """``GET .../metadata``: the signature defs, the version and (tfkd's server) the
        SavedModel's fingerprint."""
        answer = self._http("GET", self._path(version) + "/metadata", None)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        try:
            fields = dict(answer["metadata"]["signature_def"])
            fields.pop("@type", None)  # tfkd's server writes the Any's type; TF Serving does not.
            json_format.ParseDict(fields, signature_map, ignore_unknown_fields=True)
            resolved = int(answer.get("model_spec", {}).get("version", 0))
            fingerprint = answer["metadata"].get("saved_model_fingerprint")  # tfkd's server only.
        except (KeyError, TypeError, ValueError, AttributeError, json_format.ParseError) as e:
            raise errors.TransportError(None, f"the metadata answer is not TF Serving's "
                                              f"({type(e).__name__}: {e})") from None
        fingerprint = fingerprint.get("value") if isinstance(fingerprint, dict) else None
        return protocol.Metadata(signature_map, resolved,
                                 fingerprint if isinstance(fingerprint, str) and fingerprint
                                 else None)

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """``POST ...:predict`` of the images as nested JSON lists; the output as the signature's
        output dtype."""
        body = json.dumps({"signature_name": signature.signature_name,
                           "inputs": {signature.input_key: np.asarray(encoded).tolist()}})
        answer = self._http("POST", self._path(version) + ":predict", body.encode("utf-8"))
        outputs = answer.get("outputs")
        if isinstance(outputs, dict):
            outputs = outputs.get(signature.output_key)
        if outputs is None:
            return protocol.Answer(None)
        try:
            return protocol.Answer(np.asarray(outputs,
                                              dtype=signature.output_dtype.as_numpy_dtype))
        except (ValueError, TypeError, OverflowError) as e:  # Ragged rows, objects, strings.
            raise errors.TransportError(
                None, f"the output {signature.output_key!r} is not an array of numbers "
                f"({type(e).__name__}: {_one_line(e)})") from None

    def close(self) -> None:
        """Nothing to release: one HTTP connection per exchange."""


def _read_body(response) -> bytes:
    """The answer's body, read :data:`READ_BYTES` at a time and refused (unread beyond) once it
    announces or has more than :data:`MAX_ANSWER_BYTES` (RESOURCE_EXHAUSTED, not retried)."""
    limit = MAX_ANSWER_BYTES
    if response.length is not None and response.length > limit:
        raise _too_large(f"announces {response.length} bytes (Content-Length)", limit)
    parts, size = [], 0
    while True:
        part = response.read(READ_BYTES)
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
        if size > limit:
            raise _too_large(f"has more than {limit} bytes", limit)


def _too_large(detail: str, limit: int) -> errors.TransportError:
    return errors.TransportError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"the answer {detail}, over the limit of {limit} bytes "
        "(the gRPC channel's); send fewer images a request (max_request_bytes)", retryable=False)


def _answer(status: int, raw: bytes, location: str | None = None) -> dict:
    """A JSON object answered with HTTP 200. Raises :class:`tfkd.errors.TransportError`: the
    status's code (with the error's text, or a redirect's Location), or INTERNAL for a 200 whose
    body is not JSON, not an object, or an error."""
    try:
        answer = json.loads(raw.decode("utf-8")) if raw else {}
    except (ValueError, RecursionError):  # Not UTF-8, not JSON, or nested beyond reading.
        answer = None
    if status != 200:
        if 300 <= status < 400:
            message = (f"redirected to {location}; give that address as the target "
                       "(redirects are not followed)")
        else:
            message = _one_line(_error_text(answer) if isinstance(answer, dict) else raw)
        raise errors.TransportError(_HTTP_CODES.get(status, grpc.StatusCode.INTERNAL),
                                    f"HTTP {status}: {message}")
    if answer is None:
        raise errors.TransportError(grpc.StatusCode.INTERNAL,
                                    f"HTTP 200: the answer is not JSON: {_one_line(raw, 200)}")
    if not isinstance(answer, dict):
        raise errors.TransportError(grpc.StatusCode.INTERNAL,
                                    "HTTP 200: the answer is not a JSON object")
    if "error" in answer:
        raise errors.TransportError(grpc.StatusCode.INTERNAL,
                                    f"HTTP 200 with an error: {_one_line(_error_text(answer))}")
    return answer


def _error_text(answer: dict):
    """An error answer's text: TF Serving's and the Open Inference Protocol's ``{"error": "..."}``,
    Google APIs' (Vertex AI) ``{"error": {"code", "message", "status"}}``."""
    error = answer.get("error", "")
    if isinstance(error, dict) and "message" in error:
        return f"{error.get('status', '')} {error['message']}".strip()
    return error
