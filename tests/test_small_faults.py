"""Small faults, each with one clear line: damaged IDX files, an empty batch, a string
output, a taken port, a missing or empty model base path."""

import gzip
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_data import write_idx

from tfkd import data
from tfkd import errors
from tfkd import serving
from tfkd import teacher

from conftest import REPO


def _small_idx(directory, fashion, n=50):
    x = np.round(fashion.x_train[:n, ..., 0] * 255).astype(np.uint8)
    write_idx(directory, x, fashion.y_train[:n], x[:10], fashion.y_train[:10])


def test_truncated_idx_file_names_the_file(fashion, tmp_path):
    _small_idx(tmp_path, fashion)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # A download cut short.
    with pytest.raises(errors.DatasetUnavailableError, match="train-images-idx3-ubyte.gz: cannot read"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_label_file_shorter_than_images_is_refused(fashion, tmp_path):
    _small_idx(tmp_path, fashion)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 40]) + bytes(40))  # 40 labels for 50 images.
    with pytest.raises(errors.DatasetUnavailableError, match="train split has 50 images but 40 labels"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_empty_batch_is_a_clear_invalid_argument(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "teacher"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((0, 28, 28, 1), np.float32)))
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the batch is empty" in e.value.details()


def test_string_output_names_teacher_and_output():
    with pytest.raises(teacher.TeacherError,
                       match=r"teacher 'vendor', output 'label_text' \(probabilities\): expected "
                             "numbers"):
        teacher.to_soft_labels(np.array([[b"sneaker"], [b"bag"]]), "probabilities", None,
                               "vendor", "label_text")


def _serve(*flags):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "serve.py"), *flags],
                          capture_output=True, text=True, timeout=120)


def test_taken_port_and_missing_base_path_are_one_line_errors(server, teacher_base, tmp_path):
    port = server.target.rsplit(":", 1)[1]
    taken = _serve(f"--port={port}", "--model_name=teacher", f"--model_base_path={teacher_base}")
    assert taken.returncode == 1 and f"error: port={port}: cannot bind" in taken.stderr
    assert "Traceback" not in taken.stderr
    missing = _serve("--port=0", f"--model_base_path={tmp_path / 'nowhere'}")
    assert missing.returncode == 1 and "no such directory" in missing.stderr


def test_empty_base_path_is_served_with_a_warning(tmp_path, every_log_level):
    (tmp_path / "empty").mkdir()
    with serving.ModelServer([serving.ModelConfig("student", str(tmp_path / "empty"))],
                             poll_seconds=0):
        pass
    assert "Model student: no numeric version directory under" in every_log_level.text


@pytest.mark.parametrize("field, value, message", [
    ("compress", ("int4",), "compress=('int4',): expected ('float16', 'int8')"),
    ("num_shots", 0, "num_shots=0: expected >= 1"),
    ("method", "dfad", "method='dfad': expected one of"),
    ("student", "lenet7", "student.architecture='lenet7'"),
])
def test_settings_are_refused_before_anything_runs(tmp_path, field, value, message):
    """A wrong setting is one ValueError before the work dir is touched (no data read, teacher
    trained or query sent), not a failure after student training."""
    from tfkd import pipeline
    from tfkd import student as student_lib

    if field == "student":
        field, value = "student", student_lib.StudentConfig(architecture=value)
    config = pipeline.DistillConfig(workdir=str(tmp_path / "w"), **{field: value})
    with pytest.raises(ValueError) as raised:
        pipeline.run(config)
    assert message in str(raised.value)
    assert not (tmp_path / "w").exists()


def test_a_setting_only_the_data_can_refuse_is_one_line(server, tmp_path):
    """N = 51 is refused once the data says there are 10 classes: one line, no traceback."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path}",
         f"--teacher={server.target}", "--num_shots=51", "--num_validation=500", "--verbose=0"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: num_shots=51: expected a multiple of num_classes=10"), result.stderr[-1000:]
