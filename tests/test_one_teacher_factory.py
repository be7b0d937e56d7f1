"""Issue 36, finding 3: one way opens every target (the client picks the transport by the target's
URL scheme, :func:`tfkd.teacher.transports.transport_for`), so each place that reaches a served model
reaches it over REST as over gRPC, a registered transport is used everywhere a target is opened, and
retries, request splitting and concurrency wrap any transport (one written against the protocol
alone included).

Real parts: tfkd's model server on loopback with both its gRPC and REST ports, serving the real
Fashion-MNIST teacher SavedModel.
"""

import numpy as np
import pytest

import tfkd
from tfkd import kubeflow
from tfkd import serving
from tfkd.teacher import client as client_lib
from tfkd.teacher import transports


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
        assert isinstance(over_rest.transport, transports.RestTransport)
        assert isinstance(over_grpc.transport, transports.GrpcTransport)
        np.testing.assert_array_equal(client_lib.top1(over_rest, images),
                                      client_lib.top1(over_grpc, images))


class _InProcess(transports.InProcessTransport):
    """A transport registered in the test: ``inproc:///<version dir>`` loads the directory."""

    def __init__(self, config):
        super().__init__(config, config.target.partition("://")[2])


def test_a_registered_transport_is_used_by_every_factory(teacher_base, fashion):
    transports.register_transport("inproc", _InProcess)
    try:
        target = f"inproc://{teacher_base}/1"
        images = fashion.x_test[:10]
        with tfkd.connect(target) as teacher, client_lib.connect(target, "teacher") as model:
            assert isinstance(teacher.transport, _InProcess)
            assert isinstance(model.transport, _InProcess)
            assert teacher.queries == 0
            assert teacher.soft_labels(images).shape == (10, 10) and teacher.queries == 10
        assert kubeflow.check_teacher(target, "teacher")["version"] == 1
        with pytest.raises(tfkd.ConfigError, match=r"^scheme='inproc': already registered to "
                                                   r"_InProcess$"):
            transports.register_transport("inproc", transports.RestTransport)
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


def test_a_rest_error_is_a_transport_error_not_a_grpc_one(both_apis):
    # Before the fix: REST failures were raised as grpc.RpcError subclasses (``_HttpError``) so
    # that the gRPC client's private retry loop would take them.
    import grpc

    from tfkd.teacher import config as config_lib
    rest = f"http://127.0.0.1:{both_apis.rest_api_port}"
    transport = transports.RestTransport(config_lib.ServingConfig(target=rest, model_name="nope"))
    with pytest.raises(tfkd.errors.TransportError) as raised:
        transport.metadata(None)
    assert not isinstance(raised.value, grpc.RpcError)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND and "HTTP 404" in raised.value.details
    for cls in (transports.RestTransport, transports.InProcessTransport):
        assert not issubclass(cls, (transports.GrpcTransport, client_lib.ServingClient))


class _Recording:
    """A transport written against the protocol alone (it inherits no tfkd class): it asks an
    in-process SavedModel, fails its first Predict with UNAVAILABLE, records the size of every
    batch it is sent and how many were in flight at once (the first waits, bounded, for a second)."""

    metadata_call, predict_call, envelope_bytes = "metadata", "predict", 0

    def __init__(self, config):
        import threading

        self.inner = transports.InProcessTransport(config, config.target.partition("://")[2])
        self.address = config.target
        self.batches, self.failed, self.active, self.peak = [], False, 0, 0
        self.lock, self.second = threading.Lock(), threading.Event()

    def image_bytes(self, signature):
        return 28 * 28 * 4

    def metadata(self, version):
        return self.inner.metadata(version)

    def predict(self, encoded, signature, version):
        import grpc

        with self.lock:
            if not self.failed:
                self.failed = True
                raise tfkd.errors.TransportError(grpc.StatusCode.UNAVAILABLE, "injected")
            self.batches.append(len(encoded))
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= 2:
                self.second.set()
        self.second.wait(timeout=5)  # A sequential client leaves peak at 1.
        try:
            return self.inner.predict(encoded, signature, version)
        finally:
            with self.lock:
                self.active -= 1

    def close(self):
        self.inner.close()


def test_retries_splitting_and_concurrency_wrap_any_transport(teacher_base, fashion):
    # Before the fix: a transport was a ServingClient subclass overriding its private methods;
    # one that implements only the protocol could not be opened at all.
    transports.register_transport("recording", _Recording)
    limit = 70_000  # 22 images of 28 x 28 float32 a request.
    fast = client_lib.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
    try:
        with tfkd.connect(f"recording://{teacher_base}/1", max_request_bytes=limit,
                          max_in_flight=4, retry=fast) as teacher:
            images = fashion.x_test[:100]
            soft = teacher.soft_labels(images)
            recorded = teacher.transport
    finally:
        del transports.TRANSPORTS["recording"]
    with tfkd.teacher.from_saved_model(f"{teacher_base}/1") as direct:
        np.testing.assert_allclose(soft, direct.soft_labels(images), atol=1e-6)
    assert isinstance(recorded, tfkd.teacher.Transport)
    assert max(recorded.batches) * 28 * 28 * 4 <= limit  # Every request under the byte limit.
    assert sum(recorded.batches) == 100 and recorded.peak >= 2  # Each image once; concurrent.
    assert teacher.retries == 1 and teacher.queries == 100 + teacher.account.retried


def test_one_worker_is_asked_as_a_cluster_worker_is(teacher_base, fashion):
    # Before the fix: share, shard and gather_rows existed on cluster.ShardedTeacher only
    # (AttributeError on a TeacherClient), so a method had to be handed the cluster's wrapper.
    from tfkd.teacher import cluster

    with tfkd.teacher.from_saved_model(f"{teacher_base}/1") as alone:
        wrapped = cluster.ShardedTeacher(alone)
        for teacher in (alone, wrapped):
            assert isinstance(teacher, tfkd.teacher.Teacher)
        for n in (0, 7, 301):
            assert alone.share(n) == wrapped.share(n) == n
            assert alone.shard(n) == wrapped.shard(n) == slice(0, n)
        rows = np.arange(12, dtype=np.float32).reshape(6, 2)
        np.testing.assert_array_equal(alone.gather_rows(rows, 6), wrapped.gather_rows(rows, 6))
        assert alone.decision_only is wrapped.decision_only is False
        images = fashion.x_test[:5]
        mine = alone.soft_labels(images[alone.shard(5)])
        np.testing.assert_array_equal(alone.gather_rows(mine, 5), wrapped.soft_labels(images))
