"""The int8 student: a LiteRT full-integer model (every operator int8, convolutions included),
smaller than the float32 SavedModel, served by tfkd's server (Predict and Classify over gRPC) and
by a real tensorflow_model_server with --prefer_tflite_model when one is on PATH."""

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_classify import _example

from tfkd import data
from tfkd import export
from tfkd import serving
from tfkd import student as student_lib
from tfkd.export import litert
from tfkd.student import models
from tfkd.teacher import client as client_lib

from conftest import real_model_server

NAMES = data.dataset_spec("fashion_mnist").class_names


@pytest.fixture(scope="module")
def exported(fashion, tmp_path_factory):
    """A LeNet-5-half trained briefly on 2,000 real images, exported float32 and int8."""
    images, labels = fashion.x_train[:2000], fashion.y_train[:2000]
    config = student_lib.StudentConfig(epochs=4, mixup_alpha=0, rotation_degrees=0,
                                       shift_fraction=0).resolved()
    model, _ = student_lib.train_student(images, np.eye(10, dtype=np.float32)[labels], config,
                                      seed=0, verbose=0)
    root = tmp_path_factory.mktemp("int8")
    full = export.export_classifier(model, str(root / "student"), class_names=NAMES)
    small = export.export_classifier(model, str(root / "student_int8"), variant="int8",
                                     class_names=NAMES, calibration_images=images)
    return full, small


def test_int8_is_a_full_integer_model_over_three_times_smaller(exported):
    full, small = exported
    assert sorted(os.listdir(small)) == ["assets", litert.FILE]  # No SavedModel beside it.
    assert export.saved_model_bytes(full) > 3 * export.saved_model_bytes(small)
    interpreter = tf.lite.Interpreter(os.path.join(small, litert.FILE))
    ops = {op["op_name"]: op for op in interpreter._get_ops_details()}
    tensors = interpreter.get_tensor_details()
    for name in ("CONV_2D", "FULLY_CONNECTED"):  # Convolutions are int8 too.
        for op in (o for o in interpreter._get_ops_details() if o["op_name"] == name):
            assert tensors[op["inputs"][1]]["dtype"] == np.int8, (name, tensors[op["inputs"][1]])
    assert "CONV_2D" in ops
    with pytest.raises(ValueError, match="calibration_images"):
        export.export_classifier(models.build_model("lenet5_half", (28, 28, 1), 10),
                                 os.path.dirname(small) + "_x", variant="int8")


def test_tfkd_server_answers_predict_and_classify_from_the_int8_student(exported, fashion):
    full, small = exported
    bases = {"student": os.path.dirname(full), "student_int8": os.path.dirname(small)}
    images = fashion.x_test[:500]
    with serving.ModelServer([serving.ModelConfig(n, b) for n, b in bases.items()],
                             poll_seconds=0) as srv:
        answers = {}
        for name in bases:
            with client_lib.connect(srv.target, name, role="student") as student:
                answers[name] = client_lib.top1(student, images)
                assert student.signature.input_shape == (-1, 28, 28, 1)
        # Agreement with float32 and accuracy within a point: the calibration holds.
        assert np.mean(answers["student"] == answers["student_int8"]) > 0.95
        accuracy = {n: np.mean(a == fashion.y_test[:500]) for n, a in answers.items()}
        assert accuracy["student_int8"] > accuracy["student"] - 0.01, accuracy
        with grpc.insecure_channel(srv.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = "student_int8"
            request.model_spec.signature_name = "classify"
            for image in images[:3]:
                request.input.example_list.examples.add().CopyFrom(_example(image))
            response = stub.Classify(request, timeout=60)
    rows = response.result.classifications
    assert len(rows) == 3 and response.model_spec.version.value == 1
    for row, expected in zip(rows, answers["student_int8"][:3]):
        assert tuple(c.label for c in row.classes) == NAMES
        scores = np.array([c.score for c in row.classes])
        assert abs(scores.sum() - 1) < 0.02 and scores.argmax() == expected


def test_real_tf_serving_answers_the_int8_student(exported, fashion):
    full, small = exported
    with real_model_server("student_int8", os.path.dirname(small),
                           extra_args=["--prefer_tflite_model=true"]) as target:
        with client_lib.connect(target, "student_int8", role="student") as student:
            top1 = client_lib.top1(student, fashion.x_test[:100])
    assert np.mean(top1 == fashion.y_test[:100]) > 0.5
