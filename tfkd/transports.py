"""The ways to reach a served classifier besides gRPC: TF Serving's REST API, and in-process.

All three transports are :class:`tfkd.client.ServingClient`: the same signature reading
(:class:`tfkd.client.ServingSignature`), encoding, request splitting, ``max_in_flight`` concurrency,
retries with backoff and per-attempt ``on_attempt`` hook, so that the teacher's query account,
ledger, budget and sharding (:class:`tfkd.teacher.TeacherClient`) are the same whatever answers.

* :class:`RestClient`: TF Serving's REST API (``tensorflow_model_server --rest_api_port``, what
  Vertex AI and KServe's v1 protocol speak): ``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``
  and ``POST ...:predict`` with a columnar JSON body (``{"signature_name", "inputs"}``), answered
  ``{"outputs": ...}``. TLS (a CA bundle, optional client certificate, server-name override) and
  the bearer token as an ``Authorization`` header. HTTP 429/503/504, timeouts and refused
  connections are retried as gRPC's RESOURCE_EXHAUSTED/UNAVAILABLE/DEADLINE_EXCEEDED are.
* :class:`SavedModelClient`: a SavedModel version directory loaded in this process and run by the
  same code as tfkd's server (:mod:`tfkd.serving`): no network, for white-box methods and tests.

:func:`open_client` picks by the target: ``http(s)://`` REST, else gRPC.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
import ssl
import urllib.parse

import grpc
import numpy as np
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


class _HttpError(grpc.RpcError):
    """An HTTP failure in gRPC's terms, so that :meth:`ServingClient._call` retries it alike."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _HTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that verifies the certificate against ``server_name`` when given
    (``tls_server_name``), as gRPC's ``ssl_target_name_override`` does."""

    def __init__(self, host, port, timeout, context, server_name):
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name or self.host)


class RestClient(client_lib.ServingClient):
    """A classifier served over TF Serving's REST API (``config.target``:
    ``http(s)://host:port[/prefix]``). See :class:`tfkd.client.ServingClient` for the arguments,
    the methods and the errors (HTTP statuses become the matching gRPC codes)."""

    def _connect(self) -> None:
        url = urllib.parse.urlsplit(self.config.target)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._context = self._tls_context() if self._https else None
        self._headers = {"Content-Type": "application/json"}
        if self._token:
            self._headers[self.config.auth_header] = f"{self.config.auth_scheme} {self._token}"

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

    def _path(self, what: str) -> str:
        """``/v1/models/NAME[/versions/N|/labels/L]`` + ``what`` under the target's prefix."""
        path = f"{self._prefix}/v1/models/{urllib.parse.quote(self.config.model_name, safe='')}"
        if self.config.version is not None:
            path += f"/versions/{self.config.version}"
        elif self.config.version_label:
            path += f"/labels/{urllib.parse.quote(self.config.version_label, safe='')}"
        return path + what

    def _http(self, request: tuple, timeout: float, metadata=None) -> dict:
        """One HTTP exchange ``(method, path, body)`` -> the JSON answer. Raises :class:`_HttpError`."""
        method, path, body = request
        if self._https:
            connection = _HTTPSConnection(self._host, self._port, timeout, self._context,
                                          self.config.tls_server_name)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=self._headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (socket.timeout, TimeoutError):
            raise _HttpError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s")
        except ssl.SSLError as e:
            raise _HttpError(grpc.StatusCode.UNAVAILABLE, f"TLS: {e.reason or e}") from None
        except (OSError, http.client.HTTPException) as e:
            raise _HttpError(grpc.StatusCode.UNAVAILABLE,
                             f"{type(e).__name__}: {e} (http{'s' if self._https else ''}://"
                             f"{self._host}:{self._port})") from None
        finally:
            connection.close()
        return self._answer(status, raw)

    @staticmethod
    def _answer(status: int, raw: bytes) -> dict:
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = {"error": raw[:200].decode("utf-8", "replace")}
        if status != 200:
            message = answer.get("error", "") if isinstance(answer, dict) else str(answer)[:200]
            raise _HttpError(_HTTP_CODES.get(status, grpc.StatusCode.INTERNAL),
                             f"HTTP {status}: {message}")
        if not isinstance(answer, dict):
            raise _HttpError(grpc.StatusCode.INTERNAL, "the answer is not a JSON object")
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
        answer = self._counted_call(self._http, ("POST", self._path(":predict"),
                                                 body.encode("utf-8")), "POST predict",
                                    len(encoded), on_attempt)
        outputs = answer.get("outputs")
        if isinstance(outputs, dict):
            outputs = outputs.get(self.signature.output_key)
        if outputs is None:
            raise client_lib.ServingClientError(f"{self.name}: the answer has no output "
                                                f"{self.signature.output_key!r}")
        return np.asarray(outputs, dtype=self.signature.output_dtype.as_numpy_dtype)

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
        from tfkd.serving import signatures
        from tfkd.serving.errors import ServingError
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


def open_client(config: client_lib.ServingConfig, role: str = "model",
                saved_model: str | None = None) -> client_lib.ServingClient:
    """The client ``config.target`` calls for: :class:`RestClient` for ``http(s)://``, else gRPC
    (:class:`tfkd.client.ServingClient`); with ``saved_model`` (a version directory) the
    in-process :class:`SavedModelClient` instead.

    Raises:
      ServingClientError, ValueError: as the client's constructor.
    """
    if saved_model is not None:
        return SavedModelClient(saved_model, config, role)
    if client_lib.is_rest(config.target):
        return RestClient(config, role)
    return client_lib.ServingClient(config, role)
