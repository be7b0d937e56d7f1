"""Teachers over the Open Inference Protocol (:mod:`tfkd.teacher.transports.oip_rest`,
:mod:`~tfkd.teacher.transports.oip_grpc`) against a real server tfkd did not write: KServe's Python
``ModelServer`` (PyPI ``kserve``) serving the teacher SavedModel through a small predictor
(tests/helpers/kserve_teacher.py), over REST (``/v2``) and gRPC (``GRPCInferenceService``).

KServe needs protobuf < 7, TensorFlow's line here has 7: these tests run where the ``kserve`` extra
is installed (``.ci/run`` installs it with the ``kfp`` extra in an environment of their own) and
are skipped elsewhere. The reference is tfkd's gRPC server serving the same SavedModel."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("kserve", reason="the kserve extra is not installed (pip install "
                    "'tfkd[kserve]'; .ci/run runs these in the extras' environment)")

from tfkd import errors  # noqa: E402
from tfkd import teacher  # noqa: E402
from tfkd.teacher import transports  # noqa: E402

from conftest import REPO  # noqa: E402
from conftest import labelled_set  # noqa: E402
from conftest import tiny_distill  # noqa: E402

START_S = 180  # KServe's server imports TensorFlow and loads the SavedModel twice.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kserve(teacher_base, tmp_path_factory):
    """KServe's ModelServer on free loopback ports: {"rest": .../v2, "grpc": grpc+v2://...}."""
    http_port, grpc_port = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "helpers", "kserve_teacher.py"),
             os.path.join(teacher_base, "1"), "teacher", str(http_port), str(grpc_port)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/teacher_raw"
                                            "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)  # Polling the server's readiness, with the deadline above.
        yield {"rest": f"http://127.0.0.1:{http_port}/v2", "grpc": f"grpc+v2://127.0.0.1:{grpc_port}"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("protocol,model", [("rest", "teacher"), ("grpc", "teacher"),
                                            ("grpc", "teacher_raw")])
def test_oip_teacher_answers_as_the_grpc_teacher(kserve, server, fashion, tmp_path, protocol,
                                                 model):
    """Soft labels within 1e-6 of TF Serving gRPC's, the same count, over several concurrent
    requests; the signature read from the v2 metadata (the input's shape, ``probabilities``
    picked among three outputs); the gRPC answers' typed contents and raw bytes alike."""
    images = fashion.x_test[:300]
    with teacher.connect(server.target) as reference:
        expected = reference.soft_labels(images)
    account = teacher.QueryAccount(str(tmp_path / protocol))
    with teacher.connect(kserve[protocol], model_name=model, account=account,
                         max_request_bytes=400_000) as t:
        kind = {"rest": transports.OipRestTransport, "grpc": transports.OipGrpcTransport}
        assert isinstance(t.transport, kind[protocol])
        assert t.signature.input_shape == (-1, 28, 28, 1)
        assert (t.signature.output_key, t.signature.num_classes) == ("probabilities", 10)
        got = t.soft_labels(images)
        assert t.requests >= 2
        assert t.signature.identity.startswith(
            f"{'oip' if protocol == 'rest' else 'oip-grpc'}:{kserve[protocol]}|{model}/0/")
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert account.total == 300


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """The tiny distillation from tfkd's TF Serving gRPC server (the same SavedModel)."""
    return tiny_distill(tmp_path_factory.mktemp("tf_serving") / "run", server.target)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_distillation_over_oip_matches_grpc_and_resumes_free(kserve, reference, tmp_path,
                                                               protocol):
    report = tiny_distill(tmp_path / protocol, kserve[protocol])
    ours, theirs = labelled_set(report), labelled_set(reference)
    np.testing.assert_array_equal(ours["images"], theirs["images"])
    np.testing.assert_allclose(ours["targets"], theirs["targets"], atol=1e-6, rtol=0)
    assert report.teacher_queries_sent_by_stage == reference.teacher_queries_sent_by_stage
    assert report.teacher_queries_total == reference.teacher_queries_total == 450
    again = tiny_distill(tmp_path / protocol, kserve[protocol])
    assert again.teacher_queries_sent == 0 and again.teacher_queries_total == 450


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_oip_errors_name_what_is_wrong(kserve, protocol):
    with pytest.raises(errors.ServingClientError, match="NOT_FOUND"):
        teacher.connect(kserve[protocol], model_name="nobody")
    with pytest.raises(errors.ConfigError, match="versions, not labels"):
        teacher.connect(kserve[protocol], version_label="stable")
