"""tfkd's server against what tensorflow_model_server does: policies, labels, reload, REST, health."""

import json
import os
import shutil
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfkd import serving
from tfkd import teacher


@pytest.fixture(scope="module")
def three_versions(teacher_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("versions") / "teacher"
    for v in (1, 2, 3):
        shutil.copytree(os.path.join(teacher_base, "1"), base / str(v))
    return str(base)


def status_versions(target, name, **spec):
    with grpc.insecure_channel(target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        for k, v in spec.items():
            if k == "version":
                request.model_spec.version.value = v
            else:
                setattr(request.model_spec, k, v)
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        return [s.version for s in response.model_version_status]


@pytest.mark.parametrize("policy,expected", [
    (dict(version_policy="latest"), [3]),
    (dict(version_policy="latest", num_versions=2), [2, 3]),
    (dict(version_policy="all"), [1, 2, 3]),
    (dict(version_policy="specific", versions=(1, 3)), [1, 3]),
])
def test_version_policies(three_versions, policy, expected):
    with serving.ModelServer([serving.ModelConfig("teacher", three_versions, **policy)],
                             poll_seconds=0) as srv:
        assert status_versions(srv.target, "teacher") == expected


def test_version_labels_and_pinning(three_versions, fashion):
    config = serving.ModelConfig("teacher", three_versions, version_policy="all",
                                 version_labels={"stable": 1, "canary": 3})
    with serving.ModelServer([config], poll_seconds=0) as srv:
        assert status_versions(srv.target, "teacher", version_label="canary") == [3]
        for kwargs, version in ((dict(version_label="stable"), 1), (dict(version=2), 2), ({}, 3)):
            with teacher.connect(srv.target, "teacher", **kwargs) as client:
                assert client.signature.version == version
                assert client.soft_labels(fashion.x_test[:2]).shape == (2, 10)
        with pytest.raises(teacher.TeacherError, match="Unrecognized servable version label: beta"):
            teacher.connect(srv.target, "teacher", version_label="beta")


def test_models_config_file_with_policy_and_labels(three_versions, tmp_path):
    path = tmp_path / "models.config"
    path.write_text(f"""
model_config_list {{
  config {{
    name: "teacher" base_path: "{three_versions}" model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}""")
    (model,) = serving.parse_model_config_file(str(path))
    assert (model.version_policy, model.versions) == ("specific", (1, 2))
    assert model.version_labels == {"stable": 1, "canary": 2}
    with serving.ModelServer([model], poll_seconds=0) as srv:
        assert status_versions(srv.target, "teacher") == [1, 2]


def test_reload_config(three_versions, teacher_base, fashion):
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as srv:
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(f"""model_config_list {{
            config {{ name: "student" base_path: "{three_versions}" model_platform: "tensorflow" }}
        }}""", config)
        with grpc.insecure_channel(srv.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            response = stub.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
            assert response.status.error_code == 0
        assert status_versions(srv.target, "student") == [3]
        with pytest.raises(teacher.TeacherError, match="Servable not found") as e:
            teacher.connect(srv.target, "teacher")  # Removed by the new config.
        assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_health_service(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def http(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_api(teacher_base, fashion):
    images = fashion.x_test[:3]
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        base = f"http://127.0.0.1:{srv.rest_api_port}/v1/models/teacher"
        code, status = http(base)
        assert code == 200
        assert status["model_version_status"][0]["version"] == "1"
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        code, metadata = http(base + "/metadata")
        assert code == 200 and metadata["model_spec"]["version"] == "1"
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert list(signature["inputs"]) == ["images"]
        direct = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"]
        expected = direct(images=tf.constant(images))["probabilities"].numpy()
        code, rows = http(base + ":predict", {"instances": images.tolist()})
        assert code == 200
        # Several outputs: one object per example, as TF Serving's row format answers.
        np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], expected,
                                   atol=1e-5)
        assert [r["classes"] for r in rows["predictions"]] == expected.argmax(1).tolist()
        code, columns = http(base + "/versions/1:predict", {"inputs": {"images": images.tolist()}})
        assert code == 200
        np.testing.assert_allclose(columns["outputs"]["probabilities"], expected, atol=1e-5)
        code, error = http(f"http://127.0.0.1:{srv.rest_api_port}/v1/models/nope:predict",
                           {"instances": images.tolist()})
        assert code == 404 and error["error"] == "Servable not found for request: Latest(nope)"
        code, error = http(base + ":predict", {"instances": images[..., 0].tolist()})
        assert code == 400 and "shape" in error["error"]
