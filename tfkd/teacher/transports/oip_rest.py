"""The Open Inference Protocol over REST as a :class:`tfkd.teacher.protocol.Transport` (KServe's
v2 runtimes, NVIDIA Triton, Seldon MLServer): a target ``http(s)://host:port[/prefix]/v2``.

``GET {prefix}/v2/models/NAME[/versions/V]`` is the model's metadata (its inputs' and outputs'
names, datatypes and shapes, its versions, its platform), read as a TF Serving signature
(:func:`tfkd.teacher.transports.oip.signature_map`); ``POST .../infer`` sends a batch as a typed
tensor (``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``, the data
flat in row-major order) and reads the output asked for from ``{"outputs": [...]}``. TLS, the
bearer token, the deadline, the answer-size limit and the HTTP statuses' gRPC codes are
:class:`tfkd.teacher.transports.rest.RestTransport`'s. The protocol has versions but no version
labels: ``version_label`` is refused.

Values travel as JSON text: the protocol's binary-data extension is not used (KServe's server
does not list it among its extensions; the gRPC transport,
:mod:`~tfkd.teacher.transports.oip_grpc`, carries raw bytes).
"""

from __future__ import annotations

import json
import urllib.parse

import numpy as np

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol
from tfkd.teacher.transports import oip
from tfkd.teacher.transports import rest

SUFFIX = "/v2"
"""A target whose path ends in this is the Open Inference Protocol's REST API."""


class OipRestTransport(rest.RestTransport):
    """A classifier served over the Open Inference Protocol's REST API (``config.target``:
    ``http(s)://host:port[/prefix]/v2``). See :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.ConfigError: ``version_label`` given (the protocol has none), a target not
        ending in ``/v2``, an unreadable TLS file or token.
    """

    metadata_call = "GET v2 model metadata"
    predict_call = "POST v2 infer"

    def __init__(self, config: config_lib.ServingConfig):
        if config.version_label:
            raise errors.ConfigError(f"version_label={config.version_label!r}: the Open Inference "
                                     "Protocol has versions, not labels; give version")
        super().__init__(config)
        if not self._prefix.endswith(SUFFIX):
            raise errors.ConfigError(f"target={config.target!r}: expected http(s)://host:port"
                                     f"[/prefix]{SUFFIX} for the Open Inference Protocol")
        self._prefix = self._prefix[:-len(SUFFIX)]

    def __repr__(self) -> str:  # Never shows the token.
        return f"OipRestTransport({self.config.target!r}, {self.config.model_name!r})"

    def _path(self, version: int | None) -> str:
        """``{prefix}/v2/models/NAME[/versions/V]``."""
        path = f"{self._prefix}/v2/models/{urllib.parse.quote(self.config.model_name, safe='')}"
        return path + (f"/versions/{version}" if version is not None else "")

    def metadata(self, version: int | None) -> protocol.Metadata:
        """``GET .../v2/models/NAME[/versions/V]``: the tensors as one signature
        (``signature_name``), the version to pin (:func:`~tfkd.teacher.transports.oip.
        resolved_version`), the platform in the origin."""
        answer = self._http("GET", self._path(version), None)
        try:
            tensors = [[(t["name"], t["datatype"], t.get("shape", ())) for t in answer[kind]]
                       for kind in ("inputs", "outputs")]
            versions = answer.get("versions") or []
            platform = str(answer.get("platform") or "")
        except (KeyError, TypeError, AttributeError) as e:
            raise errors.TransportError(None, "the metadata answer is not the Open Inference "
                                              f"Protocol's ({type(e).__name__}: {e})") from None
        return protocol.Metadata(oip.signature_map(self.config.signature_name, *tensors),
                                 oip.resolved_version(version, versions),
                                 origin=oip.origin("oip", self.address, platform))

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """``POST .../infer`` of ``encoded`` as one typed tensor; the output asked for as numpy
        (its datatype and shape as answered), and the version the answer names."""
        encoded = np.asarray(encoded)
        body = json.dumps({
            "inputs": [{"name": signature.input_key, "shape": list(encoded.shape),
                        "datatype": oip.datatype(encoded.dtype),
                        "data": encoded.reshape(-1).tolist()}],
            "outputs": [{"name": signature.output_key}]})
        answer = self._http("POST", self._path(version) + "/infer", body.encode("utf-8"))
        answered = oip.answered_version(answer.get("model_version"))
        for output in answer.get("outputs") or ():
            if isinstance(output, dict) and output.get("name") == signature.output_key:
                return protocol.Answer(oip.tensor(output.get("data"), output.get("datatype"),
                                                  output.get("shape", (-1,)),
                                                  f"the output {signature.output_key!r}"),
                                       answered)
        return protocol.Answer(None, answered)
