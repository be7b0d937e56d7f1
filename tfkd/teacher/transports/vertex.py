"""A Vertex AI endpoint as a :class:`tfkd.teacher.protocol.Transport`: a target
``https://REGION-aiplatform.googleapis.com/v1/projects/P/locations/L/endpoints/E`` (any host and
``http://`` too, for a local server in Vertex's format; a trailing ``:predict`` is dropped) or
``vertex://P/L/E`` (that URL on ``L-aiplatform.googleapis.com``).

* Metadata: ``GET .../endpoints/E``, the Endpoint resource: its deployed models and traffic split.
  The deployed model that takes all the traffic is the teacher: its id is the version every answer
  is checked against (each ``:predict`` answer names its ``deployedModelId``), and the endpoint,
  the deployed model and its model resource make the teacher's origin, so answers of another
  deployment are never reused. A split over several deployed models is refused (answers would mix
  models under one identity).
* Predict: ``POST .../endpoints/E:predict`` with ``{"instances": [...]}``, each instance an image
  as nested lists (or ``{input_key: image}`` when ``input_key`` is set, for a signature of several
  inputs), answered ``{"predictions": [...], "deployedModelId": ...}``; a prediction is the scores'
  list, or an object from which ``output_key`` (default ``probabilities``, else its only key) is
  read. Requests stay under :data:`REQUEST_LIMIT_BYTES` (Vertex's online prediction limit) whatever
  ``max_request_bytes`` says.
* The endpoint publishes no signature: the input is ``input_dtype`` (default float32) of any shape
  and the output float32 scores, unless the settings say otherwise.
* Credentials: the bearer token from a file or an environment variable, as for the other
  transports; with neither, application default credentials when ``google-auth`` is installed
  (``google.auth.default``, refreshed before they expire); else no token.

TLS, deadlines, the answer-size limit and the HTTP statuses' gRPC codes are
:class:`tfkd.teacher.transports.rest.RestTransport`'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import urllib.parse

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import get_model_metadata_pb2

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol
from tfkd.teacher.transports import rest

SCHEME = "vertex"
REQUEST_LIMIT_BYTES = 1_500_000
"""Vertex AI's largest online prediction request, in bytes (1.5 MB)."""
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
"""The OAuth scopes asked of application default credentials."""
ENDPOINT_PATH = re.compile(r"^(?P<prefix>.*?)/(?P<api>v1|v1beta1)/projects/(?P<project>[^/]+)"
                           r"/locations/(?P<location>[^/]+)/endpoints/(?P<endpoint>[^/:]+)"
                           r"(?::(?:predict|rawPredict))?/?$")
"""The path of a Vertex AI endpoint (with an optional ``:predict`` or ``:rawPredict`` pasted)."""


def is_endpoint(target: str) -> bool:
    """Whether ``target`` names a Vertex AI endpoint (``vertex://P/L/E`` or an ``http(s)://`` URL
    whose path is ``/v1/projects/P/locations/L/endpoints/E``)."""
    if protocol.scheme(target) == SCHEME:
        return True
    return bool(ENDPOINT_PATH.match(urllib.parse.urlsplit(target).path))


def endpoint_url(target: str) -> str:
    """The endpoint's ``http(s)://host/v1/projects/P/locations/L/endpoints/E`` for either form.
    Raises :class:`tfkd.errors.ConfigError` for a ``vertex://`` target not of three parts."""
    if protocol.scheme(target) != SCHEME:
        url = urllib.parse.urlsplit(target)
        match = ENDPOINT_PATH.match(url.path)
        path = url.path[:match.end("endpoint")]
        return urllib.parse.urlunsplit((url.scheme, url.netloc, path, "", ""))
    parts = target.partition("://")[2].strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise errors.ConfigError(f"target={target!r}: expected {SCHEME}://PROJECT/LOCATION/"
                                 "ENDPOINT (a Vertex AI endpoint)")
    project, location, endpoint = parts
    return (f"https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/"
            f"{location}/endpoints/{endpoint}")


class _DefaultCredentials:
    """Application default credentials (``google.auth.default``), refreshed when not valid; one
    refresh at a time across the client's threads."""

    def __init__(self):
        import google.auth  # noqa: PLC0415  (optional: only where google-auth is installed)
        import google.auth.transport.requests  # noqa: PLC0415

        self._credentials, _ = google.auth.default(scopes=list(SCOPES))
        self._request = google.auth.transport.requests.Request()
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                self._credentials.refresh(self._request)
            return self._credentials.token


def _default_credentials():
    """:class:`_DefaultCredentials` where ``google-auth`` is installed and finds credentials,
    else None (logged)."""
    try:
        return _DefaultCredentials()
    except ImportError:
        logging.info("google-auth is not installed: Vertex AI requests carry no token unless "
                     "auth_token_file or auth_token_env gives one")
    except Exception as e:  # google.auth.exceptions.DefaultCredentialsError and the like.
        logging.warning("no application default credentials (%s: %s): Vertex AI requests carry "
                        "no token", type(e).__name__, rest._one_line(e))
    return None


class VertexTransport(rest.RestTransport):
    """A classifier deployed to a Vertex AI endpoint (``config.target``: see the module). See
    :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.ConfigError: a target of another form, ``version``/``version_label`` (an
        endpoint routes by its traffic split, not by version), an unreadable TLS file or token.
    """

    metadata_call = "GET endpoint"
    predict_call = "POST predict"
    request_limit_bytes = REQUEST_LIMIT_BYTES

    def __init__(self, config: config_lib.ServingConfig):
        if config.version is not None or config.version_label:
            raise errors.ConfigError("version/version_label: a Vertex AI endpoint answers with "
                                     "the deployed model its traffic split picks; deploy the "
                                     "version wanted with 100% of the traffic")
        self.endpoint = endpoint_url(config.target)
        super().__init__(dataclasses.replace(config, target=self.endpoint))
        self._endpoint_path = urllib.parse.urlsplit(self.endpoint).path
        self._credentials = (None if config_lib.read_secret(config.auth_token_file,
                                                            config.auth_token_env)
                             else _default_credentials())
        self._deployed: str | None = None  # The deployed model's id read by metadata().

    def __repr__(self) -> str:  # Never shows the token.
        return f"VertexTransport({self.endpoint!r})"

    def _http(self, method: str, path: str, body: bytes | None) -> dict:
        if self._credentials is not None:
            self._headers[self.config.auth_header] = (f"{self.config.auth_scheme} "
                                                      f"{self._credentials.token()}")
        return super()._http(method, path, body)

    def metadata(self, version: int | None) -> protocol.Metadata:
        """``GET`` of the Endpoint resource: the deployed model taking all the traffic (its id
        the version, pinned), a signature of one input and one output as the settings say."""
        answer = self._http("GET", self._endpoint_path, None)
        try:
            deployed = {str(m["id"]): m for m in answer.get("deployedModels") or ()}
            split = {str(k): float(v) for k, v in (answer.get("trafficSplit") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise errors.TransportError(None, "the endpoint answer is not a Vertex AI Endpoint "
                                              f"resource ({type(e).__name__}: {e})") from None
        serving = sorted(k for k, v in split.items() if v > 0) or sorted(deployed)
        if len(serving) != 1:
            raise errors.TransportError(
                None, f"{len(serving)} deployed models take traffic ({', '.join(serving) or 'none'}"
                "): their answers would be mixed under one teacher; route 100% of the traffic "
                "to one")
        self._deployed = serving[0]
        model = deployed.get(self._deployed, {})
        origin = (f"vertex:{self.endpoint}|deployed={self._deployed}|model="
                  f"{model.get('model', '')}@{model.get('modelVersionId', '')}")
        version_ = int(self._deployed) if self._deployed.isdigit() else 0
        return protocol.Metadata(self._signature_map(), version_, origin=origin)

    def _signature_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """One signature (``signature_name``): the input ``input_key`` (default ``instances``) of
        ``input_dtype`` (default float32), the output ``output_key`` (default ``predictions``) of
        float32 scores, shapes unknown."""
        config = self.config
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        signature = signature_map.signature_def[config.signature_name]
        signature.inputs[config.input_key or "instances"].dtype = tf.dtypes.as_dtype(
            config.input_dtype or "float32").as_datatype_enum
        signature.outputs[config.output_key or "predictions"].dtype = tf.float32.as_datatype_enum
        for info in (*signature.inputs.values(), *signature.outputs.values()):
            info.tensor_shape.unknown_rank = True
        return signature_map

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """``POST ...:predict`` of the images as instances; the scores, and the deployed model's
        id as the answering version."""
        instances = np.asarray(encoded).tolist()
        if self.config.input_key:
            instances = [{self.config.input_key: instance} for instance in instances]
        answer = self._http("POST", self._endpoint_path + ":predict",
                            json.dumps({"instances": instances}).encode("utf-8"))
        deployed = str(answer.get("deployedModelId", ""))
        answered = int(deployed) if deployed.isdigit() else None
        predictions = answer.get("predictions")
        if not isinstance(predictions, list):
            return protocol.Answer(None, answered)
        try:
            rows = [self._scores(p) for p in predictions]
            return protocol.Answer(np.asarray(rows, dtype=signature.output_dtype.as_numpy_dtype),
                                   answered)
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise errors.TransportError(
                None, f"the predictions are not arrays of numbers ({type(e).__name__}: "
                f"{rest._one_line(e)})") from None

    def _scores(self, prediction):
        """One prediction's scores: the value itself, or its ``output_key`` (default
        ``probabilities``, else the only key) when it is an object."""
        if not isinstance(prediction, dict):
            return prediction
        key = self.config.output_key or ("probabilities" if "probabilities" in prediction
                                         else next(iter(prediction)) if len(prediction) == 1
                                         else None)
        if key is None:
            raise KeyError(f"several outputs {sorted(prediction)}; name one (output_key)")
        return prediction[key]
