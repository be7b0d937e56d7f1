"""ZSKD end to end through launch/distill.py: Data Impressions from the teacher's SavedModel
(in-process), the student served and measured over gRPC; and the one-line refusal without it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfkd import methods

from conftest import REPO


def _zskd(workdir, *extra):
    cmd = [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
           "--method=zskd", "--num_validation=500", "--zskd_count=80", "--zskd_batch_size=4",
           "--zskd_iterations=30", "--zskd_learning_rate=0.05", "--student_epochs=2",
           "--batch_size=16", "--eval_examples=200", "--evaluate_teacher=false", "--compress=",
           "--verbose=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_zskd_runs_end_to_end_from_the_teacher_saved_model(server, teacher_base, tmp_path):
    result = _zskd(tmp_path, f"--teacher={server.target}", f"--teacher_saved_model={teacher_base}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "zskd" and report["student_loss"] == "kd"
    assert report["transfer_set_sources"] == {"impressions": 80} and report["num_shots"] == 0
    assert report["teacher_queries_sent"] == 0  # White-box: no query at all.
    assert report["stage_seconds"]["impressions"] > 0
    transfer = methods.TransferSet.load(report["labelled_set"])
    assert transfer.images.min() >= 0 and transfer.images.max() <= 1
    np.testing.assert_allclose(transfer.targets.sum(axis=1), 1.0, rtol=1e-5)
    # 2 betas x 10 classes x 1 batch of 4: every class drawn 8 times.
    assert 0.0 <= report["student_accuracy"] <= 1.0
    again = _zskd(tmp_path, f"--teacher={server.target}", f"--teacher_saved_model={teacher_base}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "impressions" not in json.loads((tmp_path / "report.json").read_text())["stage_seconds"]


def test_zskd_with_only_an_endpoint_stops_with_one_line_naming_both_ways_out(tmp_path):
    result = _zskd(tmp_path, "--teacher=localhost:8500")
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert "--teacher_saved_model" in lines[-1] and "zskd_blackbox" in lines[-1], lines[-3:]
    assert not (tmp_path / "report.json").exists()
