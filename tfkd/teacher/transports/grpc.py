"""TF Serving's gRPC API as a :class:`tfkd.teacher.protocol.Transport`: ``GetModelMetadata`` and
``Predict`` with the protos of ``tensorflow_serving.apis``, so that it works unchanged against
``tensorflow_model_server`` and tfkd's own :mod:`tfkd.serving`.

A channel (TLS with a CA bundle, optional client certificate and name override, or plaintext) is
ready within ``connect_timeout_s`` or the transport says why not (:func:`diagnose_connection`); every
call carries the token as call metadata (never printed or logged) and the ``timeout_s`` deadline;
answers are capped at :data:`tfkd.teacher.config.MAX_ANSWER_BYTES`.
"""

from __future__ import annotations

import socket
import ssl

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import errors
from tfkd.teacher import config as config_lib
from tfkd.teacher import protocol


class GrpcTransport:
    """A classifier served over TF Serving's gRPC API at ``config.target`` (``host:port``,
    ``unix:path``). See :class:`tfkd.teacher.protocol.Transport`.

    Raises:
      tfkd.errors.TransportError: UNAVAILABLE when no channel is ready within
        ``connect_timeout_s``, naming why (:func:`diagnose_connection`).
      tfkd.errors.ConfigError: an unreadable TLS file or token.
    """

    metadata_call = "GetModelMetadata"
    predict_call = "Predict"
    envelope_bytes = config_lib.REQUEST_OVERHEAD_BYTES

    def __init__(self, config: config_lib.ServingConfig):
        self.config = config
        self.address = config.target
        token = config_lib.read_secret(config.auth_token_file, config.auth_token_env)
        self._call_metadata = (((config.auth_header.lower(),
                                 f"{config.auth_scheme} {token}".strip()),) if token else None)
        self._channel = ready_channel(config, config.target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def __repr__(self) -> str:  # Never shows the call metadata (secrets).
        return f"GrpcTransport({self.config.target!r}, {self.config.model_name!r})"

    def image_bytes(self, signature: protocol.ServingSignature) -> int:
        """The bytes of one image's tensor content: its values times the input dtype's size."""
        values = int(np.prod([d for d in signature.input_shape[1:] if d > 0] or [1]))
        return values * np.dtype(signature.input_dtype).itemsize

    def _spec(self, spec, version: int | None, with_signature: bool = True) -> None:
        """Fills a ModelSpec: the name, the signature, ``version``, else the configured label
        (neither: the server's latest)."""
        spec.name = self.config.model_name
        if with_signature:
            spec.signature_name = self.config.signature_name
        if version is not None:
            spec.version.value = version
        elif self.config.version_label:
            spec.version_label = self.config.version_label

    def _rpc(self, method, request):
        """One RPC under the deadline with the call metadata; a failure as a TransportError."""
        try:
            return method(request, timeout=self.config.timeout_s, metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise errors.TransportError(e.code(), e.details()) from None

    def metadata(self, version: int | None) -> protocol.Metadata:
        """``GetModelMetadata`` of the signature defs, then of the ``saved_model_fingerprint``
        (tfkd's server; TF Serving refuses that field, and the fingerprint is then None)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, version, with_signature=False)
        response = self._rpc(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        resolved = int(response.model_spec.version.value)
        return protocol.Metadata(signature_map, resolved, self._fingerprint(resolved or version))

    def _fingerprint(self, version: int | None) -> str | None:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["saved_model_fingerprint"])
        self._spec(request.model_spec, version, with_signature=False)
        try:
            response = self._rpc(self._stub.GetModelMetadata, request)
        except errors.TransportError as e:
            if e.code in protocol.RETRYABLE_CODES:
                raise  # Retried: a passing fault must not change the teacher's identity.
            logging.debug("%s: no SavedModel fingerprint in its metadata (%s: %s); the endpoint "
                          "identifies it", self.address, e.code, e.details)
            return None
        value = wrappers_pb2.StringValue()
        if response.metadata["saved_model_fingerprint"].Unpack(value) and value.value:
            return value.value
        return None

    def predict(self, encoded: np.ndarray, signature: protocol.ServingSignature,
                version: int | None) -> protocol.Answer:
        """One ``Predict`` of ``encoded`` as one ``tensor_content`` buffer, the output filtered."""
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, version)
        request.inputs[signature.input_key].CopyFrom(tf.make_tensor_proto(encoded))
        request.output_filter.append(signature.output_key)
        response = self._rpc(self._stub.Predict, request)
        answered = (response.model_spec.version.value
                    if response.model_spec.HasField("version") else None)
        if signature.output_key not in response.outputs:
            return protocol.Answer(None, answered)
        return protocol.Answer(tf.make_ndarray(response.outputs[signature.output_key]), answered)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


def ready_channel(config: config_lib.ServingConfig, address: str) -> grpc.Channel:
    """A gRPC channel to ``address`` (``host:port``, ``unix:path``) as ``config`` says (TLS or
    plaintext, answers up to :data:`tfkd.teacher.config.MAX_ANSWER_BYTES`), ready within
    ``connect_timeout_s``; shared by the gRPC transports (TF Serving's, the Open Inference
    Protocol's).

    Raises:
      tfkd.errors.TransportError: UNAVAILABLE, not retried, naming why no channel was ready
        (:func:`diagnose_connection`).
      tfkd.errors.ConfigError: an unreadable TLS file.
    """
    channel = _open_channel(config, address)
    try:
        grpc.channel_ready_future(channel).result(timeout=config.connect_timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise errors.TransportError(
            grpc.StatusCode.UNAVAILABLE, f"unreachable (no connection within "
            f"{config.connect_timeout_s:g} s: {diagnose_connection(config, address)})",
            retryable=False) from None
    return channel


def _open_channel(config: config_lib.ServingConfig, address: str) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", config_lib.MAX_ANSWER_BYTES)]
    if not (config.tls_ca_file or config.tls_cert_file or config.tls_key_file):
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config_lib.read_pem(config.tls_ca_file, "tls_ca_file"),
        private_key=config_lib.read_pem(config.tls_key_file, "tls_key_file"),
        certificate_chain=config_lib.read_pem(config.tls_cert_file, "tls_cert_file"))
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.secure_channel(address, credentials, options=options)


def diagnose_connection(config: config_lib.ServingConfig, address: str | None = None,
                        timeout_s: float = 5.0) -> str:
    """Why a gRPC channel to ``address`` (default ``config.target``) did not become ready, in
    words: the host is unknown, nothing listens, the port speaks HTTP/1.x (a REST port), TLS where
    plaintext was expected or the reverse, a certificate the CA does not sign. Probes with one TCP
    connection (and one TLS handshake when TLS is configured); never raises."""
    address = address or config.target
    host, _, port = address.rpartition(":")
    if address.startswith("unix:") or not port.isdigit():
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
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as sock:
            context.wrap_socket(sock).close()
        return True
    except (OSError, ssl.SSLError):
        return False


def _diagnose_tls(sock, config: config_lib.ServingConfig, host: str) -> str:
    context = ssl.create_default_context(cadata=config_lib.read_pem(config.tls_ca_file,
                                                                    "tls_ca_file")
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
