"""The work dir tells the truth (issue 8): a teacher trained with other settings is refused, not
silently reused; a second run on a busy work dir is refused before it pays for anything."""

import dataclasses

import pytest

from tfkd import pipeline
from tfkd import teacher
from tfkd import workdir

from test_pipeline import TINY


@pytest.fixture()
def local_config(renamed_data, tmp_path):
    """A tiny run that trains its own teacher (1 epoch on 2,500 images) into the work dir."""
    return pipeline.FSBBTConfig(workdir=str(tmp_path / "run"), data_dir=str(renamed_data / "true"),
                                teacher_train=pipeline.TeacherTrainConfig(epochs=1), **TINY)


def test_a_teacher_trained_with_other_settings_is_refused(local_config, tmp_path):
    first = pipeline.run_fsbbt(local_config)
    assert first["teacher_recipe"]["epochs"] == 1
    sent = teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total
    other = dataclasses.replace(local_config,
                                teacher_train=pipeline.TeacherTrainConfig(epochs=2))
    with pytest.raises(workdir.WorkdirError, match="epochs: 1 there, 2 now"):
        pipeline.run_fsbbt(other)
    assert teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total == sent  # Nothing sent.
    assert pipeline.run_fsbbt(local_config)["teacher_queries_sent"] == 0  # Same settings: reused.


def test_a_busy_work_dir_is_refused(local_config):
    with workdir.lock(local_config.workdir):  # Another run holds it.
        with pytest.raises(workdir.WorkdirError, match=r"in use by another run \(pid \d+\)"):
            pipeline.run_fsbbt(local_config)
    assert teacher.QueryAccount(local_config.workdir + "/ledger").total == 0
