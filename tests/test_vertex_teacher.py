"""A teacher deployed to a Vertex AI endpoint (:mod:`tfkd.teacher.transports.vertex`).

Vertex AI cannot be reached here (no network, no project): the endpoint is a local server in
Vertex's documented format (tests/helpers/vertex_server.py: the Endpoint resource, ``:predict``
with instances/predictions, Google APIs' errors, the 1.5 MB request limit), backed by the real
teacher SavedModel; everything on tfkd's side is real. The reference is tfkd's gRPC server serving
the same SavedModel."""

import os
import sys

import numpy as np
import pytest

from tfkd import errors
from tfkd import teacher
from tfkd.teacher import transports
from tfkd.teacher.transports import vertex

from conftest import labelled_set
from conftest import tiny_distill

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
import vertex_server  # noqa: E402


@pytest.fixture()
def endpoint(teacher_base):
    with vertex_server.VertexServer(os.path.join(teacher_base, "1")) as srv:
        yield srv


def test_the_target_forms_pick_the_vertex_transport():
    url = ("https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4/"
           "endpoints/42")
    assert transports.http_transport(url) is transports.VertexTransport
    assert transports.http_transport(url + ":predict") is transports.VertexTransport
    assert transports.transport_for("vertex://p/europe-west4/42") is transports.VertexTransport
    assert vertex.endpoint_url("vertex://p/europe-west4/42") == url
    assert vertex.endpoint_url(url + ":predict") == url
    assert transports.http_transport("http://h:8501") is transports.RestTransport
    assert transports.http_transport("http://h:8080/v2") is transports.OipRestTransport
    for bad in ("vertex://p/l", "vertex://p//e", "vertex://p/l/e/x"):
        with pytest.raises(errors.ConfigError, match="PROJECT/LOCATION/ENDPOINT"):
            vertex.endpoint_url(bad)


def test_vertex_teacher_answers_as_the_grpc_teacher(endpoint, server, fashion, tmp_path):
    """Soft labels within 1e-6 of the gRPC teacher's, the same count; requests under 1.5 MB even
    with a larger max_request_bytes; the deployed model in the identity."""
    images = fashion.x_test[:300]
    with teacher.connect(server.target) as reference:
        expected = reference.soft_labels(images)
    account = teacher.QueryAccount(str(tmp_path / "vertex"))
    with teacher.connect(endpoint.url, account=account,
                         max_request_bytes=16 * 1024 * 1024) as t:
        assert isinstance(t.transport, transports.VertexTransport)
        got = t.soft_labels(images)
        identity = t.signature.identity
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert account.total == 300
    assert max(endpoint.request_bytes) <= vertex.REQUEST_LIMIT_BYTES
    assert endpoint.requests >= 2  # 300 images as JSON are ~5.6 MB: split under the limit.
    assert f"vertex:http://127.0.0.1:{endpoint.port}{vertex_server.ENDPOINT}" in identity
    assert "deployed=7001" in identity and "models/m7001@1" in identity


def test_a_distillation_from_a_vertex_endpoint_matches_grpc_and_resumes_free(
        endpoint, server, tmp_path):
    reference = tiny_distill(tmp_path / "grpc", server.target)
    report = tiny_distill(tmp_path / "vertex", endpoint.url)
    ours, theirs = labelled_set(report), labelled_set(reference)
    np.testing.assert_array_equal(ours["images"], theirs["images"])
    np.testing.assert_allclose(ours["targets"], theirs["targets"], atol=1e-6, rtol=0)
    assert report.teacher_queries_sent_by_stage == reference.teacher_queries_sent_by_stage
    assert report.teacher_queries_total == reference.teacher_queries_total == 450
    answered = endpoint.requests
    again = tiny_distill(tmp_path / "vertex", endpoint.url)
    assert again.teacher_queries_sent == 0 and endpoint.requests == answered
    assert again.teacher_queries_total == 450


def test_the_token_goes_as_a_bearer_header_and_a_refusal_says_why(endpoint, fashion,
                                                                    monkeypatch):
    endpoint.token = "vertex-secret"
    with pytest.raises(errors.ServingClientError, match="UNAUTHENTICATED.*invalid authentication"):
        teacher.connect(endpoint.url)
    monkeypatch.setenv("TFKD_VERTEX_TOKEN", "vertex-secret")
    with teacher.connect(endpoint.url, auth_token_env="TFKD_VERTEX_TOKEN") as t:
        assert t.soft_labels(fashion.x_test[:5]).shape == (5, 10)
        assert "vertex-secret" not in repr(t.transport)
    assert endpoint.authorizations[-1] == "Bearer vertex-secret"


def test_a_split_traffic_is_refused_and_a_new_deployment_stops_the_run(endpoint, fashion):
    endpoint.deployed = {"7001": 50, "7002": 50}
    with pytest.raises(errors.ServingClientError, match="2 deployed models take traffic"):
        teacher.connect(endpoint.url)
    endpoint.deployed = {"7001": 100, "7002": 0}
    with teacher.connect(endpoint.url) as t:
        assert t.signature.version == 7001
        t.soft_labels(fashion.x_test[:5])
        endpoint.deployed = {"7002": 100}  # Another model deployed under the run.
        with pytest.raises(errors.ServingClientError, match="answered by version 7002"):
            t.soft_labels(fashion.x_test[5:10])


def test_object_predictions_and_named_instances(teacher_base, server, fashion):
    """A multi-output signature answers objects: ``probabilities`` is read (or ``output_key``);
    ``input_key`` sends ``{input_key: image}`` instances."""
    images = fashion.x_test[:20]
    with teacher.connect(server.target) as reference:
        expected = reference.soft_labels(images)
    with vertex_server.VertexServer(os.path.join(teacher_base, "1"), output=None) as srv:
        with teacher.connect(srv.url, input_key="images") as t:
            np.testing.assert_allclose(t.soft_labels(images), expected, atol=1e-6, rtol=0)
        with teacher.connect(srv.url, output_key="logits", output_kind="logits") as t:
            np.testing.assert_allclose(t.soft_labels(images), expected, atol=1e-5, rtol=0)


def test_versions_are_refused_by_name(endpoint):
    for field in ({"version": 3}, {"version_label": "stable"}):
        with pytest.raises(errors.ConfigError, match="traffic split"):
            teacher.connect(endpoint.url, **field)


def test_application_default_credentials_where_google_auth_is_installed(endpoint, fashion,
                                                                          tmp_path, monkeypatch):
    """With no token setting, google-auth's application default credentials: a service-account
    key file (a fresh RSA key) whose token_uri is a local token server, so google-auth's own
    refresh (a signed JWT posted over HTTP) is what gets the token."""
    pytest.importorskip("google.auth", reason="google-auth is not installed (the kfp/kserve "
                        "extras' environment has it)")
    import http.server
    import json
    import threading

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    class Token(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.dumps({"access_token": "adc-token", "expires_in": 3600,
                               "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    token_server = http.server.HTTPServer(("127.0.0.1", 0), Token)
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    try:
        credentials = tmp_path / "adc.json"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        credentials.write_text(json.dumps({
            "type": "service_account", "project_id": "proj", "private_key_id": "k1",
            "private_key": key, "client_email": "tfkd@proj.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"http://127.0.0.1:{token_server.server_port}"}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
        endpoint.token = "adc-token"
        with teacher.connect(endpoint.url) as t:
            assert t.soft_labels(fashion.x_test[:3]).shape == (3, 10)
        assert endpoint.authorizations[-1] == "Bearer adc-token"
    finally:
        token_server.shutdown()
        token_server.server_close()


def test_the_open_inference_protocol_targets_are_checked_by_form():
    """grpc+v2://host:port with a port in 1..65535 (the gRPC transport's address); .../v2 over
    HTTP (tests/test_oip_kserve.py runs both against KServe's server)."""
    from tfkd.teacher.transports import oip_grpc

    assert transports.transport_for("grpc+v2://h:8081") is transports.OipGrpcTransport
    assert oip_grpc.address("grpc+v2://h:65535") == "h:65535"
    assert oip_grpc.address("grpc+v2://[::1]:1") == "[::1]:1"
    for bad in ("grpc+v2://h:0", "grpc+v2://h:65536", "grpc+v2://h", "grpc+v2://h:1/v2",
                "grpc+v2://:8081"):
        with pytest.raises(errors.ConfigError, match="grpc\\+v2://host:port"):
            oip_grpc.address(bad)
    for prefix in ("http://h:8080/v2", "https://h/serving/v2/"):
        assert transports.http_transport(prefix) is transports.OipRestTransport


def test_a_vertex_target_reaches_its_endpoint_url():
    """vertex://P/L/E opens https://L-aiplatform.googleapis.com/v1/projects/P/locations/L/
    endpoints/E (nothing is sent when a transport is made)."""
    from tfkd.teacher import config as config_lib

    transport = transports.VertexTransport(config_lib.ServingConfig(
        target="vertex://proj/europe-west4/42", auth_token_env="HOME"))
    assert transport.address == ("https://europe-west4-aiplatform.googleapis.com/v1/projects/"
                                 "proj/locations/europe-west4/endpoints/42")
    assert transport.request_limit_bytes == 1_500_000


def test_open_inference_protocol_versions_are_read_as_numbers():
    """The version pinned: the one asked, else the highest of the server's whole-number versions,
    else 0 (the server's choice); an answer's model_version as a number, else None."""
    from tfkd.teacher.transports import oip

    assert oip.resolved_version(3, ["1", "2"]) == 3
    assert oip.resolved_version(None, ["1", "12", "2"]) == 12
    assert oip.resolved_version(None, ["1", "canary"]) == 0
    assert oip.resolved_version(None, None) == oip.resolved_version(None, []) == 0
    assert oip.answered_version("7") == 7
    assert oip.answered_version("") is None and oip.answered_version(None) is None
    assert oip.answered_version("v7") is None
