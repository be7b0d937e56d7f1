"""The work dir tells the truth: a teacher trained with other settings is refused, not
silently reused; a second run on a busy work dir is refused before it pays for anything."""

import dataclasses

import pytest
from test_pipeline import TINY

from tfkd import pipeline
from tfkd import teacher
from tfkd import workdir

from conftest import config_of


@pytest.fixture()
def local_config(renamed_data, tmp_path):
    """A tiny run that trains its own teacher (1 epoch on 2,500 images) into the work dir."""
    return config_of(workdir=str(tmp_path / "run"), data_dir=str(renamed_data / "true"),
                                teacher_train=pipeline.TeacherTrainConfig(epochs=1), **TINY)


def test_a_teacher_trained_with_other_settings_is_refused(local_config, tmp_path):
    first = pipeline.run(local_config)
    assert first["teacher_recipe"]["epochs"] == 1
    sent = teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total
    other = dataclasses.replace(local_config,
                                teacher_train=pipeline.TeacherTrainConfig(epochs=2))
    with pytest.raises(workdir.WorkdirError, match="epochs: 1 there, 2 now"):
        pipeline.run(other)
    assert teacher.QueryAccount(str(tmp_path / "run" / "ledger")).total == sent  # Nothing sent.
    assert pipeline.run(local_config)["teacher_queries_sent"] == 0  # Same settings: reused.


def test_a_busy_work_dir_is_refused(local_config):
    with workdir.lock(local_config.workdir):  # Another run holds it.
        with pytest.raises(workdir.WorkdirError, match=r"in use by another run \(pid \d+\)"):
            pipeline.run(local_config)
    assert teacher.QueryAccount(local_config.workdir + "/ledger").total == 0


def test_growing_the_synthetic_set_keeps_what_was_paid_for(server, tmp_path):
    """MixUp 200 -> 300 and CVAE 40 -> 60 on the same work dir: the larger sets extend the smaller
    ones, so only the 100 + 20 new images are sent to the teacher."""
    config = config_of(workdir=str(tmp_path / "run"),
                                  teacher=teacher.TeacherConfig(target=server.target), **TINY)
    first = pipeline.run(config)
    assert first["teacher_queries_sent"] == 50 + 200 + 40
    grown = config.with_settings({"mixup.num_images": 300, "cvae.num_images": 60})
    second = pipeline.run(grown)
    assert second["teacher_queries_sent_by_stage"] == {"label_mixup": 100, "label_cvae": 20}
    assert second["teacher_ledger_hits"] == 50 + 200 + 40
    assert "cvae_training" in second["stage_seconds"]  # Timed, but the weights were reused:
    assert second["stage_seconds"]["cvae_training"] < 5


def test_a_refused_run_leaves_the_running_runs_record(tmp_path):
    """Issue 25 §4: a second ``tfkd-distill`` on a busy work dir is refused by the lock before it
    writes anything: the first run's ``flags.json`` keeps the first run's seed and sizes."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"seed": 1, "num_shots": 100}
    (run_dir / "flags.json").write_text(json.dumps(record))
    with workdir.lock(str(run_dir)):  # The first run, still working.
        second = subprocess.run(
            [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={run_dir}",
             "--seed=7", "--num_shots=30", "--verbose=0"],
            capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    assert second.stderr.strip().splitlines()[-1].startswith("error: workdir=")
    assert "in use by another run" in second.stderr
    assert json.loads((run_dir / "flags.json").read_text()) == record
