"""Soft labels from a label-only teacher (issue 27) on real parts: the test teacher exported with
its ``classes`` output only, served over gRPC; FS-BBT's vote estimator and DB3KD's boundary
distances. Nothing is mocked; the dataset's true labels are replaced (monkeypatched loader) to
check that no soft label reads them."""

import dataclasses

import numpy as np
import pytest

import tfkd
from tfkd import data
from tfkd import methods
from tfkd.methods.db3kd import boundary
from tfkd.methods.fsbbt import synthesis
from tfkd.methods.fsbbt import votes

VOTES = votes.VoteConfig(votes=4, sigma=0.2)


def _distill(workdir, server, method, **fields):
    return tfkd.distill(
        workdir=str(workdir), method=method, teacher=tfkd.TeacherConfig(target=server.target),
        num_shots=60, num_validation=200, eval_examples=200, evaluate_teacher=False, compress=(),
        verbose=0, student=tfkd.StudentConfig(epochs=1, batch_size=16),
        **(dict(db3kd=boundary.BoundaryConfig(num_directions=2, tolerance=1e-2)) if method == "db3kd"
           else dict(mixup=synthesis.MixUpConfig(num_images=120),
                     cvae=synthesis.CVAEConfig(num_images=0), votes=VOTES)), **fields)


@pytest.fixture()
def false_labels(monkeypatch):
    """``use(indices)``: from then on, every training label (after the validation split is held
    out) reads (label + 1) mod K, and the N shots are ``indices`` (the balanced draw reads class
    membership, so it is pinned to the true run's shots)."""
    split = data.with_validation_split

    def split_with_false_labels(*args, **kwargs):
        real = split(*args, **kwargs)
        return dataclasses.replace(real, y_train=(real.y_train + 1) % real.num_classes)

    def use(indices):
        monkeypatch.setattr(data, "with_validation_split", split_with_false_labels)
        monkeypatch.setattr(data, "few_shot_indices", lambda *a, **k: indices)
    return use


def _same_transfer_set(a, b):
    a, b = methods.TransferSet.load(a.labelled_set), methods.TransferSet.load(b.labelled_set)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.targets, b.targets)


@pytest.mark.slow
def test_votes_are_the_teachers_answers_over_noisy_copies_and_never_read_the_true_class(
        label_only_server, tmp_path, false_labels):
    report = _distill(tmp_path / "true", label_only_server, "fsbbt")
    transfer = methods.TransferSet.load(report.labelled_set)
    n = len(transfer.images)
    assert n == 180 and report.teacher_output_kind == "classes"
    # Multiples of 1/(k + 1), on the simplex, with the clean image's decision among them.
    fifths = transfer.targets * (VOTES.votes + 1)
    np.testing.assert_allclose(fifths, np.round(fifths), atol=1e-5)
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, atol=1e-6)
    assert 0 < np.mean(transfer.targets.max(axis=1) < 1)  # Some images sit near a boundary.
    sent = report.teacher_queries_sent_by_stage
    assert sent["label_votes"] == VOTES.votes * n and report.teacher_query_plan["label_votes"] == \
        VOTES.votes * n
    again = _distill(tmp_path / "true", label_only_server, "fsbbt")  # No vote paid twice.
    assert again.teacher_queries_sent == 0
    false_labels(np.load(tmp_path / "true" / "few_shot_indices.npy"))
    _same_transfer_set(report, _distill(tmp_path / "false", label_only_server, "fsbbt"))


@pytest.mark.slow
def test_db3kd_soft_labels_never_read_the_true_class(label_only_server, tmp_path, false_labels):
    true = _distill(tmp_path / "true", label_only_server, "db3kd")
    false_labels(np.load(tmp_path / "true" / "few_shot_indices.npy"))
    _same_transfer_set(true, _distill(tmp_path / "false", label_only_server, "db3kd"))
