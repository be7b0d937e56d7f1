"""A local server answering in Vertex AI's documented format, for tests: Vertex AI itself cannot be
reached here (no network, no Google Cloud project), so this stands in for it, backed by a real
SavedModel's ``serving_default`` signature.

* ``GET /v1/projects/P/locations/L/endpoints/E``: the Endpoint resource (``name``,
  ``deployedModels`` [{``id``, ``model``, ``modelVersionId``}], ``trafficSplit``).
* ``POST /v1/projects/P/locations/L/endpoints/E:predict``: ``{"instances": [...]}`` (each an image,
  or ``{input: image}``) -> ``{"predictions": [...], "deployedModelId", "model",
  "modelVersionId"}``; a prediction is the ``output`` scores, or every output as an object when
  ``output`` is None (as Vertex's prebuilt TensorFlow container answers a multi-output signature).
* Errors as Google APIs give them: ``{"error": {"code", "message", "status"}}``; a request over
  1.5 MB is refused with 400 as Vertex does.
"""

import http.server
import json
import threading

import numpy as np
import tensorflow as tf

ENDPOINT = "/v1/projects/proj/locations/europe-west4/endpoints/4242"
LIMIT_BYTES = 1_500_000


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers as Vertex AI does, for the :class:`VertexServer` at ``self.server.vertex``."""

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code, status, message):
        self._send(code, {"error": {"code": code, "message": message, "status": status}})

    def _allowed(self):
        vertex = self.server.vertex
        with vertex._lock:
            vertex.authorizations.append(self.headers.get("Authorization"))
        if vertex.token and self.headers.get("Authorization") != f"Bearer {vertex.token}":
            self._error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                        "credentials.")
            return False
        return True

    def do_GET(self):
        if not self._allowed():
            return
        if self.path != ENDPOINT:
            return self._error(404, "NOT_FOUND", f"no endpoint {self.path}")
        self._send(200, {
            "name": ENDPOINT.lstrip("/v1/"), "displayName": "teacher",
            "deployedModels": [{"id": i, "model": f"projects/proj/locations/europe-west4/"
                                f"models/m{i}", "modelVersionId": "1"}
                               for i in self.server.vertex.deployed],
            "trafficSplit": self.server.vertex.deployed})

    def do_POST(self):
        if not self._allowed():
            return
        if self.path != ENDPOINT + ":predict":
            return self._error(404, "NOT_FOUND", f"no method {self.path}")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if len(body) > LIMIT_BYTES:
            return self._error(400, "INVALID_ARGUMENT", "Request payload size exceeds "
                               "the limit: 1500000 bytes.")
        instances = json.loads(body)["instances"]
        if instances and isinstance(instances[0], dict):
            instances = [i[self.server.vertex.input_name] for i in instances]
        answers = self.server.vertex.function(**{self.server.vertex.input_name: tf.constant(
            np.asarray(instances, np.float32))})
        with self.server.vertex._lock:
            self.server.vertex.requests += 1
            self.server.vertex.request_bytes.append(len(body))
        if self.server.vertex.output is not None:
            predictions = np.asarray(answers[self.server.vertex.output]).tolist()
        else:
            arrays = {k: np.asarray(v).tolist() for k, v in answers.items()}
            predictions = [{k: v[i] for k, v in arrays.items()}
                           for i in range(len(instances))]
        deployed = next(i for i, share in self.server.vertex.deployed.items() if share > 0)
        self._send(200, {"predictions": predictions, "deployedModelId": deployed,
                         "model": f"projects/proj/locations/europe-west4/models/m{deployed}",
                         "modelVersionId": "1"})


class VertexServer:
    """Serves ``model_dir`` (a SavedModel version directory) as a Vertex AI endpoint on a free
    loopback port, in a thread.

    Attributes (set freely by a test, read on each request):
      deployed: {deployed model id: traffic percent}; the first with traffic answers.
      token: the bearer token required (None: none).
      output: the output each prediction holds (None: every output as an object).
      requests, request_bytes: predict requests answered and their body sizes.
    """

    def __init__(self, model_dir: str, output: str | None = "probabilities"):
        self.function = tf.saved_model.load(model_dir).signatures["serving_default"]
        self.input_name = next(iter(self.function.structured_input_signature[1]))
        self.deployed = {"7001": 100}
        self.token = None
        self.output = output
        self.requests, self.request_bytes, self.authorizations = 0, [], []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.vertex = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{ENDPOINT}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
