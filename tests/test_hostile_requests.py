"""Hostile and malformed requests to tfkd's model server: the server answers each with
TF Serving's status codes or a 4xx JSON error, allocates nothing a request only declares, and stays
up (every test ends by checking that a normal request is still answered)."""

import http.client
import json
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import serving
from tfkd import teacher


@pytest.fixture(scope="module")
def guarded(teacher_base):
    """A server with small limits: 1 MB per tensor, 64 KB REST bodies, a 1 s REST read timeout."""
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0, max_tensor_bytes=1024 * 1024,
                             rest_max_body_bytes=64 * 1024, rest_timeout_s=1.0) as srv:
        yield srv


def _predict(target, tensor_proto):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "teacher"
    request.inputs["images"].CopyFrom(tensor_proto)
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=30)


def _still_up(srv, fashion):
    with teacher.connect(srv.target, "teacher") as client:
        assert client.soft_labels(fashion.x_test[:4]).shape == (4, 10)


@pytest.mark.parametrize("dims,content,why", [
    ([50_000, 28, 28, 1], b"", "declares 39200000 values"),  # 157 MB declared, 0 bytes sent.
    ([1000, 28, 28, 1], np.zeros((2, 28, 28, 1), np.float32).tobytes(), "tensor_content holds 6272"),
    ([2, 28, 28, 1], np.zeros((3, 28, 28, 1), np.float32).tobytes(), "tensor_content holds 9408"),
    ([-5, 28, 28, 1], b"", "negative dimension"),
], ids=["huge-shape-no-content", "short-content", "long-content", "negative-dim"])
def test_declared_shape_must_match_the_content(default_server_guard, dims, content, why):
    srv, fashion = default_server_guard
    proto = tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.float32))
    del proto.tensor_shape.dim[:]
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    proto.tensor_content = content
    with pytest.raises(grpc.RpcError) as e:
        _predict(srv.target, proto)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor parsing error: images" in e.value.details() and why in e.value.details()
    _still_up(srv, fashion)


@pytest.fixture(scope="module")
def default_server_guard(teacher_base, fashion):
    """A server with the default limits (the declared-size checks do not depend on a limit)."""
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as srv:
        yield srv, fashion


def test_typed_values_must_match_the_shape(default_server_guard):
    srv, _ = default_server_guard
    proto = tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.float32))
    proto.tensor_content = b""
    proto.float_val.extend([0.5])  # One value for 784 declared: TF would broadcast it; refused.
    with pytest.raises(grpc.RpcError) as e:
        _predict(srv.target, proto)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "float_val holds 1" in e.value.details()


def test_tensor_over_the_limit_is_refused(guarded, fashion):
    images = np.zeros((400, 28, 28, 1), np.float32)  # 1.25 MB, well-formed, over 1 MB.
    with pytest.raises(grpc.RpcError) as e:
        _predict(guarded.target, tf.make_tensor_proto(images))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the server's limit of 1,048,576 bytes" in e.value.details()
    assert _predict(guarded.target, tf.make_tensor_proto(images[:300])).outputs  # Under: answered.
    _still_up(guarded, fashion)


def _rest(srv, body: bytes, headers=None, path="/v1/models/teacher:predict"):
    conn = http.client.HTTPConnection(srv.host, srv.rest_api_port, timeout=30)
    try:
        conn.putrequest("POST", path)
        for k, v in (headers if headers is not None else
                     {"Content-Length": str(len(body))}).items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("body,status,error", [
    (b"[1, 2, 3]", 400, "must be an object, got list"),
    (b"5", 400, "must be an object, got int"),
    (b'{"instances": 5}', 400, "'instances' must be a non-empty list, got int"),
    (b'{"instances": []}', 400, "'instances' must be a non-empty list"),
    (b'{"inputs": "x"}', 400, "'inputs' must be a list or an object, got str"),
    (b'{"instances": [{"images": 1}, 2]}', 400, "same keys"),
    (b'{"instances": [[1]], "signature_name": ["a"]}', 400, "'signature_name' must be a string"),
    (b'{"instances": \xff\xfe}', 400, "not UTF-8"),
    (b'{"instances": [', 400, "JSON Parse error"),
    (b"x" * (64 * 1024 + 1), 413, "over the limit of 65,536 bytes"),
], ids=["list", "number", "instances-number", "instances-empty", "inputs-string", "mixed-examples",
        "signature-list", "not-utf8", "truncated-json", "over-limit"])
def test_malformed_rest_bodies_get_4xx_json(guarded, fashion, body, status, error):
    code, answer = _rest(guarded, body)
    assert code == status and error in answer["error"], answer
    _still_up(guarded, fashion)


def test_bad_content_length_and_a_stalled_body_do_not_hang(guarded, fashion):
    assert _rest(guarded, b"{}", {"Content-Length": "abc"})[0] == 400
    assert _rest(guarded, b"{}", {"Content-Length": "-3"})[0] == 400
    assert _rest(guarded, b"", {})[0] == 411
    # 100 bytes announced, 10 sent, then nothing: answered 408 after the 1 s read timeout.
    with socket.create_connection((guarded.host, guarded.rest_api_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/teacher:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n0123456789")
        chunks = []
        while chunk := sock.recv(4096):  # Until the server closes (socket timeout: 30 s).
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 408") and "not received within 1 s" in reply
    # A well-formed request is still answered.
    code, answer = _rest(guarded, json.dumps({"instances": fashion.x_test[:2].tolist()}).encode())
    assert code == 200 and len(answer["predictions"]) == 2
    assert len(answer["predictions"][0]["probabilities"]) == 10
    _still_up(guarded, fashion)


@pytest.mark.parametrize("body,path,error", [
    (b"[" * 100_000 + b"]" * 100_000, "/v1/models/teacher:predict", "nested too deeply"),
    (b'{"instances": [[0]]}', "/v1/models/teacher/versions/123456789012345678901234:predict",
     "expected a version below 2^63"),
], ids=["nested-brackets", "24-digit-version"])
def test_pathological_rest_requests_get_400_not_500(guarded, fashion, body, path, error):
    """Issue 25 §4: both were answered HTTP 500 (a RecursionError; a version out of int64)."""
    body = body if len(body) <= 64 * 1024 else body[:32 * 1024] + body[-32 * 1024:]
    code, answer = _rest(guarded, body, path=path)
    assert code == 400 and error in answer["error"], (code, answer)
    _still_up(guarded, fashion)


def test_large_rest_bodies_are_answered_a_few_at_a_time(teacher_base, fashion):
    """Issue 25 §4: concurrent large REST bodies had no bound. With every slot for large bodies
    taken (held here, as large bodies being decoded would hold them), one more waits for the REST
    timeout and gets 503; a small body is still answered; freed slots serve large bodies again."""
    from tfkd.serving import rest

    large = json.dumps({"instances": fashion.x_test[:400].tolist()}).encode()
    assert len(large) > rest.LARGE_BODY_BYTES
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0, rest_timeout_s=1.0) as srv:
        slots = srv._http.large_bodies
        for _ in range(rest.MAX_LARGE_BODIES):
            assert slots.acquire(timeout=5)
        # The body is read first (a slot is taken only by a body that has arrived), then it
        # waits for a slot and gets 503.
        code, answer = _rest(srv, large)
        assert code == 503 and "busy" in answer["error"], (code, answer)
        small = json.dumps({"instances": fashion.x_test[:2].tolist()}).encode()
        assert _rest(srv, small)[0] == 200
        for _ in range(rest.MAX_LARGE_BODIES):
            slots.release()
        code, answer = _rest(srv, large)
        assert code == 200 and len(answer["predictions"]) == 400


def test_reload_config_can_be_disabled(teacher_base):
    """TF Serving's HandleReloadConfigRequest lets any client replace the served models (as in
    TF Serving, on by default and documented); allow_reload_config=False refuses it."""
    from tensorflow_serving.apis import model_management_pb2
    from tensorflow_serving.apis import model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add()
    config.name, config.base_path, config.model_platform = "other", teacher_base, "tensorflow"
    for allowed in (False, True):
        with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                                 allow_reload_config=allowed) as srv, \
                grpc.insecure_channel(srv.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            if allowed:
                assert stub.HandleReloadConfigRequest(request, timeout=30).status.error_code == 0
                assert [m.name for m in srv.registry.model_configs()] == ["other"]
                continue
            with pytest.raises(grpc.RpcError) as e:
                stub.HandleReloadConfigRequest(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert [m.name for m in srv.registry.model_configs()] == ["teacher"]
