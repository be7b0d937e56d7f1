"""The CIFAR configurations (AlexNet -> AlexNet-half, ResNet-32 -> ResNet-20, convolutional CVAE),
end to end on tiny random tensors of the right shape: this machine has no CIFAR data (offline), so
the pictures are noise; what is tested is that every part fits together for a GPU node that is online.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from test_data import write_idx

from tfkd import data

from conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("dataset,classes,teacher,student,shots", [
    ("cifar10", 10, "alexnet", "alexnet_half", 20),
    ("cifar100", 100, "resnet32", "resnet20", 100),
])
def test_cifar_pipeline_on_random_tensors(tmp_path, dataset, classes, teacher, student, shots):
    spec = data.dataset_spec(dataset)
    assert (spec.teacher, spec.student, spec.cvae_architecture) == (teacher, student, "conv")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
    write_idx(tmp_path / "data", x, np.arange(400) % classes, x[:60], np.arange(60) % classes)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
         f"--dataset={dataset}", f"--data_dir={tmp_path / 'data'}", "--teacher_epochs=1",
         f"--num_shots={shots}", "--num_mixup=40", f"--num_cvae={classes * 2}", "--cvae_epochs=1",
         "--student_epochs=1", "--batch_size=16", "--num_validation=20", "--compress=",
         "--verbose=0"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert (report["teacher_architecture"], report["student_architecture"]) == (teacher, student)
    assert report["transfer_set_sources"]["cvae"] == classes * 2
    plan = report["teacher_query_plan"]
    assert plan["label_real"] + plan["label_mixup"] + plan["label_cvae"] == shots + 40 + classes * 2
    # The 60 test images are training images here: those labelled as shots during the run come from
    # the ledger, so the plan (made before the first query) is an upper bound.
    assert plan["evaluate_teacher"] == 60
    assert report["teacher_queries_sent"] == report["teacher_queries_total"]
    assert shots + 40 + classes * 2 < report["teacher_queries_sent"] <= sum(plan.values())
    fn = tf.saved_model.load(report["student_export_dir"]).signatures["serving_default"]
    (_, inputs), outputs = fn.structured_input_signature, fn.structured_outputs
    assert inputs["images"].shape.as_list() == [None, 32, 32, 3]
    assert outputs["probabilities"].shape.as_list() == [None, classes]
