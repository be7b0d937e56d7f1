"""Epoch selection (``student.select='validation'``) on real parts: ZSKD impressions from the test
teacher's SavedModel, a real student, served over gRPC. Only instrumentation is added: the images
handed to the selection callback and to training are recorded, to check which split they came
from. Issue 27: the test split is never used for any selection."""

import sys

import numpy as np
import pytest

import tfkd
from tfkd import student as student_lib
from tfkd.methods.zskd import impressions


def _rows(images):
    """Each image's bytes, for set membership."""
    return {row.tobytes() for row in np.asarray(images, np.float32).reshape(len(images), -1)}


@pytest.fixture()
def recorded(monkeypatch):
    """What ValidationAccuracy was asked to score and what train_student was asked to train on."""
    seen = {"selection": [], "training": []}
    init = student_lib.ValidationAccuracy.__init__
    train = student_lib.train_student

    def record_init(self, images, labels, *args, **kwargs):
        seen["selection"].append(images)
        init(self, images, labels, *args, **kwargs)

    def record_train(images, *args, **kwargs):
        seen["training"].append(images)
        return train(images, *args, **kwargs)

    monkeypatch.setattr(student_lib.ValidationAccuracy, "__init__", record_init)
    # Every tfkd module that holds train_student (tfkd.student, tfkd.student.loops, and any caller
    # that imported the name), so the record does not depend on how the caller reaches it.
    for name, module in list(sys.modules.items()):
        if name.startswith("tfkd") and getattr(module, "train_student", None) is train:
            monkeypatch.setattr(module, "train_student", record_train)
    return seen


def _distill(workdir, server, teacher_base, num_validation):
    return tfkd.distill(
        workdir=str(workdir), method="zskd", teacher=tfkd.TeacherConfig(target=server.target),
        teacher_saved_model=teacher_base, num_validation=num_validation, eval_examples=300,
        evaluate_teacher=False, compress=(), verbose=0,
        zskd=impressions.ImpressionConfig(count=200, batch_size=10, iterations=20,
                                          learning_rate=0.05, views=0),
        student=tfkd.StudentConfig(epochs=4, batch_size=16, select="validation"))


@pytest.mark.slow
def test_the_selected_epoch_is_chosen_on_the_validation_split_and_exported(
        server, teacher_base, fashion, tmp_path, recorded):
    report = _distill(tmp_path, server, teacher_base, num_validation=500)
    selected, scores = report.student_selected_epoch, report.student_selection_scores
    assert report.student_selection == "validation split"
    assert sorted(scores) == [1, 2, 3, 4] and selected == max(scores, key=scores.get)
    (scored,) = recorded["selection"]
    assert len(scored) == 500 and not _rows(scored) & _rows(fashion.x_test), \
        "the selection read test images"
    # The exported student is the selected epoch's: served over gRPC, the same validation figure.
    assert report.student_validation_accuracy == pytest.approx(scores[selected], abs=1e-6)


@pytest.mark.slow
def test_without_a_validation_split_it_selects_on_a_held_out_slice_of_the_transfer_set(
        server, teacher_base, fashion, tmp_path, recorded):
    report = _distill(tmp_path, server, teacher_base, num_validation=0)
    assert report.student_selection == "held-out transfer set (teacher's top-1)"
    transfer = tfkd.methods.TransferSet.load(report.labelled_set)
    (scored,), (trained,) = recorded["selection"], recorded["training"]
    assert len(scored) == 20 and len(trained) == 180  # 10% of 200 impressions held out.
    assert _rows(scored) <= _rows(transfer.images) and not _rows(scored) & _rows(trained)
    assert not _rows(scored) & _rows(fashion.x_test)
