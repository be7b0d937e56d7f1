"""TF Serving's Classify API on the exported student: the ``classify`` signature (serialized
tf.Example in, string ``classes`` from the label vocabulary asset and float ``scores`` out), raw
``tensorflow_serving.apis`` requests over gRPC and REST ``:classify``. The gRPC tests run against
tfkd's server and a real tensorflow_model_server when one is on PATH (skipped otherwise)."""

import base64
import http.client
import json
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfkd import data
from tfkd import export
from tfkd import serving
from tfkd.student import models

from conftest import real_model_server

NAMES = data.dataset_spec("fashion_mnist").class_names  # "T-shirt/top": a name need not be a file name.


@pytest.fixture(scope="module")
def student_base(tmp_path_factory):
    """A LeNet-5-half student (seeded, untrained: the contract is what is tested) exported with
    the Fashion-MNIST class names."""
    import keras

    keras.utils.set_random_seed(0)
    model = models.build_model("lenet5_half", (28, 28, 1), 10)
    base = str(tmp_path_factory.mktemp("classify") / "student")
    export.export_classifier(model, base, class_names=NAMES)
    return base


@pytest.fixture(scope="module")
def tfkd_server(student_base):
    with serving.ModelServer([serving.ModelConfig("student", student_base)], poll_seconds=0,
                             rest_api_port=0) as srv:
        yield srv


@pytest.fixture(params=["tfkd", "tensorflow_model_server"])
def classify_stub(request, tfkd_server, student_base):
    if request.param == "tfkd":
        channel = grpc.insecure_channel(tfkd_server.target)
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
        channel.close()
        return
    with real_model_server("student", student_base) as target, \
            grpc.insecure_channel(target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _png(image) -> bytes:
    return tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)).numpy()


def _example(image) -> tf.train.Example:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[_png(image)]))}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _expected(student_base, images):
    loaded = tf.saved_model.load(os.path.join(student_base, "1"))
    return loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()


def test_the_export_has_a_classify_signature_with_its_vocabulary(student_base):
    version = os.path.join(student_base, "1")
    with open(os.path.join(version, "assets", "labels.txt")) as f:
        assert tuple(f.read().splitlines()) == NAMES
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    assert signatures["classify"].method_name == "tensorflow/serving/classify"
    assert dict(signatures["classify"].inputs)["inputs"].dtype == tf.string.as_datatype_enum
    assert set(signatures["classify"].outputs) == {"classes", "scores"}
    assert signatures["serving_default"].method_name == "tensorflow/serving/predict"


def test_raw_classify_request_returns_class_names_and_scores(classify_stub, student_base, fashion):
    images = fashion.x_test[:3]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "student"
    request.model_spec.signature_name = "classify"
    for image in images:
        request.input.example_list.examples.add().CopyFrom(_example(image))
    response = classify_stub.Classify(request, timeout=60)
    assert response.model_spec.name == "student" and response.model_spec.version.value == 1
    rows = response.result.classifications
    assert len(rows) == 3
    expected = _expected(student_base, images)
    for row, probabilities in zip(rows, expected):
        assert tuple(c.label for c in row.classes) == NAMES
        np.testing.assert_allclose([c.score for c in row.classes], probabilities, atol=1e-6)


def test_classify_with_context_merges_the_context_into_each_example(classify_stub, student_base,
                                                                   fashion):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "student"
    request.model_spec.signature_name = "classify"
    listed = request.input.example_list_with_context
    listed.context.CopyFrom(_example(fashion.x_test[0]))
    listed.examples.add()  # Only the context's image.
    listed.examples.add().CopyFrom(_example(fashion.x_test[1]))  # Its own image wins.
    rows = classify_stub.Classify(request, timeout=60).result.classifications
    expected = _expected(student_base, fashion.x_test[:2])
    for row, probabilities in zip(rows, expected):
        np.testing.assert_allclose([c.score for c in row.classes], probabilities, atol=1e-6)


@pytest.mark.parametrize("signature, examples, message", [
    ("serving_default", 1, "Expected classification signature method_name to be "
                           "tensorflow/serving/classify"),
    ("classify", 0, "Input is empty"),
])
def test_classify_errors_as_tf_serving_words_them(classify_stub, fashion, signature, examples,
                                                 message):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "student"
    request.model_spec.signature_name = signature
    for image in fashion.x_test[:examples]:
        request.input.example_list.examples.add().CopyFrom(_example(image))
    with pytest.raises(grpc.RpcError) as e:
        classify_stub.Classify(request, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def _rest(srv, body: dict, path="/v1/models/student:classify"):
    conn = http.client.HTTPConnection(srv.host, srv.rest_api_port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_rest_classify_answers_label_score_pairs(tfkd_server, student_base, fashion):
    images = fashion.x_test[:2]
    examples = [{"image/encoded": {"b64": base64.b64encode(_png(x)).decode()}} for x in images]
    status, answer = _rest(tfkd_server, {"signature_name": "classify", "examples": examples})
    assert status == 200, answer
    expected = _expected(student_base, images)
    assert len(answer["result"]) == 2
    for row, probabilities in zip(answer["result"], expected):
        assert tuple(label for label, _ in row) == NAMES
        np.testing.assert_allclose([score for _, score in row], probabilities, atol=1e-6)
    status, answer = _rest(tfkd_server, {"signature_name": "classify",
                                         "examples": [{"image/encoded": {"b64": "%%"}}]})
    assert status == 400 and "bad base64" in answer["error"]


def test_classify_on_bytes_that_are_not_an_image_names_the_cause(tfkd_server):
    """Issue 25 §4: answered only "Graph execution error"; now the line that says what failed."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "student", "classify"
    example = request.input.example_list.examples.add()
    example.features.feature["image/encoded"].bytes_list.value.append(b"plain text, no image")
    with grpc.insecure_channel(tfkd_server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = e.value.details()
    assert details.startswith("classify: the examples could not be run (")
    assert "Graph execution error" not in details and "image" in details.lower(), details
