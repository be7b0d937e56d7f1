"""The export format registry (issue 36 §3): a format registered here, a linear classifier's
weights in ``model.npz`` loaded as a numpy callable, is exported, listed, deployed, served by tfkd's
real gRPC server (its version poller finds it) and measured, with no other edit; a directory of no
registered format is refused in one line naming it and every registered marker. Real Fashion-MNIST,
a real Keras model, a real server on a loopback port; nothing mocked."""

import hashlib
import os
import time

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import errors
from tfkd import evaluation
from tfkd import export
from tfkd import serving

MARKER = "model.npz"
NAME = "linear_npz"


def _write_npz(serve, version_dir, calibration):
    """The format's writer: the serving function's two variables (kernel [H*W*C, K], bias [K])
    and the image shape, as ``model.npz``."""
    kernel, bias = sorted((v.numpy() for v in serve.variables), key=lambda w: -w.ndim)
    image_shape = tf.nest.flatten(serve.structured_input_signature)[0].shape[1:]
    with open(os.path.join(version_dir, MARKER), "wb") as f:
        np.savez(f, kernel=kernel, bias=bias, image_shape=np.asarray(image_shape, np.int64))


def _load_npz(version_dir):
    """The format's loader: ``serving_default`` as numpy arithmetic on the stored weights."""
    path = os.path.join(version_dir, MARKER)
    with open(path, "rb") as f:
        content = f.read()
        f.seek(0)
        stored = dict(np.load(f))
    kernel, bias = stored["kernel"], stored["bias"]

    def serve(images):
        logits = np.asarray(images, np.float32).reshape(len(images), -1) @ kernel + bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"probabilities": tf.constant(exp / exp.sum(axis=1, keepdims=True)),
                "classes": tf.constant(logits.argmax(axis=1).astype(np.int64))}

    definition = export.signature_def(
        {"images": (tf.float32, [-1, *stored["image_shape"].tolist()])},
        {"probabilities": (tf.float32, [-1, len(bias)]), "classes": (tf.int64, [-1])})
    return export.LoadedVersion({"serving_default": serve}, {"serving_default": definition},
                                "sha256:" + hashlib.sha256(content).hexdigest(), runtime="numpy")


@pytest.fixture
def npz_format():
    fmt = export.register_format(export.ExportFormat(
        NAME, lambda m: m, "a linear classifier's weights", writer=_write_npz, marker=MARKER,
        loader=_load_npz))
    yield fmt
    export.unregister_format(NAME)


@pytest.fixture(scope="module")
def linear(fashion):
    """A linear classifier (softmax regression) fitted for two epochs on 3,000 real images."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(fashion.x_train[:3000], fashion.y_train[:3000], epochs=2, batch_size=64, verbose=0)
    return model


def _served_versions(srv, name, deadline_s=60):
    """The versions the server serves once its poller has loaded one (polled, with a deadline)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return [s.version for s in srv.registry.versions(name)]
        except serving.ServingError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # The poll interval of a loop bounded by the deadline.


def test_a_registered_format_is_listed_deployed_served_and_measured(npz_format, linear, fashion,
                                                                     tmp_path):
    # Before the fix: list_versions -> [] (it knew saved_model.pb and model.tflite only);
    # deploy_version refused it ("expected a SavedModel directory"); the server never served it;
    # cpu_latency_ms failed in tf.saved_model.load.
    exported = export.export_classifier(linear, str(tmp_path / "export"), variant=NAME)
    assert sorted(os.listdir(exported)) == [MARKER]
    assert export.list_versions(str(tmp_path / "export")) == [1]
    assert export.format_of(exported) is npz_format
    images = fashion.x_test[:256]
    expected = tf.nn.softmax(linear(images)).numpy()
    base = tmp_path / "served"
    base.mkdir()
    with serving.ModelServer([serving.ModelConfig("student_linear", str(base))],
                             poll_seconds=0.05) as srv:
        deployed = export.deploy_version(exported, str(base))
        assert deployed == str(base / "1")
        assert _served_versions(srv, "student_linear") == [1]  # Found by the poller.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "student_linear"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        metadata = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata.model_spec.name = "student_linear"
        metadata.metadata_field.extend(["signature_def", "saved_model_fingerprint"])
        with grpc.insecure_channel(srv.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=60)
            answer = stub.GetModelMetadata(metadata, timeout=60)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    classes = tf.make_ndarray(response.outputs["classes"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=1))
    assert np.mean(classes == fashion.y_test[:256]) > 0.6  # A classifier that learnt something.
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signature_map)
    inputs = signature_map.signature_def["serving_default"].inputs["images"]
    assert [d.size for d in inputs.tensor_shape.dim] == [-1, 28, 28, 1]
    with open(os.path.join(deployed, MARKER), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert answer.metadata["saved_model_fingerprint"].value.endswith(digest.encode())
    latency = evaluation.cpu_latency_ms(deployed, images, repeats=3)
    assert sorted(latency) == ["batch_1", "batch_64"] and all(v > 0 for v in latency.values())


def test_a_directory_of_no_registered_format_is_refused_in_one_line(npz_format, fashion, tmp_path):
    # Before the fix: deploy_version named SavedModel and LiteRT only; Servable.load raised
    # TensorFlow's NotFoundError for saved_model.pb; cpu_latency_ms failed in tf.saved_model.load.
    version = tmp_path / "export" / "1"
    version.mkdir(parents=True)
    (version / "weights.bin").write_bytes(b"\0" * 64)
    assert export.list_versions(str(tmp_path / "export")) == []
    calls = (lambda: export.deploy_version(str(version), str(tmp_path / "served")),
             lambda: serving.Servable.load("student", 1, str(version)),
             lambda: evaluation.cpu_latency_ms(str(version), fashion.x_test[:1]))
    for call in calls:
        with pytest.raises(errors.TfkdError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and str(version) in message, message
        for marker in ("saved_model.pb", "model.tflite", MARKER):
            assert marker in message, message
    assert not (tmp_path / "served").exists()


def test_unregistering_takes_a_format_out_of_every_reader(tmp_path):
    fmt = export.register_format(export.ExportFormat(NAME, lambda m: m, marker=MARKER,
                                                     loader=_load_npz))
    try:
        (tmp_path / "1").mkdir()
        (tmp_path / "1" / MARKER).write_bytes(b"")
        assert export.list_versions(str(tmp_path)) == [1]
        with pytest.raises(errors.ConfigError, match="already registered"):
            export.register_format(fmt)
        with pytest.raises(errors.ConfigError, match="marker='saved_model.pb'"):
            export.register_format(export.ExportFormat("other", lambda m: m,
                                                       marker="saved_model.pb", loader=_load_npz))
    finally:
        assert export.unregister_format(NAME) is fmt
    assert NAME not in export.FORMATS and MARKER not in export.markers()
    assert export.list_versions(str(tmp_path)) == []
    with pytest.raises(errors.ConfigError, match=f"{NAME!r}: not registered"):
        export.unregister_format(NAME)
