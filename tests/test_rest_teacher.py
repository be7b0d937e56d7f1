"""The Teacher protocol over three transports: TF Serving's gRPC API, its REST API, in-process.

Real parts: tfkd's server (gRPC and REST ports) serving the real teacher SavedModel; the
in-process teacher loads the same version directory. The REST teacher must give the gRPC teacher's
soft labels (within 1e-6) and count the same queries."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import serving
from tfkd import teacher
from tfkd.teacher import client
from tfkd.teacher import cluster
from tfkd.teacher import transports

from conftest import REPO


@pytest.fixture(scope="module")
def rest_server(teacher_base):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        yield srv


def test_rest_grpc_and_in_process_teachers_answer_alike(rest_server, teacher_base, fashion,
                                                         tmp_path):
    images = fashion.x_test[:300]
    grpc_url = rest_server.target
    rest_url = f"http://127.0.0.1:{rest_server.rest_api_port}"
    answers, counts = {}, {}
    for name, make in [
            ("grpc", lambda a: teacher.connect(grpc_url, account=a)),
            # A small request limit: the 300 images go in several concurrent requests.
            ("rest", lambda a: teacher.connect(rest_url, account=a, max_request_bytes=2_000_000)),
            ("in_process", lambda a: teacher.from_saved_model(os.path.join(teacher_base, "1"),
                                                              account=a))]:
        account = teacher.QueryAccount(str(tmp_path / name))
        with make(account) as t:
            assert isinstance(t, teacher.Teacher)
            assert isinstance(cluster.ShardedTeacher(t), teacher.Teacher)
            answers[name] = t.soft_labels(images, stage="label")
            counts[name] = (t.queries, account.total, t.signature.identity)
            if name == "rest":
                assert isinstance(t.transport, transports.RestTransport) and t.requests >= 2
    np.testing.assert_allclose(answers["rest"], answers["grpc"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(answers["in_process"], answers["grpc"], atol=1e-6, rtol=0)
    assert counts["grpc"][:2] == counts["rest"][:2] == counts["in_process"][:2] == (300, 300)
    # One SavedModel, one identity: the ledger's answers are shared across transports.
    assert counts["grpc"][2] == counts["rest"][2] == counts["in_process"][2]
    assert "saved_model:tf:" in counts["rest"][2]


def test_rest_teacher_sends_the_bearer_token_and_names_http_errors(rest_server, fashion,
                                                                   monkeypatch):
    monkeypatch.setenv("TFKD_TEST_TOKEN", "s3cret")
    rest_url = f"http://127.0.0.1:{rest_server.rest_api_port}"
    with teacher.connect(rest_url, auth_token_env="TFKD_TEST_TOKEN") as t:
        assert "s3cret" not in repr(t) and t.transport._headers["authorization"] == "Bearer s3cret"
        assert t.top1(fashion.x_test[:5]).shape == (5,)
    with pytest.raises(teacher.TeacherError, match="NOT_FOUND.*HTTP 404"):
        teacher.connect(rest_url, model_name="nope")
    with pytest.raises(teacher.TeacherError, match="UNAVAILABLE"):
        teacher.connect("http://127.0.0.1:9", retry=client.RetryPolicy(max_attempts=1))


def test_targets_name_their_transport():
    assert client.check_target("https://tfserving.example.com:8501/prefix")
    for bad in ("http://", "http://host:99999", "ftp://host:1"):
        with pytest.raises(ValueError, match="target="):
            client.check_target(bad)


def test_the_launcher_takes_a_rest_teacher(rest_server, tmp_path):
    """--teacher=http://host:port: the command distils from the REST API (a short run)."""
    rest_url = f"http://127.0.0.1:{rest_server.rest_api_port}"
    result = subprocess.run(
        [sys.executable, "launch/distill.py", f"--workdir={tmp_path}", f"--teacher={rest_url}",
         "--method=standard_kd", "--num_shots=100", "--num_validation=0", "--student_epochs=1",
         "--eval_examples=200", "--compress=", "--verbose=0", "--batchnorm_images=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    report = __import__("json").load(open(tmp_path / "report.json"))
    assert report["teacher_queries_sent_by_stage"] == {"label_real": 100, "evaluate_teacher": 200}
    assert report["teacher"]["target"] == rest_url


def test_rest_teacher_over_tls_with_a_bearer_token(rest_server, fashion, tmp_path, monkeypatch):
    """Vertex AI and KServe endpoints sit behind an HTTPS ingress that checks a bearer token. Here
    that ingress is a small TLS proxy (stdlib http.server + ssl, a self-signed certificate) that
    answers 401 without the token and forwards to tfkd's REST port otherwise."""
    import http.client
    import http.server
    import ssl
    import threading

    from test_connection_causes import _certificate

    key, cert = _certificate(tmp_path, "ingress")
    backend = ("127.0.0.1", rest_server.rest_api_port)

    class Ingress(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            if self.headers.get("Authorization") != "Bearer s3cret":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection(*backend, timeout=30)
            upstream.request(self.command, self.path, body=body or None,
                             headers={"Content-Type": "application/json"})
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward

        def log_message(self, *args):
            pass

    ingress = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ingress)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    ingress.socket = context.wrap_socket(ingress.socket, server_side=True)
    threading.Thread(target=ingress.serve_forever, daemon=True).start()
    url = f"https://localhost:{ingress.server_address[1]}"
    try:
        monkeypatch.setenv("TFKD_TEST_TOKEN", "s3cret")
        with teacher.connect(url, tls_ca_file=str(cert), auth_token_env="TFKD_TEST_TOKEN") as t:
            with teacher.connect(rest_server.target) as direct:
                np.testing.assert_allclose(t.soft_labels(fashion.x_test[:50]),
                                           direct.soft_labels(fashion.x_test[:50]), atol=1e-6)
        with pytest.raises(teacher.TeacherError, match="UNAUTHENTICATED.*HTTP 401"):
            teacher.connect(url, tls_ca_file=str(cert))
        _, other = _certificate(tmp_path, "other")
        with pytest.raises(teacher.TeacherError, match="TLS"):
            teacher.connect(url, tls_ca_file=str(other),
                            retry=client.RetryPolicy(max_attempts=1))
    finally:
        ingress.shutdown()
