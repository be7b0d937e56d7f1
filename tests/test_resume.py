"""A training job killed mid-run resumes from its last checkpoint and ends with the same epochs."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_pipeline import STUDENT_FLOOR

from tfkd import methods

from conftest import REPO
from conftest import kill_when

EPOCHS = 10


def command(workdir):
    return [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
            "--teacher_epochs=1", "--num_shots=100", "--num_mixup=4000", "--num_cvae=100",
            "--cvae_epochs=2", f"--student_epochs={EPOCHS}", "--checkpoint_steps=20",
            "--eval_examples=300", "--compress=", "--verbose=0"]


def checkpointed_epoch(workdir):
    """The epoch in the student's BackupAndRestore metadata, or -1 before the first checkpoint."""
    for path in glob.glob(os.path.join(workdir, "student_backup-*", "training_metadata.json")):
        try:
            with open(path) as f:
                return json.load(f)["epoch"]
        except (OSError, ValueError):  # Being written right now.
            return -1
    return -1


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_epochs(tmp_path):
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    # Killed mid-training, as a preempted job.
    kill_when(first, lambda: checkpointed_epoch(workdir) >= 2, "no checkpoint of epoch 2")
    assert not os.path.exists(os.path.join(workdir, "report.json"))
    queries_before = len(glob.glob(os.path.join(workdir, "ledger", "*.npz")))

    second = subprocess.run(command(workdir), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(open(os.path.join(workdir, "report.json")).read())
    assert report["student_epochs"] == EPOCHS
    assert 2 <= report["student_epochs_resumed_from"] < EPOCHS  # Resumed, not restarted.
    assert report["student_accuracy"] > STUDENT_FLOOR, report["student_accuracy"]
    # Nothing paid for was paid again: no teacher training, no relabelling; this process sent only
    # the teacher's evaluation (300 test images) ...
    assert report["teacher_queries_sent"] == 300
    assert report["teacher_queries_sent_by_stage"] == {"evaluate_teacher": 300}
    assert "teacher_training" not in report["stage_seconds"]
    assert "label_mixup" not in report["stage_seconds"]
    assert len(glob.glob(os.path.join(workdir, "ledger", "*.npz"))) == queries_before + 1
    # ... and the work dir's account still has every image the killed process sent: each distinct
    # image once (of 4,000 MixUp pairs drawn from 100 shots, a few repeat a pair and its λ: the
    # same picture, asked once).
    labelled = methods.TransferSet.load(report["labelled_set"])
    mixup = labelled.images[labelled.source == labelled.source_names.index("mixup")]
    distinct = len(np.unique(mixup.reshape(len(mixup), -1), axis=0))
    assert len(mixup) == 4000 and 3900 < distinct <= 4000
    assert report["teacher_queries_by_stage"] == {"label_real": 100, "label_mixup": distinct,
                                                  "label_cvae": 100, "evaluate_teacher": 300}
    assert report["teacher_queries_total"] == 500 + distinct
