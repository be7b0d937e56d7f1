"""TF Serving's REST API on its own port: model status, metadata, predict and classify.

Paths as ``tensorflow_model_server --rest_api_port`` answers them:
``/v1/models/NAME[/versions/N|/labels/L][/metadata|:predict|:classify]``; predict bodies in the row
format (``instances``) and the columnar format (``inputs``); classify bodies as ``{"signature_name",
"context", "examples": [{feature: value}]}`` (bytes as ``{"b64": ...}``), answered
``{"result": [[[label, score], ...], ...]}``. Model names and version labels are percent-decoded
(``/v1/models/my%20teacher``, as tfkd's :class:`~tfkd.teacher.transports.RestTransport` sends them; raw UTF-8
bytes in the path are read as UTF-8 too). Every malformed request gets a 4xx JSON ``{"error": ...}``:
a body over the size limit (413), a missing or bad Content-Length (411/400), a body that is not UTF-8
JSON or not an object, a request not in by its deadline (408, see :class:`RestServer`); a bug of
tfkd's a JSON 500 and one log line.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import io
import json
import re
import socket
import threading
import time
import urllib.parse

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import predict_pb2

from tfkd.errors import ServingError
from tfkd.serving.grpc_api import metadata_response
from tfkd.serving.grpc_api import status_response
from tfkd.serving.monitoring import ServerMetrics
from tfkd.serving.registry import DEFAULT_SIGNATURE
from tfkd.serving.registry import ModelRegistry
from tfkd.serving.signatures import run_classify
from tfkd.serving.signatures import run_signature

DEFAULT_REST_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_REST_MIN_BODY_BYTES_PER_S = 2 ** 16
"""The least rate a REST body must arrive at, on average: its request's deadline is the timeout
plus its Content-Length at this rate (a 4 MB body gets 64 s more)."""
LARGE_BODY_BYTES = 1024 * 1024
"""REST bodies over this size count against :data:`MAX_LARGE_BODIES`."""
MAX_LARGE_BODIES = 4
"""Large REST bodies decoded and answered at once (once received; the rest wait, then get 503):
concurrent 32 MB bodies otherwise had no bound on the memory they take together."""
# A body is read (and counted) this much at a time at most; any size reads alike.
_READ_BYTES = 64 * 1024  # pragma: no mutate
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|"
                        r"/labels/(?P<label>[^/:]+))?(?P<what>/metadata|:predict|:classify)?/?$")
_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.FAILED_PRECONDITION: 400}


class _HTTPError(Exception):
    """A malformed HTTP request: answered with ``status`` and a JSON error, then the connection is
    closed (what is left of the body is not read)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = grpc.StatusCode.INVALID_ARGUMENT  # How request metrics count it.


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _path_part(raw: str) -> str:
    """A model name or version label of a request path as the client meant it: percent-escapes,
    and raw bytes (which http.server hands over as Latin-1 characters), decoded as UTF-8 (an
    invalid sequence becomes U+FFFD, and no model is found by that name). ``+`` stays a plus."""
    return urllib.parse.unquote_to_bytes(raw.encode("latin-1")).decode("utf-8", "replace")


class _DeadlineReader(io.RawIOBase):
    """The bytes of a connection, as a raw stream whose reads end at a deadline.

    Each read waits at most ``idle_s`` for a byte and, while ``deadline`` (a ``time.monotonic()``
    value) is set, never past it: a client that sends a byte now and then cannot stretch a request
    beyond its deadline, as it could when each byte restarted the socket timeout. A read that ends
    so raises TimeoutError."""

    def __init__(self, sock: socket.socket, idle_s: float):
        self._sock, self.idle_s = sock, idle_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wait = self.idle_s
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError("the request's deadline has passed")
        try:
            self._sock.settimeout(wait)
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self.idle_s)  # Writes wait as long as a silent client may.


class _ByteBudget:
    """Bytes of request bodies held at once, counted as they arrive (not as announced): a client
    that announces 32 MB and drips holds only what it has sent. Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Counts ``n`` more bytes; False (and nothing counted) when they would pass the capacity."""
        with self._lock:
            if self.used + n > self.capacity:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _decode_json(raw: bytes) -> dict:
    """A request body as a JSON object. Raises ServingError (INVALID_ARGUMENT) otherwise."""
    try:
        body = json.loads(raw.decode("utf-8") if raw else "{}")
    except UnicodeDecodeError as e:
        raise _invalid(f"JSON Parse error: the body is not UTF-8 ({e.reason} at byte "
                       f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise _invalid(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise _invalid("JSON Parse error: nested too deeply") from None
    if not isinstance(body, dict):
        raise _invalid(f"JSON Value: the body must be an object, got {type(body).__name__}")
    return body


def predict_inputs(body: dict, signature) -> tuple[dict, bool]:
    """The inputs (alias -> nested lists) of a REST predict body, and whether it is row format.

    Raises:
      ServingError: INVALID_ARGUMENT for a body TF Serving would refuse.
    """
    if ("instances" in body) == ("inputs" in body):
        raise _invalid("Missing 'inputs' or 'instances' key" if "instances" not in body
                       else "Both 'instances' and 'inputs' keys are present")
    row = "instances" in body
    data = body["instances"] if row else body["inputs"]
    if row and (not isinstance(data, list) or not data):
        raise _invalid(f"'instances' must be a non-empty list, got "
                       f"{type(data).__name__}{'' if data else ' (empty)'}")
    if not row and not isinstance(data, (list, dict)):
        raise _invalid(f"'inputs' must be a list or an object, got {type(data).__name__}")
    names = sorted(signature.inputs) if signature is not None else []
    only = names[0] if len(names) == 1 else ""
    if not row:
        return (data if isinstance(data, dict) else {only: data}), False
    if not isinstance(data[0], dict):  # A list of values for the only input.
        return {only: data}, True
    if not all(isinstance(e, dict) and e.keys() == data[0].keys() for e in data):
        raise _invalid("'instances': every example must be an object with the same keys")
    return {k: [example[k] for example in data] for k in data[0]}, True


def _feature(key: str, value) -> tf.train.Feature:
    """One feature of a REST example: strings (and ``{"b64": ...}``) as bytes, numbers as int64
    when all are integers, else float."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (str, dict)) for v in values):
        raw = []
        for v in values:
            if isinstance(v, dict):
                if set(v) != {"b64"} or not isinstance(v["b64"], str):
                    raise _invalid(f"feature {key!r}: an object value must be {{\"b64\": string}}")
                try:
                    raw.append(base64.b64decode(v["b64"], validate=True))
                except binascii.Error as e:
                    raise _invalid(f"feature {key!r}: bad base64 ({e})") from None
            else:
                raw.append(v.encode("utf-8"))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=raw))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    raise _invalid(f"feature {key!r}: expected strings, {{\"b64\": ...}} or numbers, not a mix")


def classify_examples(body: dict) -> list[bytes]:
    """The serialized Examples of a REST classify body (``examples``, with ``context`` features
    merged into each; the example's own win).

    Raises:
      ServingError: INVALID_ARGUMENT for a body TF Serving would refuse.
    """
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise _invalid("'examples' must be a list of objects")
    if not isinstance(context, dict):
        raise _invalid("'context' must be an object")
    serialized = []
    for example in examples:
        features = {k: _feature(k, v) for k, v in {**context, **example}.items()}
        serialized.append(tf.train.Example(features=tf.train.Features(feature=features))
                          .SerializeToString())
    return serialized


def predict_answer(outputs: dict, row: bool) -> dict:
    """The JSON answer of a predict: ``predictions`` (row format) or ``outputs`` (columnar)."""
    if row:
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        n = len(next(iter(outputs.values())))
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]}
    result = {k: v.tolist() for k, v in outputs.items()}
    return {"outputs": next(iter(result.values())) if len(result) == 1 else result}


class RestServer(http.server.ThreadingHTTPServer):
    """The HTTP server; its handlers read the registry and limits from here.

    Slow clients: a request's deadline runs from its first byte. Its request line and headers must
    arrive within ``timeout_s``, its body within ``timeout_s`` plus its Content-Length at
    ``min_body_bytes_per_s``; a read waits at most ``timeout_s`` for a byte, and an idle kept-alive
    connection is closed after it. A request not in by then is answered 408 and its connection
    closed. Its body is read before it takes a slot of :data:`MAX_LARGE_BODIES` (the memory-heavy
    part, decoding it and running the model), so a client that drips its body holds a thread and
    the bytes it has sent, never a slot that others wait for. Memory stays bounded because the
    bodies being received or answered may hold :data:`MAX_LARGE_BODIES` x ``max_body_bytes`` at
    once, counted as bytes arrive (``body_bytes``): a body that would pass it gets 503 at once
    (retryable; waiting for room while holding bytes could deadlock). The listen backlog is the
    system's largest (``socket.SOMAXCONN``), so a burst of clients is queued, not dropped.

    Args:
      address: (host, port), port 0 for a free one.
      registry: the models served.
      max_body_bytes: the largest request body (413 above it).
      timeout_s: the seconds a request's line and headers may take, and the longest silence.
      batcher: a :class:`tfkd.serving.batching.BatchScheduler` merging predict calls (shared with
        the gRPC API), or None.
      metrics: the :class:`tfkd.serving.monitoring.ServerMetrics` counting requests.
      metrics_path: where GET answers the Prometheus exposition of ``metrics``; None: nowhere.
      min_body_bytes_per_s: the least average rate of a body, in bytes per second.
    """

    daemon_threads = True
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, registry: ModelRegistry,
                 max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES, timeout_s: float = 30.0,
                 batcher=None, metrics: ServerMetrics | None = None,
                 metrics_path: str | None = None,
                 min_body_bytes_per_s: float = DEFAULT_REST_MIN_BODY_BYTES_PER_S):
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.min_body_bytes_per_s = min_body_bytes_per_s
        self.batcher = batcher
        self.metrics = metrics or ServerMetrics()
        self.metrics_path = metrics_path
        self.large_bodies = threading.BoundedSemaphore(MAX_LARGE_BODIES)
        self.body_bytes = _ByteBudget(MAX_LARGE_BODIES * max_body_bytes)
        super().__init__(address, RestHandler)


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One REST request against :class:`RestServer`'s registry."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.timeout_s  # A client that stops sending cannot hold a thread.
        super().setup()
        self.rfile.close()  # The socket's own stream, replaced by one that keeps the deadline.
        self._reader = _DeadlineReader(self.connection, self.server.timeout_s)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        """One request of the connection: waits up to the timeout for its first byte (else the
        connection is closed, no answer), then gives its line and headers the timeout (else 408 and
        the connection closed); :meth:`_body` gives its body more (see :class:`RestServer`)."""
        self._reader.deadline = None
        try:
            if not self.rfile.peek():  # The client closed the connection.
                self.close_connection = True
                return
        except OSError:  # TimeoutError included: idle for the whole timeout.
            self.close_connection = True
            return
        self._started = time.monotonic()
        self._reader.deadline = self._started + self.server.timeout_s
        self._replied, self._body_bytes = False, 0
        # What an answer before the request line is parsed needs (as http.server sets for its 414).
        self.requestline, self.request_version, self.command = "", self.protocol_version, ""
        try:
            super().handle_one_request()  # Returns, the connection to close, when a read times out.
            if not self._replied:  # Every other way through answers (a 4xx at the least).
                self._send(408, {"error": f"request line and headers: not received within "
                                          f"{self.server.timeout_s:g} s"}, close=True)
        finally:
            self.server.body_bytes.give(self._body_bytes)  # Once, when the request is done.

    def send_response(self, code, message=None):
        self._replied = True
        super().send_response(code, message)

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
        try:
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:  # The client left before its answer: nothing to tell it.
            self.close_connection = True

    def _content_length(self) -> int:
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise _HTTPError(411, "Content-Length is required for a request body")
        try:
            length = int(raw_length)
        except ValueError:
            raise _HTTPError(400, f"Content-Length: expected an integer, got {raw_length!r}")
        if length < 0:
            raise _HTTPError(400, f"Content-Length: expected >= 0, got {length}")
        limit = self.server.max_body_bytes
        if length > limit:
            raise _HTTPError(413, f"request body of {length:,} bytes is over the limit of "
                                  f"{limit:,} bytes")
        return length

    def _body(self) -> dict:
        """The request body as a JSON object (dict): read whole before it takes a slot of
        :data:`MAX_LARGE_BODIES` (a slot taken before let four dripping clients hold them all),
        within the request's deadline, its bytes counted in the server's ``body_bytes``."""
        length = self._content_length()
        rate = self.server.min_body_bytes_per_s
        self._reader.deadline = self._started + self.server.timeout_s + length / rate
        raw = bytearray()
        while len(raw) < length:
            try:
                chunk = self.rfile.read1(min(_READ_BYTES, length - len(raw)))
            except OSError:  # TimeoutError included.
                raise _HTTPError(408, self._late(length, len(raw)))
            if not chunk:
                raise _HTTPError(400, f"request body: {length} bytes announced, {len(raw)} "
                                      f"received")
            if not self.server.body_bytes.take(len(chunk)):
                raise _HTTPError(503, f"busy: request bodies are being received or answered up "
                                      f"to the server's {self.server.body_bytes.capacity:,} bytes; "
                                      f"retry later")
            self._body_bytes += len(chunk)
            raw += chunk
        self._take_body_slot(length)
        return _decode_json(bytes(raw))

    def _late(self, length: int, received: int) -> str:
        """Why a body was not in: its deadline passed, or no byte came for the timeout."""
        timeout, rate = self.server.timeout_s, self.server.min_body_bytes_per_s
        head = f"request body: {length:,} bytes announced, {received:,} received; "
        if time.monotonic() >= self._reader.deadline:
            return (head + f"past the request's deadline: not received within {timeout:g} s + "
                           f"its size at {rate:,.0f} bytes/s")
        return head + f"not received within {timeout:g} s of the last byte"

    def _take_body_slot(self, length: int) -> None:
        """Bodies over :data:`LARGE_BODY_BYTES`, once received, are decoded and answered at most
        :data:`MAX_LARGE_BODIES` at a time (each costs several times its size in memory while it is
        decoded); one more waits up to the REST timeout, then gets 503."""
        if length <= LARGE_BODY_BYTES:
            return
        if not self.server.large_bodies.acquire(timeout=self.server.timeout_s):
            raise _HTTPError(503, f"busy: {MAX_LARGE_BODIES} request bodies over "
                                  f"{LARGE_BODY_BYTES:,} bytes are being answered; retry later")
        self._holds_body_slot = True

    def _release_body_slot(self) -> None:
        if getattr(self, "_holds_body_slot", False):
            self._holds_body_slot = False
            self.server.large_bodies.release()

    def _spec(self, match):
        spec = predict_pb2.PredictRequest().model_spec
        spec.name = _path_part(match["name"])
        if match["version"]:
            if int(match["version"]) >= 2 ** 63:
                raise _invalid(f"version {match['version'][:30]}: expected a version below 2^63")
            spec.version.value = int(match["version"])
        if match["label"]:
            spec.version_label = _path_part(match["label"])
        return spec

    def _send_metrics(self):
        data, content_type = self.server.metrics.exposition()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str):
        path = self.path.split("?")[0]
        if method == "GET" and self.server.metrics_path and path == self.server.metrics_path:
            return self._send_metrics()
        match = _REST_PATH.match(path)
        if match is None or (method == "POST") != (match["what"] in (":predict", ":classify")):
            return self._send(404, {"error": f"Malformed request: {method} {self.path}"})
        api = {":predict": "Predict", ":classify": "Classify", "/metadata": "GetModelMetadata"}.get(
            match["what"], "GetModelStatus")
        try:
            # The answer is built inside the recording and sent after it, so a client that has
            # its answer also finds it counted (as the gRPC path counts before it returns).
            with self.server.metrics.request(_path_part(match["name"]), api, "REST") as record:
                answer = self._answer(match, self._spec(match), record)
            self._release_body_slot()
            return self._send(200, answer)
        except ServingError as e:
            self._release_body_slot()
            return self._send(_HTTP_STATUS.get(e.code, 500), {"error": e.message})
        except _HTTPError as e:
            self._release_body_slot()
            return self._send(e.status, {"error": e.message}, close=True)
        except Exception as e:  # A bug of ours: one line in the log, a JSON 500 to the client.
            self._release_body_slot()
            logging.error("REST %s %s: %s: %s", method, self.path, type(e).__name__, e)
            return self._send(500, {"error": f"internal error: {type(e).__name__}"}, close=True)

    def _answer(self, match, spec, record) -> dict:
        """The JSON body of a 200 answer to a metadata, status, classify or predict request."""
        registry = self.server.registry
        if match["what"] == "/metadata":
            servable = registry.resolve(spec)
            record.version = servable.version
            # The SavedModel's fingerprint too (TF Serving's answer has only signature_def): a
            # REST teacher is then identified as its gRPC twin is (tfkd.teacher.transports.RestTransport).
            return json_format.MessageToDict(
                metadata_response(servable, ("signature_def", "saved_model_fingerprint")),
                preserving_proto_field_name=True)
        if match["what"] is None:
            servables = ([registry.resolve(spec)] if match["version"] or match["label"]
                         else registry.versions(spec.name))
            return json_format.MessageToDict(status_response(servables), preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)
        if match["what"] == ":classify":
            return self._classify(spec, record)
        return self._predict(spec, record)

    def _request(self, spec, record):
        """(body, servable, signature name) of a POST to a signature."""
        body = self._body()
        if not isinstance(body.get("signature_name", ""), str):
            raise _invalid("'signature_name' must be a string")
        servable = self.server.registry.resolve(spec)
        record.version = servable.version
        return body, servable, body.get("signature_name") or DEFAULT_SIGNATURE

    def _classify(self, spec, record):
        body, servable, signature_name = self._request(spec, record)
        classes, scores = run_classify(servable, signature_name, classify_examples(body))
        n, k = (classes if classes is not None else scores).shape[:2]
        return {"result": [
            [[None if classes is None else classes[i, j].decode("utf-8", "replace"),
              None if scores is None else float(scores[i, j])] for j in range(k)]
            for i in range(n)]}

    def _predict(self, spec, record):
        body, servable, signature_name = self._request(spec, record)
        inputs, row = predict_inputs(body, servable.signature_defs.get(signature_name))
        outputs = run_signature(servable, signature_name, inputs, [], self.server.batcher)
        return predict_answer(outputs, row)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")
