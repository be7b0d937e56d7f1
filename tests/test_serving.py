"""Server conformance through raw TF Serving API stubs (as any client would call it).

Tests taking ``stub`` or ``conformance_target`` run against tfkd's server and against a real
tensorflow_model_server when one is on PATH (skipped otherwise)."""

import os
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import export
from tfkd import serving

from conftest import REPO


@pytest.fixture()
def stub(conformance_target):
    channel = grpc.insecure_channel(conformance_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def predict_request(images, name="teacher", key="images", signature="", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_predict_matches_the_saved_model_in_process(stub, teacher_base, fashion):
    images = fashion.x_test[:64]
    response = stub.Predict(predict_request(images), timeout=30)
    assert response.model_spec.name == "teacher"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (64, 10) and probabilities.dtype == np.float32
    direct = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"]
    np.testing.assert_allclose(probabilities, direct(images=tf.constant(images))["probabilities"],
                               atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_output_filter(stub, fashion):
    request = predict_request(fashion.x_test[:2])
    request.output_filter.append("probabilities")
    assert list(stub.Predict(request, timeout=30).outputs) == ["probabilities"]
    request.output_filter[:] = ["scores"]
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: scores" in e.value.details()


@pytest.mark.parametrize("kwargs,code,message", [
    (dict(name="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(version=7), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(teacher, 7)"),
    (dict(key="pixels"), grpc.StatusCode.INVALID_ARGUMENT,
     "input tensor alias not found in signature: pixels. Inputs expected to be in the set {images}."),
    (dict(signature="classify"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "classify" not found.'),
])
def test_errors_as_tf_serving_words_them(stub, fashion, kwargs, code, message):
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(predict_request(fashion.x_test[:2], **kwargs), timeout=30)
    assert e.value.code() == code
    assert e.value.details() == message


@pytest.mark.parametrize("images", [np.zeros((2, 28, 28, 1), np.uint8),
                                    np.zeros((2, 28, 28), np.float32),
                                    np.zeros((2, 32, 32, 1), np.float32)])
def test_bad_tensor_is_invalid_argument(stub, images):
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(predict_request(images), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "teacher"
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert list(signature.inputs) == ["images"]
    assert signature.inputs["images"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.inputs["images"].tensor_shape.dim] == [-1, 28, 28, 1]
    assert sorted(signature.outputs) == ["classes", "logits", "probabilities"]  # A tfkd teacher.
    request.metadata_field[:] = ["graph"]
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_status(conformance_target):
    with grpc.insecure_channel(conformance_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "teacher"
        (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
        assert status.version == 1
        assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelStatus(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_new_version_is_served_without_restart(teacher_base, tmp_path, fashion):
    base = tmp_path / "teacher"
    shutil.copytree(os.path.join(teacher_base, "1"), base / "1")
    with serving.ModelServer([serving.ModelConfig("teacher", str(base))], poll_seconds=0.1) as srv:
        shutil.copytree(base / "1", tmp_path / "staging")
        os.rename(tmp_path / "staging", base / "2")  # Atomic, as tfkd.export writes versions.
        with grpc.insecure_channel(srv.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            deadline = time.monotonic() + 30
            version = None
            while time.monotonic() < deadline:
                version = stub.Predict(predict_request(fashion.x_test[:1]), timeout=30) \
                    .model_spec.version.value
                if version == 2:
                    break
                time.sleep(0.05)  # The poll interval of a loop bounded by the deadline.
            assert version == 2


def test_model_config_file(tmp_path, teacher_base):
    config = tmp_path / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: "teacher" base_path: "{teacher_base}" model_platform: "tensorflow" }}
  config {{ name: "student" base_path: "student" model_platform: "tensorflow"
           version_labels {{ key: "stable" value: 1 }} }}
}}""")
    models = serving.parse_model_config_file(str(config))
    assert [m.name for m in models] == ["teacher", "student"]
    assert models[1].base_path == str(tmp_path / "student")
    assert models[1].version_labels == {"stable": 1}
    (tmp_path / "bad.config").write_text("model_config_list { nonsense: 1 }")
    with pytest.raises(ValueError, match="bad.config"):
        serving.parse_model_config_file(str(tmp_path / "bad.config"))


def test_serve_launcher_subprocess(teacher_base, fashion):
    """launch/serve.py as its own process, as a user would start it."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch", "serve.py"), "--port=0",
         "--model_name=teacher", f"--model_base_path={teacher_base}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # Blocks until the server prints its address (or exits).
        assert line.startswith("Serving ['teacher'] on 127.0.0.1:"), line
        target = line.split(" on ")[1].strip()
        from tfkd import teacher
        with teacher.connect(target, "teacher") as client:
            assert client.soft_labels(fashion.x_test[:10]).shape == (10, 10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_export_contract(tmp_path):
    from tfkd.student import models
    model = models.build_model("lenet5_half", (28, 28, 1), 10)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((8, 28, 28, 1), np.float32), np.zeros((8, 10), np.float32), verbose=0)
    first = export.export_classifier(model, str(tmp_path))
    images = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    second = export.export_classifier(model, str(tmp_path), warmup_images=images)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert export.list_versions(str(tmp_path)) == [1, 2]
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".tmp")]
    with pytest.raises(ValueError, match="already exists"):
        export.export_classifier(model, str(tmp_path), version=2)
    # Only the model's weights are saved, never the optimizer's.
    assert export.saved_model_parameters(second) == models.count_parameters(model)
    fn = tf.saved_model.load(second).signatures["serving_default"]
    (_, inputs), outputs = fn.structured_input_signature, fn.structured_outputs
    assert inputs["images"].dtype == tf.float32 and inputs["images"].shape.as_list() == [None, 28, 28, 1]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["classes"].dtype == tf.int64 and outputs["classes"].shape.as_list() == [None]
    # Warmup requests (batch 1 and 8 of real images) are replayed when a server loads the version.
    assert serving.Servable.load("student", 1, first).warmup_requests == 0
    assert serving.Servable.load("student", 2, second).warmup_requests == 2


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_compressed_variants_keep_the_contract(tmp_path, variant):
    from tfkd.export import litert
    from tfkd.student import models
    model = models.build_model("lenet5_half", (28, 28, 1), 10)
    images = np.random.default_rng(0).uniform(size=(32, 28, 28, 1)).astype(np.float32)
    full = export.export_classifier(model, str(tmp_path / "full"))
    small = export.export_classifier(model, str(tmp_path / variant), variant=variant,
                                     calibration_images=images)
    assert export.saved_model_bytes(small) < export.saved_model_bytes(full)
    if variant == "int8":  # A LiteRT model (tests/test_int8.py), read as TF Serving reads it.
        fn = litert.LiteRTModel(os.path.join(small, litert.FILE)).signatures["serving_default"]
    else:
        fn = tf.saved_model.load(small).signatures["serving_default"]
    out = fn(images=tf.constant(images))
    assert out["probabilities"].dtype == tf.float32
    expected = tf.nn.softmax(model(images)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=5e-3)
    with pytest.raises(ValueError, match="variant='int4'"):
        export.export_classifier(model, str(tmp_path / "x"), variant="int4")


def test_a_new_export_format_is_one_registry_entry(tmp_path):
    """Issue 26 §5: the export, the served evaluation's names and the Vertex/Kubeflow layouts
    all read tfkd.export.FORMATS."""
    import keras

    from tfkd import export

    fmt = export.register_format(export.ExportFormat("test_halfway", lambda m: m, "identity"))
    try:
        assert fmt.servable_name == "student_test_halfway"
        assert fmt.model_dir_path == "variants/test_halfway"
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        version = export.export_classifier(model, str(tmp_path / "m"), variant="test_halfway")
        assert os.path.exists(os.path.join(version, "saved_model.pb"))
        with pytest.raises(ValueError, match="already registered"):
            export.register_format(fmt)
    finally:
        export.FORMATS.pop("test_halfway", None)
    with pytest.raises(ValueError, match="variant='test_halfway'"):
        export.compressed_copy(model, "test_halfway")
