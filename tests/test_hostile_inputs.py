"""Issue 25 §4, inputs that were accepted and should not be: a class map that merges classes, a
student with NaN weights, a decompression-bomb image, a TFRecord without the image key, the same
image asked twice in one labelling call. Real files, the real served teacher."""

import os
import struct
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import errors
from tfkd import images
from tfkd import outputs
from tfkd import pipeline
from tfkd import report
from tfkd import teacher
from tfkd.report import Report
from tfkd.student import models


def test_a_class_map_that_merges_teacher_classes_is_refused():
    with pytest.raises(ValueError, match="class_map=0,0,0: expected a distinct data class"):
        teacher.TeacherConfig(target="127.0.0.1:1", class_map=(0, 0, 0)).validate()
    teacher.TeacherConfig(target="127.0.0.1:1", class_map=(3, 0, 1)).validate()  # A subset: fine.


def test_a_student_with_nan_weights_is_never_exported(tmp_path):
    keras.utils.set_random_seed(0)
    student = models.build_model("lenet5_half", (28, 28, 1), 10)
    weights = student.get_weights()
    weights[0][...] = np.nan
    student.set_weights(weights)
    config = pipeline.DistillConfig(workdir=str(tmp_path), compress=(), verbose=0)
    with pytest.raises(errors.StudentError, match="weights are not finite .* nothing was exported"):
        outputs.export_student(config, student, np.zeros((2, 28, 28, 1), np.float32), None,
                                tuple(str(i) for i in range(10)), report.StageTimer(), Report())
    assert not (tmp_path / "export").exists()


def _png(path, height, width):
    """A real grey PNG of height x width zeros (zlib-compressed rows: a 9000 x 9000 image is about
    80 KB on disk and 81 MB decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = zlib.compress(b"\0" * ((width + 1) * height), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                        8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_skipped_unread(tmp_path, fashion):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        png = tf.io.encode_png(tf.cast(fashion.x_train[i] * 255, tf.uint8)).numpy()
        (folder / f"{i}.png").write_bytes(png)
    _png(folder / "bomb.png", 9000, 9000)  # 81 megapixels > MAX_IMAGE_PIXELS.
    _png(folder / "small.png", 40, 30)
    assert int(images.declared_pixels(tf.constant((folder / "bomb.png").read_bytes()))) == 81e6
    loaded = images.load_images(str(folder), (28, 28, 1))
    assert loaded.images.shape == (4, 28, 28, 1)
    assert [os.path.basename(s) for s in loaded.skipped] == ["bomb.png"]


def test_a_tfrecord_without_the_image_key_names_the_features_it_has(tmp_path):
    path = str(tmp_path / "shots.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        example = tf.train.Example(features=tf.train.Features(feature={
            "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG"])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))}))
        writer.write(example.SerializeToString())
    with pytest.raises(errors.ImageSourceError,
                       match=r"image_key='image/encoded': .* it has: image_raw \(bytes_list\), "
                             r"label \(int64_list\)"):
        images.load_images(path, (28, 28, 1))


def test_an_image_asked_twice_in_one_call_is_sent_and_charged_once(server, fashion):
    """Two MixUp pairs that round to the same picture: identical encoded bytes are one query."""
    batch = fashion.x_test[[0, 1, 0, 2, 1, 0]]
    with teacher.connect(server.target, "teacher") as client:
        assert client.missing(batch) == 3
        answers = client.soft_labels(batch)
        assert client.queries == 3
    np.testing.assert_array_equal(answers[[2, 5]], answers[[0, 0]])
    np.testing.assert_array_equal(answers[4], answers[1])
    assert answers[[0, 1, 3]].argmax(1).tolist() != [0, 0, 0]  # Real answers, not zeros.
