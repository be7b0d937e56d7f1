"""A teacher that does not fit the data is refused before any query, and exports are readable by
another user."""

import dataclasses
import os
import stat

import keras
import numpy as np
import pytest

from tfkd import export
from tfkd import methods
from tfkd import pipeline
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher
from tfkd.methods.fsbbt import synthesis
from tfkd.student import models

from conftest import config_of


@pytest.fixture(scope="module")
def seven_class_teacher(tmp_path_factory, fashion):
    """A real (untrained) 7-class LeNet-5 SavedModel: its metadata says 7 classes."""
    keras.utils.set_random_seed(0)
    model = models.build_model("lenet5", (28, 28, 1), 7)
    base = str(tmp_path_factory.mktemp("seven") / "teacher")
    export.export_classifier(model, base, warmup_images=fashion.x_train[:2])
    return base


def test_a_teacher_with_another_class_count_is_refused(seven_class_teacher, tmp_path):
    with serving.ModelServer([serving.ModelConfig("teacher", seven_class_teacher)],
                             poll_seconds=0) as srv:
        config = config_of(
            workdir=str(tmp_path / "run"), num_shots=50, num_validation=500,
            teacher=teacher.TeacherConfig(target=srv.target),
            mixup=synthesis.MixUpConfig(num_images=100), cvae=synthesis.CVAEConfig(num_images=20),
            student=student_lib.StudentConfig(epochs=1), eval_examples=100, compress=(), verbose=0)
        with pytest.raises(teacher.TeacherError,
                           match="'probabilities' has 7 classes but dataset 'fashion_mnist' has 10"):
            pipeline.run(config)
        assert teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total == 0  # Nothing sent.
        assert not (tmp_path / "run" / "export").exists()
        # Said how to map: teacher classes 0..6 are the data's 3..9; the run goes through, with
        # the data's 10 classes and nothing of the teacher's mass on data classes 0..2.
        mapped = dataclasses.replace(config, workdir=str(tmp_path / "mapped"), teacher=dataclasses
                                     .replace(config.teacher, class_map=tuple(range(3, 10))))
        report = pipeline.run(mapped)
    labelled = methods.TransferSet.load(report["labelled_set"])
    assert labelled.targets.shape[1] == 10 and labelled.targets[:, :3].max() == 0
    np.testing.assert_allclose(labelled.targets.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(teacher.TeacherError, match="class_map has 3 entries but the output"):
        with serving.ModelServer([serving.ModelConfig("teacher", seven_class_teacher)],
                                 poll_seconds=0) as srv:
            with teacher.connect(srv.target, "teacher", class_map=(0, 1, 2)) as client:
                client.expect_num_classes(10)


def test_exports_are_readable_by_others(fashion, tmp_path):
    """Version directories get the permissions of the user's umask (022 here: world-readable), not
    mkdtemp's 0700, so a TF Serving process running as another user can load them."""
    old = os.umask(0o022)
    try:
        model = models.build_model("lenet5_half", (28, 28, 1), 10)
        version_dir = export.export_classifier(model, str(tmp_path / "student"))
        deployed = export.deploy_version(version_dir, str(tmp_path / "served"))
    finally:
        os.umask(old)
    for path in (version_dir, deployed):
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, f) for f in files)]:
                mode = stat.S_IMODE(os.stat(name).st_mode)
                assert mode & 0o044 == 0o044, f"{name}: mode {oct(mode)} is not readable by others"
