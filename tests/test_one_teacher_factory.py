"""Issue 36, finding 3: one factory opens every target (:func:`tfkd.transports.open_client`, by
the target's URL scheme), so each place that reaches a served model reaches it over REST as over
gRPC, and a registered transport is used everywhere a target is opened.

Real parts: tfkd's model server on loopback with both its gRPC and REST ports, serving the real
Fashion-MNIST teacher SavedModel.
"""

import numpy as np
import pytest

import tfkd
from tfkd import client as client_lib
from tfkd import kubeflow
from tfkd import serving
from tfkd import transports


@pytest.fixture(scope="module")
def both_apis(teacher_base):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        yield srv


def test_the_kubeflow_teacher_check_reaches_a_rest_teacher(both_apis):
    # Before the fix: check_teacher opened gRPC whatever the scheme: "teacher 'teacher' at
    # http://127.0.0.1:PORT: unreachable (no connection within 5 s ...)" after the connect timeout.
    rest = f"http://127.0.0.1:{both_apis.rest_api_port}"
    found = kubeflow.check_teacher(rest, "teacher", timeout_s=5)
    assert found == {"target": rest, "model_name": "teacher", "version": 1,
                     "signatures": ["serving_default"]}
    with pytest.raises(tfkd.errors.ServingClientError) as raised:  # NOT_FOUND over REST, one line.
        kubeflow.check_teacher(rest, "nope", timeout_s=5)
    assert "NOT_FOUND" in str(raised.value) and "\n" not in str(raised.value)
    assert kubeflow.check_teacher(both_apis.target, "teacher")["version"] == 1  # gRPC still.


def test_client_connect_opens_the_transport_the_scheme_names(both_apis, fashion):
    # Before the fix: client.connect("http://...") built a gRPC ServingClient (unreachable).
    images = fashion.x_test[:20]
    rest = f"http://127.0.0.1:{both_apis.rest_api_port}"
    with client_lib.connect(rest, "teacher") as over_rest, \
            client_lib.connect(both_apis.target, "teacher") as over_grpc:
        assert isinstance(over_rest, transports.RestClient)
        assert type(over_grpc) is client_lib.ServingClient
        np.testing.assert_array_equal(client_lib.top1(over_rest, images),
                                      client_lib.top1(over_grpc, images))


class _InProcess(transports.SavedModelClient):
    """A transport registered in the test: ``inproc:///<version dir>`` loads the directory."""

    def __init__(self, config, role="model"):
        super().__init__(config.target.partition("://")[2], config, role)


def test_a_registered_transport_is_used_by_every_factory(teacher_base, fashion):
    transports.register_transport("inproc", _InProcess)
    try:
        target = f"inproc://{teacher_base}/1"
        images = fashion.x_test[:10]
        with tfkd.connect(target) as teacher, client_lib.connect(target, "teacher") as model:
            assert isinstance(teacher._client, _InProcess) and isinstance(model, _InProcess)
            assert teacher.queries == 0
            assert teacher.soft_labels(images).shape == (10, 10) and teacher.queries == 10
        assert kubeflow.check_teacher(target, "teacher")["version"] == 1
        with pytest.raises(tfkd.ConfigError, match=r"^scheme='inproc': already registered to "
                                                   r"_InProcess$"):
            transports.register_transport("inproc", transports.RestClient)
    finally:
        del transports.TRANSPORTS["inproc"]
    with pytest.raises(tfkd.ConfigError, match=r"^target='inproc://.*': expected host:port"):
        tfkd.connect(target)
    with pytest.raises(tfkd.ConfigError, match=r"^scheme='1x': expected a URL scheme"):
        transports.register_transport("1x", _InProcess)


def test_a_rest_client_reaches_the_version_a_label_names(teacher_base, tmp_path):
    # Found by issue 35's mutation sample: the REST path of a version label was built by no test
    # (``path - "/labels/..."`` survived); over gRPC test_server_fidelity covers labels.
    import shutil
    base = tmp_path / "teacher"
    for version in ("1", "2"):
        shutil.copytree(f"{teacher_base}/1", base / version)
    config = serving.ModelConfig("teacher", str(base), version_policy="all",
                                 version_labels={"stable": 1, "canary": 2})
    with serving.ModelServer([config], poll_seconds=0, rest_api_port=0) as srv:
        rest = f"http://127.0.0.1:{srv.rest_api_port}"
        for label, version in (("stable", 1), ("canary", 2)):
            with client_lib.connect(rest, "teacher", version_label=label) as model:
                assert model.signature.version == version
        with pytest.raises(tfkd.errors.ServingClientError, match="NOT_FOUND"):
            client_lib.connect(rest, "teacher", version_label="beta", timeout_s=5,
                               retry=client_lib.RetryPolicy(max_attempts=1))
