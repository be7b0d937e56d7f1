"""The user's own images (tfkd.images) and the main job on them: PNG folders of Fashion-MNIST test
images at 64x64 RGB, a served teacher that takes uint8 [batch, 64, 64, 3], and a keras.applications
student; fidelity without labels, accuracy with class sub-folders."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd import data
from tfkd import errors
from tfkd import images

from conftest import REPO

SIZE = 64
NAMES = tuple(n.replace("/", "-") for n in data.dataset_spec("fashion_mnist").class_names)  # Folder-safe.


def _rgb64(x):
    return tf.image.grayscale_to_rgb(tf.image.resize(x, (SIZE, SIZE))).numpy().clip(0, 1)


def test_a_folder_is_read_at_the_asked_size_with_unreadable_files_counted(fashion, tmp_path, caplog):
    x = fashion.x_test[:12]
    images.write_png_folder(x[:6], str(tmp_path / "a"))
    images.write_png_folder(x[6:], str(tmp_path / "b" / "nested"))
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image: not listed")
    loaded = images.load_images(str(tmp_path), (28, 28, 1))
    assert loaded.images.shape == (12, 28, 28, 1) and loaded.images.dtype == np.float32
    np.testing.assert_allclose(loaded.images, x, atol=1e-6)  # Same size: untouched.
    assert sorted(os.path.basename(p) for p in loaded.skipped) == ["broken.png", "empty.jpg"]
    assert "2 of 14 files could not be read" in caplog.text
    rgb = images.load_images(str(tmp_path / "a"), (SIZE, SIZE, 3))
    assert rgb.images.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_allclose(rgb.images[..., 0], rgb.images[..., 2])  # Grey made colour.
    np.testing.assert_allclose(rgb.images, _rgb64(x[:6]), atol=0.02)
    with pytest.raises(errors.ImageSourceError, match="nothing matched"):
        images.load_images(str(tmp_path / "none-*.png"), (28, 28, 1))


def test_tfrecords_and_a_non_local_file_system_are_read_alike(fashion, tmp_path):
    x = fashion.x_test[:5]
    path = str(tmp_path / "shots.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for image in x:
            png = tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)).numpy()
            feature = {"img": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                         .SerializeToString())
    records = images.load_images(path, (28, 28, 1), image_key="img", select=[1, 3])
    np.testing.assert_allclose(records.images, x[[1, 3]], atol=1e-6)
    assert records.names == (f"{path}#1", f"{path}#3")
    ram = "ram://test_images/labelled"
    images.write_png_folder(x, ram, fashion.y_test[:5], NAMES)
    labelled, order = images.load_labelled(ram, (28, 28, 1), 10, NAMES)
    assert order == NAMES
    assert sorted(labelled.labels.tolist()) == sorted(fashion.y_test[:5].tolist())
    for name, label in zip(labelled.names, labelled.labels):
        assert f"/{NAMES[label]}/" in name
    with pytest.raises(errors.ImageSourceError, match="not class names"):
        images.load_labelled(ram, (28, 28, 1), 10, tuple(f"c{i}" for i in range(10)))


class Uint8Teacher(tf.Module):
    """A served teacher of 64x64 RGB images: ``serving_default(images uint8 [b, 64, 64, 3]) ->
    probabilities float32 [b, 10]``, a small Keras CNN inside."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images")])
    def serve(self, images):
        logits = self.model(tf.cast(images, tf.float32) / 255.0, training=False)
        return {"probabilities": tf.nn.softmax(logits)}


@pytest.fixture(scope="module")
def rgb_teacher(fashion, tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    x, y = _rgb64(fashion.x_train[:3000]), fashion.y_train[:3000]
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
        keras.layers.Conv2D(32, 5, strides=2, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    base = tmp_path_factory.mktemp("rgb") / "teacher"
    module = Uint8Teacher(model)
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return str(base)


@pytest.mark.slow
def test_distill_from_a_png_folder_into_a_keras_applications_student(fashion, rgb_teacher,
                                                                    tmp_path):
    from tfkd import serving

    root = tmp_path / "pngs"
    images.write_png_folder(_rgb64(fashion.x_test[:300]), str(root / "shots"))
    images.write_png_folder(_rgb64(fashion.x_test[300:500]), str(root / "eval"),
                            fashion.y_test[300:500], NAMES)
    (root / "shots" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    server = serving.ModelServer([serving.ModelConfig("teacher", rgb_teacher)], poll_seconds=0)
    with server:
        def distill(workdir, *extra):
            cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"),
                   f"--workdir={workdir}", f"--teacher={server.target}",
                   f"--images={root / 'shots'}", "--num_mixup=200", "--num_cvae=100",
                   "--cvae_epochs=2", "--student_architecture=mobilenet_v3_small",
                   "--student_epochs=1", "--batch_size=32", "--compress=float16", "--verbose=0",
                   *extra]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-3000:]
            return json.loads((workdir / "report.json").read_text())

        report = distill(tmp_path / "run", f"--eval_images={root / 'eval'}",
                         f"--class_names={tmp_path / 'classes.txt'}")
        # The flat folder's run needs no keras.applications student (its bar is the folder's).
        flat = distill(tmp_path / "flat", f"--eval_images={root / 'shots'}/00000*.png",
                       "--num_shots=100", "--num_mixup=0", "--num_cvae=0", "--compress=",
                       "--student_architecture=lenet5_half")
    assert report["teacher"]["input"] == "images uint8 [-1, 64, 64, 3] x255"
    assert report["images"]["image_shape"] == [SIZE, SIZE, 3]
    assert report["images"]["pool"] == 301 and report["images"]["skipped"] == 1
    assert report["images"]["eval_labelled"] and report["images"]["class_names"] == list(NAMES)
    assert report["images"]["images_per_second"] > 0
    assert report["transfer_set_sources"] == {"real": 300, "mixup": 200, "cvae": 100}
    assert report["student_architecture"] == "mobilenet_v3_small"
    cvae = report["method_report"]["cvae"]
    assert cvae["working_shape"] == [32, 32, 3] and cvae["architecture"] == "conv"
    assert report["stage_seconds"]["cvae_training"] > 0
    assert report["teacher_accuracy"] > 0.5  # The teacher's, on the labelled folders.
    for key in ("student_accuracy", "student_fidelity"):
        assert 0.0 <= report[key] <= 1.0
    assert report["student_variants"]["float16"]["fidelity"] is not None
    assert len((tmp_path / "run" / "few_shot_files.txt").read_text().split()) == 300
    # Accuracy and fidelity recomputed in process from the exports and the folders.
    evaluation, _ = images.load_labelled(str(root / "eval"), (SIZE, SIZE, 3), 10, NAMES)
    pixels = tf.constant(evaluation.images)
    student = tf.saved_model.load(report["student_export_dir"]).signatures["serving_default"]
    predicted = student(images=pixels)["classes"].numpy()
    teacher = tf.saved_model.load(os.path.join(rgb_teacher, "1")).signatures["serving_default"]
    taught = teacher(images=tf.cast(tf.round(pixels * 255), tf.uint8))["probabilities"].numpy()
    assert report["student_accuracy"] == pytest.approx(np.mean(predicted == evaluation.labels),
                                                       abs=0.006)
    assert report["student_fidelity"] == pytest.approx(np.mean(predicted == taught.argmax(1)),
                                                       abs=0.006)
    assert report["teacher_accuracy"] == pytest.approx(np.mean(taught.argmax(1) == evaluation.labels),
                                                       abs=0.006)
    # A flat evaluation folder: fidelity, no accuracy; 100 of the 301 files drawn.
    assert flat["student_accuracy"] is None and flat["teacher_accuracy"] is None
    assert 0.0 <= flat["student_fidelity"] <= 1.0 and flat["images"]["eval_labelled"] is False
    assert flat["transfer_set_sources"] == {"real": 100 - flat["images"]["skipped"]}


def test_images_without_a_teacher_endpoint_stop_with_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path}",
           f"--images={tmp_path}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "needs a teacher.target (--teacher)" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, message", [
    (["--num_shots=0"], "error: num_shots=0: expected >= 1 (0, all, only with images)"),
    (["--eval_images=/tmp"], "error: settings['images']: expected a mapping of ImageSourceConfig "
                             "fields with path, got dict {'eval_path': '/tmp'}"),
])
def test_image_flags_without_images_stop_with_one_line(tmp_path, flags, message):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={tmp_path}",
           *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
