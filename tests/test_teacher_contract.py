"""Any teacher signature, label-only teachers, the query budget, retries, TLS and call metadata."""

import subprocess
import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from tfkd import pipeline
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher
from tfkd.methods.fsbbt import synthesis
from tfkd.teacher import client as client_lib

from conftest import RequireToken
from conftest import config_of


def test_non_keras_teacher_uint8_logits(custom_server, fashion):
    images = fashion.x_test[:200]
    with teacher.connect(custom_server.target, "custom", signature_name="predict_scores",
                               output_key="scores", output_kind="logits") as custom, \
            teacher.connect(custom_server.target, "teacher") as keras_teacher:
        sig = custom.signature
        assert (sig.input_key, sig.input_dtype, sig.input_shape, sig.input_scale) == \
            ("pixels", np.uint8, (-1, 28, 28), 255.0)
        assert custom.encode(images).dtype == np.uint8 and custom.encode(images).shape == (200, 28, 28)
        # softmax(log p) = p, up to the uint8 rounding of the pixels.
        np.testing.assert_allclose(custom.soft_labels(images), keras_teacher.soft_labels(images),
                                   atol=2e-2)


def test_label_only_teacher_gives_one_hot(custom_server, fashion):
    images = fashion.x_test[:100]
    with teacher.connect(custom_server.target, "custom", signature_name="predict_scores",
                               output_key="label") as labels_only, \
            teacher.connect(custom_server.target, "teacher", label_only=True) as view, \
            teacher.connect(custom_server.target, "teacher") as full:
        assert labels_only.signature.output_kind == "classes"
        assert labels_only.signature.num_classes is None  # The metadata cannot say K ...
        with pytest.raises(teacher.TeacherError, match="number of classes is unknown"):
            labels_only.soft_labels(images[:2])
        labels_only.with_num_classes(10)  # ... so the caller does.
        one_hot = labels_only.soft_labels(images)
        assert set(np.unique(one_hot)) == {0.0, 1.0} and np.all(one_hot.sum(1) == 1)
        np.testing.assert_array_equal(one_hot, view.soft_labels(images))
        np.testing.assert_array_equal(one_hot.argmax(1), full.soft_labels(images).argmax(1))


def test_contract_errors_name_teacher_and_output(custom_server, fashion):
    # Reading logits as probabilities breaks the contract: the run stops, naming what was wrong.
    with teacher.connect(custom_server.target, "custom", signature_name="predict_scores",
                               output_key="scores") as wrong:
        with pytest.raises(teacher.TeacherError,
                           match=r"teacher 'custom', output 'scores' \(probabilities\): not prob"):
            wrong.soft_labels(fashion.x_test[:4])
    with pytest.raises(teacher.TeacherError, match="several outputs"):
        teacher.connect(custom_server.target, "custom", signature_name="predict_scores")
    with pytest.raises(teacher.TeacherError, match="no signature 'serving_default'"):
        teacher.connect(custom_server.target, "custom")


def test_query_budget_is_never_exceeded(server, fashion, tmp_path):
    with teacher.connect(server.target, "teacher", query_budget=150) as client:
        client.soft_labels(fashion.x_test[:100])
        with pytest.raises(teacher.QueryBudgetExceeded,
                           match="needs 100 more .* query budget of 150 leaves 50"):
            client.soft_labels(fashion.x_test[100:200])
        assert client.queries == 100
    # The pipeline checks its whole plan (evaluation included) before sending anything.
    config = config_of(
        workdir=str(tmp_path / "run"), num_shots=50, num_validation=1000,
        teacher=teacher.TeacherConfig(target=server.target, query_budget=249),
        mixup=synthesis.MixUpConfig(num_images=200), cvae=synthesis.CVAEConfig(num_images=40),
        student=student_lib.StudentConfig(epochs=1), eval_examples=200, verbose=0)
    # The teacher's evaluation (200) and the 50 real images leave nothing to distil with: refused,
    # naming what to change.
    with pytest.raises(teacher.QueryBudgetExceeded,
                       match="query_budget=249: the teacher's evaluation takes 200 of it .* "
                             "leaves nothing to distil with; set evaluate_teacher=False"):
        pipeline.run(config)
    assert len(teacher.QueryLedger(str(tmp_path / "run" / "ledger"))) == 0
    assert teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total == 0


def test_query_account_persists_every_attempt(tmp_path):
    account = teacher.QueryAccount(str(tmp_path), budget=100)
    account.charge(30, "label_real")
    account.charge(30, "label_real", retry=True)
    with pytest.raises(teacher.QueryBudgetExceeded, match="budget of 100 leaves 40"):
        account.charge(41, "evaluate_teacher")
    # A later process on the same directory sees (and is capped by) what earlier ones sent.
    again = teacher.QueryAccount(str(tmp_path), budget=100)
    assert (again.total, again.sent, again.retried, again.remaining) == (60, 0, 30, 40)
    assert again.by_stage == {"label_real": 60}
    again.charge(40, "evaluate_teacher")
    assert teacher.QueryAccount(str(tmp_path)).by_stage == {"label_real": 60,
                                                             "evaluate_teacher": 40}
    with pytest.raises(ValueError, match="query budget's|query_budget=5: the query account"):
        teacher.connect("127.0.0.1:1", "teacher", query_budget=5, account=again)
    with open(tmp_path / "queries_sent.log", "a") as f:
        f.write("label_real first ma")  # A line cut short: skipped, the sound ones still count.
    damaged = teacher.QueryAccount(str(tmp_path))
    assert damaged.total == 100 and damaged.damaged_lines == [4]


class FailFirst(grpc.ServerInterceptor):
    """Answers the first ``times`` Predict calls with ``code`` (a fault injected into a real server)."""

    def __init__(self, code, times):
        self.code, self.left = code, times

    def intercept_service(self, continuation, details):
        if details.method.endswith("/Predict") and self.left > 0:
            self.left -= 1
            code = self.code

            def fail(request, context):
                context.abort(code, "injected fault")

            return grpc.unary_unary_rpc_method_handler(
                fail, request_deserializer=predict_pb2.PredictRequest.FromString)
        return continuation(details)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_retryable_errors_are_retried(teacher_base, fashion, code):
    fast = client_lib.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[FailFirst(code, 3)]) as srv, \
            teacher.connect(srv.target, "teacher", retry=fast) as client:
        labels = client.soft_labels(fashion.x_test[:10])
        assert labels.shape == (10, 10)
        assert client.retries == 3 and client.requests == 4


def test_client_errors_are_not_retried(teacher_base, fashion):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[FailFirst(grpc.StatusCode.INVALID_ARGUMENT, 1)]) as srv, \
            teacher.connect(srv.target, "teacher") as client:
        with pytest.raises(teacher.TeacherError, match="Predict failed with INVALID_ARGUMENT: "
                                                       "injected fault") as e:
            client.soft_labels(fashion.x_test[:10])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.retries == 0 and client.requests == 1


def test_authorization_header_from_file_or_env(teacher_base, fashion, tmp_path, monkeypatch,
                                               every_log_level):
    secret = "s3cret-token-123"
    (tmp_path / "token").write_text(secret + "\n")
    monkeypatch.setenv("TFKD_TEST_TOKEN", secret)
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[RequireToken(secret)]) as srv:
        with pytest.raises(teacher.TeacherError, match="UNAUTHENTICATED"):
            teacher.connect(srv.target, "teacher")
        for kwargs in (dict(auth_token_file=str(tmp_path / "token")),
                       dict(auth_token_env="TFKD_TEST_TOKEN")):
            with teacher.connect(srv.target, "teacher", **kwargs) as client:
                assert client.soft_labels(fashion.x_test[:3]).shape == (3, 10)
                assert secret not in repr(client)
    assert "Serving teacher" in every_log_level.text  # The capture sees INFO lines ...
    assert "Connected to teacher 'teacher'" in every_log_level.text  # ... and DEBUG lines ...
    assert secret not in every_log_level.text  # ... and no line of any level has the secret.
    with pytest.raises(ValueError, match="auth_token_env='TFKD_NOPE'"):
        teacher.connect("127.0.0.1:1", "teacher", auth_token_env="TFKD_NOPE")


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                    reason="openssl is not installed")
def test_tls_channel(teacher_base, fashion, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             ssl_server_cert=cert.read_bytes(),
                             ssl_server_key=key.read_bytes()) as srv:
        with teacher.connect(srv.target, "teacher", tls_ca_file=str(cert)) as client:
            assert client.soft_labels(fashion.x_test[:3]).shape == (3, 10)
        with pytest.raises(teacher.TeacherError, match="unreachable"):  # Plaintext to a TLS port.
            teacher.connect(srv.target, "teacher", connect_timeout_s=2)


class PeakConcurrency(grpc.ServerInterceptor):
    """Counts Predict calls in flight and records each request's size in bytes; the first call
    waits (bounded) for a second to arrive."""

    def __init__(self):
        self.active = self.peak = 0
        self.sizes = []
        self.lock = threading.Lock()
        self.second_arrived = threading.Event()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if not details.method.endswith("/Predict"):
            return handler
        inner = handler.unary_unary

        def counted(request, context):
            with self.lock:
                self.sizes.append(request.ByteSize())
                self.active += 1
                self.peak = max(self.peak, self.active)
                if self.active >= 2:
                    self.second_arrived.set()
            self.second_arrived.wait(timeout=5)  # A sequential client leaves peak at 1.
            try:
                return inner(request, context)
            finally:
                with self.lock:
                    self.active -= 1

        return grpc.unary_unary_rpc_method_handler(
            counted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def test_requests_in_flight_at_once(teacher_base, fashion):
    # Not the split's request count (a heuristic): what it promises.
    peak = PeakConcurrency()
    limit = 64 * 1024 + 100 * 28 * 28 * 4
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[peak]) as srv, \
            teacher.connect(srv.target, "teacher", max_in_flight=4,
                            max_request_bytes=limit) as client:
        labels = client.soft_labels(fashion.x_test[:800])
        assert labels.shape == (800, 10) and client.queries == 800 and client.retries == 0
    assert len(peak.sizes) == client.requests >= 2
    assert max(peak.sizes) <= limit  # Every request under the byte limit.
    assert peak.peak >= 2  # Several in flight at once.
