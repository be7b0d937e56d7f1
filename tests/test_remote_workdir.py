"""A run whose work dir is on a non-local file system: TensorFlow's in-memory ``ram://`` (the one
non-local file system that exists on every machine; ``gs://``, ``s3://`` and ``hdfs://`` go through
the same ``tf.io.gfile`` calls). Everything of the run lives there: lock, ledger, query account,
transfer set, CVAE weights, student backup, TensorBoard logs, exports, serving configs, report."""

import json

import numpy as np
import pytest
import tensorflow as tf
from test_pipeline import TINY

from tfkd import methods
from tfkd import pipeline
from tfkd import teacher as teacher_lib

from conftest import config_of


@pytest.mark.slow
def test_fsbbt_runs_with_its_work_dir_on_ram_and_a_rerun_asks_nothing(server, fashion):
    workdir = "ram://tfkd_test/run"
    config = config_of(workdir=workdir, method="fsbbt",
                                    teacher=teacher_lib.TeacherConfig(target=server.target),
                                    **{**TINY, "compress": ("int8",)})
    report = pipeline.run(config)
    gfile = tf.io.gfile
    assert json.loads(gfile.GFile(f"{workdir}/report.json").read())["student_accuracy"] == \
        report["student_accuracy"]
    assert report["student_export_dir"] == f"{workdir}/export/student/1"
    assert report["teacher_queries_total"] == 290 and report["labelled_set"].startswith(workdir)
    transfer = methods.TransferSet.load(report["labelled_set"])
    assert transfer.count("mixup") == 200 and transfer.count("cvae") == 40
    assert gfile.glob(f"{workdir}/cvae-*.weights.h5") and gfile.glob(f"{workdir}/ledger/*.npz")
    assert gfile.glob(f"{workdir}/student_backup-*/*")
    assert gfile.exists(f"{workdir}/serving/models.config")
    assert not gfile.exists(f"{workdir}/.lock")  # Released.
    student = tf.saved_model.load(report["student_export_dir"])
    probabilities = student.signatures["serving_default"](
        images=tf.constant(fashion.x_test[:4]))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert "classify" in student.signatures
    lines = gfile.GFile(f"{workdir}/ledger/queries_sent.log").read().splitlines()
    assert sum(int(line.split()[2]) for line in lines) == 290
    again = pipeline.run(config)
    assert again["teacher_queries_sent"] == 0 and again["teacher_ledger_hits"] == 0
    assert again["student_epochs_resumed_from"] == config.student.epochs
    assert again["student_export_dir"] == f"{workdir}/export/student/2"
